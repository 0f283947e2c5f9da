"""End to end: AceData and Kling batches from local files through a real S3 server.

The real CLI (``python -m pipeline run``) against the real sandbox, whose tasks fetch the
presigned URLs from moto's S3 server over loopback exactly as a provider would; inputs include
an mkv (converted), a clip longer than the limit (trimmed) and one too small (scaled). A rerun
makes no create and no PUT; a URL that expired while a create waited is signed again before the
create goes; a missing bucket or missing credentials stop the run before anything is spent; the
AWS secret never reaches a file, a log or the terminal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchkit import (
    cli,
    cli_env,
    creates,
    metadata,
    out_dir,
    provider_block,
    sandbox,
    state_rows,
    write_manifest,
)
from mediagen import make_image, make_video
from s3kit import (
    SECRET_KEY,
    SESSION_TOKEN,
    S3Server,
    aws_env,
    files_under,
    s3_server,
    storage_block,
)

RUN_DIR = Path(__file__).parent.parent / "pipeline" / "run"


def _runner_calls_storage() -> bool:
    """Whether the runner builds the run's Storage with the manifest's bucket and renews URLs
    before creates (the calls the storage work asks the runner to make)."""
    text = "".join(p.read_text(encoding="utf-8") for p in RUN_DIR.glob("*.py"))
    return all(name in text for name in ("storage_for_run", "ensure_fresh", "storage_secrets"))


pytestmark = pytest.mark.skipif(
    not _runner_calls_storage(),
    reason="pipeline/run does not call storage_for_run/ensure_fresh/storage_secrets yet",
)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def media(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "media"
    return {
        "image": make_image(folder / "char.png", 400, 600),
        "mkv": make_video(folder / "clip.mkv", seconds=3.5, width=360, height=480, fps=10),
        "long": make_video(folder / "long.mp4", seconds=12.0, width=360, height=480, fps=10),
        "small": make_video(folder / "small.mp4", seconds=3.5, width=300, height=330, fps=10),
    }


def env() -> dict[str, str]:
    return cli_env(**aws_env())


def jobs_for(media: dict[str, Path]) -> list[dict[str, Any]]:
    return [
        {
            "id": name,
            "image": str(media["image"]),
            "video": str(media[name]),
            "prompt": f"job {name}",
        }
        for name in ("mkv", "long", "small")
    ]


def no_secret_anywhere(output: Path, *texts: str) -> None:
    for text in texts:
        assert SECRET_KEY not in text and SESSION_TOKEN not in text
    for path in files_under(output):
        data = path.read_bytes()
        assert SECRET_KEY.encode() not in data, path
        assert SESSION_TOKEN.encode() not in data, path


@pytest.mark.parametrize("kind", ["acedata", "kling"])
def test_local_files_through_the_bucket_and_a_rerun_writes_nothing(
    kind: str, s3: S3Server, media: dict[str, Path], tmp_path: Path
) -> None:
    bucket = s3.make_bucket(kind)
    with sandbox(tmp_path / "sb") as (srv, _log):
        doc = write_manifest(
            tmp_path / "m", provider_block(kind, srv), jobs_for(media), name=f"{kind}-s3"
        )
        text = doc.read_text(encoding="utf-8")
        import yaml

        manifest = yaml.safe_load(text)
        manifest["storage"] = storage_block(s3, bucket)
        doc.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")

        first = cli("run", doc, env=env())
        assert first.returncode == 0, first.stdout + first.stderr
        assert creates(srv) == {"mkv": 1, "long": 1, "small": 1}
        for entry in srv.ledger:
            urls = [entry.body.get("image_url"), entry.body.get("video_url")]
            assert all(str(u).startswith(f"{s3.endpoint}/{bucket}/") for u in urls), urls
        puts = s3.puts(bucket)
        assert len(puts) == 4  # one shared image, three prepared videos

        second = cli("run", doc, env=env())
        assert second.returncode == 0, second.stdout + second.stderr
        assert creates(srv) == {"mkv": 1, "long": 1, "small": 1}  # no create
        assert s3.puts(bucket) == puts  # no PUT

    objects = s3.objects(bucket)
    assert len(objects) == 4
    for key, data in objects.items():  # content-addressed: each key names its bytes' sha256
        assert key.startswith(f"motion-pipeline/{kind}-s3/")
        assert Path(key).stem == hashlib.sha256(data).hexdigest()
    # The provider fetched the prepared files: mp4 (the mkv converted), trimmed, scaled.
    fetched = [s for s in s3.requests(["GET"]) if s.presigned and s.path.startswith(f"/{bucket}/")]
    assert fetched and all(s.status == 200 for s in fetched)
    assert all(Path(k).suffix in {".png", ".mp4"} for k in objects)
    rows = state_rows(out_dir(doc))
    assert {r["state"] for r in rows.values()} == {"done"}
    assert len(metadata(out_dir(doc))) == 3
    # The lock file says where the provider was handed the inputs from (never a credential).
    lock = json.loads((out_dir(doc) / "motion-pipeline.lock.json").read_text(encoding="utf-8"))
    assert lock["storage"] == {
        "kind": "s3", "bucket": bucket, "prefix": f"motion-pipeline/{kind}-s3/",
        "endpoint_url": s3.endpoint, "region": lock["storage"]["region"], "url_expires": 3600,
    }  # fmt: skip
    no_secret_anywhere(out_dir(doc), first.stdout, first.stderr, second.stdout, second.stderr)


def test_an_url_that_expired_while_a_create_waited_is_signed_again(
    s3: S3Server, media: dict[str, Path], tmp_path: Path
) -> None:
    bucket = s3.make_bucket("late")
    # The first create is answered 429 with Retry-After 5: the URLs signed for it (3 s) have
    # expired when the create is sent again; the sandbox fetches what the create carries.
    profile = {
        "faults": [{"kind": "rate_limit", "endpoint": "create", "times": 1, "retry_after": 5}]
    }
    with sandbox(tmp_path / "sb", profile) as (srv, _log):
        job = {"id": "late", "image": str(media["image"]), "video": str(media["mkv"]),
               "prompt": "job late"}  # fmt: skip
        doc = write_manifest(tmp_path / "m", provider_block("kling", srv), [job], name="late")
        import yaml

        manifest = yaml.safe_load(doc.read_text(encoding="utf-8"))
        manifest["storage"] = storage_block(s3, bucket, url_expires=3)
        doc.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
        done = cli("run", doc, env=env())
        assert done.returncode == 0, done.stdout + done.stderr
        assert creates(srv) == {"late": 1}
    refused = [s for s in s3.requests(["GET"]) if s.presigned and s.status == 403]
    assert refused == []  # the sandbox never met an expired URL
    rows = state_rows(out_dir(doc))
    assert rows["late"]["state"] == "done"


def test_a_missing_bucket_stops_the_run_before_any_create(
    s3: S3Server, media: dict[str, Path], tmp_path: Path
) -> None:
    with sandbox(tmp_path / "sb") as (srv, _log):
        doc = write_manifest(tmp_path / "m", provider_block("acedata", srv), jobs_for(media)[:1])
        import yaml

        manifest = yaml.safe_load(doc.read_text(encoding="utf-8"))
        manifest["storage"] = storage_block(s3, "mp-never-made-1")
        doc.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
        proc = cli("run", doc, env=env())
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "bucket 'mp-never-made-1' does not exist" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(srv.ledger) == 0


def test_missing_aws_credentials_are_an_exit_2_before_anything(
    s3: S3Server, media: dict[str, Path], tmp_path: Path
) -> None:
    bucket = s3.make_bucket("nocreds")
    with sandbox(tmp_path / "sb") as (srv, _log):
        doc = write_manifest(tmp_path / "m", provider_block("kling", srv), jobs_for(media)[:1])
        import yaml

        manifest = yaml.safe_load(doc.read_text(encoding="utf-8"))
        manifest["storage"] = storage_block(s3, bucket)
        doc.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
        bare = {
            k: v
            for k, v in aws_env().items()
            if not k.startswith(("AWS_ACCESS", "AWS_SECRET", "AWS_SESSION"))
        }
        run_env = {
            k: v
            for k, v in cli_env(**bare).items()
            if not k.startswith(("AWS_ACCESS", "AWS_SECRET", "AWS_SESSION"))
        }
        run_env["HOME"] = str(tmp_path)
        proc = cli("run", doc, env=run_env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "AWS_ACCESS_KEY_ID" in proc.stderr and "Traceback" not in proc.stderr
        assert len(srv.ledger) == 0 and s3.puts(bucket) == []
