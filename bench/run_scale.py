"""The runner at scale, against the sandbox in its own process (issue 5, point 9).

1. 2,000 jobs, no generation latency, concurrency 64: `motion-pipeline run` against a plain
   httpx script that makes the same HTTP calls with the same concurrency (bench/plain_client.py).
   Target: the pipeline takes at most 2x the plain script's time. Also HTTP calls per job.
2. Simulated generation time (every task runs >= 1 s): share of provider slots in use while
   jobs were still waiting for one. Target >= 95 %.
3. `status --json` on a 100,000-job state. Target < 1 s.
4. Peak RSS of a run over a 100,000-job manifest (plan, state sync, then --max-jobs of them).
   Target < 300 MB.

    .venv/bin/python bench/run_scale.py [--jobs 2000] [--concurrency 64] [--skip-100k]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import free_port, kie_manifest

from pipeline.jobs import State
from pipeline.state.rows import JobRecord
from pipeline.state.store import StateStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mediagen import make_image, make_video  # noqa: E402 - needs the sys.path entry above

PY = sys.executable
ENV = {**os.environ, "KIE_API_KEY": "bench-key"}


class Sandbox:
    """`motion-pipeline sandbox` in its own process, so it does not share our GIL."""

    def __init__(self, folder: Path, profile: str) -> None:
        self.port = free_port()
        faults = folder / f"faults-{self.port}.yaml"
        faults.write_text(profile, encoding="utf-8")
        self.proc = subprocess.Popen(
            [PY, "-m", "pipeline", "sandbox", "--port", str(self.port), "--faults", str(faults)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, line
        self.url = line.split()[-1]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def timed(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one child process."""
    wrapper = (
        "import resource,subprocess,sys,time;"
        "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "w=time.perf_counter()-t;r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "sys.stdout.write(p.stdout);sys.stderr.write(p.stderr[-3000:]);"
        "print(f'@@{w} {r} {p.returncode}')"
    )
    proc = subprocess.run(
        [PY, "-c", wrapper, *cmd], capture_output=True, text=True, env=ENV, check=False
    )
    body, tail = proc.stdout.rsplit("@@", 1)
    wall, rss, code = tail.split()
    if int(code) not in ok:
        raise SystemExit(f"{cmd} failed ({code}):\n{body[-2000:]}\n{proc.stderr[-2000:]}")
    return float(wall), int(rss) / 1024, body


def manifest(folder: Path, name: str, base: str, jobs: int, concurrency: int) -> Path:
    return kie_manifest(folder, name, base, jobs, concurrency=concurrency, poll_interval=0.1)


def parse_requests(stdout: str) -> tuple[int, float, float | None]:
    for line in stdout.splitlines():
        if line.startswith("requests:"):
            total = int(line.split()[1])
            per_job = float(line.split(", ")[1].split()[0])
            busy = None
            if "slots" in line:
                busy = float(line.split("slots ")[1].split("%")[0]) / 100
            return total, per_job, busy
    raise SystemExit(f"no requests line in:\n{stdout}")


def part_throughput(folder: Path, jobs: int, concurrency: int) -> list[str]:
    sandbox = Sandbox(folder, "latency: {polls: 0}\n")
    try:
        # Warm the sandbox's render cache so both clients see the same server.
        timed([PY, str(ROOT / "bench" / "plain_client.py"), sandbox.url, "1", "1", "0.1",
               str(folder / "a.png"), str(folder / "clip.mp4"), str(folder / "warm")])  # fmt: skip
        wall_plain, _, out = timed(
            [
                PY,
                str(ROOT / "bench" / "plain_client.py"),
                sandbox.url,
                str(jobs),
                str(concurrency),
                "0.1",
                str(folder / "a.png"),
                str(folder / "clip.mp4"),
                str(folder / "plain"),
            ]
        )
        plain = json.loads(out.strip().splitlines()[-1])
        path = manifest(folder, "throughput", sandbox.url, jobs, concurrency)
        wall_run, rss, out = timed([PY, "-m", "pipeline", "run", str(path), "--no-progress"])
        total, per_job, _ = parse_requests(out)
    finally:
        sandbox.close()
    ratio = wall_run / wall_plain
    verdict = "PASS" if ratio <= 2.0 else "FAIL"
    return [
        f"1. {jobs} jobs, concurrency {concurrency}, no generation latency",
        f"   plain httpx script: {wall_plain:7.2f} s, {plain['requests'] / jobs:.2f} requests/job",
        f"   motion-pipeline run: {wall_run:7.2f} s, {per_job:.2f} requests/job "
        f"({total} in all), peak {rss:.0f} MB",
        f"   ratio {ratio:.2f} (target <= 2.0): {verdict}",
    ]


def part_occupancy(folder: Path) -> list[str]:
    jobs, concurrency = 80, 8
    sandbox = Sandbox(folder, "latency: {polls: 0, seconds: 1.0}\n")
    try:
        path = manifest(folder, "occupancy", sandbox.url, jobs, concurrency)
        wall, _, out = timed([PY, "-m", "pipeline", "run", str(path), "--no-progress"])
        _, per_job, busy = parse_requests(out)
    finally:
        sandbox.close()
    ideal = jobs / concurrency * 1.0
    verdict = "PASS" if busy is not None and busy >= 0.95 else "FAIL"
    return [
        f"2. {jobs} jobs of >= 1 s generation each, concurrency {concurrency}",
        f"   wall {wall:.2f} s (ideal {ideal:.1f} s), {per_job:.2f} requests/job",
        f"   provider slots busy while jobs waited: {busy:.1%} (target >= 95 %): {verdict}"
        if busy is not None
        else "   slots never saturated: FAIL",
    ]


def part_status(folder: Path, n: int = 100_000) -> list[str]:
    out_dir = folder / "status-100k"
    with StateStore.open(out_dir) as store:
        store.sync_jobs(JobRecord(f"job{i:06d}", f"k{i}", {"n": i}) for i in range(n))
        with store.batch():
            for i in range(0, n, 97):
                store.transition(f"job{i:06d}", State.FAILED, error="moderation check failed")
    # status exits 1 when some job failed, as here
    wall, rss, out = timed([PY, "-m", "pipeline", "status", str(out_dir), "--json"], ok=(0, 1))
    doc = json.loads(out)
    assert len(doc["jobs"]) == n
    verdict = "PASS" if wall < 1.0 else "FAIL"
    return [
        f"3. status --json on a {n}-job state: {wall:.3f} s (process start included), "
        f"peak {rss:.0f} MB, {len(out) / 1e6:.1f} MB of JSON (target < 1 s): {verdict}"
    ]


def part_memory(folder: Path, max_jobs: int = 300) -> list[str]:
    images, videos = folder / "images", folder / "videos"
    images.mkdir()
    videos.mkdir()
    for i in range(100):
        target = images / f"c{i:03d}.png"
        shutil.copyfile(folder / "a.png", target)
        with target.open("ab") as fh:
            fh.write(f"#{i}".encode())
    for i in range(1000):
        target = videos / f"m{i:04d}.mp4"
        shutil.copyfile(folder / "clip.mp4", target)
        with target.open("ab") as fh:
            fh.write(f"#{i}".encode())
    sandbox = Sandbox(folder, "latency: {polls: 0}\n")
    try:
        path = folder / "big.yaml"
        path.write_text(
            "version: 1\nname: big\nprovider:\n  name: kie\n"
            f"  base_url: {sandbox.url}\n  upload_url: {sandbox.url}\n  concurrency: 64\n"
            "  poll_interval: 0.1\n  rate_limit: {requests: 100000, per_seconds: 1}\n"
            "matrix:\n  image: [images/*.png]\n  video: [videos/*.mp4]\n",
            encoding="utf-8",
        )
        cmd = [PY, "-m", "pipeline", "run", str(path), "--no-progress", "--max-jobs", str(max_jobs)]
        wall, rss, _ = timed(cmd)
    finally:
        sandbox.close()
    verdict = "PASS" if rss < 300 else "FAIL"
    return [
        f"4. run over a 100,000-job manifest (plan + state sync of all, then --max-jobs "
        f"{max_jobs} generated): {wall:.1f} s, peak RSS {rss:.0f} MB (target < 300 MB): {verdict}"
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-100k", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="run-scale-") as tmp:
        folder = Path(tmp)
        make_image(folder / "a.png", 400, 600)
        make_video(folder / "clip.mp4", seconds=4, width=360, height=480, audio=False)
        report = part_throughput(folder, args.jobs, args.concurrency)
        report += part_occupancy(folder)
        report += part_status(folder)
        if not args.skip_100k:
            report += part_memory(folder)
    print(f"{os.cpu_count()} CPUs; bench took {time.perf_counter() - started:.0f} s")
    print("\n".join(report))
    return 1 if any(line.rstrip().endswith("FAIL") for line in report) else 0


if __name__ == "__main__":
    sys.exit(main())
