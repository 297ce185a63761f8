"""RQ entry points: the glue between the queue and the work.

``train_project(project_id)``: hold the project's running mark (renewed by a heartbeat), fetch every finished
annotation from Label Studio, skip the run when nothing changed since the last version, run the training
pipeline (``worker.pipeline.run_training``) and move the active version when the new one is promoted; a
transient Label Studio failure is retried with back-off.

``prelabel_project(project_id)``: pre-annotate the project's unlabeled tasks with the active version and write
the predictions through Label Studio's API (``worker.prelabel``), progress in the job's meta.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from rq import Retry, get_current_job

from backend.core.labeling import Binding, config_problems, parse_label_config
from backend.core.rubric import load_all
from backend.label_studio import LabelStudioError
from backend.model.model_loader import short_model_name
from backend.settings import Settings
from backend.state.redis_conn import redis_client
from backend.state.registry import Registry, parse_project, version_name
from backend.state.serving import ServingGate
from backend.state.triggers import Triggers
from worker.faults import fault_point
from worker.pipeline import TrainingError, data_fingerprint, run_training
from worker.prelabel import DEFAULT_BATCH_SIZE
from worker.prelabel import prelabel_project as run_prelabel
from worker.source import SourceError, fetch_project, records_from_export

log = logging.getLogger(__name__)


def _job_progress(project: str, job: Any, triggers: Any, settings: Settings) -> Callable[[dict[str, Any]], None]:
    steps = 0

    def report(update: dict[str, Any]) -> None:
        nonlocal steps
        if "step" in update:
            steps += 1
            if steps == 1:
                fault_point(settings, "training", report)
        if job is not None:
            job.meta.update({"stage": "training"} | update)
            job.save_meta()
        if triggers is not None and job is not None:
            triggers.heartbeat(project, job.id)

    return report


def _stage(job: Any, stage: str, triggers: Any = None, project: str = "", **extra: Any) -> None:
    log.info("stage: %s %s", stage, extra or "")
    if job is not None:
        job.meta.update({"stage": stage, **extra})
        job.save_meta()
        if triggers is not None:
            triggers.heartbeat(project, job.id)


def train_project(project_id: str, base_name: str | None = None) -> Any:
    """RQ job: retrain the project's adapter from Label Studio's finished annotations.

    A transient Label Studio failure (unreachable, 5xx, 429) returns RQ's ``Retry`` with exponential
    back-off, TRAIN_RETRIES times at most, then fails with the Label Studio error; a rejected token or a
    missing project fails at once. While a retry waits, the project's queued mark names this job, so
    new triggers are absorbed by it."""
    settings = Settings.from_env().for_worker()
    project = parse_project(project_id)
    job = get_current_job()
    redis = redis_client(settings)
    base = base_name or short_model_name(settings.base_model, settings.quantization)
    triggers = Triggers(redis, base, settings.queue_name)
    job_id = job.id if job is not None else f"local-{os.getpid()}"
    other = triggers.start(project, job_id)
    if other:
        redis.set(triggers.key("dirty", project), "1")
        log.warning("project %s: job %s is already training; this trigger becomes its follow-up", project, other)
        return {"status": "deferred", "running": other}
    retrying = False
    try:
        with triggers.heartbeat_thread(project, job_id):
            return _train(settings, project, base, job, triggers, redis)
    except LabelStudioError as exc:
        done = (job.number_of_retries or 0) if job is not None else 0
        if not exc.transient or job is None or done >= settings.train_retries:
            if exc.transient and settings.train_retries:
                raise SourceError(
                    f"{exc} (gave up after {done} retr{'y' if done == 1 else 'ies'})", transient=True
                ) from None
            raise
        intervals = settings.retry_intervals()
        log.warning(
            "project %s: %s; retry %d of %d in %d s", project, exc, done + 1, settings.train_retries, intervals[done]
        )
        _stage(job, "waiting to retry", None, project, error=str(exc)[:500], retry=done + 1)
        retrying = True
        triggers.requeue(project, job_id)
        # RQ counts retries itself; the remaining intervals start at this retry's
        return Retry(max=settings.train_retries, interval=intervals)
    finally:
        if not retrying:
            try:
                triggers.finish(project, job_id)
            except Exception:  # the trigger state expires on its own; never mask the job's own error
                log.exception("project %s: could not clear the running mark", project)


def _train(settings: Settings, project: str, base: str, job: Any, triggers: Any, redis: Any) -> dict[str, Any]:
    _stage(job, "fetching annotations", triggers, project)
    label_config, export = fetch_project(settings.label_studio_url, settings.label_studio_api_key, project)
    registry = Registry(settings.model_dir, base, redis)
    rubrics = load_all(settings.rubric_dir)
    parsed = parse_label_config(label_config) if label_config else None
    rubric = registry.rubric_for(project, rubrics, parsed)
    if rubric is None:
        raise TrainingError(
            f"project {project}: no rubric fits its labeling config; connect the backend "
            'with extra_params {"rubric": NAME} or use `rubric-judge label-config`'
        )
    records, stats = records_from_export(export, rubric, Binding.for_config(rubric, parsed), settings.group_by)
    log.info("project %s: %s", project, stats.as_dict())
    registry.remove_partial(project)  # this job holds the running mark: leftovers are from a killed run
    forced = triggers.take_force(project)
    numbers = registry.version_numbers(project)
    if numbers and not forced:
        last = registry.evaluation_path(project, numbers[-1])
        previous = json.loads(last.read_text(encoding="utf-8")).get("data_fingerprint") if last.is_file() else None
        if previous == data_fingerprint(records):
            message = f"nothing new since {version_name(numbers[-1])}"
            log.info(
                "project %s: %s (no annotation created, updated or deleted); not retraining. Start Training "
                "with force retrains",
                project,
                message,
            )
            _stage(job, "done", triggers, project, skipped=message)
            outcome = {
                "status": "skipped",
                "reason": message,
                "job": job.id if job is not None else None,
                "version": registry.model_version(project, numbers[-1]),
            }
            triggers.record_outcome(project, outcome)
            return outcome
    number = registry.next_version(project)
    active = registry.active_version(project)
    incumbent = (registry.adapter_name(project, active), registry.version_dir(project, active)) if active else None
    _stage(job, "training", triggers, project, version=version_name(number))
    result = run_training(
        settings,
        rubric,
        records,
        registry.version_dir(project, number),
        incumbent=incumbent,
        snapshot=export,
        overrides=settings.training_overrides(),
        progress=_job_progress(project, job, triggers, settings),
        gate=ServingGate.for_worker(settings, redis, base),
        extra={
            "project": project,
            "version": registry.model_version(project, number),
            "source": stats.as_dict(),
            "label_config_problems": config_problems(rubric, parsed) if parsed else [],
        },
    )
    registry.write_base_evaluation(project, result.metrics["base"])
    refresh = None
    if result.promoted:
        registry.set_active(project, number)
        refresh = _refresh_predictions(settings, triggers, project, result.metrics["method"])
    _stage(job, "done", triggers, project, version=version_name(number), promoted=result.promoted)
    outcome = {
        "status": "done",
        "version": registry.model_version(project, number),
        "promoted": result.promoted,
        "method": result.metrics["method"],
        "alpha_dims": result.metrics["alpha_dims"],
        "alpha_flat": result.metrics["alpha_flat"],
        "decision": result.metrics["decision"],
        "job": job.id if job is not None else None,
        "refresh_job": refresh,
    }
    triggers.record_outcome(project, outcome)
    return outcome


def _refresh_predictions(settings: Settings, triggers: Any, project: str, method: str) -> str | None:
    """After a feature head is promoted, rewrite the pre-annotations of the project's unannotated tasks at the
    new version through the pre-annotation job (fast: their features are in the feature store); its progress
    shows in ``/status`` as ``prelabel``. None when Label Studio credentials or the store are missing."""
    if method != "head" or not settings.label_studio_api_key or not settings.feature_store_mb:
        return None
    try:
        result = triggers.prelabel(project)
    except Exception as exc:  # the version is promoted either way; the next Retrieve Predictions refreshes
        log.warning("project %s: cannot enqueue the refresh of its predictions (%s)", project, exc)
        return None
    log.info("project %s: predictions refreshed at the new version by job %s", project, result.job_id)
    return result.job_id


def prelabel_project(
    project_id: str,
    include_annotated: bool = False,
    batch_size: int | None = None,
    task_ids: list[int] | None = None,
    tasks: list[dict[str, Any]] | None = None,
    label_config: str | None = None,
) -> dict[str, Any]:
    """RQ job: pre-annotate every unlabeled task of a project with the active version (``worker.prelabel``);
    ``task_ids``: only those (the tasks a ``/predict`` deadline left unscored, or new tasks read ahead);
    ``tasks``: these tasks as Label Studio's TASKS_CREATED event sent them (read ahead: scored into the
    prediction cache and the feature store, nothing written to Label Studio), bound by ``label_config``.

    Progress goes to the job's meta: ``{"stage": "prelabel", "done": n, "total": m, "written": w}``."""
    settings = Settings.from_env().for_worker()
    job = get_current_job()

    def report(done: int, total: int, written: int) -> None:
        log.info("prelabel project %s: %d/%d scored, %d written", project_id, done, total, written)
        if job is not None:
            job.meta.update({"stage": "prelabel", "done": done, "total": total, "written": written})
            job.save_meta()

    result = run_prelabel(
        settings,
        project_id,
        include_annotated=include_annotated,
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
        task_ids=task_ids,
        tasks=tasks,
        label_config=label_config,
        progress=report,
        gate=ServingGate.for_worker(settings, redis_client(settings)),
    )
    if job is not None:
        job.meta.update({"stage": "done"})
        job.save_meta()
    return result.as_dict()
