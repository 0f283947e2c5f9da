"""AWS credentials for ``storage``: the standard chain, read from :class:`Settings`, kept secret.

Credentials never come from the manifest. They come, as for the AWS CLI, from
``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``), else the profile
(``AWS_PROFILE``, ``~/.aws/credentials`` and ``~/.aws/config``: SSO, assume-role, processes),
else the container or instance role. The variables are taken from ``settings.env`` (the one reader
of ``os.environ``), so a run sees the environment its Settings were made from.

:func:`storage_secrets` resolves the chain once, before anything is sent: no credentials at all
is a :class:`~pipeline.errors.MissingKeyError` (exit 2), like an unset provider key, and the
secret key and session token it found (wherever they came from: a profile file is as secret as
an environment variable) are returned for redaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError, MissingKeyError
from pipeline.manifest.model import StorageConfig
from pipeline.settings import Settings
from pipeline.storage.policy import S3_EXTRA_HINT

#: Environment variables whose values are always secrets when storage is used.
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
#: botocore configuration variable <- environment variable, passed on from ``settings.env``.
_CONFIG_VARS = {
    "profile": ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"),
    "config_file": ("AWS_CONFIG_FILE",),
    "credentials_file": ("AWS_SHARED_CREDENTIALS_FILE",),
    "ec2_metadata_disabled": ("AWS_EC2_METADATA_DISABLED",),
}
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class AwsCredentials:
    """What signing needs; ``expires_at`` (Unix time) for temporary credentials, else None.

    A presigned URL stops working when the credentials that signed it expire, whatever its own
    lifetime says, so the expiry of a URL is the earlier of the two.
    """

    access_key: str
    secret_key: str
    token: str | None
    expires_at: float | None

    def secrets(self) -> list[str]:
        return [v for v in (self.secret_key, self.token) if v]

    def __repr__(self) -> str:  # never the secret, even in a debugger's repr
        return f"AwsCredentials(access_key={self.access_key!r}, expires_at={self.expires_at!r})"

    __str__ = __repr__


def require_boto3() -> Any:
    """The boto3 module, or a ConfigError saying how to install it."""
    try:
        import boto3  # optional extra: imported only when storage is used
    except ImportError:
        raise ConfigError(
            f"storage kind s3 needs boto3, which is not installed: {S3_EXTRA_HINT}"
        ) from None
    return boto3


def session_for(settings: Settings, storage: StorageConfig) -> Any:
    """A boto3 Session on the AWS chain as ``settings.env`` describes it."""
    boto3 = require_boto3()
    import botocore.session  # comes with boto3

    core = botocore.session.Session()
    env = settings.env
    for var, names in _CONFIG_VARS.items():
        value = next((env[n] for n in names if env.get(n)), None)
        if value is not None:
            core.set_config_variable(var, value)
    region = storage.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    explicit: dict[str, str | None] = {}
    if key and secret:
        explicit = {
            "aws_access_key_id": key,
            "aws_secret_access_key": secret,
            "aws_session_token": env.get("AWS_SESSION_TOKEN") or None,
        }
    try:
        return boto3.session.Session(botocore_session=core, region_name=region, **explicit)
    except Exception as exc:  # ProfileNotFound and kin: the user's AWS configuration
        raise ConfigError(f"storage: AWS configuration: {_reason(exc)}") from None


def credentials(session: Any) -> AwsCredentials:
    """Resolve the chain now; MissingKeyError when it finds nothing."""
    try:
        found = session.get_credentials()
        frozen = found.get_frozen_credentials() if found is not None else None
    except Exception as exc:  # a broken profile, an SSO token that expired, a failing process
        raise MissingKeyError(f"storage: cannot load AWS credentials: {_reason(exc)}") from None
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise MissingKeyError(
            "storage needs AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_SESSION_TOKEN for temporary ones) or AWS_PROFILE in the environment"
        )
    return AwsCredentials(
        frozen.access_key, frozen.secret_key, frozen.token or None, credentials_expiry(found)
    )


def storage_secrets(storage: StorageConfig | None, settings: Settings) -> list[str]:
    """Every secret a run with ``storage`` must never print: the AWS secret key and session
    token, from the environment and from wherever the chain found them.

    Resolves the credentials, so it is also the early check: MissingKeyError (exit 2) when
    there are none, ConfigError when boto3 is missing. Empty without ``storage``.
    """
    if storage is None:
        return []
    found = credentials(session_for(settings, storage))
    from_env = [v for v in (settings.env.get(n, "") for n in SECRET_VARS) if v]
    return list(dict.fromkeys([*found.secrets(), *from_env]))


def credentials_expiry(found: Any) -> float | None:
    """When temporary credentials (STS, SSO, roles) expire, as Unix time; None if they do not."""
    # botocore keeps the expiry of refreshable (temporary) credentials in a private attribute;
    # there is no public one. Read defensively: without it, URLs get their own lifetime only.
    when = getattr(found, "_expiry_time", None)
    timestamp = getattr(when, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else None


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
