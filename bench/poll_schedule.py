"""Polls per job and end->poll lateness: the learned schedule against the old rhythm (issue 12).

Each variant runs one batch through the real CLI (``python -m pipeline run``, its own process)
against a sandbox in this process, whose tasks take a fixed time or a log-normal one
(``latency.seconds`` / ``latency.spread``). The sandbox knows when each task ended
(:meth:`TaskStore.ended_at`) and when every status query about it came (``Task.polled_at``), so
the figures come from the server's side, not from the runner's word:

- polls/job: status queries per task (the mean);
- lateness: from a task's end to the first query after it (median and p90).

Variants: ``rhythm`` (the old behaviour, ``MOTION_PIPELINE_POLL_SCHEDULE=rhythm``), ``learned``
(the schedule of pipeline/run/schedule.py) and ``callbacks`` (learned, plus a ``callback`` block:
the sandbox calls the runner's listener when a task ends).

    .venv/bin/python bench/poll_schedule.py [--jobs 200] [--lognormal-jobs 60] [--only fixed]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import free_port, kie_manifest

from pipeline.sandbox import FaultProfile, SandboxKeys, SandboxServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mediagen import make_image, make_video  # noqa: E402 - needs the sys.path entry above

KEY = "bench-key"
VARIANTS = ("rhythm", "learned", "callbacks")


def manifest(folder: Path, name: str, base: str, jobs: int, concurrency: int, hook: bool) -> Path:
    extra: list[str] = []
    if hook:
        port = free_port()
        extra = ["callback:", f"  url: http://127.0.0.1:{port}/hook", f"  listen: 127.0.0.1:{port}"]
    return kie_manifest(folder, name, base, jobs, concurrency=concurrency, poll_interval=1,
                        extra=extra)  # fmt: skip


def measure(server: SandboxServer) -> dict[str, float]:
    store, latency = server.app.store, server.app.latency("kie")
    polls: list[int] = []
    late: list[float] = []
    for entry in server.ledger:
        task = store.get(entry.protocol, entry.task_id)
        if task is None:
            continue
        ended = store.ended_at(task, latency)
        after = [t for t in task.polled_at if ended is not None and t >= ended]
        polls.append(len(task.polled_at))
        if after and ended is not None:
            late.append(min(after) - ended)
    late.sort()
    return {
        "tasks": len(polls),
        "polls_per_job": statistics.fmean(polls) if polls else 0.0,
        "late_median": statistics.median(late) if late else float("nan"),
        "late_p90": late[int(0.9 * (len(late) - 1))] if late else float("nan"),
        "unseen": len(polls) - len(late),
    }


def run_variant(
    folder: Path, profile: dict[str, object], variant: str, jobs: int, concurrency: int
) -> dict[str, float]:
    with SandboxServer(
        keys=SandboxKeys(kie=KEY), faults=FaultProfile.from_dict(profile), protocols=("kie",),
        data_dir=folder / f"sandbox-{variant}",
    ) as server:  # fmt: skip
        name = f"bench-{variant}-{int(time.time() * 1000) % 10**8}"
        path = manifest(folder, name, server.base_url, jobs, concurrency, variant == "callbacks")
        env = {**os.environ, "KIE_API_KEY": KEY}
        if variant == "rhythm":
            env["MOTION_PIPELINE_POLL_SCHEDULE"] = "rhythm"
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(path), "--no-progress"],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"{variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        figures = measure(server)
        figures["wall"] = wall
        figures["callbacks"] = sum(1 for c in server.callbacks if c.delivered)
        return figures


def report(title: str, rows: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"## {title}", "", "| variant | tasks | polls/job | end->poll median s | p90 s |"
             " callbacks delivered | wall s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for variant, f in rows.items():
        lines.append(
            f"| {variant} | {f['tasks']:.0f} | {f['polls_per_job']:.2f} | {f['late_median']:.2f}"
            f" | {f['late_p90']:.2f} | {f['callbacks']:.0f} | {f['wall']:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--lognormal-jobs", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--only", choices=("fixed", "lognormal"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory(prefix="mp-bench-poll-") as tmp:
        folder = Path(tmp)
        make_image(folder / "a.png", 400, 600)
        make_video(folder / "clip.mp4", seconds=3.5, width=360, height=480, fps=10)
        suites = {
            "fixed": ({"latency": {"seconds": 12}}, args.jobs,
                      f"tasks of a fixed 12 s, {args.jobs} jobs"),
            "lognormal": ({"latency": {"seconds": 60, "spread": 0.4}, "seed": 7},
                          args.lognormal_jobs,
                          f"tasks log-normal around 60 s (sigma 0.4), {args.lognormal_jobs} jobs"),
        }  # fmt: skip
        for suite, (profile, jobs, title) in suites.items():
            if args.only and suite != args.only:
                continue
            rows = {}
            for variant in variants:
                rows[variant] = run_variant(folder, profile, variant, jobs, args.concurrency)
                print(variant, rows[variant], flush=True)
            print("\n".join(report(f"{title}, concurrency {args.concurrency}", rows)), flush=True)


if __name__ == "__main__":
    main()
