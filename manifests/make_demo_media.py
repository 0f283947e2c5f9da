"""Make the demo's input media with ffmpeg (synthetic, so the repository ships no binaries).

Run by `make demo` before the batch; does nothing when the files already exist.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.media.tools import find_tools

HERE = Path(__file__).parent / "demo"

# (file, ffmpeg arguments after the inputs): a character card, a short and a long driving clip.
MEDIA = {
    "character.png": [
        "-f", "lavfi", "-i", "color=c=0x2b3a55:s=480x720",
        "-vf", "drawbox=x=190:y=80:w=100:h=100:c=0xf2c9a0:t=fill,"
        "drawbox=x=160:y=190:w=160:h=260:c=0xd9534f:t=fill,"
        "drawbox=x=170:y=450:w=60:h=220:c=0x1f2a44:t=fill,"
        "drawbox=x=250:y=450:w=60:h=220:c=0x1f2a44:t=fill",
        "-frames:v", "1",
    ],
    "dance_4s.mp4": [
        "-f", "lavfi", "-i", "testsrc2=s=480x640:r=24:d=4",
        "-f", "lavfi", "-i", "sine=f=330:d=4",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
    ],
    "walk_12s.mp4": [
        "-f", "lavfi", "-i", "testsrc=s=640x480:r=24:d=12",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "24",
    ],
}  # fmt: skip


def main() -> int:
    ffmpeg = find_tools().ffmpeg
    HERE.mkdir(exist_ok=True)
    for name, args in MEDIA.items():
        target = HERE / name
        if target.exists():
            continue
        tmp = target.with_name(f".tmp-{name}")
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *args, str(tmp)]
        subprocess.run(cmd, check=True)
        tmp.replace(target)
        print(f"made {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
