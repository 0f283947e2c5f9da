"""The submit stage: spending money, once. Read top to bottom, :meth:`SubmitStage.create` is the
never-pay-twice order of design.md §3:

1. nothing is sent while the batch is stopping, the disk is nearly full, or the job does not
   fit the budget (checked and booked in one step: concurrent jobs cannot all pass);
2. the intent is committed (``submitting``, a client id, what is sent) before the request;
3. the create is retried only when it certainly did not happen (the one retry primitive);
4. one that may have happened is looked up by client id where the provider keeps one, and
   otherwise the job needs attention: it is never re-sent automatically;
5. the task id is committed before anything else, and counts as "in flight" for an abort until
   it is: a Ctrl-C between the answer and the commit must not cancel the commit.

:meth:`SubmitStage.settled_without_paying` comes first in a job's line: a generation that is
already done (under another id) is adopted, and one whose create needs attention is waited for.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

from pipeline.errors import (
    AmbiguousError,
    BatchFatalError,
    BatchStopped,
    PipelineError,
    ProviderError,
    RefusedError,
    TransientError,
)
from pipeline.jobs import FailKind, Handle, Job, State
from pipeline.plan.build import PlannedJob
from pipeline.run.context import RunContext
from pipeline.run.crashpoints import crash_point
from pipeline.run.inputs import Ready
from pipeline.state.rows import DuplicateTaskError, JobRow
from pipeline.storage.urls import record_url

RECONCILES = 3
"""Lookups that say "the create never happened" before an ambiguous job is left to a human."""


class _NotRenewed(Exception):
    """An input URL could not be renewed before the create: nothing was sent."""

    def __init__(self, error: PipelineError) -> None:
        super().__init__(str(error))
        self.error = error


class _Unknown:
    """A lookup that could not tell whether the create happened."""


UNKNOWN = _Unknown()


class SubmitStage:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.in_flight = 0
        """Creates on the wire, or answered but their task id not committed yet."""
        self.submitted = 0
        """Intents this run committed and did not take back."""
        self._intents: set[str] = set()

    # ------------------------------------------------------------------ before paying

    async def settled_without_paying(self, pj: PlannedJob) -> bool:
        """True when the job needs no create: its generation was adopted from a done twin, or
        it waits for a twin whose create needs attention (it stays pending)."""
        ctx, job_id = self.ctx, pj.job.id
        if ctx.store.get(job_id).state is State.FAILED:
            await ctx.journal.move(job_id, State.PENDING, error=None)
        if await self._adopt_twin(pj):
            return True
        blocker = ctx.journal.unsettled.get(pj.key)
        if blocker is not None and blocker != job_id:
            # Its create may have made (and billed) this very generation: resolve that first.
            ctx.journal.notice(
                f"job {job_id} left pending: job {blocker}, the same generation, needs attention"
            )
            return True
        return False

    async def _adopt_twin(self, pj: PlannedJob) -> bool:
        """Same key already done under another id: reuse that result, pay nothing."""
        ctx = self.ctx
        twin = ctx.store.find_done_by_key(pj.key)
        if twin is None or twin.id == pj.job.id or not twin.output:
            return False
        source = ctx.manifest.output_dir / twin.output
        target = ctx.videos / f"{pj.job.id}.mp4"
        if not source.is_file():
            return False
        await asyncio.to_thread(_link_or_copy, source, target)
        await ctx.journal.move(
            pj.job.id,
            State.DONE,
            task_id=twin.task_id,
            output=str(target.relative_to(ctx.manifest.output_dir)),
            output_sha256=twin.output_sha256,
            duration=twin.duration,
            billed_seconds=0.0,
            result=twin.result,
            detail={"adopted_from": twin.id},
        )
        return True

    # ------------------------------------------------------------------ paying

    async def create(self, pj: PlannedJob, ready: Ready) -> Handle | None:
        """Send the job's create once; its task, or None when it did not (or may not) run."""
        ctx, job_id = self.ctx, pj.job.id
        if ctx.halt.stopping:
            return None
        shortage = ctx.disk.shortage()
        if shortage is not None:
            ctx.halt.stop_new(shortage, 3)
            return None
        seconds = ready.billed_seconds or pj.billed_seconds or 0.0
        cost = ctx.manifest.budget.cost(pj.job.settings.mode, seconds) or 0.0
        refusal = ctx.spending.reserve(job_id, seconds, cost)  # no await before the booking
        if refusal is not None:
            ctx.halt.stop_new(refusal.text, 3)
            return None
        client_id = await self._intent(pj, ready, seconds)
        if client_id is None:
            return None
        crash_point("after-intent")
        handle = await self._send(pj, ready, client_id)
        if handle is None:
            return None
        try:
            crash_point("after-create-sent")
            await ctx.journal.move(job_id, State.RUNNING, task_id=handle.task_id)
        except BatchStopped as exc:
            self._task_id_not_saved(job_id, handle, exc)
            return None
        except DuplicateTaskError as exc:
            # Which job the id really names, and what this create made, only the provider can
            # say: never give two generations one video.
            what = f"the provider answered task id {handle.task_id}, already job {exc.holder}'s"
            reason = ctx.ambiguous(what, job_id)
            await ctx.journal.move(job_id, State.NEEDS_ATTENTION, error=reason)
            return None
        finally:
            self.in_flight -= 1  # raised by _send when the provider accepted
        crash_point("after-task-id")
        return handle

    async def _intent(self, pj: PlannedJob, ready: Ready, seconds: float) -> str | None:
        """Commit ``submitting`` with a client id; None (booking given back) if not sent."""
        ctx, job_id = self.ctx, pj.job.id
        row = ctx.store.get(job_id)
        try:
            await ctx.calls.gate.wait()
            if ctx.halt.stopping:
                ctx.spending.release(job_id)
                return None
            crash_point("before-intent")
            client_id = f"mp-{pj.key[:20]}-{row.attempt + 1}"
            await ctx.journal.move(
                job_id,
                State.SUBMITTING,
                expect=State.PENDING,
                client_id=client_id,
                attempt=row.attempt + 1,
                billed_seconds=seconds,
                inputs=_sent_record(pj, ready),
                error=None,
            )
        except BaseException:
            # The intent may or may not be committed (a cancelled commit still lands): keep the
            # booking unless the job is certainly still pending.
            if ctx.store.get(job_id).state is State.PENDING:
                ctx.spending.release(job_id)
            raise
        self.submitted += 1
        self._intents.add(job_id)
        return client_id

    async def _send(self, pj: PlannedJob, ready: Ready, client_id: str) -> Handle | None:
        """POST the create; the Handle (``in_flight`` left raised), or None when the job left
        ``submitting`` some other way."""
        ctx, job = self.ctx, pj.job
        reconciles = 0
        urls = ready.urls
        while True:

            async def attempt() -> Handle:
                nonlocal urls
                # An input URL that could expire before the provider fetches it (a late create,
                # a retry, a resume the next day) is signed or uploaded anew, never sent stale.
                try:
                    urls = await ctx.storage.ensure_fresh(
                        urls, job_id=job.id, margin=ctx.storage.refresh_margin
                    )
                except TransientError:
                    raise  # retried like a create that certainly did not happen
                except PipelineError as exc:
                    raise _NotRenewed(exc) from None
                self.in_flight += 1
                try:
                    return await ctx.provider.submit(job, urls, client_id=client_id)
                except BaseException:
                    self.in_flight -= 1  # answered (or failed): no task id is left to commit
                    raise

            try:
                return await ctx.calls.repeat(
                    attempt, what=f"job {job.id}: create", cap=120.0, creates=True,
                    final=(AmbiguousError, RefusedError, BatchFatalError, _NotRenewed),
                )  # fmt: skip
            except AmbiguousError as exc:
                ctx.calls.breaker.record_failure()
                ctx.log.warning(
                    "job %s: create outcome unknown (%s)", job.id, ctx.journal.redact(str(exc))
                )
                has_id = ctx.provider_type.has_client_id
                found = await self.lookup(job, client_id) if has_id else UNKNOWN
                if isinstance(found, Handle):
                    self.in_flight += 1  # the task exists: committed by create() like any answer
                    return found
                if isinstance(found, _Unknown) or reconciles >= RECONCILES or ctx.halt.stopping:
                    reason = ctx.ambiguous(str(exc), job.id)
                    await ctx.journal.move(job.id, State.NEEDS_ATTENTION, error=reason)
                    return None
                reconciles += 1  # the lookup says the create never happened: sending is safe
            except RefusedError as exc:
                ctx.calls.breaker.record_success()
                why = f"refused by {ctx.provider_type.name}: {exc}"
                await ctx.journal.fail(job.id, FailKind.REFUSED, why)
                self._not_paid(job.id)  # the API refused: nothing was made, nothing is billed
                return None
            except BatchFatalError as exc:
                ctx.halt.stop_new(ctx.journal.redact(exc.message), exc.exit_code)
                await self.unsubmit(job.id, str(exc))
                return None
            except _NotRenewed as exc:
                await self.unsubmit(job.id, f"input URLs could not be renewed: {exc.error}")
                return None
            except TransientError as exc:  # it certainly did not happen, after every try
                await self.unsubmit(job.id, f"create not accepted: {exc}")
                return None

    async def lookup(self, job: Job, client_id: str) -> Handle | _Unknown | None:
        """The task an unanswered create made (Handle), None if it never happened, or UNKNOWN."""
        ctx = self.ctx
        try:
            found: Handle | None = await ctx.calls.repeat(
                lambda: ctx.provider.reconcile(job, client_id),
                what=f"job {job.id}: lookup by client id {client_id}",
            )
        except ProviderError as exc:
            why = ctx.journal.redact(str(exc))
            ctx.log.warning("job %s: lookup by client id failed: %s", job.id, why)
            return UNKNOWN
        outcome = f"found task {found.task_id}" if found else "the create never happened"
        ctx.log.info("job %s: reconciled by client id %s: %s", job.id, client_id, outcome)
        return found

    async def unsubmit(self, job_id: str, why: str) -> None:
        """The create certainly did not happen: back to pending for a later run."""
        await self.ctx.journal.move(job_id, State.PENDING, error=why)
        self._not_paid(job_id)

    def _not_paid(self, job_id: str) -> None:
        """Give back the booking of a create that was not made (and is not billed)."""
        self.ctx.spending.release(job_id)
        if job_id in self._intents:  # an earlier run's intent was never counted here
            self._intents.discard(job_id)
            self.submitted -= 1

    # ------------------------------------------------------------------ resume

    async def resume(self, row: JobRow) -> Handle | None:
        """A job an earlier run left ``submitting``: its task if the provider made one (looked
        up by client id), else pending again (None) or needs attention (None)."""
        ctx = self.ctx
        if ctx.provider_type.has_client_id and row.client_id:
            found = await self.lookup(ctx.job(row), row.client_id)
            if isinstance(found, _Unknown):
                why = "the provider could not be asked about the create"
                reason = ctx.ambiguous(why, row.id)
                await ctx.journal.move(row.id, State.NEEDS_ATTENTION, error=reason)
                return None
            if found is None:
                await self.unsubmit(row.id, "previous create never reached the provider")
                return None
            await ctx.journal.move(row.id, State.RUNNING, task_id=found.task_id)
            return found
        why = ctx.ambiguous("the run stopped while the create was in flight", row.id)
        await ctx.journal.move(row.id, State.NEEDS_ATTENTION, error=why)
        return None

    def _task_id_not_saved(self, job_id: str, handle: Handle, exc: BatchStopped) -> None:
        """The last resort when even the reserve could not hold a task id: say it, loudly."""
        ctx = self.ctx
        ctx.halt.stop_new(str(exc), exc.exit_code)
        ctx.journal.notice(
            f"job {job_id}: the provider accepted task {handle.task_id} but it could not be saved "
            f"({exc}); free space, then `motion-pipeline resolve {ctx.manifest.path} {job_id} "
            f"--adopt {handle.task_id}`",
            "error",
        )


def _sent_record(pj: PlannedJob, ready: Ready) -> str:
    """What this create sends, for the state and metadata.jsonl: URLs, files, hashes, recipe."""
    media = pj.media
    doc: dict[str, object] = {
        # A signed URL is stored without any session token (its signature may stay).
        "image_url": record_url(ready.urls.image_url),
        "video_url": record_url(ready.urls.video_url),
        "image_expires_at": ready.urls.image_expires_at,
        "video_expires_at": ready.urls.video_expires_at,
        "video_recipe": media.video.as_dict() if media else None,
        "image_recipe": media.image.as_dict() if media else None,
        **ready.sent.as_dict(),
    }
    return json.dumps(doc, separators=(",", ":"))


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    tmp = target.with_name(f".adopt-{target.name}")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
