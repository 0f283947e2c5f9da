"""How many requests per second an instant-mode sandbox serves: a load script, not a test.

Starts the sandbox in its own process (client and server must not share a GIL), in instant
mode, then runs JOBS jobs over CONCURRENCY keep-alive connections, each job: a Kie
``createTask``, ``recordInfo`` until success (one poll, in instant mode), and the download of
the result. The client speaks raw HTTP/1.1 on asyncio streams: httpx's async pool costs more CPU
per request than the server on a 2-core machine, and this measures the server. Prints the
request count, the wall time and the rate. Loopback only; bounded by JOBS.

    .venv/bin/python tests/sandbox_load.py [--jobs 2000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "load-key"
SERVE = (
    "import sys; from pipeline.sandbox import SandboxKeys, serve; "
    "serve('127.0.0.1', 0, ('kie',), keys=SandboxKeys(kie=sys.argv[1]), data_dir=sys.argv[2], "
    "instant=True)"
)
BODY = json.dumps({
    "model": "kling-2.6/motion-control",
    "input": {"input_urls": ["http://127.0.0.1:9/i.png"], "video_urls": ["http://127.0.0.1:9/v.mp4"],
              "character_orientation": "video", "mode": "720p"},
}).encode()  # fmt: skip


class Connection:
    """One keep-alive HTTP/1.1 connection; answers must carry a Content-Length (they do)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)


async def job(conn: Connection) -> int:
    """One create, its polls and its download; the number of requests it took."""
    status, data = await conn.request("POST", "/api/v1/jobs/createTask", BODY)
    task_id = json.loads(data)["data"]["taskId"]
    requests = 1
    while True:
        status, data = await conn.request("GET", f"/api/v1/jobs/recordInfo?taskId={task_id}")
        requests += 1
        record = json.loads(data)["data"]
        if record["state"] in ("success", "fail"):
            break
    if record["state"] != "success":
        raise RuntimeError(f"task {task_id} failed: {record['failMsg']}")
    url = json.loads(record["resultJson"])["resultUrls"][0]
    status, video = await conn.request("GET", "/results/" + url.split("/results/", 1)[1])
    if status != 200 or not video:
        raise RuntimeError(f"task {task_id}: the download answered {status}")
    return requests + 1


async def load(port: int, jobs: int, concurrency: int) -> tuple[int, float]:
    queue = list(range(jobs))
    total = [0]

    async def worker() -> None:
        conn = Connection(*await asyncio.open_connection("127.0.0.1", port))
        try:
            while queue:
                queue.pop()
                took = await job(conn)  # not `total[0] += await ...`: that reads before awaiting
                total[0] += took
        finally:
            conn.writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total[0], time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mp-load-") as folder:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, KEY, str(Path(folder) / "sandbox")],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            line = server.stdout.readline() if server.stdout else ""
            if not line.startswith("sandbox listening on "):
                print(f"the sandbox did not start: {line!r}", file=sys.stderr)
                return 1
            port = int(line.rsplit(":", 1)[1])
            requests, seconds = asyncio.run(load(port, args.jobs, args.concurrency))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{args.jobs} jobs at concurrency {args.concurrency}: {requests} requests in "
          f"{seconds:.2f} s = {requests / seconds:.0f} requests/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
