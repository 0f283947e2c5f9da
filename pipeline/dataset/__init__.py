"""The output directory as a dataset: its layout and ownership (``layout``), verified results
(``results``), ``metadata.jsonl`` (``metadata``), the lock file (``lockfile``) and
``report.html`` (``report``, ``report_html``)."""
