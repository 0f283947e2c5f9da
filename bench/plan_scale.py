"""validate + plan --json of a 10,000-job matrix (100 images x 100 videos).

Target (issue 2): under 2 s and under 200 MB peak RSS for the warm run (input hashing cached),
on a 2-core machine. Baselines measured in the same run: the interpreter start-up with the
package imported (the floor any command pays), and a cold run with no cache.

Also measures the alias-bomb manifest (target: refused in under 1 s and 100 MB).

    .venv/bin/python bench/plan_scale.py [--images 100] [--videos 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mediagen import make_image, make_video  # noqa: E402 - needs the sys.path entry above


def run(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
    """Wall seconds and peak RSS (MB) of one child process."""
    # RUSAGE_CHILDREN keeps the max over all children so far: run each measurement in a fresh
    # intermediate process so the figure belongs to this command alone.
    wrapper = (
        "import resource,subprocess,sys,time;"
        "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True);"
        "w=time.perf_counter()-t;"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "sys.stderr.buffer.write(p.stderr);sys.stdout.buffer.write(p.stdout);"
        "print(f'\\n@@{w} {r} {p.returncode}',file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, check=False)
    tail = proc.stderr.decode().rsplit("@@", 1)[1].split()
    wall, rss_kb, code = float(tail[0]), int(tail[1]), int(tail[2])
    return wall, rss_kb / 1024, subprocess.CompletedProcess(cmd, code, proc.stdout, proc.stderr)


def make_inputs(folder: Path, images: int, videos: int) -> None:
    """Distinct small files: one real image/clip each, with distinct trailing bytes."""
    seed_img = make_image(folder / "seed.png", 400, 600)
    seed_vid = make_video(folder / "seed.mp4", seconds=4, width=360, height=480, audio=False)
    (folder / "images").mkdir()
    (folder / "videos").mkdir()
    for i in range(images):
        target = folder / "images" / f"char{i:03d}.png"
        shutil.copyfile(seed_img, target)
        with target.open("ab") as fh:  # bytes after IEND: still the same picture, another hash
            fh.write(f"#{i}".encode())
    for i in range(videos):
        target = folder / "videos" / f"move{i:03d}.mp4"
        shutil.copyfile(seed_vid, target)
        with target.open("ab") as fh:
            fh.write(f"#{i}".encode())
    seed_img.unlink()
    seed_vid.unlink()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--videos", type=int, default=100)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "pipeline"]
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        folder = Path(tmp)
        make_inputs(folder, args.images, args.videos)
        manifest = folder / "matrix.yaml"
        manifest.write_text(
            "version: 1\nname: scale\nprovider: kie\n"
            "budget: {price_per_second: {std: 0.07, pro: 0.11}}\n"
            "matrix:\n  image: [images/*.png]\n  video: [videos/*.mp4]\n",
            encoding="utf-8",
        )
        jobs = args.images * args.videos
        floor, floor_rss, _ = run([*cli[:-2], "-c", "import pipeline.cli"])
        rows = [("python + import pipeline.cli (floor)", floor, floor_rss, "")]
        # The first command probes and hashes the 200 inputs (cold); later ones read the caches.
        for label in ("validate (cold: hashes and probes 200 files)", "validate (warm)"):
            wall, rss, proc = run([*cli, "validate", str(manifest)])
            assert proc.returncode == 0, proc.stderr.decode()
            rows.append((label, wall, rss, ""))
        wall, rss, proc = run([*cli, "plan", "--json", str(manifest)])
        assert proc.returncode == 0, proc.stderr.decode()
        assert len(json.loads(proc.stdout)["jobs"]) == jobs
        rows.append(("plan --json (warm)", wall, rss, f"{len(proc.stdout) / 1e6:.1f} MB json"))
        bomb = folder / "bomb.yaml"
        bomb.write_text(
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
                for i in range(8)
            ),
            encoding="utf-8",
        )
        wall, rss, proc = run([*cli, "validate", str(bomb)])
        assert proc.returncode == 2
        rows.append(("validate alias bomb (10^9 nodes)", wall, rss, "refused"))

    print(f"{jobs} jobs ({args.images} images x {args.videos} videos), {os.cpu_count()} CPUs")
    print(f"{'step':<46} {'wall s':>8} {'peak MB':>8}")
    for label, wall, rss, note in rows:
        print(f"{label:<46} {wall:>8.3f} {rss:>8.1f}  {note}")
    validate_s = rows[2][1]
    warm_s = rows[3][1]
    total = validate_s + warm_s
    peak = max(row[2] for row in rows[1:4])
    verdict = "PASS" if total < 2.0 and peak < 200 else "FAIL"
    print(
        f"warm validate + plan --json: {total:.3f} s, peak {peak:.1f} MB "
        f"(target < 2 s, < 200 MB): {verdict}"
    )
    print(f"above the interpreter floor: {total - 2 * floor:.3f} s")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
