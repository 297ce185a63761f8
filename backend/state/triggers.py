"""Training triggers: one training job per project, coalesced, in Redis.

State per project (all under ``rubric-judge:<base>:``):

- ``queued:<p>``  id of the job waiting in the queue; new triggers are absorbed by it;
- ``running:<p>`` id of the job being trained (expires RUNNING_TTL_S = 120 s after the job's last heartbeat,
  so a killed worker cannot block training for ever);
- ``dirty:<p>``   set by a trigger that arrives while a job runs: exactly one follow-up is queued when the
  running job ends;
- ``pending:<p>`` annotation events since the last training trigger.

Every transition is one Lua script, so concurrent webhooks and the worker never enqueue two jobs. Jobs are
enqueued by their dotted names (``worker.jobs.train_project``, ``worker.jobs.prelabel_project``) through one
helper (``_enqueue_job``), and read back through one (``job``): the backend never imports the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from backend.state.redis_conn import redis_key

log = logging.getLogger(__name__)

TRAIN_JOB = "worker.jobs.train_project"
PRELABEL_JOB = "worker.jobs.prelabel_project"
#: The running mark expires this long after the job's last heartbeat (the job beats every HEARTBEAT_S from
#: a thread), so a worker killed outright blocks new training for two minutes at most.
RUNNING_TTL_S = 120
HEARTBEAT_S = 30
#: RQ states in which a job will never run again: a queued/running mark naming such a job is stale.
FINAL_STATES = frozenset({"finished", "failed", "stopped", "canceled"})
QUEUED_TTL_S = 7 * 24 * 3600
RESULT_TTL_S = 7 * 24 * 3600  # how long RQ keeps a finished or failed job (GET /jobs/<id>)
JOB_TIMEOUT_S = 24 * 3600

_TRIGGER = """
local queued = redis.call('GET', KEYS[1])
if queued then return {'absorbed', queued} end
local running = redis.call('GET', KEYS[2])
if running then
  redis.call('SET', KEYS[3], '1')
  return {'follow-up', running}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[4], '0')
return {'enqueue', ARGV[1]}
"""

_COUNT = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(n) >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], '0')
  return 1
end
return 0
"""

_START = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local running = redis.call('GET', KEYS[2])
if running and running ~= ARGV[1] then return running end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return false
"""

_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) then
  redis.call('DEL', KEYS[2])
  if not redis.call('GET', KEYS[3]) then
    redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
    return ARGV[2]
  end
end
return false
"""


_REQUEUE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""

_CLEAR_STALE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] == 'running' then redis.call('DEL', KEYS[2]) end
  return 1
end
return 0
"""


@dataclass(frozen=True)
class TriggerResult:
    status: str  # enqueued | absorbed | follow-up | counted
    job_id: str | None
    pending: int = 0


class Triggers:
    """Coalescing training triggers for every project of one base model."""

    def __init__(self, redis: Any, base_name: str, queue_name: str) -> None:
        self.redis = redis
        self.base_name = base_name
        self.queue_name = queue_name
        self._trigger = redis.register_script(_TRIGGER)
        self._count = redis.register_script(_COUNT)
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)
        self._clear_stale = redis.register_script(_CLEAR_STALE)

    def key(self, what: str, project: str) -> str:
        return redis_key(self.base_name, what, project)

    def _keys(self, project: str) -> list[str]:
        return [
            self.key("queued", project),
            self.key("running", project),
            self.key("dirty", project),
            self.key("pending", project),
        ]

    def _enqueue(self, project: str, job_id: str) -> None:
        self._enqueue_job(
            TRAIN_JOB, (project, self.base_name), job_id, f"train project {project}", self.key("queued", project)
        )

    def _enqueue_job(self, func: str, args: tuple[Any, ...], job_id: str, description: str, mark: str) -> None:
        """Enqueue ``func`` (a dotted name: the backend never imports the worker) as ``job_id``; if that fails,
        delete the project's ``mark`` that named the job, so the next trigger tries again."""
        try:
            Queue(self.queue_name, connection=self.redis).enqueue(
                func,
                *args,
                job_id=job_id,
                job_timeout=JOB_TIMEOUT_S,
                result_ttl=RESULT_TTL_S,
                failure_ttl=RESULT_TTL_S,
                description=description,
            )
        except Exception:
            self.redis.delete(mark)
            raise

    def trigger(self, project: str, force: bool = False) -> TriggerResult:
        """Ask for a training run: enqueue one, or let the queued/running job absorb the request.

        A queued/running mark that names a job RQ has already finished or failed (a worker killed with
        SIGKILL never clears its mark) is stale: it is cleared and a fresh job is enqueued. ``force``: the next
        job retrains even when no annotation changed since the last run (``take_force``)."""
        if force:
            self.redis.set(self.key("force", project), "1", ex=QUEUED_TTL_S)
        for attempt in range(2):
            new_id = f"train-p{project}-{uuid.uuid4().hex[:12]}"
            status, job_id = self._trigger(keys=self._keys(project), args=[new_id, QUEUED_TTL_S])
            status = status.decode() if isinstance(status, bytes) else status
            job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
            if status == "enqueue":
                self._enqueue(project, job_id)
                log.info("project %s: training job %s enqueued", project, job_id)
                return TriggerResult("enqueued", job_id)
            which = "queued" if status == "absorbed" else "running"
            final = self.job_state(job_id) if attempt == 0 else None
            if final in FINAL_STATES:
                self._clear_stale(keys=[self.key(which, project), self.key("dirty", project)], args=[job_id, which])
                log.warning(
                    "project %s: the %s mark named job %s, which is %s; clearing it", project, which, job_id, final
                )
                continue
            log.info("project %s: trigger absorbed (%s, job %s)", project, status, job_id)
            return TriggerResult(status, job_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def job(self, job_id: str) -> dict[str, Any] | None:
        """``{"id", "status", "meta"}`` of an RQ job (status ``queued``, ``started``, ``failed``...; meta its
        progress), or None when RQ does not know it."""
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return None
        status = job.get_status(refresh=False)
        return {"id": job_id, "status": str(getattr(status, "value", status)), "meta": job.meta}

    def job_state(self, job_id: str) -> str | None:
        """RQ's status of ``job_id``, or None if unknown."""
        info = self.job(job_id)
        return info["status"] if info else None

    def count_annotations(self, project: str, n: int, threshold: int) -> TriggerResult:
        """Record ``n`` annotation events; trigger training once ``threshold`` have arrived since the last."""
        reached = self._count(keys=[self.key("pending", project)], args=[n, max(1, threshold)])
        if reached:
            return self.trigger(project)
        pending = int(self.redis.get(self.key("pending", project)) or 0)
        return TriggerResult("counted", None, pending)

    def prelabel(
        self,
        project: str,
        include_annotated: bool = False,
        task_ids: list[int] | None = None,
        tasks: list[dict[str, Any]] | None = None,
        label_config: str | None = None,
        why: str = "deferred",
    ) -> TriggerResult:
        """Enqueue a pre-annotation job for ``project`` unless one is still queued or running (then its id).
        ``task_ids``: only these tasks (the ones a ``/predict`` deadline left unscored, or new ones read ahead);
        such a job is always enqueued, since a job already queued may have listed the project's tasks before
        these existed or were left out. ``tasks``: these tasks' ``{"id", "data"}`` as Label Studio sent them
        (read ahead: the job scores them into the prediction cache and the feature store and writes nothing),
        bound to the project's ``label_config`` when the event carried it."""
        key = self.key("prelabel", project)
        new_id = f"prelabel-p{project}-{uuid.uuid4().hex[:12]}"
        if task_ids is not None or tasks is not None:
            count = len(task_ids if task_ids is not None else tasks or [])
            self._enqueue_job(
                PRELABEL_JOB,
                (project, include_annotated, None, None if task_ids is None else list(task_ids), tasks, label_config),
                new_id,
                f"pre-annotate {count} {why} task(s) of project {project}",
                self.key(f"prelabel-{why}", project),
            )
            log.info("project %s: pre-annotation job %s for %d %s task(s)", project, new_id, count, why)
            return TriggerResult("enqueued", new_id)
        if not self.redis.set(key, new_id, nx=True, ex=QUEUED_TTL_S):
            current = self.redis.get(key)
            current = current.decode() if isinstance(current, bytes) else current
            if current and self.job_state(current) in ("queued", "started", "deferred", "scheduled"):
                return TriggerResult("absorbed", current)
            self.redis.set(key, new_id, ex=QUEUED_TTL_S)
        self._enqueue_job(PRELABEL_JOB, (project, include_annotated), new_id, f"pre-annotate project {project}", key)
        log.info("project %s: pre-annotation job %s enqueued", project, new_id)
        return TriggerResult("enqueued", new_id)

    def record_deferral(self, project: str, deferral: dict[str, Any]) -> None:
        """Keep the last ``/predict`` deadline deferral (``/status``'s ``last_deferral``)."""
        self.redis.set(self.key("deferred", project), json.dumps(deferral), ex=QUEUED_TTL_S)

    def last_prelabel(self, project: str) -> dict[str, Any] | None:
        """The project's last pre-annotation job (``{"id", "status", "meta"}``: done / total / written)."""
        raw = self.redis.get(self.key("prelabel", project))
        job_id = raw.decode() if isinstance(raw, bytes) else raw
        return self.job(job_id) if job_id else None

    def last_deferral(self, project: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.key("deferred", project))
        return json.loads(raw) if raw else None

    # --- worker side -----------------------------------------------------------------------------

    def start(self, project: str, job_id: str) -> str | None:
        """Mark ``job_id`` running. Returns the id of another running job (then this one must not run)."""
        other = self._start(
            keys=[self.key("queued", project), self.key("running", project)], args=[job_id, RUNNING_TTL_S]
        )
        return other.decode() if isinstance(other, bytes) else other

    @contextlib.contextmanager
    def heartbeat_thread(self, project: str, job_id: str, interval: float = HEARTBEAT_S) -> Iterator[None]:
        """Within the block, a thread renews ``job_id``'s running mark every ``interval`` seconds (so a long
        step or evaluation keeps it; a dead process lets it expire)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    self.heartbeat(project, job_id)
                except Exception as exc:  # Redis blip: the next beat tries again
                    log.warning("project %s: heartbeat failed (%s)", project, type(exc).__name__)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def heartbeat(self, project: str, job_id: str) -> None:
        """Keep the running mark alive while training (it expires if the worker dies)."""
        key = self.key("running", project)
        value = self.redis.get(key)
        if value in (job_id, job_id.encode()):
            self.redis.expire(key, RUNNING_TTL_S)

    def requeue(self, project: str, job_id: str) -> None:
        """``job_id`` failed transiently and RQ will retry it: it is the project's queued job again (so new
        triggers are absorbed by the retry and a follow-up request stays recorded)."""
        self._requeue(keys=[self.key("running", project), self.key("queued", project)], args=[job_id, QUEUED_TTL_S])

    def finish(self, project: str, job_id: str) -> str | None:
        """Clear the running mark; if triggers arrived meanwhile, enqueue exactly one follow-up (its id)."""
        follow = f"train-p{project}-{uuid.uuid4().hex[:12]}"
        queued = self._finish(
            keys=[self.key("running", project), self.key("dirty", project), self.key("queued", project)],
            args=[job_id, follow, QUEUED_TTL_S],
        )
        queued = queued.decode() if isinstance(queued, bytes) else queued
        if queued:
            self._enqueue(project, queued)
            log.info("project %s: follow-up training job %s enqueued", project, queued)
        return queued

    def take_force(self, project: str) -> bool:
        """Whether a forced retrain was asked for since the last job started (and clear the request)."""
        pipe = self.redis.pipeline()
        pipe.get(self.key("force", project))
        pipe.delete(self.key("force", project))
        return bool(pipe.execute()[0])

    def record_outcome(self, project: str, outcome: dict[str, Any]) -> None:
        """Keep the last finished job's outcome (``/status`` shows it as ``last_run``)."""
        self.redis.set(self.key("last", project), json.dumps(outcome), ex=QUEUED_TTL_S)

    def state(self, project: str) -> dict[str, Any]:
        queued, running, dirty, pending, last = self.redis.mget(self._keys(project) + [self.key("last", project)])
        decode = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
        return {
            "queued": decode(queued),
            "running": decode(running),
            "follow_up": bool(dirty),
            "pending_annotations": int(pending or 0),
            "last_run": json.loads(last) if last else None,
        }
