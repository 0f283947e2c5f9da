"""Probe and trim speed, measured in one run on this machine.

1. Probing 200 small files one at a time vs concurrently (probe_many, bounded by the CPU count).
   Target: >= 1.7x on 2 cores.
2. Cutting the same 30 s clip to the orientation-image limit by stream copy vs by re-encoding.
   Target: >= 10x.

Usage: .venv/bin/python bench/probe.py [--files 200] [--rounds 3]
Prints the figures and a Markdown block for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import mediagen

from pipeline.media.prepare import _run_ffmpeg, _video_output
from pipeline.media.probe import probe_file, probe_many
from pipeline.media.recipes import VideoRecipe
from pipeline.media.tools import MediaTools, find_tools


def _best(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_probe(tools: MediaTools, root: Path, count: int, rounds: int) -> tuple[float, float]:
    seeds = [
        mediagen.make_video(root / "seed0.mp4", seconds=3, width=360, height=480),
        mediagen.make_video(root / "seed1.mkv", seconds=4, width=480, height=360, audio=False),
        mediagen.make_video(root / "seed2.mov", seconds=3, width=400, height=400),
        mediagen.make_image(root / "seed3.png", 400, 600),
    ]
    files: list[Path | str] = []
    for i in range(count):
        seed = seeds[i % len(seeds)]
        copy = root / f"file{i:03d}{seed.suffix}"
        shutil.copyfile(seed, copy)
        files.append(copy)

    def sequential() -> None:
        for f in files:
            probe_file(f, tools)

    def concurrent() -> None:
        results = asyncio.run(probe_many(files, tools))
        assert all(not isinstance(r, Exception) for r in results)

    sequential()  # warm the page cache and the binaries once
    # Interleave the two so that load from other processes on a shared machine hits both alike.
    seq, conc = [], []
    for _ in range(rounds):
        seq.append(_best(1, sequential))
        conc.append(_best(1, concurrent))
    return min(seq), min(conc)


def bench_trim(tools: MediaTools, root: Path, rounds: int) -> tuple[float, float, float, float]:
    clip = mediagen.make_video(root / "long.mp4", seconds=30, width=480, height=640, fps=30)
    info = probe_file(clip, tools)
    recipe = VideoRecipe(end=9.75)  # what plan_media asks for a 30 s clip, orientation image
    measured: dict[bool, float] = {}

    def cut(copy: bool) -> None:
        out = root / f"cut-{copy}.mp4"
        _run_ffmpeg(_video_output(recipe, info, out, copy=copy), tools, 600, str(clip))
        measured[copy] = probe_file(out, tools).duration or 0.0

    copy_s = _best(rounds, lambda: cut(True))
    encode_s = _best(rounds, lambda: cut(False))
    return copy_s, encode_s, measured[True], measured[False]


def machine(tools: MediaTools) -> str:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    version = subprocess.run(
        [tools.ffmpeg, "-version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    return (
        f"nproc {os.cpu_count()}, CPU {cpu}, RAM {mem_kb / 1024**2:.1f} GiB, "
        f"Python {platform.python_version()}, {version.split(' Copyright')[0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tools = find_tools()
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        root = Path(tmp)
        seq, conc = bench_probe(tools, root, args.files, args.rounds)
        copy_s, encode_s, copy_d, encode_d = bench_trim(tools, root, args.rounds)
    probe_x, trim_x = seq / conc, encode_s / copy_s
    print(f"machine: {machine(tools)}")
    print(f"probe {args.files} files: one at a time {seq:.2f} s, concurrent {conc:.2f} s "
          f"-> {probe_x:.2f}x (target >= 1.7x)")  # fmt: skip
    print(f"trim 30 s clip to 9.75 s: stream copy {copy_s * 1000:.0f} ms ({copy_d:.3f} s out), "
          f"re-encode {encode_s * 1000:.0f} ms ({encode_d:.3f} s out) -> {trim_x:.1f}x "
          "(target >= 10x)")  # fmt: skip
    print()
    print("## probe.py\n")
    print(f"Machine: {machine(tools)}. Best of {args.rounds} rounds, same run.\n")
    print("| measure | one at a time / re-encode | concurrent / stream copy | speed-up | target |")
    print("|---|---|---|---|---|")
    print(f"| probe {args.files} files | {seq:.2f} s | {conc:.2f} s | {probe_x:.2f}x | >= 1.7x |")
    print(f"| trim 30 s 480x640 clip to 9.75 s | {encode_s:.2f} s | {copy_s:.3f} s "
          f"| {trim_x:.1f}x | >= 10x |")  # fmt: skip


if __name__ == "__main__":
    main()
