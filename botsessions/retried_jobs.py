"""Jobs a failed try of an update scheduled: removed before runbot tries it again.

runbot retries an update whose sessions could not be stored
(:func:`~botsessions.telegram_api.keep_polling_through_storage_errors`). The failed try
ran the handlers, and a job they put on PTB's JobQueue would otherwise stay scheduled
beside the one the next try schedules: the try's rows are rolled back, so its jobs go
too. A job that already ran (``run_once(callback, 0)``) is done, like a Bot API call.

A job counts as the try's when it is added from the try's context: in its handlers,
their error handlers, and the tasks they start (a task copies the context it was
started in), but not in another job that APScheduler runs meanwhile (it is woken
outside any try). APScheduler tells its listeners of a new job at once, in the code that
added it, so the listener sees that context.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from telegram.ext import ConversationHandler, Job

if TYPE_CHECKING:
    from .ptb import SessionApplication

# Schedulers that already tell _job_added of their new jobs (runbot may run twice in a
# process, with the same application).
_listened_to: weakref.WeakSet[Any] = weakref.WeakSet()
_current: contextvars.ContextVar[_Try | None] = contextvars.ContextVar(
    "botsessions_job_try", default=None
)


class _Try:
    __slots__ = ("added", "open")

    def __init__(self) -> None:
        self.added: list[tuple[str, str]] = []  # (job id, job store)
        # Closed, a try counts no more jobs, whatever still runs in a copy of its context.
        self.open = True


class JobsOfTries:
    """Tells which jobs each try of an update added to an application's JobQueue."""

    def __init__(self, application: SessionApplication) -> None:
        queue = application._job_queue  # no JobQueue (PTB's job-queue extra missing): None
        self._scheduler: Any = queue.scheduler if queue is not None else None
        if self._scheduler is not None and self._scheduler not in _listened_to:
            from apscheduler.events import EVENT_JOB_ADDED  # type: ignore[import-untyped]

            self._scheduler.add_listener(_job_added, EVENT_JOB_ADDED)
            self._scheduler.wakeup = functools.partial(_wake_outside_tries, self._scheduler.wakeup)
            _listened_to.add(self._scheduler)

    @contextlib.contextmanager
    def watching(self) -> Iterator[_Try]:
        """Record the jobs added while the block (one try) runs."""
        current = _Try()
        token = _current.set(current)
        try:
            yield current
        finally:
            current.open = False
            _current.reset(token)

    def remove(self, attempt: _Try) -> int:
        """Remove the jobs ``attempt`` added that are still scheduled; return how many.

        A ``ConversationHandler``'s timeout is left to it: it keeps the job, and the
        next try (or the next update) removes and replaces it, as PTB does.
        """
        removed = 0
        for job_id, store in attempt.added if self._scheduler is not None else ():
            aps_job = self._scheduler.get_job(job_id, store)
            if aps_job is None:
                continue  # it ran, or was removed already
            job = _ptb_job(aps_job)
            if job is None:  # added to the scheduler directly, not through the JobQueue
                self._scheduler.remove_job(job_id, store)
            elif isinstance(getattr(job.callback, "__self__", None), ConversationHandler):
                continue
            else:
                job.schedule_removal()
            removed += 1
        attempt.added = []
        return removed


def _ptb_job(aps_job: Any) -> Job[Any] | None:
    try:
        job: object = Job.from_aps_job(aps_job)
    except (IndexError, AttributeError):
        return None
    return job if isinstance(job, Job) else None


def _job_added(event: Any) -> None:
    attempt = _current.get()
    if attempt is not None and attempt.open:
        attempt.added.append((event.job_id, event.jobstore))


def _wake_outside_tries(wakeup: Callable[[], None]) -> None:
    """Wake the scheduler outside any try: its timers, and the jobs they run, keep the
    context they were set in, and a try's ``add_job`` wakes it."""
    context = contextvars.copy_context()
    context.run(_current.set, None)
    context.run(wakeup)
