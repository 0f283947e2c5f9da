"""The poll stage: follow a job's task to its end (with :class:`~pipeline.run.poller.Poller`)
and decide what that end means for the job."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.errors import ProviderError
from pipeline.jobs import FailKind, Handle, State, TaskStatus
from pipeline.run.context import RunContext
from pipeline.run.poller import Poller, PollerCrashed, TaskTimeout, UnreadableTask
from pipeline.run.schedule import Kind
from pipeline.run.slots import Lease


class PollStage:
    """The poll stage: follow a task to its end and decide what its end means for the job.

    The provider slot (``lease``) is given back as soon as the task ends, whatever the outcome.
    """

    def __init__(self, ctx: RunContext, poller: Poller) -> None:
        self.ctx = ctx
        self.poller = poller

    async def follow(
        self, job_id: str, handle: Handle, lease: Lease | None, *, since: str | None = None
    ) -> TaskStatus | None:
        """The succeeded task's status, or None with the job moved (or left for the next run).

        ``since``: when an earlier run submitted the task (the state's ``submitted_at``); its
        timeout and schedule count from then, not from this run's start."""
        journal = self.ctx.journal
        age = None if since is None else task_age(since, datetime.now(UTC))
        try:
            status = await self.poller.wait(
                handle, label=f"job {job_id}", kind=self._kind(job_id), age=age
            )
        except (TaskTimeout, UnreadableTask) as exc:
            kind = FailKind.TIMEOUT if isinstance(exc, TaskTimeout) else FailKind.UNREADABLE
            kept = f"task {handle.task_id} kept: `run --retry-failed` asks about it again"
            await journal.fail(job_id, kind, f"{exc}; {kept}")
            return None
        except PollerCrashed:
            return None  # the run is stopping; the task still runs and the next run polls it
        except ProviderError as exc:
            # The provider does not know a task it accepted (or refuses to say): it is paid for,
            # so a human decides; `--retry-failed` would pay for it again.
            why = f"the provider no longer answers for task {handle.task_id}: {exc}"
            await journal.move(job_id, State.NEEDS_ATTENTION, error=self.ctx.ambiguous(why, job_id))
            return None
        finally:
            if lease is not None:
                await lease.release()
        if status.phase == "failed":
            await journal.fail(job_id, FailKind.TASK, status.reason or "the task failed")
            return None
        return status

    def _kind(self, job_id: str) -> Kind:
        """What the job's task is like, for its schedule (an orphan: like any other task)."""
        pj = self.ctx.planned.get(job_id)
        return Kind("", 0) if pj is None else Kind.of(pj.job.settings.mode, pj.billed_seconds)


def task_age(submitted_at: str | None, now: datetime) -> float:
    """Seconds since ``submitted_at`` (an ISO time from the state), 0 when unknown, unreadable
    or in the future (a clock set back): a task is never older than the state says."""
    if not submitted_at:
        return 0.0
    try:
        then = datetime.fromisoformat(submitted_at)
    except ValueError:
        return 0.0
    if then.tzinfo is None:  # the state writes UTC offsets; an older or hand-made one may not
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())
