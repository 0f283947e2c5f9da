"""The baseline for bench/run_scale.py: the same HTTP calls as a pipeline run, and nothing else.

Uploads the image and the clip once, then per job, with the same concurrency: create, wait one
poll interval, poll until done, download the result to disk. No state, no verification, no
retries: the floor any client pays for these requests.

    python bench/plain_client.py BASE_URL JOBS CONCURRENCY POLL_INTERVAL IMAGE VIDEO OUT_DIR
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

HEADERS = {"Authorization": "Bearer bench-key"}


async def upload(client: httpx.AsyncClient, base: str, path: Path, kind: str) -> str:
    with path.open("rb") as fh:
        reply = await client.post(
            f"{base}/api/file-stream-upload",
            headers=HEADERS,
            data={"uploadPath": f"bench/{kind}", "fileName": f"plain-{path.name}"},
            files={"file": (path.name, fh, "image/png" if kind == "images" else "video/mp4")},
        )
    return str(reply.json()["data"]["downloadUrl"])


async def one_job(
    client: httpx.AsyncClient, base: str, n: int, image: str, video: str, interval: float, out: Path
) -> int:
    body = {
        "model": "kling-2.6/motion-control",
        "input": {
            "prompt": f"take {n}",
            "input_urls": [image],
            "video_urls": [video],
            "character_orientation": "video",
            "mode": "720p",
        },
    }
    calls = 1
    reply = await client.post(f"{base}/api/v1/jobs/createTask", headers=HEADERS, json=body)
    task_id = reply.json()["data"]["taskId"]
    while True:
        await asyncio.sleep(interval)
        calls += 1
        info = await client.get(
            f"{base}/api/v1/jobs/recordInfo", headers=HEADERS, params={"taskId": task_id}
        )
        data = info.json()["data"]
        if data["state"] == "success":
            url = json.loads(data["resultJson"])["resultUrls"][0]
            break
        if data["state"] == "fail":
            raise RuntimeError(data.get("failMsg"))
    calls += 1
    async with client.stream("GET", url) as stream:
        with (out / f"{n}.mp4").open("wb") as fh:
            async for block in stream.aiter_bytes(1 << 20):
                fh.write(block)
    return calls


async def main() -> None:
    base, jobs, concurrency, interval = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    image, video, out = Path(sys.argv[5]), Path(sys.argv[6]), Path(sys.argv[7])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=max(32, 2 * concurrency))
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        image_url = await upload(client, base, image, "images")
        video_url = await upload(client, base, video, "videos")
        gate = asyncio.Semaphore(concurrency)

        async def guarded(n: int) -> int:
            async with gate:
                return await one_job(client, base, n, image_url, video_url, interval, out)

        calls = await asyncio.gather(*(guarded(n) for n in range(jobs)))
    wall = time.perf_counter() - started
    print(json.dumps({"wall": wall, "requests": sum(calls) + 2, "jobs": jobs}))


if __name__ == "__main__":
    asyncio.run(main())
