"""Callbacks (webhooks): the sandbox POSTs a task's end to the URL its create named.

The protocols say what a callback carries (:meth:`.service.ProtocolModule.callback`); this
module only delivers: from background threads, at the due time, with a short timeout, retried a
few times on a connection error or a non-2xx answer, and recorded. A callback is due when the
task's work is done and its ``latency.seconds`` are over (poll counts do not apply: a client
waiting for a callback does not poll), plus any ``callback_delay``.

Only loopback URLs are ever called: the sandbox must not reach beyond this machine, so any other
URL is recorded as refused and not sent.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pipeline.sandbox.files import is_loopback
from pipeline.sandbox.wire import Callback

#: Seconds between attempts: 0.2, 0.4, 0.8...
BACKOFF = 0.2


@dataclass(frozen=True)
class CallbackRecord:
    """One callback the sandbox delivered (or decided not to): tests read these.

    ``kind`` is ``final`` (the task's end), ``duplicate`` (callback_duplicate's second copy),
    ``forged`` (callback_forged) or ``dropped`` (callback_drop: never sent). ``status`` is the
    receiver's last HTTP status (None when no answer came); ``attempts`` counts the tries.
    """

    protocol: str
    task_id: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    kind: str
    attempts: int
    status: int | None
    error: str | None
    sent_at: float

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    protocol: str = field(compare=False)
    task_id: str = field(compare=False)
    kind: str = field(compare=False)
    build: Callable[[], Callback | None] = field(compare=False)
    """Makes the callback at its due time, so the body shows the task as it is then."""


class Callbacks:
    """A due-time queue and the threads that deliver; thread-safe."""

    def __init__(self, *, timeout: float, attempts: int) -> None:
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self._heap: list[_Due] = []
        self._records: list[CallbackRecord] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sandbox-callback")
        self._thread = threading.Thread(target=self._run, name="sandbox-callbacks", daemon=True)
        self._thread.start()

    def schedule(
        self,
        at: float,
        protocol: str,
        task_id: str,
        kind: str,
        build: Callable[[], Callback | None],
    ) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, _Due(at, self._seq, protocol, task_id, kind, build))
            self._cond.notify()

    def record_dropped(self, protocol: str, task_id: str, url: str) -> None:
        error = "dropped by the callback_drop fault"
        record = CallbackRecord(
            protocol, task_id, url, b"", {}, "dropped", 0, None, error, time.time()
        )
        self._add(record)

    def records(self) -> list[CallbackRecord]:
        with self._cond:
            return list(self._records)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _add(self, record: CallbackRecord) -> None:
        with self._cond:
            self._records.append(record)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0].at > time.time()):
                    wait = self._heap[0].at - time.time() if self._heap else None
                    self._cond.wait(timeout=wait)
                if self._stopping:
                    return
                due = heapq.heappop(self._heap)
            self._pool.submit(self._deliver, due)

    def _deliver(self, due: _Due) -> None:
        def record(
            callback: Callback | None, body: bytes, attempts: int, status: int | None,
            error: str | None, headers: Mapping[str, str],
        ) -> None:  # fmt: skip
            url = callback.url if callback is not None else ""
            self._add(CallbackRecord(due.protocol, due.task_id, url, body, headers, due.kind,
                                     attempts, status, error, time.time()))  # fmt: skip

        try:
            callback = due.build()
        except Exception as exc:  # a sandbox bug must not kill the sender thread
            record(None, b"", 0, None, f"sandbox error building the callback: {exc}", {})
            return
        if callback is None:
            return
        body = json.dumps(callback.body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **callback.headers}
        parts = urlsplit(callback.url)
        if parts.scheme not in ("http", "https") or not is_loopback(parts.hostname):
            record(callback, body, 0, None, "refused: the sandbox only calls loopback http URLs",
                   headers)  # fmt: skip
            return
        status, error, attempts = None, None, 0
        for attempt in range(self.attempts):
            attempts = attempt + 1
            status, error = self._post(callback.url, body, headers)
            if status is not None and 200 <= status < 300:
                break
            if attempt + 1 < self.attempts and not self._sleep(BACKOFF * 2**attempt):
                break
        record(callback, body, attempts, status, error, headers)

    def _sleep(self, seconds: float) -> bool:
        """Wait between attempts; False when the sandbox is stopping."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, timeout=seconds)
            return not self._stopping

    def _post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int | None, str | None]:
        # No proxies: the environment's proxy settings must never route a loopback call.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # The scheme is http(s) and the host loopback: checked by _deliver.
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
        try:
            with opener.open(request, timeout=self.timeout) as response:  # loopback, checked
                response.read(64 * 1024)
                return int(response.status), None
        except urllib.error.HTTPError as exc:
            return int(exc.code), f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
