"""Asynchronous pre-annotation: score a whole project and write the predictions back through Label Studio's API.

Label Studio's own "Retrieve Predictions" is one synchronous ``/predict`` call that must finish in 100 s.
``prelabel_project`` does not depend on it: it lists the project's tasks page by page (label-studio-sdk
``LabelStudio`` client), skips tasks that already have annotations (unless ``include_annotated``) and tasks
that already have a prediction from the active model version, scores the rest in batches with that version
(prediction cache and judge exactly as ``/predict`` does), and creates one prediction per task with
``client.predictions.create``. Running it twice writes nothing the second time.

Used by ``rubric-judge prelabel --project N`` (progress bar) and the RQ job ``worker.jobs.prelabel_project``
(progress in the job's meta), which ``POST /prelabel`` enqueues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from backend.core.labeling import task_inputs
from backend.label_studio import (
    LabelStudioError,
    describe_error,
    field,
    is_annotated,
    label_studio_client,
    list_tasks,
    prediction_versions,
)
from backend.service import RequestError, build_service
from backend.settings import Settings
from backend.state.registry import RegistryError, parse_project
from backend.state.serving import ServingGate, pause_hooks

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32

#: called with (tasks done, tasks to score, predictions written) after every batch
Progress = Callable[[int, int, int], None]


class PrelabelError(RuntimeError):
    """Pre-annotation cannot run or stopped; the message says why."""


@dataclass
class PrelabelReport:
    project: str
    model_version: str
    rubric: str
    listed: int = 0
    skipped_annotated: int = 0
    skipped_predicted: int = 0
    skipped_missing_inputs: int = 0
    scored: int = 0
    written: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prelabel_project(
    settings: Settings,
    project: int | str,
    *,
    include_annotated: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    task_ids: list[int] | None = None,
    tasks: list[dict[str, Any]] | None = None,
    label_config: str | None = None,
    service: Any = None,
    client: Any = None,
    progress: Progress | None = None,
    gate: ServingGate | None = None,
) -> PrelabelReport:
    """Score every task of ``project`` that needs it and write the predictions to Label Studio.

    ``service`` is a ``backend.service.Service`` (built from ``settings`` when omitted, after Label Studio has
    answered: loads the judge); ``client`` a label-studio-sdk ``LabelStudio`` client (from
    ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY``); ``gate``: the scoring waits there while a backend on this
    machine serves ``/predict`` (``backend.state.serving``). ``task_ids``: only these tasks (still skipping the
    annotated and the already predicted ones). ``tasks``: read ahead: these tasks (``{"id", "data"}`` from a
    TASKS_CREATED event) are scored with the project's active version, which stores their scores and features
    (prediction cache, feature store), the project's rubric and fields chosen by ``label_config`` (the event's);
    nothing is written to Label Studio and Label Studio is not asked.
    """
    started = time.monotonic()
    if batch_size < 1:
        raise PrelabelError(f"--batch-size {batch_size}: must be at least 1")
    try:
        pid = int(parse_project(project))
    except RegistryError as exc:
        raise PrelabelError(str(exc)) from None
    if tasks is not None:
        return _read_ahead(settings, pid, tasks, label_config, batch_size, service, progress, gate, started)
    try:
        client = client or label_studio_client(settings.label_studio_url, settings.label_studio_api_key)
    except LabelStudioError as exc:
        raise PrelabelError(str(exc)) from None
    url = settings.label_studio_url
    try:
        details = client.projects.get(id=pid)
        tasks = list(list_tasks(client, pid))
        if task_ids is not None:
            wanted = {int(i) for i in task_ids}
            tasks = [t for t in tasks if int(t["id"]) in wanted]
    except Exception as exc:
        raise PrelabelError(
            f"cannot read project {pid} from Label Studio at {url} ({describe_error(exc, url, pid)})"
        ) from None
    service, ctx = _project_context(settings, service, pid, field(details, "label_config") or None)
    report = PrelabelReport(str(pid), ctx.model_version, ctx.rubric.name, listed=len(tasks))
    todo = []
    for task in tasks:
        if not include_annotated and is_annotated(task):
            report.skipped_annotated += 1
        elif ctx.model_version in prediction_versions(client, task):
            report.skipped_predicted += 1
        elif task_inputs(ctx.rubric, task.get("data"), ctx.binding)[0] is None:
            report.skipped_missing_inputs += 1
        else:
            todo.append(task)
    log.info(
        "project %s: %d task(s), %d to score with %s (%d annotated, %d already predicted by it)",
        pid,
        len(tasks),
        len(todo),
        ctx.model_version,
        report.skipped_annotated,
        report.skipped_predicted,
    )
    if progress:
        progress(0, len(todo), 0)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        with pause_hooks(service.judge.model, gate):
            results = service.predict_tasks(ctx, batch)
        for task, item in zip(batch, results, strict=True):
            # every task here has the rubric's inputs: an empty result is a version that pre-fills nothing
            # (day one), written like any other so that the task shows which version answered
            report.scored += 1
            try:
                client.predictions.create(
                    task=int(task["id"]),
                    result=item["result"],
                    score=item["score"],
                    model_version=item["model_version"],
                )
            except Exception as exc:
                raise PrelabelError(
                    f"writing the prediction of task {task['id']} to {url} failed "
                    f"({describe_error(exc, url, pid)}); {report.written} written so far, a new "
                    "run continues where this one stopped"
                ) from None
            report.written += 1
        if progress:
            progress(start + len(batch), len(todo), report.written)
    report.seconds = round(time.monotonic() - started, 2)
    log.info("project %s: pre-annotation done: %s", pid, report.as_dict())
    return report


def _project_context(settings: Settings, service: Any, pid: int, label_config: str | None) -> tuple[Any, Any]:
    """The service (built from ``settings`` when None: loads the judge) and the project's scoring context, or a
    ``PrelabelError`` saying why the project cannot be scored."""
    if service is None:
        service = build_service(settings, serving_mark=False)
    try:
        return service, service.context(str(pid), label_config)
    except RequestError as exc:
        raise PrelabelError(f"project {pid}: {exc.message}") from None


def _read_ahead(
    settings: Settings,
    pid: int,
    tasks: list[dict[str, Any]],
    label_config: str | None,
    batch_size: int,
    service: Any,
    progress: Progress | None,
    gate: ServingGate | None,
    started: float,
) -> PrelabelReport:
    """Score ``tasks`` with the project's active version and write nothing: their scores and the base model's
    features land in the feature store and the prediction cache, for the next /predict and retraining."""
    service, ctx = _project_context(settings, service, pid, label_config or None)
    report = PrelabelReport(str(pid), ctx.model_version, ctx.rubric.name, listed=len(tasks))
    inputs = []
    for task in tasks:
        found, _ = task_inputs(ctx.rubric, task.get("data"), ctx.binding)
        if found is None:
            report.skipped_missing_inputs += 1
        else:
            inputs.append(found)
    if progress:
        progress(0, len(inputs), 0)
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        with pause_hooks(service.judge.model, gate):
            service.score_inputs(ctx, batch)
        report.scored += len(batch)
        if progress:
            progress(start + len(batch), len(inputs), 0)
    report.seconds = round(time.monotonic() - started, 2)
    log.info(
        "project %s: read %d new task(s) ahead with %s (stored; nothing written to Label Studio): %s",
        pid,
        report.scored,
        ctx.model_version,
        report.as_dict(),
    )
    return report
