"""The ``uploads`` table: which content (by sha256) was uploaded where, the URL it got, and
when that URL stops working. It is the UploadCache of :mod:`pipeline.storage.uploads`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.state.database import Database

if TYPE_CHECKING:
    from pipeline.storage.uploads import UploadCache


class UploadTable:
    """The ``uploads`` table as the UploadCache of :mod:`pipeline.storage.uploads`.

    Times are Unix timestamps (seconds). ``expires_at`` is when the stored URL stops working
    (NULL: it does not, or a row from before schema v3); :class:`~pipeline.storage.uploads.Storage`
    decides freshness from it.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(
        self, provider: str, endpoint: str, sha256: str
    ) -> tuple[str, float, float | None] | None:
        with self._db.locked():
            r = self._db.conn.execute(
                "SELECT url, uploaded_at, expires_at FROM uploads "
                "WHERE provider=? AND endpoint=? AND sha256=?",
                (provider, endpoint, sha256),
            ).fetchone()
        if r is None:
            return None
        return str(r[0]), float(r[1]), None if r[2] is None else float(r[2])

    def put(
        self,
        provider: str,
        endpoint: str,
        sha256: str,
        url: str,
        uploaded_at: float,
        expires_at: float | None = None,
    ) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO uploads (provider, endpoint, sha256, url, uploaded_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, endpoint, sha256) "
                "DO UPDATE SET url=excluded.url, uploaded_at=excluded.uploaded_at, "
                "expires_at=excluded.expires_at",
                (provider, endpoint, sha256, url, float(uploaded_at),
                 None if expires_at is None else float(expires_at)),
            )  # fmt: skip


if TYPE_CHECKING:  # mypy proves the uploads table is the cache pipeline.storage.uploads expects

    def _is_upload_cache(table: UploadTable) -> UploadCache:
        return table
