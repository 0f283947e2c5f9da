"""The callback listener: a small HTTP endpoint the provider POSTs to when a task ends.

Callbacks are not signed, so a callback is only a hint: the task it names is polled now
(:meth:`pipeline.run.poller.Poller.hint`) and the poll's answer is what counts. A forged
callback therefore costs one poll of a task we follow (none for an id we do not), and a flood of
them at most one poll per task per ``poll_interval``. What is read is bounded: the request head
(``limit``), the body (:data:`~pipeline.settings.Defaults.callback_max_body`, larger: 413), the
time a request may take, the requests served at once. Malformed bodies are answered 400 and
ignored; every other well-formed POST gets 200 (a provider retries non-2xx answers, and an
unknown id would be retried for nothing).

asyncio and the standard library only: one request per connection (``Connection: close``), no
chunked bodies (411: every provider sends a Content-Length).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError
from pipeline.manifest.model import CallbackConfig
from pipeline.settings import DEFAULTS

#: Bytes of request line + headers read at most (larger: 431).
HEAD_LIMIT = 16 * 1024
#: Longest task id taken from a callback (the providers' own ids are 20-40 characters).
MAX_ID = 200

_REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 408: "Request Timeout",
            411: "Length Required", 413: "Content Too Large",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}  # fmt: skip


def task_ids(doc: Any) -> list[str]:
    """The task ids a callback body names: ``task_id`` / ``taskId`` at its top (AceData, Kling)
    or under ``data`` (Kie: the recordInfo answer; its docs show both spellings)."""
    found: list[str] = []
    if not isinstance(doc, dict):
        return found
    places: list[Mapping[str, Any]] = [doc]
    if isinstance(doc.get("data"), dict):
        places.append(doc["data"])
    for place in places:
        for key in ("task_id", "taskId"):
            value = place.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if isinstance(value, str) and 0 < len(value) <= MAX_ID and value not in found:
                found.append(value)
    return found


@dataclass
class CallbackCounts:
    """What the listener saw, for the log at the end of the run."""

    received: int = 0
    hinted: int = 0
    """Callbacks that named a task the run follows."""
    unknown: int = 0
    refused: int = 0
    """Answered 4xx/5xx: malformed, too large, not a POST, too slow."""


class CallbackListener:
    """Serves callbacks on ``config.host:config.port`` while the run lasts."""

    def __init__(
        self,
        config: CallbackConfig,
        on_hint: Callable[[str], bool],
        log: logging.Logger,
        *,
        max_body: int = DEFAULTS.callback_max_body,
        read_timeout: float = DEFAULTS.callback_read_timeout,
        connections: int = DEFAULTS.callback_connections,
    ) -> None:
        self.config = config
        self.on_hint = on_hint
        self.log = log
        self.max_body = max_body
        self.read_timeout = read_timeout
        self._slots = asyncio.Semaphore(connections)
        self._server: asyncio.Server | None = None
        self.counts = CallbackCounts()

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for port 0)."""
        if self._server is None or not self._server.sockets:
            return self.config.port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Take the listen address; one in use (or not ours) is a ConfigError, exit 2."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.config.host, self.config.port, limit=HEAD_LIMIT
            )
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ConfigError(
                f"callback.listen {self.config.listen}: cannot listen there ({why}); "
                "nothing was submitted. Free the address or choose another port"
            ) from None
        self.log.info("listening for callbacks on %s (public URL %s)", self.config.listen,
                      self.config.url)  # fmt: skip

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        c = self.counts
        self.log.info("callbacks: %d received, %d for tasks of this run, %d for unknown tasks, "
                      "%d refused", c.received, c.hinted, c.unknown, c.refused)  # fmt: skip

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._slots.locked():
                await self._answer(writer, 503)
                return
            async with self._slots:
                try:
                    async with asyncio.timeout(self.read_timeout):
                        status = await self._handle(reader)
                except TimeoutError:
                    status = 408
                await self._answer(writer, status)
        except (ConnectionError, OSError):
            pass  # the sender went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader) -> int:
        self.counts.received += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return self._refuse(431, "request head too large")
        except asyncio.IncompleteReadError:
            return self._refuse(400, "request cut short")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return self._refuse(400, "not an HTTP/1.x request")
        if parts[0] != "POST":
            return self._refuse(405, f"method {parts[0][:10]!r}")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers or "content-length" not in headers:
            return self._refuse(411, "no Content-Length")
        try:
            length = int(headers["content-length"])
        except ValueError:
            return self._refuse(400, "bad Content-Length")
        if length < 0:
            return self._refuse(400, "bad Content-Length")
        if length > self.max_body:
            return self._refuse(413, f"body of {length} bytes (at most {self.max_body})")
        try:
            body = await reader.readexactly(length)
            doc = json.loads(body)
        except asyncio.IncompleteReadError:
            return self._refuse(400, "body cut short")
        except (ValueError, RecursionError):
            return self._refuse(400, "body is not JSON")
        ids = task_ids(doc)
        if not ids:
            return self._refuse(400, "no task id in the body")
        if any([self.on_hint(task_id) for task_id in ids]):  # every id hinted, not the first
            self.counts.hinted += 1
        else:
            self.counts.unknown += 1
        return 200

    def _refuse(self, status: int, why: str) -> int:
        self.counts.refused += 1
        self.log.debug("callback refused (%d): %s", status, why)
        return status

    async def _answer(self, writer: asyncio.StreamWriter, status: int) -> None:
        body = json.dumps({"ok": status == 200}).encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n")  # fmt: skip
        writer.write(head.encode("ascii") + body)
        await writer.drain()


async def open_listener(
    config: CallbackConfig | None, on_hint: Callable[[str], bool], log: logging.Logger
) -> CallbackListener | None:
    """The run's listener, started (None without a ``callback`` block); the caller closes it."""
    if config is None:
        return None
    listener = CallbackListener(config, on_hint, log)
    await listener.start()
    return listener
