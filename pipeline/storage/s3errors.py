"""botocore's exceptions as the pipeline's error tree: what the runner must decide, worded for
the user, with the bucket and key named and every secret removed. Never a botocore traceback.

============================================  ===========================================
S3 / transport says                           pipeline error (runner's decision)
============================================  ===========================================
NoSuchBucket, AccessDenied, wrong region or   ConfigError: fix the storage block or the
endpoint, unsupported request, clock skew     bucket's policy (stop the batch, exit 2)
InvalidAccessKeyId, SignatureDoesNotMatch,    AuthError: the credentials were rejected
ExpiredToken, InvalidToken                    (stop new submissions, exit 3)
no credentials, broken profile                MissingKeyError (exit 2, before anything)
EntityTooLarge, the file cannot be read       InputError: this job's input (the job fails)
5xx, SlowDown, 429, RequestTimeout, BadDigest TransientError: the same call again later
connection refused, DNS, TLS, connect timeout UnreachableError (a TransientError)
read timeout, connection closed mid-answer    TransientError
============================================  ===========================================
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import (
    AuthError,
    ConfigError,
    InputError,
    MissingKeyError,
    PipelineError,
    TransientError,
    UnreachableError,
)
from pipeline.manifest.model import StorageConfig
from pipeline.settings import redact
from pipeline.storage.urls import host_of

_AUTH = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "TokenRefreshRequired", "InvalidClientTokenId", "InvalidSecurity"}
)  # fmt: skip
_TRANSIENT = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "OperationAborted",
     "BadDigest", "XAmzContentSHA256Mismatch", "Throttling", "ThrottlingException",
     "RequestLimitExceeded", "TooManyRequests", "RequestTimeoutException"}
)  # fmt: skip
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
_REGION = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
     "301", "TemporaryRedirect"}
)  # fmt: skip


class S3Call:
    """What was being done, for the messages: the operation, the bucket, the key, the job."""

    def __init__(
        self,
        storage: StorageConfig,
        op: str,
        *,
        key: str | None = None,
        job_id: str | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.storage = storage
        self.op = op
        self.key = key
        self.job_id = job_id
        self.secrets = secrets

    @property
    def target(self) -> str:
        at = f" at {self.storage.endpoint_url}" if self.storage.endpoint_url else ""
        return f"s3://{self.storage.bucket}/{self.key or self.storage.prefix}{at}"

    def text(self, what: str) -> str:
        job = f"job {self.job_id}: " if self.job_id else ""
        return redact(f"{job}storage: {self.op} {self.target}: {what}", self.secrets)


def translate(exc: BaseException, call: S3Call) -> PipelineError:
    """The pipeline error for ``exc`` raised by a boto3 call described by ``call``."""
    name = type(exc).__name__
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return _client_error(response, call)
    host = host_of(call.storage.endpoint_url or "https://s3.amazonaws.com")
    if name in {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return MissingKeyError(
            call.text(
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        )
    if name in {"EndpointConnectionError", "ConnectTimeoutError", "SSLError",
                "ProxyConnectionError", "ConnectionError"}:  # fmt: skip
        return UnreachableError(call.text(f"no answer ({name})"), host=host)
    if name in {"ReadTimeoutError", "ConnectionClosedError", "ResponseStreamingError",
                "IncompleteReadError", "HTTPClientError"}:  # fmt: skip
        return TransientError(call.text(f"the answer was cut off ({name})"))
    if name == "ParamValidationError":
        return ConfigError(call.text(f"invalid request: {_short(exc)}"))
    if isinstance(exc, OSError):
        return InputError(call.text(f"cannot read the file: {exc.strerror or name}"), job_id=None)
    return TransientError(call.text(f"failed: {name}: {_short(exc)}"))


def _client_error(response: dict[str, Any], call: S3Call) -> PipelineError:
    error = response.get("Error") or {}
    code = str(error.get("Code") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    message = _clean(str(error.get("Message") or ""))
    said = f"{code or status}" + (f" ({message})" if message and message != code else "")
    bucket = call.storage.bucket
    if code == "NoSuchBucket" or (code == "404" and call.key is None):
        where = call.storage.endpoint_url or "AWS S3"
        return ConfigError(
            call.text(
                f"bucket {bucket!r} does not exist at {where}; motion-pipeline never creates "
                "buckets: create it (private), or fix storage.bucket / endpoint_url"
            )
        )
    if code in _AUTH:
        return AuthError(
            call.text(
                f"S3 rejected the credentials ({said}): check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or the profile"
            ),
            code=code,
            http_status=status or None,
        )
    if code in _DENIED:
        return ConfigError(
            call.text(
                f"access denied ({said}): the credentials need s3:PutObject and s3:GetObject "
                f"on arn:aws:s3:::{bucket}/{call.storage.prefix}*"
            )
        )
    if code in _REGION:
        return ConfigError(
            call.text(
                f"wrong region or endpoint ({said}): set storage.region to the bucket's region"
            )
        )
    if code == "RequestTimeTooSkewed":
        return ConfigError(call.text("this machine's clock is off; S3 refuses the signature"))
    if code == "EntityTooLarge":
        return InputError(call.text(f"the file is too large for one upload ({said})"))
    if code in _TRANSIENT or status in (408, 429) or status >= 500:
        return TransientError(call.text(f"S3 answered {said}"), code=code, http_status=status)
    return ConfigError(call.text(f"S3 refused the request ({said})"))


def _clean(text: str) -> str:
    return " ".join(text.split())[:200]


def _short(exc: BaseException) -> str:
    return _clean(str(exc)) or type(exc).__name__
