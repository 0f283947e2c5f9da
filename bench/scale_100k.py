"""Scale figures at 100,000 jobs (issue 12, part 4), each command a process of its own.

1. `status --json` on a 100,000-job state. Target < 1 s.
2. `plan` and `plan --json` of a 100,000-job matrix (100 images x 1,000 videos) with warm
   caches (a cold `plan` first fills them). Target < 5 s and < 300 MB peak RSS, each.
3. `run` of that matrix against the instant sandbox in its own process (`sandbox --instant`),
   stopped with Ctrl-C (SIGINT) after --seconds: peak RSS while it submits (sampled from /proc
   every 0.5 s, and the kernel's high-water mark), and the rate of verified results.
   Target < 300 MB.

    .venv/bin/python bench/scale_100k.py [--seconds 300] [--rounds 3]
        [--skip-status] [--skip-plan] [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from runner_overhead import ENV, PY, Sandbox, load_average

import pipeline
from pipeline.jobs import State
from pipeline.state.rows import JobRecord
from pipeline.state.store import StateStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mediagen import make_image, make_video  # noqa: E402 - needs the sys.path entry above

WRAPPER = (
    "import resource,subprocess,sys,time;"
    "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
    "w=time.perf_counter()-t;r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
    "sys.stderr.write(p.stderr[-2000:]);print(f'@@{w} {r} {p.returncode} {len(p.stdout)}')"
)


def best_of(
    cmd: list[str], rounds: int, env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[float, float, int]:
    """Best wall seconds, the peak RSS (MB) of that round, and its stdout size."""
    best = (float("inf"), 0.0, 0)
    for _ in range(rounds):
        done = subprocess.run([PY, "-c", WRAPPER, *cmd], capture_output=True, text=True,
                              env=env, check=False)  # fmt: skip
        wall, rss, code, size = done.stdout.rsplit("@@", 1)[1].split()
        if int(code) not in ok:
            raise SystemExit(f"{cmd} failed ({code}):\n{done.stderr}")
        if float(wall) < best[0]:
            best = (float(wall), int(rss) / 1024, int(size))
    return best


def part_status(folder: Path, rounds: int, n: int = 100_000) -> str:
    out = folder / "status-100k"
    with StateStore.open(out) as store:
        store.sync_jobs(JobRecord(f"job{i:06d}", f"k{i}", {"n": i}) for i in range(n))
        with store.batch():
            for i in range(0, n, 97):
                store.transition(f"job{i:06d}", State.FAILED, error="moderation check failed")
    cmd = [PY, "-m", "pipeline", "status", str(out), "--json"]
    wall, rss, size = best_of(cmd, rounds, ENV, ok=(0, 1))  # 1: some jobs failed, as here
    # What the process pays before it reads anything: the interpreter and status's imports.
    start, _, _ = best_of([PY, "-c", "import pipeline.cli, pipeline.dataset.status"], rounds, ENV)
    # The document written in pieces must be the API's, byte for byte (checked once, untimed).
    shown = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=False).stdout
    same = shown == json.dumps(pipeline.status(out).as_dict()) + "\n"
    verdict = "PASS" if wall < 1.0 and same else "FAIL"
    return (f"1. status --json, {n} jobs: {wall:.3f} s (start-up and imports {start:.3f} s), "
            f"peak {rss:.0f} MB, {size / 1e6:.1f} MB of JSON, "
            f"{'the same as' if same else 'DIFFERENT from'} json.dumps(pipeline.status()) "
            f"(target < 1 s): {verdict}")  # fmt: skip


def make_matrix(folder: Path, base: str, concurrency: int) -> Path:
    images, videos = folder / "images", folder / "videos"
    images.mkdir(parents=True)
    videos.mkdir()
    make_image(folder / "a.png", 400, 600)
    make_video(folder / "clip.mp4", seconds=4, width=360, height=480, audio=False)
    for i in range(100):  # distinct bytes: distinct inputs, hashed and probed once each
        shutil.copyfile(folder / "a.png", images / f"c{i:03d}.png")
        with (images / f"c{i:03d}.png").open("ab") as fh:
            fh.write(f"#{i}".encode())
    for i in range(1000):
        shutil.copyfile(folder / "clip.mp4", videos / f"m{i:04d}.mp4")
        with (videos / f"m{i:04d}.mp4").open("ab") as fh:
            fh.write(f"#{i}".encode())
    path = folder / "big.yaml"
    path.write_text(
        "version: 1\nname: big\nprovider:\n  name: kie\n"
        f"  base_url: {base}\n  upload_url: {base}\n  concurrency: {concurrency}\n"
        "  poll_interval: 0.1\n  rate_limit: {requests: 100000, per_seconds: 1}\n"
        "matrix:\n  image: [images/*.png]\n  video: [videos/*.mp4]\n",
        encoding="utf-8",
    )
    return path


def part_plan(path: Path, rounds: int, env: dict[str, str]) -> str:
    cold, cold_rss, _ = best_of([PY, "-m", "pipeline", "plan", str(path)], 1, env)
    wall, rss, _ = best_of([PY, "-m", "pipeline", "plan", str(path)], rounds, env)
    jwall, jrss, jsize = best_of([PY, "-m", "pipeline", "plan", "--json", str(path)], rounds, env)
    verdict = "PASS" if max(wall, jwall) < 5 and max(rss, jrss) < 300 else "FAIL"
    return (f"2. plan of 100,000 jobs: warm {wall:.2f} s, peak {rss:.0f} MB; --json {jwall:.2f} s, "
            f"peak {jrss:.0f} MB, {jsize / 1e6:.0f} MB of JSON (cold first: {cold:.2f} s, "
            f"{cold_rss:.0f} MB) (target < 5 s, < 300 MB, both): {verdict}")  # fmt: skip


def vm(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def part_run(path: Path, seconds: float, env: dict[str, str]) -> list[str]:
    cmd = [PY, "-m", "pipeline", "run", str(path), "--no-progress"]
    started, wall_start = time.monotonic(), datetime.now(UTC)
    log = (path.parent / "run-stderr.txt").open("w+", encoding="utf-8")  # a pipe would fill up
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    peak_rss = peak_hwm = 0.0
    while proc.poll() is None and time.monotonic() - started < seconds:
        try:
            rss, hwm = vm(proc.pid)
        except (OSError, KeyError):
            break
        peak_rss, peak_hwm = max(peak_rss, rss), max(peak_hwm, hwm)
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # as a user's Ctrl-C: no new creates, exit 130
    stopped = time.monotonic()
    proc.wait(timeout=120)
    wall = time.monotonic() - started
    log.seek(0)
    err = log.read()[-300:]
    state = path.parent / "out" / "big" / "state.sqlite"
    with sqlite3.connect(state) as db:
        done, first, last = db.execute(
            "SELECT count(*), min(submitted_at), max(finished_at) FROM jobs WHERE state='done'"
        ).fetchone()
        total = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    first_at = datetime.fromisoformat(first)
    span = (datetime.fromisoformat(last) - first_at).total_seconds()
    before = (first_at - wall_start).total_seconds()
    verdict = "PASS" if peak_hwm < 300 else "FAIL"
    return [
        f"3. run of {total} jobs, stopped with SIGINT after {seconds:.0f} s (exit {proc.returncode}"
        f" {time.monotonic() - stopped:.1f} s later; {wall:.0f} s in all):",
        f"   {done} verified results, {done / span:.1f} jobs/s between the first submit and the "
        f"last result ({span:.0f} s); planning and registering before the first submit took "
        f"{before:.0f} s",
        f"   peak RSS sampled {peak_rss:.0f} MB, high-water mark {peak_hwm:.0f} MB "
        f"(target < 300 MB): {verdict}",
        *([f"   stderr: {err[-300:]}"] if proc.returncode not in (0, 130) else []),
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--skip-run", action="store_true")
    parser.add_argument("--skip-status", action="store_true")
    parser.add_argument("--skip-plan", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {load_average()} at start")
    with tempfile.TemporaryDirectory(prefix="scale-100k-") as tmp:
        folder = Path(tmp)
        env = {**ENV, "XDG_CACHE_HOME": str(folder / "cache")}  # a cache of this bench's own
        if not args.skip_status:
            print(part_status(folder, args.rounds), flush=True)
        if args.skip_plan and args.skip_run:  # the matrix's media and the sandbox serve only those
            print(f"load average {load_average()} at the end")
            return 0
        sandbox = Sandbox(folder)
        try:
            path = make_matrix(folder / "matrix", sandbox.url, args.concurrency)
            if not args.skip_plan:
                print(part_plan(path, args.rounds, env), flush=True)
            if not args.skip_run:
                print("\n".join(part_run(path, args.seconds, env)), flush=True)
        finally:
            sandbox.close()
    print(f"load average {load_average()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
