"""Serving first: the backend marks the moments it is scoring, and a training job on the same machine pauses
while the mark is up.

On a machine with few cores, a training job beside the backend slows ``/predict`` about six-fold, and neither
a lower priority nor fewer threads for the job helps (``benchmarks/SPEED.md``). So the job steps aside: it
checks the mark before each transformer layer's forward pass (``pause_hooks``) and waits while a backend is
scoring. A pause therefore begins within one layer's forward pass, or one backward pass in LoRA training.

The mark is one Redis sorted set, ``rubric-judge:<base>:serving``: member ``<host>|<pid>`` of each backend
process that is scoring, score the Unix time until which the member holds. ``ServingMark`` (backend) adds
its member when a scoring call starts, renews it every ``REFRESH_S`` while calls run and removes it when the
last one ends; a backend that dies stops renewing and its member lapses after ``MARK_TTL_S``. ``ServingGate``
(worker) reads the set at most every ``poll_s``: with ``WORKER_PAUSE_FOR_SERVING=auto`` only members of its
own host count, with ``always`` every member. After ``WORKER_MAX_PAUSE_S`` of pausing without a break, the
job runs unpaused for a tenth of that, so a backend that never idles slows training but cannot stop it.

Both sides get a Redis client passed in; every Redis error means "not serving" (logged once per outage).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from backend.model.model_loader import short_model_name
from backend.settings import Settings
from backend.state.redis_conn import redis_key

log = logging.getLogger(__name__)

MARK_TTL_S = 5.0
REFRESH_S = 1.0
RETRY_S = 5.0  # after a Redis error, neither side tries Redis again for this long
PAUSE_MODES = ("auto", "always", "never")


def serving_key(base_name: str) -> str:
    return redis_key(base_name, "serving")


def this_host() -> str:
    return socket.gethostname()


class ServingMark:
    """The backend's side: ``with mark.scoring():`` around every call that runs the model.

    Redis is called outside the lock, and after a failure not again for ``RETRY_S``, so a hung Redis costs a
    request at most one 0.5 s timeout and never holds up another request."""

    def __init__(
        self, redis: Any, base_name: str, host: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.key = serving_key(base_name)
        self.host = host or this_host()
        self._clock = clock
        self._lock = threading.Lock()
        self._active = 0
        self._renewer: threading.Thread | None = None
        self._wake = threading.Event()
        self._failed = False
        self._retry_at = float("-inf")  # time.monotonic() before which Redis is not tried again

    @property
    def member(self) -> str:
        return f"{self.host}|{os.getpid()}"  # read at use: gunicorn forks after the mark is built

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            first = self._active == 1
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew, name="serving-mark", daemon=True)
                self._renewer.start()
        if first:
            self._publish()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                last = self._active == 0
            if last:
                self._withdraw()

    def _renew(self) -> None:
        while True:
            self._wake.wait(REFRESH_S)
            if self._active:
                self._publish()
                if not self._active:  # the last call ended while this renewal ran: take the mark down again
                    self._withdraw()

    def _publish(self) -> None:
        now = self._clock()
        self._call(
            lambda: (
                self.redis.pipeline()
                .zadd(self.key, {self.member: now + MARK_TTL_S})
                .zremrangebyscore(self.key, "-inf", now)
                .expire(self.key, int(MARK_TTL_S * 4))
                .execute()
            )
        )

    def _withdraw(self) -> None:
        self._call(lambda: self.redis.zrem(self.key, self.member))

    def _call(self, action: Callable[[], Any]) -> None:
        if time.monotonic() < self._retry_at:
            return
        try:
            action()
        except Exception as exc:  # no Redis: a training job beside us cannot see the mark, nothing else breaks
            if not self._failed:
                log.warning(
                    "cannot publish the serving mark (%s): a training job on this machine will not pause "
                    "for /predict until Redis answers",
                    type(exc).__name__,
                )
            self._failed = True
            self._retry_at = time.monotonic() + RETRY_S
        else:
            self._failed = False


class ServingGate:
    """The training job's side: ``gate.wait()`` at every checkpoint returns at once unless a backend is scoring,
    then waits until it is done (``max_pause_s`` at most without a break)."""

    def __init__(
        self,
        redis: Any,
        base_name: str,
        mode: str = "auto",
        host: str | None = None,
        max_pause_s: float = 300.0,
        poll_s: float = 0.25,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in PAUSE_MODES:
            raise ValueError(f"pause mode {mode!r}: expected one of {', '.join(PAUSE_MODES)}")
        self.redis = redis
        self.key = serving_key(base_name)
        self.mode = mode
        self.host = host or this_host()
        self.max_pause_s = max_pause_s
        self.poll_s = poll_s
        self._clock = clock  # wall time: the mark's scores
        self._timer = timer  # durations: pauses, polling, retries
        self._sleep = sleep
        self._checked_at = float("-inf")
        self._retry_at = float("-inf")
        self._busy = False
        self._grace_until = float("-inf")
        self._failed = False
        #: how often and how long this gate paused, for the job's log and metrics
        self.pauses = 0
        self.paused_s = 0.0

    @classmethod
    def for_worker(cls, settings: Settings, redis: Any, base_name: str | None = None) -> ServingGate | None:
        """The gate of a job run with ``settings`` (WORKER_PAUSE_FOR_SERVING, WORKER_MAX_PAUSE_S) for the backends of
        ``base_name`` (default: the settings' base model); None for ``never``."""
        if settings.worker_pause_for_serving == "never":
            return None
        return cls(
            redis,
            base_name or short_model_name(settings.base_model, settings.quantization),
            settings.worker_pause_for_serving,
            max_pause_s=settings.worker_max_pause_s,
        )

    def serving(self) -> bool:
        """Whether a backend that counts (same host under ``auto``) holds the mark now. One Redis read."""
        if self.mode == "never" or self._timer() < self._retry_at:
            return False
        now = self._clock()
        try:
            members = self.redis.zrangebyscore(self.key, now, "+inf")
        except Exception as exc:  # not again for RETRY_S: a hung Redis must not cost every layer a timeout
            if not self._failed:
                log.warning(
                    "cannot read the serving mark (%s): training does not pause for /predict until Redis answers",
                    type(exc).__name__,
                )
            self._failed = True
            self._retry_at = self._timer() + RETRY_S
            return False
        self._failed = False
        names = {m.decode() if isinstance(m, bytes) else str(m) for m in members} - {f"{self.host}|{os.getpid()}"}
        if self.mode == "always":
            return bool(names)
        return self.host in {name.rsplit("|", 1)[0] for name in names}

    def _serving_now(self) -> bool:
        if self._timer() - self._checked_at >= self.poll_s:
            self._busy = self.serving()
            self._checked_at = self._timer()  # after the read: a slow answer does not make the next layer ask
        return self._busy

    def wait(self) -> float:
        """Block while a backend is scoring; the seconds paused (0.0 almost always, cheaply)."""
        if self.mode == "never" or self._timer() < self._grace_until or not self._serving_now():
            return 0.0
        started = self._timer()
        self.pauses += 1
        log.info("pausing training: the backend on %s is scoring", self.host if self.mode == "auto" else "Redis")
        while True:
            self._sleep(self.poll_s)
            waited = self._timer() - started
            if waited >= self.max_pause_s:
                self._grace_until = self._timer() + self.max_pause_s / 10
                log.warning(
                    "the backend has been scoring for %.0f s without a break; training resumes for %.0f s "
                    "(WORKER_MAX_PAUSE_S)",
                    waited,
                    self.max_pause_s / 10,
                )
                break
            self._checked_at = float("-inf")
            if not self._serving_now():
                break
        waited = self._timer() - started
        self.paused_s += waited
        log.info("training resumes after pausing %.1f s for /predict", waited)
        return waited

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "pauses": self.pauses, "paused_s": round(self.paused_s, 1)}


def decoder_layers(model: Any) -> list[Any]:
    """The model's transformer blocks (modules named ``*DecoderLayer``/``*Block``); the model itself if none."""
    found = [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]
    return found or [model]


@contextlib.contextmanager
def pause_hooks(model: Any, gate: ServingGate | None) -> Iterator[None]:
    """Within the block, every transformer layer of ``model`` first waits at ``gate`` (nothing without one), in
    the forward pass and, when training, again when the backward pass reaches it."""
    if gate is None or gate.mode == "never":
        yield
        return

    def before_layer(module: Any, args: Any) -> None:
        gate.wait()

    def wait_in_backward(grad: Any) -> None:
        gate.wait()  # returns None: the gradient passes unchanged

    def after_layer(module: Any, args: Any, output: Any) -> None:
        # training: the backward pass (about two thirds of a step) waits too, as each layer's gradient is reached
        first = output[0] if isinstance(output, tuple) else output
        if getattr(first, "requires_grad", False):
            first.register_hook(wait_in_backward)

    handles = []
    for layer in decoder_layers(model):
        handles.append(layer.register_forward_pre_hook(before_layer))
        handles.append(layer.register_forward_hook(after_layer))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
