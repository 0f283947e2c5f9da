"""``<output_dir>/run.log``: an append-only log of a run in which every line is redacted.

:class:`RedactFilter` rewrites each record (message, arguments, exception and stack text) so no
API key or token reaches the file, and no terminal control character either: provider text is
logged, and ``tail run.log`` must not let it clear a screen or forge a line. :func:`open_run_log`
and :func:`close_run_log` attach and detach the file handler.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.progress.flushing import FlushSoon
from pipeline.settings import printable, redact

RUN_LOG = "run.log"
_DONE = "_pipeline_redacted_by"


class RedactFilter(logging.Filter):
    """Rewrites each record so message, arguments, exception and stack text are redacted and
    printable (control characters escaped as ``\\x1b``).

    The message is one line: a newline in it is escaped, so a provider's text cannot forge a log
    line. Tracebacks keep their own newlines. Attach the filter to every handler that leaves the
    process; it is idempotent.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE, None) is self:
            return True  # the logger's filter already rewrote it; the handler's need not again
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not crash the logging call itself
            message = f"{record.msg} (unformattable arguments {record.args!r})"
        record.msg = printable(redact(message, self._secrets))
        record.args = None
        if record.exc_info:
            record.exc_text = self._formatter.formatException(record.exc_info)
            record.exc_info = None  # so no later formatter renders the raw exception again
        if record.exc_text:
            record.exc_text = self._multiline(record.exc_text)
        if record.stack_info:
            record.stack_info = self._multiline(record.stack_info)
        setattr(record, _DONE, self)
        return True

    def _multiline(self, text: str) -> str:
        return printable(redact(text, self._secrets), keep_newlines=True)


class _QuietFileHandler(logging.FileHandler):
    """A log file that cannot be written (a full disk) says so once, instead of printing a
    traceback for every line: the run goes on, and its own messages name the disk."""

    _complained = False

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self._soon = FlushSoon(super().flush, self._complain)

    def flush(self) -> None:
        # Called after every record; the lines of one loop iteration share one write. close()
        # closes the file, which writes whatever is buffered.
        self._soon.request()

    def handleError(self, record: logging.LogRecord) -> None:
        self._complain(sys.exc_info()[1])

    def _complain(self, exc: BaseException | None) -> None:
        if not self._complained:
            self._complained = True
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            sys.stderr.write(f"motion-pipeline: cannot write {self.baseFilename}: {reason}\n")


def open_run_log(output_dir: Path, secrets: Sequence[str]) -> logging.Logger:
    """A logger appending to ``<output_dir>/run.log`` with UTC timestamps, every line redacted.

    The logger does not propagate to the root logger (which may print unredacted elsewhere).
    Opening the same directory again replaces the earlier handler. Close with
    :func:`close_run_log`.
    """
    path = Path(output_dir) / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(
        f"pipeline.run.{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    )
    close_run_log(logger)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    redactor = RedactFilter(secrets)
    handler = _QuietFileHandler(path)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    handler.setFormatter(formatter)
    handler.addFilter(redactor)  # on the handler: records from child loggers skip logger filters
    logger.addFilter(
        redactor
    )  # on the logger: any other handler the runner adds sees redacted text
    logger.addHandler(handler)
    return logger


def close_run_log(logger: logging.Logger) -> None:
    """Flush and close every handler of a logger from :func:`open_run_log`."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for filt in list(logger.filters):
        logger.removeFilter(filt)
