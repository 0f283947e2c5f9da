"""The one way the product builds an HTTP client: :class:`Http11Transport` for direct
connections, httpx's own transport for a proxy the environment names.

httpx reads HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY only when it builds its own
transport; a client given a transport ignores them. So the proxies are mounted here, by httpx's
documented rules (a proxy per scheme, ``all`` for both; NO_PROXY hosts, suffixes and ``*`` go
direct), each on a stock ``httpx.AsyncHTTPTransport`` (it speaks CONNECT for https). ``wrap``
puts the same watcher around every transport (the run's outage detection must see proxied calls
too).
"""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Callable
from typing import Any

import httpx

from pipeline.transport.pool import Http11Transport

Wrap = Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]


def environment_proxies() -> dict[str, str | None]:
    """httpx mount patterns from the environment: a proxy URL, or None for "go direct"."""
    found = urllib.request.getproxies()
    mounts: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        url = found.get(scheme)
        if url:
            mounts[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for host in (h.strip() for h in found.get("no", "").split(",")):
        if host == "*":
            return {}
        if not host:
            continue
        if "://" in host:
            mounts[host] = None
        elif _is_ip(host) or host.lower() == "localhost":
            mounts[f"all://[{host}]" if ":" in host else f"all://{host}"] = None
        else:
            mounts[f"all://*{host}"] = None
    return mounts


def new_client(
    *, max_connections: int = 100, wrap: Wrap = lambda t: t, **options: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` (``options`` are its own: timeout, event_hooks ...)."""
    # Every connection the pool may open may also stay open (httpx keeps only 20 by default, so
    # a run with more calls in flight re-opened connections, a TCP and TLS handshake each).
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {
        pattern: None
        if proxy is None
        else wrap(httpx.AsyncHTTPTransport(proxy=proxy, limits=limits))
        for pattern, proxy in environment_proxies().items()
    }
    direct = wrap(Http11Transport(max_connections=max_connections))
    return httpx.AsyncClient(transport=direct, mounts=mounts, **options)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
