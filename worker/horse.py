"""The RQ worker that ``rubric-judge worker`` runs: RQ's forking ``Worker``, which takes its work-horse down
with it when it is stopped.

RQ runs each job in a work-horse forked into a process group of its own, so a signal to the worker's process
group does not reach it, and RQ's first SIGTERM or SIGINT only asks the worker to stop *after* the job (a
training run: minutes to hours). A worker stopped by a supervisor that then kills its process group left the
horse training, orphaned. Here:

- the first SIGTERM or SIGINT stops the running work-horse at once: SIGTERM to its process group, SIGKILL
  after ``HORSE_STOP_GRACE_S``; RQ then fails the job as it fails any job whose horse died (it is retried
  instead when it has retries left: the same end as RQ's abandoned-job cleanup gives a job of a worker that
  died), and the worker exits. An idle worker exits at once, as in RQ;
- every process the worker forks (the work-horse, RQ's scheduler) gets ``PR_SET_PDEATHSIG`` = SIGKILL on
  Linux, so a worker killed outright (SIGKILL, the OOM killer) takes them with it.

A training job builds its version in a ``.v<N>.tmp-*`` folder renamed into place at the end, so a stopped job
leaves no version and does not move ``ACTIVE``; the next training job of the project removes the folder
(``Registry.remove_partial``). The project's running mark names a failed job: the next trigger clears it
(``Triggers.trigger``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from rq import Worker
from rq.utils import now

log = logging.getLogger(__name__)

#: How long a stopped worker waits for its work-horse (and the horse's process group) to end after SIGTERM
#: before it sends SIGKILL. A horse runs with SIGTERM's default action, so it normally ends at once.
HORSE_STOP_GRACE_S = 10.0
_POLL_S = 0.05
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_prctl: Callable[..., int] | None = None
_forking_pid = 0
_hook_installed = False


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_parent() -> None:
    """In a just-forked child: SIGKILL when the parent (the thread that forked) dies; at once if it already has."""
    if _prctl is None:
        return
    _prctl(ctypes.c_int(_PR_SET_PDEATHSIG), *(ctypes.c_ulong(v) for v in (signal.SIGKILL, 0, 0, 0)))
    if os.getppid() != _forking_pid:  # the parent died between fork() and prctl(): nobody else will tell us
        os.kill(os.getpid(), signal.SIGKILL)


def install_parent_death_signal() -> bool:
    """From now on, every process this process forks (and their forks) is SIGKILLed when its parent dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); returns whether it is in effect. The signal follows the thread
    that forked: RQ forks its work-horse and its scheduler from the worker's main thread."""
    global _prctl, _hook_installed
    if _hook_installed:
        return _prctl is not None
    _prctl = _load_prctl()
    if _prctl is None:
        log.info("no prctl(PR_SET_PDEATHSIG) on %s: a worker killed outright leaves its work-horse", sys.platform)
        return False
    os.register_at_fork(before=_before_fork, after_in_child=_die_with_parent)
    _hook_installed = True
    return True


def _exited(pid: int) -> bool:
    """Whether child ``pid`` has ended, without reaping it (RQ's monitor loop collects its status)."""
    if not hasattr(os, "waitid"):  # macOS: no waitid; an unreaped horse reads as running until SIGKILL
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(pid: int, sig: int) -> None:
    """``sig`` to the process group led by ``pid`` (the horse calls setpgrp first thing); to ``pid`` alone
    while that group does not exist yet."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class JudgeWorker(Worker):
    """RQ's ``Worker``; a SIGTERM or SIGINT stops the running job's work-horse at once (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_signal: int | None = None
        self._own_pid = os.getpid()

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self._own_pid = os.getpid()
        install_parent_death_signal()
        return bool(super().work(*args, **kwargs))

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._own_pid:
            # a horse forked an instant ago, before RQ set its own handlers: end as SIG_DFL would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        first = self._stop_signal is None
        if first:
            self._stop_signal = signum
        if self.horse_pid:
            self._stop_requested = True
            if first:
                self._stop_horse(self.horse_pid, name)
            else:
                self.log.warning("Worker %s: got %s again: SIGKILL to work-horse %d", self.name, name, self.horse_pid)
                _signal_group(self.horse_pid, signal.SIGKILL)
            return
        if not first:
            return
        # no work-horse: RQ's own stop. Idle, the worker leaves its blocking dequeue at once (StopRequested);
        # between dequeue and fork it stops after the fork (fork_work_horse stops the new horse at once)
        self.log.info("Worker %s: got %s: stopping", self.name, name)
        self._shutdown_requested_date = now()
        self._shutdown()

    def unsubscribe(self) -> None:
        """RQ's, without its unbounded wait. RQ unsubscribes, then calls the pubsub thread's ``stop()``, which
        since redis-py 8.2 joins that thread with no timeout; a thread that handled the unsubscribe reply before
        its running flag was cleared waits for a subscription for RQ's 60 s ``sleep_time`` first, and the worker
        took a minute to exit after SIGTERM (1 run in ~50 here). The flag is cleared first (no wait), the
        reply then ends the thread's read, and a thread still waiting after 1 s is left: it is a daemon."""
        thread = self.pubsub_thread
        if not thread:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        try:
            thread.stop(timeout=0)  # redis-py >= 8.2: clears the flag, joins for 0 s
        except TypeError:
            thread.stop()  # older redis-py: clears the flag, never joins
        self.pubsub.unsubscribe()
        thread.join(timeout=1)
        if thread.is_alive():
            self.log.info("Worker %s: pubsub thread still waiting; left to end with the process", self.name)
            return
        self.pubsub.close()

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        super().fork_work_horse(job, queue)  # returns in the worker only
        if self._stop_signal is not None and self.horse_pid:
            self._stop_horse(self.horse_pid, signal.Signals(self._stop_signal).name)

    def _stop_horse(self, pid: int, name: str) -> None:
        """SIGTERM to the horse's process group, SIGKILL after the grace period (and to whatever is left in the
        group). The horse is not reaped here: RQ's monitor loop records how it ended and fails the job."""
        job_id = os.environ.get("RQ_JOB_ID", "?")  # RQ sets it in the worker when it forks the horse
        self.log.warning(
            "Worker %s: got %s: stopping work-horse %d (job %s) now; the job fails as interrupted (a training "
            "job's half-built version is removed by the project's next training job)",
            self.name,
            name,
            pid,
            job_id,
        )
        # RQ's monitor loop waits for the horse under a SIGALRM timeout: not in the middle of this wait
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            started = time.monotonic()
            _signal_group(pid, signal.SIGTERM)
            grace = HORSE_STOP_GRACE_S
            while not _exited(pid) and time.monotonic() - started < grace:
                time.sleep(_POLL_S)
            ended = _exited(pid)
            if not ended:
                self.log.warning("Worker %s: work-horse %d still running after %g s: SIGKILL", self.name, pid, grace)
            _signal_group(pid, signal.SIGKILL)  # what survived SIGTERM, and anything the horse left in its group
            if ended:
                self.log.info(
                    "Worker %s: work-horse %d ended %.2f s after SIGTERM", self.name, pid, time.monotonic() - started
                )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def handle_job_failure(
        self,
        job: Any,
        queue: Any,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Any = None,
    ) -> None:
        if self._stop_signal is not None and exc_string.startswith("Work-horse terminated"):
            exc_string = (
                f"Work-horse stopped: the worker got {signal.Signals(self._stop_signal).name} while the job ran "
                f"(rubric-judge worker stops its running job when it is stopped); {exc_string}"
            )
        super().handle_job_failure(
            job, queue, started_job_registry=started_job_registry, exc_string=exc_string, execution=execution
        )
