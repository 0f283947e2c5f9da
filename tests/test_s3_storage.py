"""Storage with the manifest's bucket, against a real S3 server (moto, server mode, loopback).

Content-addressed private objects, HEAD before PUT (a rerun or a crash between the PUT and the
state commit writes nothing), presigned GET URLs that a provider-like fetch (urllib, as the
sandbox does) can read, expiry and re-signing, and every S3 failure as the pipeline's error tree
with the bucket named and no secret in the text.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from s3kit import ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, S3Server, aws_env, s3_server

from pipeline import providers
from pipeline.errors import (
    AuthError,
    ConfigError,
    InputError,
    MissingKeyError,
    PipelineError,
    TransientError,
    UnreachableError,
)
from pipeline.manifest.model import StorageConfig
from pipeline.providers.base import Credentials, ProviderConfig
from pipeline.settings import Settings
from pipeline.state.store import StateStore
from pipeline.storage.aws import storage_secrets
from pipeline.storage.s3 import S3Bucket
from pipeline.storage.uploads import LocalFile, MemoryUploadCache, Storage, UploadCache

SETTINGS = Settings.from_env(aws_env())


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with s3_server() as srv:
        yield srv


@pytest.fixture
def image(tmp_path: Path) -> LocalFile:
    path = tmp_path / "alice.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"alice" * 2000)
    return LocalFile(path, "image/png")


def config_of(server: S3Server, bucket: str, **extra: object) -> StorageConfig:
    return StorageConfig(
        bucket=bucket,
        prefix="runs/set-1/",
        endpoint_url=server.endpoint,
        **extra,  # type: ignore[arg-type]
    )


def storage(
    server: S3Server,
    bucket: str,
    *,
    cache: UploadCache | None = None,
    provider: str = "acedata",
    settings: Settings = SETTINGS,
    **extra: object,
) -> Storage:
    cls = providers.get(provider)
    config = ProviderConfig(provider, cls.default_model, "http://127.0.0.1:9", "http://127.0.0.1:9")
    client = httpx.AsyncClient()  # never used: files go to the bucket, not to the provider
    instance = cls(config, Credentials({"api_key": "k" * 16}), client)
    bucket_obj = S3Bucket(config_of(server, bucket, **extra), settings)
    return Storage(instance, config, cache or MemoryUploadCache(), bucket=bucket_obj)


def fetch(url: str) -> bytes:
    """What a provider does with the URL: a plain GET, no credentials."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        data: bytes = response.read()
        return data


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_becomes_a_private_content_addressed_object_and_a_working_url(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    before = time.time()
    url = asyncio.run(storage(server, bucket).url_for(image, job_id="j1"))
    key = f"runs/set-1/{sha(image.path)}.png"
    assert server.objects(bucket) == {key: image.path.read_bytes()}
    assert url.url.startswith(f"{server.endpoint}/{bucket}/{key}?")
    assert "X-Amz-Signature=" in url.url and SECRET_KEY not in url.url
    # Dated to the whole second the signature carries (X-Amz-Date), as the server counts it.
    assert url.expires_at is not None
    assert math.floor(before) + 3600 <= url.expires_at <= time.time() + 3600
    assert fetch(url.url) == image.path.read_bytes()
    head = server.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "image/png" and head["Metadata"] == {"sha256": sha(image.path)}
    # Private: moto enforces no ACLs, so privacy is checked on the wire: no ACL, no public
    # policy is ever asked for (the bucket is the user's; only presigned GETs are handed out).
    assert not [s for s in server.layer.log if "acl" in s.path.lower() or "policy" in s.path]


def test_jobs_sharing_a_file_upload_it_once(server: S3Server, image: LocalFile) -> None:
    bucket = server.make_bucket()
    store = storage(server, bucket)

    async def many() -> set[str]:
        got = await asyncio.gather(*(store.url_for(image, job_id=f"j{i}") for i in range(5)))
        return {u.url.split("?")[0] for u in got}

    assert len(asyncio.run(many())) == 1
    assert len(server.puts(bucket)) == 1


def test_a_rerun_and_a_crash_before_the_state_commit_write_nothing(
    server: S3Server, image: LocalFile, tmp_path: Path
) -> None:
    bucket = server.make_bucket()
    with StateStore.open(tmp_path / "out") as state:
        asyncio.run(storage(server, bucket, cache=state.uploads).url_for(image, job_id="j1"))
        row = state.uploads.get("s3", f"{server.endpoint}/{bucket}", sha(image.path))
        assert row is not None and row[0] == f"s3://{bucket}/runs/set-1/{sha(image.path)}.png"
        assert row[2] is None  # the object does not expire; its presigned URLs do
        assert len(server.puts(bucket)) == 1
        # The next run, same state: HEAD only.
        asyncio.run(storage(server, bucket, cache=state.uploads).url_for(image, job_id="j1"))
    # A run killed between the PUT and the commit left no row: the HEAD still finds the object.
    asyncio.run(storage(server, bucket, cache=MemoryUploadCache()).url_for(image, job_id="j1"))
    assert len(server.puts(bucket)) == 1
    assert len(server.objects(bucket)) == 1
    heads = [s for s in server.requests(["HEAD"]) if s.path.startswith(f"/{bucket}/")]
    assert len(heads) == 3


def test_an_object_with_other_bytes_under_our_key_is_replaced(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    key = f"runs/set-1/{sha(image.path)}.png"
    server.client().put_object(Bucket=bucket, Key=key, Body=b"truncated")
    url = asyncio.run(storage(server, bucket).url_for(image, job_id="j1"))
    assert fetch(url.url) == image.path.read_bytes()


def test_a_file_changed_since_planning_is_not_stored_under_its_old_hash(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    planned = LocalFile(image.path, "image/png", sha256="0" * 64)
    with pytest.raises(InputError, match=r"job j1: .*changed since it was planned"):
        asyncio.run(storage(server, bucket).url_for(planned, job_id="j1"))
    assert server.objects(bucket) == {}


def test_kie_with_storage_uses_the_bucket_not_its_upload_api(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    # Kie's upload host is 127.0.0.1:9 (discard): an upload attempt would fail loudly.
    url = asyncio.run(storage(server, bucket, provider="kie").url_for(image, job_id="j1"))
    assert fetch(url.url) == image.path.read_bytes()


def test_an_expired_url_is_refused_and_ensure_fresh_signs_a_working_one(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    store = storage(server, bucket, url_expires=1)

    async def first() -> object:
        return await store.input_urls("j1", image, "https://cdn.example/v.mp4")

    urls = asyncio.run(first())
    assert store.refresh_margin == 0.5
    deadline = time.monotonic() + 30
    while True:  # wait for the condition (the URL refused), not for a fixed time
        try:
            fetch(urls.image_url)  # type: ignore[attr-defined]
        except urllib.error.HTTPError as exc:
            assert exc.code == 403 and b"expired" in exc.read()
            break
        assert time.monotonic() < deadline, "the presigned URL never expired"
        time.sleep(0.1)
    fresh = asyncio.run(store.ensure_fresh(urls, job_id="j1", margin=0.5))  # type: ignore[arg-type]
    assert fresh.image_url != urls.image_url  # type: ignore[attr-defined]
    assert fresh.video_url == "https://cdn.example/v.mp4" and fresh.video_expires_at is None
    assert fetch(fresh.image_url) == image.path.read_bytes()
    assert len(server.puts(bucket)) == 1  # re-signing writes nothing


def test_ensure_fresh_is_free_when_nothing_is_near_expiry(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    store = storage(server, bucket)
    urls = asyncio.run(store.input_urls("j1", image, "https://cdn.example/v.mp4"))
    seen = len(server.requests())
    assert asyncio.run(store.ensure_fresh(urls, job_id="j1", margin=300)) is urls
    assert len(server.requests()) == seen


# --------------------------------------------------------------------------- failures


def message_of(exc: PipelineError) -> str:
    text = str(exc)
    assert SECRET_KEY not in text and SESSION_TOKEN not in text
    assert "Traceback" not in text and "botocore" not in text
    return text


def test_a_missing_bucket_is_a_config_error_and_is_never_created(
    server: S3Server, image: LocalFile
) -> None:
    store = storage(server, "mp-no-such-bucket")
    with pytest.raises(ConfigError) as checked:
        asyncio.run(store.preflight())
    text = message_of(checked.value)
    assert "bucket 'mp-no-such-bucket' does not exist" in text and "never creates" in text
    with pytest.raises(ConfigError, match=r"job j1: .*'mp-no-such-bucket' does not exist"):
        asyncio.run(store.url_for(image, job_id="j1"))
    names = {b["Name"] for b in server.client().list_buckets()["Buckets"]}
    assert "mp-no-such-bucket" not in names


def test_preflight_on_a_good_bucket_reads_and_writes_nothing(server: S3Server) -> None:
    bucket = server.make_bucket()
    asyncio.run(storage(server, bucket).preflight())
    assert server.objects(bucket) == {} and server.puts(bucket) == []


def test_a_slow_down_is_transient_and_the_retry_stores_one_object(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    store = storage(server, bucket)
    server.fail_next("PUT", 503, "SlowDown", path_part=f"/{bucket}/")
    with pytest.raises(TransientError, match=r"job j1: .*SlowDown") as info:
        asyncio.run(store.url_for(image, job_id="j1"))
    assert info.value.http_status == 503
    url = asyncio.run(store.url_for(image, job_id="j1"))  # what the runner's retry does
    assert fetch(url.url) == image.path.read_bytes() and len(server.objects(bucket)) == 1


def test_access_denied_names_the_bucket_and_the_permissions(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    server.fail_next("PUT", 403, "AccessDenied", path_part=f"/{bucket}/")
    with pytest.raises(ConfigError) as info:
        asyncio.run(storage(server, bucket).url_for(image, job_id="j1"))
    text = message_of(info.value)
    assert f"s3://{bucket}/runs/set-1/" in text and "s3:PutObject" in text


def test_rejected_credentials_stop_the_batch_and_the_key_is_never_shown(
    server: S3Server, image: LocalFile
) -> None:
    bucket = server.make_bucket()
    # A hostile or chatty server quoting the secret back: it must not reach the text.
    echo = f"The request signature we calculated does not match; secret {SECRET_KEY}"
    server.fail_next("PUT", 403, "SignatureDoesNotMatch", path_part=f"/{bucket}/", message=echo)
    with pytest.raises(AuthError) as info:
        asyncio.run(storage(server, bucket).url_for(image, job_id="j1"))
    text = message_of(info.value)
    assert "rejected the credentials" in text and "***" in text and info.value.exit_code == 3


def test_an_unreachable_endpoint_is_unreachable(image: LocalFile) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    cls = providers.get("kling")
    config = ProviderConfig("kling", cls.default_model, "http://127.0.0.1:9")
    conf = StorageConfig(bucket="mp-x-1", prefix="", endpoint_url=f"http://127.0.0.1:{port}")
    store = Storage(
        cls(
            config, Credentials({"access_key": "a" * 8, "secret_key": "s" * 8}), httpx.AsyncClient()
        ),
        config,
        MemoryUploadCache(),
        bucket=S3Bucket(conf, SETTINGS),
    )
    with pytest.raises(UnreachableError) as info:
        asyncio.run(store.url_for(image, job_id="j1"))
    assert info.value.host == "127.0.0.1" and "job j1" in message_of(info.value)


def test_no_credentials_anywhere_is_a_missing_key_error(server: S3Server, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in aws_env().items()
        if not k.startswith(("AWS_ACCESS", "AWS_SECRET", "AWS_SESSION"))
    }
    bare = Settings.from_env({**env, "HOME": str(tmp_path)})
    conf = config_of(server, "mp-any-1")
    with pytest.raises(MissingKeyError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        S3Bucket(conf, bare)
    with pytest.raises(MissingKeyError):
        storage_secrets(conf, bare)


def test_storage_secrets_are_the_secret_key_and_token_not_the_key_id(server: S3Server) -> None:
    found = storage_secrets(config_of(server, "mp-any-1"), SETTINGS)
    assert set(found) == {SECRET_KEY, SESSION_TOKEN} and ACCESS_KEY not in found
    assert storage_secrets(None, SETTINGS) == []


def test_credentials_from_a_profile_file_are_secrets_too(server: S3Server, tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[media]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}-p\n"
    )
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_PROFILE": "media",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    assert storage_secrets(config_of(server, "mp-any-1"), Settings.from_env(env)) == [
        f"{SECRET_KEY}-p"
    ]


def test_a_presigned_url_is_recorded_without_its_session_token(
    server: S3Server, image: LocalFile
) -> None:
    from pipeline.storage.urls import record_url

    bucket = server.make_bucket()
    url = asyncio.run(storage(server, bucket).url_for(image, job_id="j1")).url
    # Temporary credentials: the provider needs the token in the URL to fetch it...
    assert "X-Amz-Security-Token=" in url
    recorded = record_url(url)
    # ...but what is written down keeps only the signature.
    assert SESSION_TOKEN not in recorded and "X-Amz-Security-Token=***" in recorded
    assert "X-Amz-Signature=" in recorded and recorded.split("?")[0] == url.split("?")[0]
    assert record_url("https://cdn.example/a.png?sig=1") == "https://cdn.example/a.png?sig=1"


def test_a_bucket_in_another_aws_region_is_named_before_any_url_is_handed_out() -> None:
    # AWS answers every request with x-amz-bucket-region; URLs signed for the wrong region are
    # refused when the provider fetches them, so the preflight turns that header into advice.
    from pipeline.storage.s3errors import S3Call

    conf = StorageConfig(bucket="mp-elsewhere-1", prefix="p/")  # AWS itself: no endpoint_url
    bucket = S3Bucket(conf, SETTINGS)
    answer = {"ResponseMetadata": {"HTTPHeaders": {"x-amz-bucket-region": "eu-west-3"}}}
    with pytest.raises(ConfigError, match=r"region eu-west-3, not us-east-1: set storage.region"):
        bucket._check_region(answer, S3Call(conf, "check of"))
    bucket._check_region({"ResponseMetadata": {"HTTPHeaders": {}}}, S3Call(conf, "check of"))
