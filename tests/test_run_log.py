"""run.log tells the story of a run: every retry with its cause, pauses, refreshes, the end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from batchkit import (
    Media,
    cli,
    cli_env,
    job_entries,
    make_media,
    out_dir,
    provider_block,
    sandbox,
    write_manifest,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def test_every_retry_pause_and_refresh_is_logged_with_its_cause(
    media: Media, tmp_path: Path
) -> None:
    profile = {
        "faults": [
            {"kind": "rate_limit", "endpoint": "create", "times": 1, "retry_after": 0.2},
            {"kind": "server_error", "endpoint": "upload", "times": 1},
            {"kind": "malformed_json", "endpoint": "poll", "times": 1},
            {"kind": "expired_result", "times": 1},
        ]
    }
    with sandbox(tmp_path / "sb", profile) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv, concurrency=1),
            job_entries("kie", srv, media, ["a"]),
        )
        proc = cli("run", manifest, env=cli_env(MOTION_PIPELINE_NO_SLEEP="1"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (out_dir(manifest) / "run.log").read_text()
    assert re.search(
        r"job a: create: rate limited, every call pauses [\d.]+ s \(RateLimitedError.*Retry-After 0.2 s",
        log,
    )
    assert re.search(r"job a: upload: try 1 failed, again in [\d.]+ s \(\w+Error, HTTP 5\d\d", log)
    assert re.search(
        r"job a: task \S+: status query failed, again in [\d.]+ s \(BadReplyError", log
    )
    assert "job a: asking for a fresh result URL" in log
    last = log.strip().splitlines()[-1]
    assert "run finished: exit 0; this run paid 1 create, 3.50 s billed" in last, last


def test_a_429_pause_is_shown_with_when_it_ends(media: Media, tmp_path: Path) -> None:
    profile = {
        "faults": [{"kind": "rate_limit", "endpoint": "create", "times": 1, "retry_after": 3}]
    }
    with sandbox(tmp_path / "sb", profile) as (srv, _log):
        manifest = write_manifest(
            tmp_path / "m",
            provider_block("kie", srv, concurrency=1),
            job_entries("kie", srv, media, ["a"]),
        )
        proc = cli("run", manifest)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"waiting: 429 pause: the provider asked to slow down.*until", proc.stderr), (
        proc.stderr
    )
