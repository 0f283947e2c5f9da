"""A local HTTP server that speaks the Kie.ai, AceData Cloud, Kling, fal.ai and Replicate protocols.

It is the project's test double, the embedded provider behind ``provider: sandbox`` and
``make demo``, and a free rehearsal target (``motion-pipeline sandbox``). It follows
``shared/providers.md`` sections 1-5 and 7: endpoints, auth, envelopes, error shapes, states.

Public API::

    from pipeline.sandbox import SandboxServer, FaultProfile, SandboxKeys, serve

    # None fields accept any non-empty credential (Kling: any token; a JWT's exp/nbf still count)
    keys = SandboxKeys(kie="k-test", acedata="a-test", kling_access="ak", kling_secret="sk",
                       fal="fal-key", replicate="r8-token")
    profile = FaultProfile.load("manifests/faults/flaky.yaml")   # or FaultProfile()
    with SandboxServer(host="127.0.0.1", port=0, keys=keys, faults=profile,
                       protocols=("kie", "acedata", "kling", "fal", "replicate"),
                       data_dir=tmp_path) as srv:
        srv.base_url         # "http://127.0.0.1:PORT": every protocol, and Kie's upload host too
        srv.ledger           # thread-safe list of accepted creates (each billed, whatever id
                             #   its answer carried):
                             #   LedgerEntry(protocol, task_id, client_id, body, at, answered_id)
        srv.file_url(path)   # an http URL on the sandbox serving a local file (URL inputs)
        srv.expire_results() # every result URL issued so far now answers 404 (Kling: 403);
                             #   a new status query of the task issues a fresh URL
        srv.render_count     # ffmpeg renders actually run (renders are cached)

    SandboxServer(..., instant=True)  # benchmarks: no media work, every task done on its first
                                      #   poll, one canned mp4 from memory (:mod:`.instant`);
                                      #   overrides the profile's ``instant`` switch
    serve(host, port, protocols, faults_path, instant=False)  # blocks; first prints
                                               # "sandbox listening on http://HOST:PORT";
                                               # stops on SIGINT/SIGTERM

``data_dir`` (default: a temporary directory removed at stop) holds uploads, fetched inputs,
renders and ``tasks.jsonl``, the journal of accepted tasks: a new server on the same directory
still answers for them (the ledger, though, lists only the creates this server accepted).
``tools`` (default :func:`pipeline.media.tools.find_tools`) names ffmpeg/ffprobe.

Routes (paths do not collide, so one server serves all enabled protocols):

- Kie: ``POST /api/v1/jobs/createTask``, ``GET /api/v1/jobs/recordInfo?taskId=``,
  ``GET /api/v1/chat/credit``, ``POST /api/v1/common/download-url``,
  ``POST /api/file-stream-upload`` | ``/api/file-base64-upload`` | ``/api/file-url-upload``
  (answer ``data.downloadUrl`` on this server).
- AceData: ``POST /kling/motion`` (sync unless ``async``/``callback_url``), ``POST /kling/tasks``.
- Kling: ``POST /v1/videos/motion-control``,
  ``GET /v1/videos/motion-control/{task_id or external_task_id}``.
- fal (:mod:`.fal`, :mod:`.fal_storage`): ``POST /<endpoint id>`` (``?fal_webhook=``),
  ``GET|PUT /fal-ai/kling-video/requests/<id>[/status|/cancel]``, ``POST /storage/auth/token``,
  ``POST /files/upload[/multipart]``, ``/fal-media/files/...`` (uploaded files, multipart parts).
- Replicate (:mod:`.replicate`, :mod:`.replicate_files`):
  ``POST /v1/models/{owner}/{name}/predictions``, ``GET /v1/predictions/{id}``,
  ``POST /v1/predictions/{id}/cancel``, ``POST|GET|DELETE /v1/files[/{id}[/download]]``.
- Sandbox: ``GET /files/...`` (``file_url``), ``/tempfile/...`` (uploads),
  ``/results/...`` (result videos).

A task fetches its inputs (the sandbox's own URLs straight from disk, other http URLs only on
loopback), probes them with ffprobe and fails like the real service when they break the model
rules (:mod:`.rules`); otherwise it renders a real mp4 (:mod:`.render`): the image beside the
driving clip, same duration, its sound unless ``keep_original_sound`` is "no". Latency and
faults come from a profile (schema in :mod:`.profile` and :mod:`.faults`).

Callbacks: a create that names one (Kie ``callBackUrl``, AceData and Kling ``callback_url``, fal
``?fal_webhook=``, Replicate ``webhook``) is POSTed its end from a background thread, with
retries (:mod:`.callbacks`, :mod:`.notify`); only loopback URLs are called.
``srv.callbacks`` lists every callback delivered, dropped, forged or refused.
"""

from __future__ import annotations

from pipeline.sandbox.faults import FaultRule
from pipeline.sandbox.keys import SandboxKeys
from pipeline.sandbox.ledger import Ledger, LedgerEntry
from pipeline.sandbox.profile import FaultProfile, Latency
from pipeline.sandbox.server import SandboxServer, serve

__all__ = [
    "FaultProfile",
    "FaultRule",
    "Latency",
    "Ledger",
    "LedgerEntry",
    "SandboxKeys",
    "SandboxServer",
    "serve",
]
