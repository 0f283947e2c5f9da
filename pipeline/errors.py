"""The exception tree of motion-pipeline.

It is shaped by what the runner decides, not by where an error came from::

    PipelineError                      base; never raised itself             exit
    ├── ConfigError                    the user must fix something first       2
    │   ├── ManifestError              schema/semantic errors (all of them)    2
    │   ├── InputError                 a job's input file/URL is unusable      2
    │   │   └── MediaError             ffprobe/ffmpeg says the media breaks a rule
    │   ├── MissingKeyError            an API key variable is unset (run only)
    │   └── ToolNotFoundError          no ffmpeg/ffprobe anywhere
    ├── ProviderError                  anything a provider said or failed to say
    │   ├── RefusedError               the API refused this request: the job fails, no retry
    │   ├── TransientError             try the same call again later (429, 5xx, timeouts)
    │   │   ├── RateLimitedError       429 / "too fast": one shared pause for everyone
    │   │   ├── UnreachableError       no answer at all: refused, DNS, TLS, timeout, deadline
    │   │   ├── BadReplyError          an answer we cannot use: garbage, oversize, truncated
    │   │   └── ResultExpiredError     result URL gone (403/404/410): re-query the task
    │   ├── AmbiguousError             a create may or may not have happened
    │   ├── ResultInvalidError         the served result is not a usable video
    │   └── BatchFatalError            stop all new submissions                3
    │       ├── AuthError              the key was rejected
    │       └── OutOfCreditsError      balance used up
    ├── BatchStopped                   budget reached, disk full               3
    ├── OutputConflictError            another video holds the output path     1
    ├── LockedError                    another run holds the output lock       4
    └── StateError                     the state store is damaged or too new   1

"The API refused the request" (:class:`RefusedError`) and "the job ran and failed" are different
facts: the first cost nothing, the second may have. A task that ran and failed is not an
exception at all: it is the poll's answer (a ``failed`` :class:`pipeline.jobs.TaskStatus` with
the provider's reason), and the job is failed with it.

Messages never contain secrets: provider modules redact before raising
(:func:`pipeline.settings.redact`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

#: The errnos of a full disk (or quota): every later write to that disk would fail the same way.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class PipelineError(Exception):
    """Base of every error motion-pipeline raises on purpose."""

    exit_code: int = 1


# --------------------------------------------------------------------------- config


class ConfigError(PipelineError):
    """Something the user must fix before anything is spent."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in a manifest, printed as ``FILE:LINE:COL: PATH: message``.

    Without a position (line 0: the file is missing or unreadable) it is ``FILE: message``: a
    ``:0:0:`` would send an editor to a line that does not exist, and the root path ``$`` says
    nothing the file name does not.
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        if self.line > 0:
            text = f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"
        elif self.path in ("", "$"):
            text = f"{self.file}: {self.message}"
        else:
            text = f"{self.file}: {self.path}: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class ManifestError(ConfigError):
    """The manifest is invalid; carries every diagnostic found, sorted by position."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        count = len(self.diagnostics)
        head = f"{count} error{'s' if count != 1 else ''} in manifest"
        super().__init__("\n".join([head, *map(str, self.diagnostics)]))


class InputError(ConfigError):
    """An input of a job is unusable; names the job and the file."""

    def __init__(self, message: str, *, job_id: str | None = None, path: str | None = None):
        self.job_id = job_id
        self.path = path
        prefix = ""
        if job_id:
            prefix += f"job {job_id}: "
        if path:
            prefix += f"{path}: "
        super().__init__(prefix + message)
        self.reason = message


class MediaError(InputError):
    """ffprobe/ffmpeg found the media unreadable or outside the provider's limits."""


class MissingKeyError(ConfigError):
    """An environment variable that should hold an API key is not set."""


class ToolNotFoundError(ConfigError):
    """No usable ffmpeg/ffprobe was found."""


# --------------------------------------------------------------------------- provider


class ProviderError(PipelineError):
    """Anything a provider answered (or failed to answer).

    ``code`` is the provider's own code (``"402"``, ``"used_up"``, ``"1303"``) when it gave one.
    """

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


class RefusedError(ProviderError):
    """The API refused this request (validation, policy): the job fails and is not retried."""


class TransientError(ProviderError):
    """Try the same call again later; ``retry_after`` (seconds) is a floor when the server said."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, code=code, http_status=http_status)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """The provider said slow down: pause every create, not just this one."""


class UnreachableError(TransientError):
    """The provider gave no answer at all: connection refused, DNS, TLS, timeout, deadline.

    ``host`` names the server (no credentials), so a sustained outage can be reported by name.
    """

    def __init__(self, message: str, *, host: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.host = host


class BadReplyError(TransientError):
    """The server answered, but with nothing usable (garbage, a body over the size cap, cut off).

    Asking again may help; a task whose every answer is bad is failed by the poller.
    """


class ResultExpiredError(TransientError):
    """The result URL answered 401/403/404/410: re-query the task for a fresh URL, then retry."""


class AmbiguousError(ProviderError):
    """A create was sent but its outcome is unknown (timeout after send, reset, 5xx, garbage)."""


class ResultInvalidError(ProviderError):
    """The result was served but is not a usable video (garbage, truncated, too long, too big)."""


class BatchFatalError(ProviderError):
    """No further job can succeed: stop submitting, collect what is already paid for."""

    exit_code = 3


class AuthError(BatchFatalError):
    """The provider rejected the credentials."""


class OutOfCreditsError(BatchFatalError):
    """The account has no balance left."""


# --------------------------------------------------------------------------- run


class BatchStopped(PipelineError):
    """A batch-wide limit stopped new submissions (budget reached, disk full)."""

    exit_code = 3


class OutputConflictError(PipelineError):
    """``videos/<job_id>.mp4`` already holds a different video and no replace was asked for."""

    exit_code = 1


class LockedError(PipelineError):
    """Another process holds the run lock of this output directory."""

    exit_code = 4


class StateError(PipelineError):
    """The state store cannot be used (corrupt, or written by a newer version)."""

    exit_code = 1
