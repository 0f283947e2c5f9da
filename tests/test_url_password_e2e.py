"""A password in base_url / upload_url is refused before anything is sent, and never printed.

httpx would send URL credentials as Basic auth in place of the provider's own Authorization
header, so they cannot work; the refusal says so and shows the URL without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from batchkit import cli, job_entries, make_media, out_dir, provider_block, sandbox, write_manifest

PASSWORD = "pw-SECRET-7f3a9c"


@pytest.mark.parametrize("field", ["base_url", "upload_url"])
def test_url_credentials_are_refused_and_never_echoed(field: str, tmp_path: Path) -> None:
    media = make_media(tmp_path / "media")
    with sandbox(tmp_path / "sb") as (srv, _log):
        url = srv.base_url.replace("http://", f"http://proxyuser:{PASSWORD}@")
        provider = provider_block("kie", srv, **{field: url})
        manifest = write_manifest(tmp_path / "m", provider, job_entries("kie", srv, media, ["a"]))
        for command in ("validate", "plan", "run"):
            proc = cli(command, manifest)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert f"$.provider.{field}" in proc.stderr and "HTTPS_PROXY" in proc.stderr
            assert PASSWORD not in proc.stdout + proc.stderr
        assert len(srv.ledger) == 0
    output = out_dir(manifest)
    for path in output.rglob("*") if output.exists() else []:
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
