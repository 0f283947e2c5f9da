"""HTTP/1.1 under httpx's client API, cheaper per request than httpcore (see :mod:`.pool`)."""

from pipeline.transport.pool import Http11Transport

__all__ = ["Http11Transport"]
