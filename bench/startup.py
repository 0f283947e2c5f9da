"""`import pipeline.cli`: the cost every command pays before it does anything (issue 12, part 4).

Best of N fresh interpreters, each timing the import itself with perf_counter (so interpreter
start-up is not counted), against the floor measured the same way: `import json`, and the
interpreter start-up itself. Also the modules the import loads that a light command should not
need (httpx, jsonschema, the engine). Target: under 0.3 s.

    .venv/bin/python bench/startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

PY = sys.executable
PROBE = (
    "import time,sys;t=time.perf_counter();import {module};w=time.perf_counter()-t;"
    "heavy=[m for m in ('httpx','jsonschema','pipeline.run.engine','yaml') if m in sys.modules];"
    "print(w, ','.join(heavy) or '-')"
)


def import_time(module: str, rounds: int) -> tuple[float, str]:
    best, heavy = float("inf"), ""
    for _ in range(rounds):
        out = subprocess.run([PY, "-c", PROBE.format(module=module)], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        if float(out[0]) < best:
            best, heavy = float(out[0]), out[1]
    return best, heavy


def process_time(args: list[str], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([PY, *args], capture_output=True, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; best of {args.rounds}")
    floor, _ = import_time("json", args.rounds)
    cli, heavy = import_time("pipeline.cli", args.rounds)
    bare = process_time(["-c", "pass"], args.rounds)
    whole = process_time(["-m", "pipeline", "--version"], args.rounds)
    verdict = "PASS" if cli < 0.3 else "FAIL"
    print(f"import json (floor):        {floor * 1000:7.1f} ms")
    print(f"import pipeline.cli:        {cli * 1000:7.1f} ms  heavy modules loaded: {heavy}")
    print(f"python -c pass:             {bare * 1000:7.1f} ms")
    print(f"motion-pipeline --version:  {whole * 1000:7.1f} ms  (whole process)")
    print(f"import pipeline.cli < 300 ms: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
