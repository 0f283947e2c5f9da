"""The manifest's ``callback`` block, checked where the schema cannot word it.

The URL goes into every create request and so into the provider's records: credentials in it
are refused like in any other URL of the manifest. The listen address is only parsed here; it
is taken when the run starts (:mod:`pipeline.run.callbacks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.manifest.model import CallbackConfig
from pipeline.manifest.yamlsafe import PathKey
from pipeline.settings import DEFAULTS, public_url

Report = Callable[[PathKey, str, str], None]


def callback_config(
    doc: Mapping[str, Any] | None, provider_cls: type, report: Report
) -> CallbackConfig | None:
    """The block as a value (None without one); each problem goes to ``report``."""
    if doc is None:
        return None
    url = str(doc["url"])
    if public_url(url) != url:
        report(
            ("callback", "url"),
            f"url carries credentials ({public_url(url)} with user:password@); it is sent to "
            "the provider with every create, so it must not hold a secret",
            "check callers in the reverse proxy in front of the listener, not with the URL",
        )
    field = getattr(provider_cls, "callback_field", None)
    if not field:
        name = getattr(provider_cls, "name", "this provider")
        report(("callback",), f"provider {name} cannot call back when a task ends",
               "remove the callback block: this provider is polled")  # fmt: skip
    host, port = _listen(str(doc["listen"]))
    if port is None or not 1 <= port <= 65535:
        report(("callback", "listen"), f"listen {doc['listen']!r}: the port must be 1-65535",
               "e.g. 127.0.0.1:8765")  # fmt: skip
    fallback = float(doc.get("fallback_poll", DEFAULTS.callback_fallback))
    return CallbackConfig(url=url, host=host, port=port or 0, fallback_poll=fallback)


def _listen(text: str) -> tuple[str, int | None]:
    """``host:port`` or ``[v6]:port`` as (host, port); the schema checked the shape."""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return host, int(port)
    except ValueError:
        return host, None
