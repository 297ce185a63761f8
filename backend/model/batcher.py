"""Micro-batching across concurrent requests: one scoring thread in front of the judge.

Request threads call ``Batcher.score`` (same signature as ``Judge.score``) and wait. The scoring thread takes
the oldest waiting request, waits up to ``MICRO_BATCH_WAIT_MS`` for more requests with the same rubric and
adapter (until ``MICRO_BATCH_MAX_TASKS`` tasks are gathered), runs one ``Judge.score`` over all their tasks
and hands each request its own slice back. A request is never split; one larger than the task limit runs
alone. At most ``MICRO_BATCH_MAX_QUEUE`` requests wait: one more is refused at once with ``BatcherBusy``
(the route answers 503 "busy, retry") instead of piling up behind the model.

The judge's own lock still guards the model, so other callers (the offline commands) stay safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.core.rubric import Rubric
from backend.core.scores import TaskScore

log = logging.getLogger(__name__)


class BatcherBusy(RuntimeError):
    """The queue in front of the model is full; the client should retry shortly."""


@dataclass
class _Request:
    rubric: Rubric
    inputs: list[Mapping[str, str]]
    adapter: str | None
    done: threading.Event = field(default_factory=threading.Event)
    results: list[TaskScore] | None = None
    error: BaseException | None = None

    @property
    def key(self) -> tuple[int, str | None]:
        return id(self.rubric), self.adapter


class Batcher:
    """Merges concurrent ``score`` calls for the same (rubric, adapter) into one judge call."""

    def __init__(self, judge: Any, *, max_tasks: int = 64, wait_s: float = 0.005, max_queue: int = 32) -> None:
        self.judge = judge
        self.max_tasks = max_tasks
        self.wait_s = wait_s
        self.max_queue = max_queue
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.in_flight = 0  # requests taken by the scoring thread and not yet answered
        self.calls = 0  # judge calls made (merged batches), for logs and tests
        self.merged = 0  # requests that shared a judge call with another

    @property
    def queued(self) -> int:
        """Requests waiting for the scoring thread."""
        with self._cond:
            return len(self._queue)

    def score(self, rubric: Rubric, tasks: Sequence[Mapping[str, str]], adapter: str | None = None) -> list[TaskScore]:
        """Score ``tasks`` like ``Judge.score``, possibly together with other threads' tasks."""
        if not tasks:
            return []
        request = _Request(rubric, list(tasks), adapter)
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise BatcherBusy(
                    f"{len(self._queue)} requests are already waiting for the model "
                    f"(MICRO_BATCH_MAX_QUEUE={self.max_queue}); retry in a moment"
                )
            self._queue.append(request)
            self._ensure_thread()
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.results is not None
        return request.results

    def _ensure_thread(self) -> None:
        # started lazily, in the process that serves (gunicorn forks after loading the app)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="rubric-judge-batcher", daemon=True)
            self._thread.start()

    def _take(self) -> list[_Request]:
        """The oldest request and every waiting request with its key that fits, after the wait window."""
        with self._cond:
            while not self._queue:
                self._cond.wait()
            first = self._queue[0]
            deadline = time.monotonic() + self.wait_s
            while True:
                same = [r for r in self._queue if r.key == first.key]
                remaining = deadline - time.monotonic()
                if sum(len(r.inputs) for r in same) >= self.max_tasks or remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken, total = [], 0
            for request in same:
                if taken and total + len(request.inputs) > self.max_tasks:
                    continue
                taken.append(request)
                total += len(request.inputs)
            for request in taken:
                self._queue.remove(request)
            self.in_flight = len(taken)
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            first = taken[0]
            inputs = [item for request in taken for item in request.inputs]
            try:
                scores = self.judge.score(first.rubric, inputs, first.adapter)
            except BaseException as exc:  # handed to every waiting request; the thread goes on
                self.in_flight = 0
                for request in taken:
                    request.error = exc
                    request.done.set()
                continue
            self.calls += 1
            if len(taken) > 1:
                self.merged += len(taken)
                log.debug("scored %d requests (%d tasks) in one batch", len(taken), len(inputs))
            self.in_flight = 0
            start = 0
            for request in taken:
                request.results = scores[start : start + len(request.inputs)]
                start += len(request.inputs)
                request.done.set()
