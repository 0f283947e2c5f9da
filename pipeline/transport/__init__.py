"""HTTP/1.1 under httpx's client API, cheaper per request than httpcore (see :mod:`.pool`), and
the one constructor of the product's clients (:mod:`.client`)."""

from pipeline.transport.client import new_client
from pipeline.transport.pool import Http11Transport

__all__ = ["Http11Transport", "new_client"]
