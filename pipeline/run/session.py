"""What every command that talks to a provider needs: its keys, its endpoint, a client.

``provider: sandbox`` (``base_url: embedded``) starts the in-process sandbox for the duration;
every other provider is reached at its ``base_url``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx

from pipeline import providers
from pipeline.errors import ConfigError, MissingKeyError
from pipeline.manifest.model import Manifest
from pipeline.media.tools import MediaTools
from pipeline.plan.build import cache_dir
from pipeline.providers.base import Credentials, Provider, ProviderConfig
from pipeline.run.outage import Outage, WatchingTransport
from pipeline.settings import DEFAULTS, Settings, url_secrets
from pipeline.storage.aws import storage_secrets
from pipeline.transport import new_client
from pipeline.transport.client import environment_proxies

EMBEDDED = "embedded"
"""``base_url`` of a provider served by the in-process sandbox."""


def credentials_for(config: ProviderConfig, settings: Settings) -> Credentials:
    """The provider's keys from the environment; an unset variable is an exit-2 error."""
    values: dict[str, str] = {}
    missing: list[str] = []
    for role, var in config.key_envs.items():
        value = settings.secret(var)
        if value is None:
            missing.append(var)
        elif any(ord(c) < 32 or ord(c) == 127 for c in value):
            # A key pasted from a file with its line break: no HTTP header can carry it, and
            # every call would fail the same way. The value is never shown.
            raise ConfigError(
                f"{var} holds a control character (a line break or tab?): set it to the key alone"
            )
        else:
            values[role] = value
    if missing:
        names = " and ".join(missing)
        raise MissingKeyError(f"set {names} in the environment: provider {config.name} needs it")
    return Credentials(values)


def run_secrets(manifest: Manifest, credentials: Credentials, settings: Settings) -> list[str]:
    """Everything a run must never print: its keys, every key variable's value, the passwords
    of its provider URLs and of the environment's proxies (``https://user:pw@proxy``), and the
    storage's AWS secret key and session token. Resolving the AWS credentials is also the early
    check that they exist (MissingKeyError, exit 2, before anything is sent)."""
    config = manifest.provider
    return [
        *credentials.secrets(),
        *settings.secrets(config.key_envs.values()),
        *url_secrets(config.base_url, config.upload_url),
        *url_secrets(*(url for url in environment_proxies().values() if url)),
        *storage_secrets(manifest.storage, settings),
    ]


@contextlib.contextmanager
def endpoint(manifest: Manifest, tools: MediaTools) -> Iterator[ProviderConfig]:
    """The provider config to use, with the embedded sandbox started when the manifest asks."""
    config = manifest.provider
    if manifest.callback is not None:  # every create names where to call back
        config = dataclasses.replace(config, callback_url=manifest.callback.url)
    if config.base_url != EMBEDDED:
        yield config
        return
    from pipeline.sandbox import SandboxServer  # the sandbox costs nothing unless used

    data = cache_dir(manifest) / "sandbox"
    with SandboxServer(data_dir=data, tools=tools) as server:
        yield ProviderConfig(
            **{**config.__dict__, "base_url": server.base_url, "upload_url": server.base_url}
        )


@contextlib.asynccontextmanager
async def provider_client(
    config: ProviderConfig, credentials: Credentials
) -> AsyncIterator[Provider]:
    """A provider client on a short-lived HTTP client (for ``resolve``'s one question)."""
    async with new_client(timeout=httpx.Timeout(60.0, connect=15.0)) as client:
        yield providers.get(config.name)(config, credentials, client)


def run_client(
    config: ProviderConfig,
    outage: Outage,
    on_request: Callable[[httpx.Request], Awaitable[None]],
) -> httpx.AsyncClient:
    """The run's one HTTP client: a bounded pool, the default timeouts, the environment's
    proxies, and transports that tell ``outage`` whether the provider's hosts answer (storage
    hosts are not the provider)."""
    hosts = {httpx.URL(u).host for u in (config.base_url, config.upload_url) if u}
    timeout = httpx.Timeout(DEFAULTS.read_timeout, connect=DEFAULTS.connect_timeout)
    return new_client(
        max_connections=DEFAULTS.connections,
        wrap=lambda inner: WatchingTransport(inner, outage, hosts),
        timeout=timeout,
        event_hooks={"request": [on_request]},
    )
