"""A password in a provider URL's userinfo is never stored: the upload cache keys on the public URL.

The manifest may point ``base_url``/``upload_url`` at a proxy as ``https://user:pass@host``; the
state file records upload endpoints, and must hold neither the password nor the user part.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from test_storage import RecordingUploads

from pipeline.providers.base import Credentials, ProviderConfig
from pipeline.settings import redact, url_secrets
from pipeline.state.database import state_path
from pipeline.state.store import StateStore
from pipeline.storage.uploads import LocalFile, Storage

PASSWORD = "pr0xy-Passw0rd"
UPLOAD_URL = f"https://bob:{PASSWORD}@up.proxy.example:8443/kie"
CONFIG = ProviderConfig("fake", "m", f"https://bob:{PASSWORD}@api.proxy.example", UPLOAD_URL)


def test_upload_cache_in_the_state_never_holds_the_url_password(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"a" * 64)
    provider = RecordingUploads(CONFIG, Credentials(), None)  # type: ignore[arg-type]
    out = tmp_path / "out"
    with StateStore.open(out) as state:
        storage = Storage(provider, CONFIG, state.uploads, clock=lambda: 1000.0)
        first = asyncio.run(storage.url_for(LocalFile(image, "image/png"), job_id="j1"))
        again = Storage(provider, CONFIG, state.uploads, clock=lambda: 1001.0)
        assert asyncio.run(again.url_for(LocalFile(image, "image/png"), job_id="j2")) == first
    assert len(provider.calls) == 1  # the cache still works under the public key
    with contextlib.closing(sqlite3.connect(state_path(out))) as conn:
        endpoints = [r[0] for r in conn.execute("SELECT endpoint FROM uploads")]
    assert endpoints == ["https://up.proxy.example:8443/kie"]
    for path in out.iterdir():  # every byte of the state, WAL included if any is left
        data = path.read_bytes()
        assert PASSWORD.encode() not in data and b"bob:" not in data, path


def test_the_url_password_is_a_secret_for_redaction() -> None:
    secrets = url_secrets(CONFIG.base_url, CONFIG.upload_url)
    assert secrets == [PASSWORD]
    assert redact(f"proxy refused {PASSWORD[:10]}...", secrets) == "proxy refused ***..."
