"""Result downloads (``/results/<token>.mp4``): the served video, its expiry, and every fault a
download can meet (see :mod:`.faults`, DOWNLOAD level and the request-level kinds)."""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.sandbox import hostile
from pipeline.sandbox.faults import DOWNLOAD_KINDS, REQUEST_KINDS
from pipeline.sandbox.picker import FaultPicker
from pipeline.sandbox.store import ResultLink, TaskStore
from pipeline.sandbox.wire import Reply, Request


def serve(
    req: Request, store: TaskStore, picker: FaultPicker, removed: Callable[[ResultLink], bool]
) -> Reply:
    """A result download; ``removed`` says when retention has deleted the file (404 for good)."""
    token = req.path[len("/results/") :].removesuffix(".mp4")
    link = store.link(token)
    if link is None or removed(link):
        return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
    # Kling's CDN answers an expired signed URL with 403; the others with 404 (inferred).
    expired_status = 403 if link.protocol == "kling" else 404
    rule = picker.pick(link.protocol, "download", REQUEST_KINDS + DOWNLOAD_KINDS)
    if rule is None or (rule.kind == "trickle" and link.expired):
        pass
    elif rule.kind == "expired_result":
        store.expire(token)
    elif rule.kind == "slow":
        time.sleep(rule.seconds)
    elif rule.kind == "malformed_json":
        if not link.expired:
            # A download cut short: the bytes stop half-way, with a matching Content-Length.
            data = link.path.read_bytes()
            return Reply(200, data[: len(data) // 2], {"Content-Type": "video/mp4"})
    elif rule.kind == "redirect_loop":
        return hostile.redirect_to_self(req)
    elif rule.kind == "huge_result":
        return hostile.huge_result(rule)
    elif rule.kind == "trickle":
        return hostile.trickled_file(link.path, rule)
    else:
        return hostile.download_fault(rule)
    if link.expired:
        return Reply(expired_status, b"Request has expired", {"Content-Type": "text/plain"})
    if link.data is not None:  # instant mode: no disk read per download
        return Reply(200, link.data, {"Content-Type": "video/mp4"})
    return Reply(200, headers={"Content-Type": "video/mp4"}, file=link.path)
