"""The runner's own cost against a server that is not the bottleneck (issue 12, part 1).

The sandbox runs as its own process in instant mode (`motion-pipeline sandbox --instant`: no
renders, no media checks, every task done on its first poll, one canned clip from memory). For
each N, alternating pairs, each a whole process: the plain httpx client (bench/plain_client.py:
2 uploads, then per job create, poll until success, download; nothing else), and
`motion-pipeline run` of the same N jobs (plan, state, verified downloads with ffprobe, sha256,
fsync, metadata); every other pair runs the runner first (ABBA), so a machine that speeds up or
slows down meanwhile favours neither side. Target: run <= 1.2x plain (best of each side), for
N = 400 and 2,000 at concurrency 32; the median of the pairs' ratios is printed too.

Per process: wall seconds (process start included), CPU seconds (user + sys of the child and
its children, ffprobe included), and the server's CPU seconds over the same span, read from
/proc: a server using well under one core is not what the client waits for.

    .venv/bin/python bench/runner_overhead.py [--jobs 400 2000] [--pairs 3] [--concurrency 32]
        [--poll 0.1] [--runner-only] [--prefix 'py-spy record -o x.txt -f raw -- python']
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchkit import compile_package, free_port, kie_manifest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mediagen import make_image, make_video  # noqa: E402 - needs the sys.path entry above

PY = sys.executable
ENV = {**os.environ, "KIE_API_KEY": "bench-key", "PYTHONUNBUFFERED": "1"}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (its own threads, not children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Sandbox:
    """`motion-pipeline sandbox --instant` in its own process: it does not share our GIL."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [PY, "-m", "pipeline", "sandbox", "--port", str(self.port), "--protocol", "kie",
             "--instant"],
            stdout=subprocess.PIPE, text=True, env=ENV, cwd=folder,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, line
        self.url = line.split()[-1]
        rest = [self.proc.stdout.readline() for _ in range(2)]
        assert any("instant mode" in r for r in rest), rest

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # the child's user + sys, its own children (ffprobe) included
    server_cpu: float
    requests: int
    rss_mb: float
    stdout: str

    @property
    def server_load(self) -> float:
        """Share of one core the server used while this client ran."""
        return self.server_cpu / self.wall


WRAPPER = (
    "import resource,subprocess,sys,time;"
    "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
    "w=time.perf_counter()-t;u=resource.getrusage(resource.RUSAGE_CHILDREN);"
    "sys.stdout.write(p.stdout);sys.stderr.write(p.stderr[-3000:]);"
    "print(f'@@{w} {u.ru_utime+u.ru_stime} {u.ru_maxrss} {p.returncode}')"
)


def timed(cmd: list[str], sandbox: Sandbox) -> Timing:
    before = sandbox.cpu()
    proc = subprocess.run([PY, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=ENV,
                          check=False)  # fmt: skip
    server = sandbox.cpu() - before
    body, tail = proc.stdout.rsplit("@@", 1)
    wall, cpu, rss, code = tail.split()
    if int(code) != 0:
        raise SystemExit(f"{cmd} failed ({code}):\n{body[-2000:]}\n{proc.stderr[-2000:]}")
    return Timing(float(wall), float(cpu), server, requests_in(body), int(rss) / 1024, body)


def requests_in(stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("requests:"):  # the runner's summary
            return int(line.split()[1])
        if line.startswith("{"):  # the plain client's one JSON line
            return int(json.loads(line)["requests"])
    return 0  # a run with nothing to send prints no request line


def manifest(folder: Path, name: str, base: str, jobs: int, concurrency: int, poll: float) -> Path:
    return kie_manifest(folder, name, base, jobs, concurrency=concurrency, poll_interval=poll,
                        extra=[f"output_dir: out-{name}"])  # fmt: skip


def plain_cmd(folder: Path, base: str, jobs: int, conc: int, poll: float, tag: str) -> list[str]:
    return [PY, str(ROOT / "bench" / "plain_client.py"), base, str(jobs), str(conc),
            str(poll), str(folder / "a.png"), str(folder / "clip.mp4"),
            str(folder / f"plain-{tag}")]  # fmt: skip


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def line(label: str, t: Timing, jobs: int) -> str:
    return (
        f"  {label:<6} wall {t.wall:6.2f} s  cpu {t.cpu:6.2f} s  {t.requests / t.wall:6.0f} req/s "
        f"({t.requests / jobs:.2f}/job)  peak {t.rss_mb:4.0f} MB  server {t.server_load:4.0%} "
        "of a core"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[400, 2000])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--runner-only", action="store_true", help="no plain client (profiling)")
    parser.add_argument("--prefix", default="", help="instead of python for the runner (profiling)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args()
    compile_package()
    print(f"{os.cpu_count()} CPUs, load average {load_average()} at start")
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        make_image(folder / "a.png", 400, 600)
        make_video(folder / "clip.mp4", seconds=4, width=360, height=480, audio=False)
        sandbox = Sandbox(folder)
        verdicts: list[bool] = []
        try:
            for jobs in args.jobs:
                print(f"N={jobs}, concurrency {args.concurrency}, poll_interval {args.poll}")
                best_plain = best_run = float("inf")
                ratios: list[float] = []
                for pair in range(args.pairs):
                    tag = f"{jobs}-{pair}-{time.time_ns()}"
                    path = manifest(folder, f"r{tag}", sandbox.url, jobs, args.concurrency,
                                    args.poll)  # fmt: skip
                    run_cmd = [*(shlex.split(args.prefix) or [PY]), "-m", "pipeline", "run",
                               str(path), "--no-progress"]  # fmt: skip
                    plain_args = plain_cmd(folder, sandbox.url, jobs, args.concurrency, args.poll,
                                           tag)  # fmt: skip
                    # ABBA: every other pair runs the runner first, so a machine that speeds up
                    # or slows down during the run does not favour the side that goes first.
                    order = ["plain", "run"] if pair % 2 == 0 else ["run", "plain"]
                    if args.runner_only:
                        order = ["run"]
                    timings: dict[str, Timing] = {}
                    for side in order:
                        timings[side] = timed(plain_args if side == "plain" else run_cmd, sandbox)
                        print(line(side, timings[side], jobs))
                    best_run = min(best_run, timings["run"].wall)
                    if not args.runner_only:
                        plain, run = timings["plain"], timings["run"]
                        best_plain = min(best_plain, plain.wall)
                        ratios.append(run.wall / plain.wall)
                        cpu = run.cpu / plain.cpu
                        print(f"  pair {pair + 1} ({order[0]} first): ratio {ratios[-1]:.2f} "
                              f"(cpu {cpu:.2f}), load {load_average()}")  # fmt: skip
                if not args.runner_only:
                    ratio = best_run / best_plain
                    verdicts.append(ratio <= 1.2)
                    verdict = "PASS" if ratio <= 1.2 else "FAIL"
                    print(f"  best of {args.pairs}: plain {best_plain:.2f} s, run {best_run:.2f} s"
                          f", ratio {ratio:.2f} (target <= 1.2): {verdict}; median pair ratio "
                          f"{statistics.median(ratios):.2f}")  # fmt: skip
        finally:
            sandbox.close()
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
