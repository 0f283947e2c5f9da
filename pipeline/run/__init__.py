"""Running a batch: the use case (``batch``: lock, keys, plan, state, engine), the engine and
its stages, and the small objects they share (budget, halt, retry, outage, disk, slots, log)."""
