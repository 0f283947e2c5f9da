"""``plan --json`` writes each job with its own encoder (shared values encoded once): the text
must be exactly ``json.dumps`` of the job's dict, for every kind of job a plan can hold."""

from __future__ import annotations

import json
from pathlib import Path

from batchkit import make_media, write_manifest
from mediagen import make_image

from pipeline.jobs import InputRef, Job, JobSettings, State, Trim
from pipeline.manifest.load import load_manifest
from pipeline.media.probe import probe_file
from pipeline.media.tools import find_tools
from pipeline.plan.build import PlannedJob, make_plan
from pipeline.plan.document import JobEncoder
from pipeline.plan.estimate import Verdict
from pipeline.plan.sending import Sent, SentMedia, as_is
from pipeline.plan.summary import summarize
from pipeline.settings import Settings
from pipeline.state.rows import BriefRow


def _as_dumps(pj: PlannedJob, verdict: Verdict) -> str:
    return json.dumps({**pj.as_dict(), "estimate": verdict.bucket, "why": verdict.why})


def test_every_job_of_a_real_plan_is_encoded_as_json_dumps_would(tmp_path: Path) -> None:
    media = make_media(tmp_path / "media")
    tiny = make_image(tmp_path / "media" / "tiny.png", 100, 100)  # under the minimum: rejected
    jobs = [
        {"id": "plain", "image": str(media.image), "video": str(media.video)},
        # prepared (a trim): its video is a prepared file, measured
        {"id": "cut", "image": str(media.image), "video": str(media.video),
         "trim": {"start": 0.25, "end": 3.4}},
        {"id": "odd", "image": str(media.image), "video": str(media.video),
         "prompt": "tabs\tquotes \" backslash \\ \u00e9 \U0001f600 \x01"},
        {"id": "bad", "image": str(tiny), "video": str(media.video), "mode": "pro"},
        {"id": "done", "image": str(media.image), "video": str(media.video), "prompt": "d"},
    ]  # fmt: skip
    manifest_path = write_manifest(
        tmp_path / "m", {"name": "kie", "base_url": "http://127.0.0.1:9"}, jobs,
        budget={"price_per_second": {"std": 0.07}},  # pro has no price: its cost is null
    )  # fmt: skip
    settings = Settings.from_env({"KIE_API_KEY": "x"})
    manifest = load_manifest(manifest_path)
    made = make_plan(manifest, settings, prepare=True)
    by_id = {pj.job.id: pj for pj in made.jobs}
    assert by_id["bad"].action == "reject" and by_id["cut"].sent is not None
    assert by_id["cut"].sent.video is not None and by_id["cut"].sent.video.prepared
    rows = [BriefRow("done", by_id["done"].key, State.DONE, "t1", None, 3.5, "std")]
    summary = summarize(made, rows, retry_failed=False, replace=(), skip_invalid=True)
    encoder = JobEncoder()
    for _ in range(2):  # the second time from the encoder's memory of shared values
        for pj in made.jobs:
            verdict = summary.estimate.verdicts[pj.job.id]
            assert encoder.encode(pj, verdict) == _as_dumps(pj, verdict)
    assert "".join(summary.json_chunks()) == json.dumps(summary.as_dict())


def test_jobs_built_by_hand_cover_what_a_local_plan_cannot(tmp_path: Path) -> None:
    """URL inputs, nothing sent yet, a sent part missing, a cost of 0, odd floats."""
    media = make_media(tmp_path / "media")
    tools = find_tools()
    image_info, video_info = probe_file(media.image, tools), probe_file(media.video, tools)
    url = "https://example.com/v.mp4?sig=a%20b&x=\u00e9"
    job = Job(
        id="u", image=InputRef(raw=str(media.image), path=media.image),
        video=InputRef(raw=url, url=url), settings=JobSettings(trim=Trim(1.25, None)),
        provider="kie", model="kling-2.6/motion-control", line=7, where="$.jobs[0]",
    )  # fmt: skip
    shared = as_is(image_info, "img", url=None)
    sents: list[SentMedia | None] = [
        None,
        SentMedia(shared, None, measured=False),
        SentMedia(None, None, measured=False),
        SentMedia(shared, Sent(None, url, "url:abc", 10, 1e-7, False, "video/mp4"), True),
        SentMedia(shared, as_is(video_info, "vid", url=None), measured=True),
    ]
    values = [(None, None), (0.0, 0.0), (1e16, 123456789.123), (3.1, None)]
    encoder = JobEncoder()
    for sent in sents:
        for billed, cost in values:
            pj = PlannedJob(job=job, key="k", image_sha256="img", video_sha256="url:abc",
                            action="trim", steps=("trim", "strip-audio"), billed_seconds=billed,
                            estimated_cost=cost, error="a \"reason\"\n", sent=sent)  # fmt: skip
            verdict = Verdict("refused", "changed after it was paid (state done); \u00e9")
            assert encoder.encode(pj, verdict) == _as_dumps(pj, verdict)
