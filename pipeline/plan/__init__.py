"""The plan of every job, decided once before anything is spent: identity (key), media actions
and what is sent (``build``, ``sending``), the estimate of what a run pays (``estimate``,
``money``), which jobs a command is about (``selection``), and planning's caches (``cache``)."""
