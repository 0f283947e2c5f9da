"""Every fault kind on the hosted-model protocols (fal, Replicate), observed on the wire."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_sandbox_helpers import (
    FAL_KEY,
    FAL_V26,
    REPLICATE_TOKEN,
    REPLICATE_V26,
    Media,
    fal_client,
    make_media,
    replicate_client,
    until,
)

from pipeline.sandbox import FaultProfile, SandboxKeys, SandboxServer

KEYS = SandboxKeys(fal=FAL_KEY, replicate=REPLICATE_TOKEN)
NOWHERE = ("http://127.0.0.1:9/i.png", "http://127.0.0.1:9/v.mp4")


@dataclass(frozen=True)
class Hosted:
    """How a test drives one protocol: create, status, the finished answer, the result URL."""

    name: str
    client: Callable[[str], httpx.Client]
    path: str
    make_body: Callable[[str, str], dict[str, Any]]
    status_key: str

    def create(self, client: httpx.Client, image: str = NOWHERE[0], video: str = NOWHERE[1]):
        return client.post(self.path, json=self.make_body(image, video))

    def status_url(self, created: dict[str, Any]) -> str:
        return str(created["status_url"] if self.name == "fal" else created["urls"]["get"])

    def finished(self, client: httpx.Client, created: dict[str, Any]) -> dict[str, Any]:
        """The final status answer (fal: COMPLETED's body; Replicate: the prediction)."""
        answer = until(lambda: client.get(self.status_url(created)),
                       lambda r: r.status_code == 200 and r.json()["status"] in
                       ("COMPLETED", "succeeded", "failed", "canceled"))  # fmt: skip
        return dict(answer.json())

    def output_url(self, client: httpx.Client, created: dict[str, Any]) -> str:
        done = self.finished(client, created)
        if self.name == "fal":
            return str(client.get(created["response_url"]).json()["video"]["url"])
        return str(done["output"])


FAL = Hosted("fal", fal_client, FAL_V26,
             lambda i, v: {"image_url": i, "video_url": v, "character_orientation": "video"},
             "status")  # fmt: skip
REPLICATE = Hosted("replicate", replicate_client, REPLICATE_V26,
                   lambda i, v: {"input": {"image": i, "video": v}}, "status")  # fmt: skip
BOTH = pytest.mark.parametrize("hosted", [FAL, REPLICATE], ids=["fal", "replicate"])


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


def sandbox(tmp_path: Path, *faults: dict[str, Any]) -> SandboxServer:
    profile = FaultProfile.from_dict({"faults": list(faults)})
    return SandboxServer(keys=KEYS, faults=profile, data_dir=tmp_path / "sandbox")


@BOTH
def test_request_level_errors_on_create(hosted: Hosted, tmp_path: Path) -> None:
    rules = [{"kind": "rate_limit", "endpoint": "create", "times": 1, "retry_after": 2},
             {"kind": "bad_key", "endpoint": "create", "times": 1},
             {"kind": "out_of_credits", "endpoint": "create", "times": 1},
             {"kind": "server_error", "endpoint": "create", "times": 1, "status": 503}]  # fmt: skip
    with sandbox(tmp_path, *rules) as srv, hosted.client(srv.base_url) as client:
        answers = [hosted.create(client) for _ in range(5)]
    statuses = [a.status_code for a in answers]
    assert statuses == [429, 401, 403 if hosted.name == "fal" else 402, 503,
                        200 if hosted.name == "fal" else 201]  # fmt: skip
    assert answers[0].headers["retry-after"] == "2"
    if hosted.name == "replicate":
        assert answers[0].json() == {
            "detail": "Request was throttled. Your rate limit resets in ~2s."
        }
    else:
        assert answers[3].headers["x-fal-error-type"] == "internal_error"
    assert all(a.json().get("detail") for a in answers[:4])
    assert len(srv.ledger) == 1


@BOTH
def test_server_errors_every_other_poll(hosted: Hosted, tmp_path: Path) -> None:
    rule = {"kind": "server_error", "endpoint": "poll", "every": 2}
    with sandbox(tmp_path, rule) as srv, hosted.client(srv.base_url) as client:
        created = hosted.create(client).json()
        statuses = [client.get(hosted.status_url(created)).status_code for _ in range(4)]
    assert [s == 500 for s in statuses] == [False, True, False, True]


@BOTH
def test_resets_and_malformed_answers(hosted: Hosted, tmp_path: Path) -> None:
    rules = [{"kind": "reset_before_commit", "endpoint": "create", "times": 1},
             {"kind": "reset_after_commit", "endpoint": "create", "times": 1},
             {"kind": "malformed_json", "endpoint": "create", "times": 1, "commit": False},
             {"kind": "malformed_json", "endpoint": "create", "times": 1}]  # fmt: skip
    with sandbox(tmp_path, *rules) as srv, hosted.client(srv.base_url) as client:
        with pytest.raises(httpx.TransportError):
            hosted.create(client)
        assert len(srv.ledger) == 0
        with pytest.raises(httpx.TransportError):
            hosted.create(client)
        assert len(srv.ledger) == 1  # made, billed, and the client never heard of it
        for expected in (1, 2):
            cut = hosted.create(client)
            with pytest.raises(json.JSONDecodeError):
                cut.json()
            assert len(srv.ledger) == expected


@BOTH
def test_task_fail_and_never_finish(hosted: Hosted, tmp_path: Path, media: Media) -> None:
    rules = [{"kind": "task_fail", "times": 1, "message": "flagged by moderation"},
             {"kind": "never_finish", "times": 1}]  # fmt: skip
    with sandbox(tmp_path, *rules) as srv, hosted.client(srv.base_url) as client:
        inputs = (srv.file_url(media.image), srv.file_url(media.video))
        failed = hosted.create(client, *inputs).json()
        done = hosted.finished(client, failed)
        stuck = hosted.create(client, *inputs).json()
        stuck_states = [client.get(hosted.status_url(stuck)).json()["status"] for _ in range(4)]
        result = client.get(failed["response_url"]) if hosted.name == "fal" else None
    if hosted.name == "fal":
        assert done["status"] == "COMPLETED" and done["error_type"] == "content_policy_violation"
        assert result is not None and result.status_code == 422
        assert result.json()["detail"][0]["msg"] == "flagged by moderation"
        assert stuck_states[-1] == "IN_PROGRESS"
    else:
        assert done["status"] == "failed" and done["error"] == "flagged by moderation"
        assert stuck_states[-1] == "processing"


def test_fal_task_fail_can_be_a_request_error(tmp_path: Path) -> None:
    rule = {"kind": "task_fail", "code": "runner_server_error", "message": "runner crashed"}
    with sandbox(tmp_path, rule) as srv, fal_client(srv.base_url) as client:
        created = FAL.create(client).json()
        FAL.finished(client, created)
        result = client.get(created["response_url"])
    assert result.status_code == 500 and result.headers["x-fal-error-type"] == "runner_server_error"
    assert result.json() == {"detail": "runner crashed", "error_type": "runner_server_error"}


@BOTH
def test_bad_and_expired_result_urls(hosted: Hosted, tmp_path: Path, media: Media) -> None:
    rules = [{"kind": "bad_result_url", "times": 1, "url": "ftp://nowhere/x.mp4"},
             {"kind": "expired_result", "times": 1}]  # fmt: skip
    with sandbox(tmp_path, *rules) as srv, hosted.client(srv.base_url) as client:
        inputs = (srv.file_url(media.image), srv.file_url(media.video))
        bad = hosted.create(client, *inputs).json()
        assert hosted.output_url(client, bad) == "ftp://nowhere/x.mp4"
        good = hosted.create(client, *inputs).json()
        url = hosted.output_url(client, good)
        assert httpx.get(url).status_code == 404  # expired as it was fetched
        fresh = hosted.output_url(client, good)  # a new status query issues a new URL
        assert fresh != url and httpx.get(fresh).status_code == 200


@BOTH
def test_answer_faults_rewrite_the_id_and_its_urls(hosted: Hosted, tmp_path: Path) -> None:
    rules = [{"kind": "weird_task_id", "times": 1, "task_id": "zz", "repeat": 3},
             {"kind": "duplicate_task_id", "times": 1}]  # fmt: skip
    with sandbox(tmp_path, *rules) as srv, hosted.client(srv.base_url) as client:
        weird = hosted.create(client).json()
        second = hosted.create(client).json()
    key = "request_id" if hosted.name == "fal" else "id"
    entries = srv.ledger.snapshot()
    assert weird[key] == "zzzzzz" and "zzzzzz" in hosted.status_url(weird)
    assert entries[0].answered_id == "zzzzzz" and entries[0].task_id != "zzzzzz"
    assert second[key] == entries[0].task_id != entries[1].task_id  # two jobs, one id
    assert entries[1].answered_id == entries[0].task_id


@BOTH
def test_huge_and_slow_answers_are_still_the_answer(hosted: Hosted, tmp_path: Path) -> None:
    rules = [{"kind": "huge_body", "endpoint": "create", "times": 1, "size": 1 << 20},
             {"kind": "trickle", "endpoint": "poll", "times": 1, "seconds": 0.01, "chunk": 64},
             {"kind": "slow", "endpoint": "poll", "times": 1, "seconds": 0.05}]  # fmt: skip
    with sandbox(tmp_path, *rules) as srv, hosted.client(srv.base_url) as client:
        huge = hosted.create(client)
        assert len(huge.content) == 1 << 20
        created = huge.json()
        trickled = client.get(hosted.status_url(created))
        slow = client.get(hosted.status_url(created))
    assert trickled.json()["status"] and slow.json()["status"]
    assert len(srv.ledger) == 1
