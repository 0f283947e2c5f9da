"""What the benchmarks share: a free loopback port, the Kie manifest of N jobs they run, and the
package's bytecode compiled the way an installed wheel has it.

Every benchmark batch is the same shape: one image and one clip (``a.png``, ``clip.mp4`` beside
the manifest), N jobs told apart by their prompt (distinct keys, so no job is adopted from
another), and a create rate no benchmark is meant to hit.
"""

from __future__ import annotations

import compileall
import socket
from collections.abc import Sequence
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"


def compile_package() -> None:
    """Write the package's .pyc files, as installing a wheel does.

    An editable checkout run with PYTHONDONTWRITEBYTECODE=1 (this sandbox sets it) compiles
    every module at every start, about 0.2 s a process, while the plain client's httpx comes
    compiled from site-packages: a cost no installed copy pays, charged to one side only.
    """
    compileall.compile_dir(PACKAGE, quiet=1, force=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kie_manifest(
    folder: Path,
    name: str,
    base: str,
    jobs: int,
    *,
    concurrency: int,
    poll_interval: float,
    extra: Sequence[str] = (),
) -> Path:
    """``folder/name.yaml``: N jobs against the Kie protocol at ``base``; ``extra`` lines go
    between the provider block and the jobs (``output_dir``, a ``callback`` block)."""
    lines = [
        "version: 1",
        f"name: {name}",
        "provider:",
        "  name: kie",
        f"  base_url: {base}",
        f"  upload_url: {base}",
        f"  concurrency: {concurrency}",
        f"  poll_interval: {poll_interval}",
        "  rate_limit: {requests: 100000, per_seconds: 1}",
        *extra,
        "jobs:",
    ]
    for n in range(jobs):
        lines.append(f"  - {{id: j{n:05d}, image: a.png, video: clip.mp4, prompt: 'take {n}'}}")
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
