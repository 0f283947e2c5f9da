"""`motion-pipeline sandbox --instant`: the benchmarks start the instant sandbox as a process of
its own, so the flag must reach the server (every task done on its first poll, nothing fetched)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from batchkit import cli_env, command
from test_sandbox_helpers import KIE_KEY, kie_client, kie_create, kie_result_url, probe_bytes


def test_the_instant_flag_reaches_the_server(tmp_path: Path) -> None:
    argv = command("sandbox", "--port", "0", "--protocol", "kie", "--instant")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path)
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert base.startswith("http://127.0.0.1:")
        assert proc.stdout.readline().strip() == "protocols: kie"
        assert proc.stdout.readline().strip() == "instant mode: no media checks, no renders"
        with kie_client(base, KIE_KEY) as kie:
            nowhere = ("http://127.0.0.1:9/i.png", "http://127.0.0.1:9/v.mp4")  # never fetched
            task_id = kie_create(kie, *nowhere)
            record = kie.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
            assert record["data"]["state"] == "success"  # on the first poll
            clip = kie.get(kie_result_url(record["data"])).content
        assert probe_bytes(clip, tmp_path).video_codec == "h264"
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
    assert "sandbox stopped; 1 tasks accepted" in rest


def test_without_the_flag_tasks_take_the_real_path(tmp_path: Path) -> None:
    argv = command("sandbox", "--port", "0", "--protocol", "kie")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path)
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert proc.stdout.readline().strip() == "protocols: kie"
        with kie_client(base, KIE_KEY) as kie:
            task_id = kie_create(kie, "http://127.0.0.1:9/i.png", "http://127.0.0.1:9/v.mp4")
            record = kie.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).json()
            assert record["data"]["state"] in ("waiting", "fail")  # it fetches, and fails
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert "instant mode" not in rest
