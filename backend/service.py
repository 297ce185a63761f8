"""What the HTTP routes do, without HTTP: choose the rubric, read the active version, score, build results.

``Service`` holds the process-wide judge, the rubrics and the registry. Routes in ``backend.web.app`` only
validate requests and call it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.core.answers import PredictAnswer, Prediction, PredictTiming, SetupAnswer
from backend.core.labeling import (
    Binding,
    LabelConfigError,
    ParsedConfig,
    config_problems,
    parse_label_config,
    prediction_result,
    task_group,
    task_inputs,
)
from backend.core.prefill import PrefillDecision, PrefillPolicy
from backend.core.rubric import Rubric, load_all
from backend.core.scores import TaskScore
from backend.label_studio import (
    LabelStudioError,
    describe_error,
    is_annotated,
    label_studio_client,
    list_tasks,
    task_predictions,
)
from backend.model.batcher import Batcher, BatcherBusy
from backend.model.judge import Judge
from backend.reports.data import project_report, projects_index
from backend.reports.insights import label_next
from backend.settings import Settings
from backend.state.prediction_cache import PredictionCache
from backend.state.redis_conn import redis_client
from backend.state.registry import Registry, RegistryError, parse_project, parse_version, version_name
from backend.state.serving import ServingMark
from backend.state.triggers import Triggers

log = logging.getLogger(__name__)

#: Label Studio sends the same labeling config with every /setup and /predict: parse each distinct one once
#: (thread-safe; errors are not cached, so a bad config is re-checked and reported every time).
_parse_config = functools.lru_cache(maxsize=64)(parse_label_config)

TRIGGER_ACTIONS = {
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATIONS_DELETED",
    "START_TRAINING",
}


class RequestError(ValueError):
    """A request that cannot be served: ``status`` (a 4xx naming what was wrong with the request, or 503 when
    Redis or the scorer is unavailable) and the message sent back as ``{"status", "error"}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ProjectContext:
    project: str
    rubric: Rubric
    binding: Binding
    version: int
    model_version: str


#: tasks of the first chunk under a deadline: one task measures the speed of this machine right now, and costs no
#: more than one task's time however busy the CPU is
DEADLINE_FIRST_CHUNK = 1
#: a chunk is started only if its estimated cost times this fits before the deadline
DEADLINE_SAFETY = 1.5
#: a chunk is at most this many times the last one: after the first task, a whole batch (PREDICT_BATCH_SIZE 8), whose
#: cost is extrapolated up from that one task's (a batch is cheaper per task: the estimate errs long). Growing
#: by 2 (1, 2, 4, 8) cost a 16-task /predict 23% against one plain forward pass (SPEED.md)
DEADLINE_GROWTH = 8


class DeadlineEstimate:
    """What the next chunk will cost, from the chunks scored so far in this request, at the machine's speed right
    now. A chunk costs a fixed part plus a part per task (1.7 s for one task alone, 1.1 s each in a chunk of 4 on
    the reference CPU), so a cost is never extrapolated down from a bigger chunk: each chunk size keeps its last
    cost, and when a size is seen again its change of cost (the CPU became shared, or free) rescales the others.
    A chunk of k tasks is estimated at the cost of the smallest size >= k seen; a chunk bigger than any seen at
    the last chunk's cost per task times k (cheaper per task in truth). The first chunk is one task; a chunk is at
    most DEADLINE_GROWTH times the last and starts only if its estimate times DEADLINE_SAFETY ends before the
    deadline; scoring stops when no chunk does."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self.last: int = 0
        self.costs: dict[int, float] = {}

    def observe(self, tasks: int, seconds: float) -> None:
        size = max(1, tasks)
        before = self.costs.get(size)
        if before is not None and before > 0:
            factor = seconds / before
            self.costs = {k: v * factor for k, v in self.costs.items()}
        self.costs[size] = seconds
        self.last = size
        self.rate = seconds / size

    def cost(self, tasks: int) -> float:
        """The estimated seconds of a chunk of ``tasks`` (0 before anything was measured)."""
        if self.rate is None:
            return 0.0
        known = [v for k, v in self.costs.items() if k >= tasks]
        return min(known) if known else self.rate * tasks

    def fitting(self, tasks: int, deadline: float, now: float | None = None) -> int:
        """How many of the next ``tasks`` to score before ``deadline`` (0: stop)."""
        if self.rate is None:
            return min(tasks, DEADLINE_FIRST_CHUNK)
        now = time.monotonic() if now is None else now
        room = (deadline - now) / DEADLINE_SAFETY
        best = 0
        for size in range(1, min(tasks, self.last * DEADLINE_GROWTH) + 1):
            if self.cost(size) > room:
                break
            best = size
        return best


class Service:
    """The backend's state for one process: judge, rubrics, registry."""

    def __init__(
        self,
        settings: Settings,
        judge: Judge,
        registry: Registry,
        rubrics: Mapping[str, Rubric] | None = None,
        triggers: Any = None,
        prediction_cache: PredictionCache | None = None,
        serving_mark: ServingMark | None = None,
    ) -> None:
        self.settings = settings
        self.prefill_policy = PrefillPolicy.from_settings(settings)
        #: raised while the judge scores, so that a training job on this machine pauses (``backend.state.serving``)
        self.serving_mark = serving_mark
        self.triggers = triggers
        self.judge = judge
        #: what /predict scores with: the judge itself, or the micro-batcher in front of it (MICRO_BATCHING)
        self.scorer: Judge | Batcher = judge
        if settings.micro_batching:
            self.scorer = Batcher(
                judge,
                max_tasks=settings.micro_batch_max_tasks,
                wait_s=settings.micro_batch_wait_ms / 1000,
                max_queue=settings.micro_batch_max_queue,
            )
        self.prediction_cache = prediction_cache
        self.registry = registry
        self.rubrics = dict(rubrics) if rubrics is not None else load_all(settings.rubric_dir)
        if settings.rubric not in self.rubrics:
            raise RequestError(
                f"default RUBRIC={settings.rubric!r} not found in {settings.rubric_dir} "
                f"(have: {', '.join(sorted(self.rubrics))})",
                500,
            )
        self.started = time.time()
        #: (project, version, rubric) -> (evaluation file mtime, decisions); re-read when the file changes
        self._prefill: dict[tuple[str, int, str], tuple[float, dict[str, PrefillDecision]]] = {}

    # --- rubric choice ---------------------------------------------------------------------------

    def rubric_for(self, project: str, label_config: object, requested: object = None) -> tuple[Rubric, Binding]:
        """Pick the rubric: ``requested`` (extra_params.rubric), else the config's match, else the project's
        remembered rubric, else the default. A config that lacks the rubric's controls is a 422."""
        parsed: ParsedConfig | None = None
        if label_config not in (None, ""):
            if not isinstance(label_config, str):
                raise RequestError("label_config/schema must be a string of Label Studio XML")
            try:
                parsed = _parse_config(label_config)
            except LabelConfigError as exc:
                raise RequestError(str(exc)) from None
        if requested not in (None, ""):
            if not isinstance(requested, str) or requested not in self.rubrics:
                raise RequestError(
                    f"extra_params.rubric={requested!r} is not a known rubric (have: {', '.join(sorted(self.rubrics))})"
                )
            rubric = self.rubrics[requested]
        else:
            chosen = self.registry.rubric_for(project, self.rubrics, parsed, self.settings.rubric)
            rubric = chosen or self.rubrics[self.settings.rubric]
        if parsed is not None:
            problems = config_problems(rubric, parsed)
            if problems:
                raise RequestError(
                    f"the project's labeling config does not fit rubric {rubric.name!r}: "
                    + "; ".join(problems)
                    + f". Generate a fitting config with: rubric-judge label-config {rubric.name}",
                    422,
                )
        return rubric, Binding.for_config(rubric, parsed)

    def context(self, raw_project: object, label_config: object, requested: object = None) -> ProjectContext:
        try:
            project = parse_project(raw_project) if raw_project not in (None, "") else "0"
        except RegistryError as exc:
            raise RequestError(str(exc)) from None
        rubric, binding = self.rubric_for(project, label_config, requested)
        version = self.registry.active_version(project)
        return ProjectContext(project, rubric, binding, version, self.registry.model_version(project, version))

    # --- routes ----------------------------------------------------------------------------------

    def setup(self, body: Mapping[str, Any]) -> SetupAnswer:
        extra = body.get("extra_params") or {}
        if not isinstance(extra, Mapping):
            raise RequestError("extra_params must be an object or null")
        ctx = self.context(body.get("project"), body.get("schema"), extra.get("rubric"))
        if ctx.project != "0":
            self.registry.remember_rubric(ctx.project, ctx.rubric.name)
        return {"model_version": ctx.model_version, "rubric": ctx.rubric.name}

    def predict(
        self, body: Mapping[str, Any], rubric: str | None = None, deadline: float | None = None
    ) -> PredictAnswer:
        """One result per task, in order. ``rubric`` forces a rubric (the offline ``predict`` command).
        ``deadline`` (``time.monotonic()`` value): stop scoring before it; the tasks left get an empty list (no
        prediction) and are handed to the background pre-annotation job (``defer``)."""
        started = time.monotonic()
        ctx = self.context(body.get("project"), body.get("label_config"), rubric)
        results, timing = self.predict_tasks_timed(ctx, body["tasks"], deadline)
        if timing["deferred"]:
            ids = [task.get("id") for task, item in zip(body["tasks"], results, strict=True) if item == []]
            timing["background_job"] = self.defer(ctx, [i for i in ids if isinstance(i, int)], timing)
        timing["seconds"] = round(time.monotonic() - started, 3)
        return {"results": results, "timing": timing}

    def predict_tasks(self, ctx: ProjectContext, tasks: Sequence[Mapping[str, Any]]) -> list[Prediction | list[Any]]:
        """One prediction (``result``, ``score``, ``model_version``) per Label Studio task, in order; a task
        without the rubric's inputs gets an empty result. Cached predictions (PREDICTION_CACHE) are reused."""
        return self.predict_tasks_timed(ctx, tasks)[0]

    def predict_tasks_timed(
        self, ctx: ProjectContext, tasks: Sequence[Mapping[str, Any]], deadline: float | None = None
    ) -> tuple[list[Prediction | list[Any]], PredictTiming]:
        """``predict_tasks`` with a ``deadline``: tasks not scored by then get ``[]`` (Label Studio stores no
        prediction for them). Returns the results and ``{"tasks", "scored", "deferred", "budget_s"}``."""
        valid: list[int] = []
        inputs: list[dict[str, str]] = []
        results: list[Any] = []
        for index, task in enumerate(tasks):
            found, missing = task_inputs(ctx.rubric, task.get("data"), ctx.binding)
            if found is None:
                log.warning(
                    "task %s (index %d): missing or non-text field(s) %s; no prediction",
                    task.get("id"),
                    index,
                    ", ".join(missing),
                )
                results.append({"result": [], "score": 0, "model_version": ctx.model_version})
                continue
            valid.append(index)
            inputs.append(found)
            results.append({})
        started = time.monotonic()
        scores = self.score_inputs(ctx, inputs, deadline)
        deferred = 0
        for index, score in zip(valid, scores, strict=True):
            if score is None:
                results[index] = []
                deferred += 1
            else:
                results[index] = self.result_item(ctx, score)
        log.info(
            "project %s: scored %d of %d task(s) with %s in %.2f s%s",
            ctx.project,
            len(valid) - deferred,
            len(tasks),
            ctx.model_version,
            time.monotonic() - started,
            f"; {deferred} deferred (deadline)" if deferred else "",
        )
        budget = None if deadline is None else round(deadline - started, 1)
        return results, {"tasks": len(tasks), "scored": len(valid) - deferred, "deferred": deferred, "budget_s": budget}

    def score_inputs(
        self, ctx: ProjectContext, inputs: Sequence[Mapping[str, str]], deadline: float | None = None
    ) -> list[Any]:
        """Scores of ``inputs`` under the context's active version: from the prediction cache where present,
        the rest from the judge (through the micro-batcher when it is on), in order. With a ``deadline``
        (``time.monotonic()``), the judge scores in chunks, cut to what it expects to finish before the deadline
        from the last chunk's cost (``DeadlineEstimate``); the inputs left are None."""
        if not inputs:
            return []
        cache = self.prediction_cache
        keys = [cache.key(ctx.model_version, ctx.rubric, item) for item in inputs] if cache else []
        found: list[TaskScore | None] = cache.get_many(keys) if cache else [None] * len(inputs)
        missing = [i for i, score in enumerate(found) if score is None]
        if missing:
            adapter = self.ensure_adapter(ctx)
            marked = self.serving_mark.scoring() if self.serving_mark else contextlib.nullcontext()
            # shortest first under a deadline: more tasks fit (answers do not depend on batching)
            ordered = (
                missing if deadline is None else sorted(missing, key=lambda i: sum(len(v) for v in inputs[i].values()))
            )
            estimate = DeadlineEstimate()
            try:
                with marked:
                    start = 0
                    while start < len(ordered):
                        if deadline is None:
                            size = len(ordered)
                        else:
                            size = estimate.fitting(self.settings.predict_batch_size, deadline)
                            if size == 0:
                                break
                        chunk = ordered[start : start + size]
                        start += len(chunk)
                        chunk_started = time.monotonic()
                        fresh = self.scorer.score(ctx.rubric, [inputs[i] for i in chunk], adapter)
                        estimate.observe(len(chunk), time.monotonic() - chunk_started)
                        for i, score in zip(chunk, fresh, strict=True):
                            found[i] = score
                        if cache:
                            cache.put_many([(keys[i], sc) for i, sc in zip(chunk, fresh, strict=True)])
            except BatcherBusy as exc:
                raise RequestError(f"the backend is busy: {exc}", 503) from None
        if cache and len(missing) < len(inputs):
            log.info(
                "project %s: %d of %d task(s) from the prediction cache",
                ctx.project,
                len(inputs) - len(missing),
                len(inputs),
            )
        return found

    def defer(self, ctx: ProjectContext, task_ids: Sequence[int], timing: PredictTiming) -> str | None:
        """Hand the tasks a deadline left unscored to the background pre-annotation job (when Label Studio
        credentials are configured) and record the deferral for ``/status``. Returns the job id, or None when
        the next Retrieve Predictions has to pick them up."""
        job = None
        if self.triggers is not None and self.settings.label_studio_api_key and ctx.project != "0" and task_ids:
            try:
                job = self.triggers.prelabel(ctx.project, task_ids=list(task_ids)).job_id
            except Exception as exc:  # Redis down: the next Retrieve Predictions still picks them up
                log.warning("project %s: cannot enqueue the deferred tasks (%s)", ctx.project, type(exc).__name__)
        where = (
            f"pre-annotation job {job} writes them through Label Studio's API"
            if job
            else "the next Retrieve Predictions picks them up"
            + ("" if self.settings.label_studio_api_key else " (LABEL_STUDIO_API_KEY writes them in the background)")
        )
        log.warning(
            "project %s: %d of %d task(s) deferred to stay within the %.0f s budget (PREDICT_DEADLINE_S); %s",
            ctx.project,
            timing["deferred"],
            timing["tasks"],
            timing["budget_s"] or 0,
            where,
        )
        if self.triggers is not None:
            with contextlib.suppress(Exception):
                self.triggers.record_deferral(
                    ctx.project,
                    {
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "tasks": timing["tasks"],
                        "scored": timing["scored"],
                        "deferred": timing["deferred"],
                        "budget_s": timing["budget_s"],
                        "job": job,
                    },
                )
        return job

    def result_item(self, ctx: ProjectContext, score: TaskScore) -> Prediction:
        """One Label Studio prediction: a ``choices`` item for each dimension the version pre-fills
        (``prefill_decisions``); ``score`` is the mean probability of those labels (0 when none is)."""
        decisions = self.prefill_decisions(ctx.project, ctx.version, ctx.rubric)
        labels = {name: label for name, label in score.labels.items() if decisions[name].prefilled}
        confidences = [score.dimensions[name].confidence for name in labels]
        return {
            "result": prediction_result(ctx.rubric, labels, ctx.binding),
            "score": round(sum(confidences) / len(confidences), 6) if confidences else 0,
            "model_version": ctx.model_version,
        }

    def prefill_decisions(self, project: str, version: int, rubric: Rubric) -> dict[str, PrefillDecision]:
        """Per dimension: whether ``/predict`` pre-fills it under this version, from the version's held-out
        evidence and PREFILL_MIN_ALPHA / PREFILL_UNEVALUATED (``backend.core.prefill``)."""
        path = self.registry.evaluation_path(project, version)
        try:
            stamp = path.stat().st_mtime
        except OSError:
            stamp = -1.0
        key = (project, version, rubric.name)
        cached = self._prefill.get(key)
        if cached is None or cached[0] != stamp:
            evaluation = self.registry.evaluation(project, version) if stamp >= 0 else None
            decisions = self.prefill_policy.decide(rubric.dimension_names, evaluation)
            cached = (stamp, decisions)
            self._prefill[key] = cached
        return cached[1]

    def prefill_summary(self, project: str) -> dict[str, Any]:
        """What the active version pre-fills and, for every dimension it leaves empty, why (for ``/status``):
        ``{"version", "prefilled": [names], "left_empty": {name: reason}, "summary"}``."""
        number = self.registry.active_version(project)
        rubric = self.registry.remembered_rubric(project, self.rubrics, self.settings.rubric)
        if rubric is None:
            return {"version": version_name(number), "prefilled": [], "left_empty": {}, "summary": "no rubric yet"}
        decisions = self.prefill_decisions(project, number, rubric)
        prefilled = [name for name, d in decisions.items() if d.prefilled]
        left = {name: d.reason for name, d in decisions.items() if not d.prefilled}
        summary = f"{version_name(number)} pre-fills {len(prefilled)} of {len(decisions)} dimension(s)"
        reasons = sorted(set(left.values()))
        if len(reasons) == 1:
            summary += f"; the others: {reasons[0]}"
        elif reasons:
            summary += "; see left_empty for why the others are not"
        return {"version": version_name(number), "prefilled": prefilled, "left_empty": left, "summary": summary}

    def ensure_adapter(self, ctx: ProjectContext) -> str | None:
        """Attach the project's active adapter (without a restart) and return its name, or None for v0."""
        if ctx.version == 0:
            return None
        name = self.registry.adapter_name(ctx.project, ctx.version)
        self.judge.load_adapter(name, self.registry.version_dir(ctx.project, ctx.version))
        return name

    def activate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Make an existing version active by hand (rollback, or overriding the promotion gate)."""
        try:
            project = parse_project(body.get("project"))
        except RegistryError as exc:
            raise RequestError(str(exc)) from None
        number = parse_version(body.get("version"))
        if number is None:
            raise RequestError("'version' must be a version number (e.g. 2) or name (e.g. 'model.p3.v2')")
        if number < 0 or (number and number not in self.registry.version_numbers(project)):
            known = ", ".join(version_name(n) for n in self.registry.version_numbers(project)) or "none"
            raise RequestError(f"project {project} has no version {version_name(number)} (trained: {known})", 404)
        self.registry.set_active(project, number)
        log.info("project %s: version v%d activated by hand", project, number)
        return {"project": project, "model_version": self.registry.model_version(project, number)}

    def versions(self, project: object = None) -> dict[str, Any]:
        projects = [parse_project(project)] if project not in (None, "") else self.registry.projects()
        details = []
        for p in projects:
            for info in self.registry.versions(p):
                metrics = info.metrics or {}
                evaluation = metrics if info.number == 0 else metrics.get("candidate") or {}
                # the rubric the version was trained on, else the project's, else the default
                chosen = self.registry.remembered_rubric(p, self.rubrics, self.settings.rubric, metrics.get("rubric"))
                rubric = chosen or self.rubrics[self.settings.rubric]
                decisions = self.prefill_decisions(p, info.number, rubric)
                details.append(
                    {
                        "project": p,
                        "model_version": info.model_version,
                        "number": info.number,
                        "active": info.active,
                        "method": metrics.get("method", "lora" if info.number else "base"),
                        "alpha": evaluation.get("alpha_dims"),
                        "delta_alpha": evaluation.get("delta_alpha_dims"),
                        "alpha_majority": evaluation.get("alpha_dims_majority"),
                        "alpha_flat": evaluation.get("alpha_flat"),
                        "rubric": rubric.name,
                        "evidence": metrics.get("evidence"),
                        "decision": metrics.get("decision"),
                        "prefill": {name: d.as_dict() for name, d in decisions.items()},
                    }
                )
        return {"versions": [d["model_version"] for d in details], "details": details}

    # --- training triggers -----------------------------------------------------------------------

    def webhook(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Record a Label Studio event; never trains or calls Label Studio here (1 s budget, no retries)."""
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise RequestError("missing 'action': expected a Label Studio webhook payload")
        if action == "TASKS_CREATED":
            return self.read_ahead(body)
        if action not in TRIGGER_ACTIONS:
            return {"status": "ignored", "action": action}
        project = _webhook_project(action, body)
        if self.triggers is None:
            raise RequestError("training queue unavailable: Redis is not configured", 503)
        try:
            if action == "START_TRAINING":
                result = self.triggers.trigger(project, force=body.get("force") is True)
            else:
                annotations = body.get("annotations")
                count = len(annotations) if isinstance(annotations, list) and annotations else 1
                result = self.triggers.count_annotations(project, count, self.settings.train_min_new_annotations)
        except Exception as exc:  # Redis down or erroring: answer fast, say so
            log.error("webhook %s for project %s: queue unavailable (%s)", action, project, type(exc).__name__)
            raise RequestError(
                f"training queue unavailable ({type(exc).__name__}); the event was not recorded", 503
            ) from None
        answer: dict[str, Any] = {"status": result.status, "project": project, "action": action}
        if result.job_id:
            answer["job"] = result.job_id
        if result.status == "counted":
            answer["pending"] = result.pending
            answer["threshold"] = self.settings.train_min_new_annotations
        return answer

    def read_ahead(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """TASKS_CREATED: enqueue one job that reads the new tasks (at most READAHEAD_MAX_TASKS, their data as the
        event sent it) while nobody waits: their scores under the active version go to the prediction cache and
        the base model's features to the feature store, so the next Retrieve Predictions answers them at once and
        retraining does not read them again. It writes nothing to Label Studio (Retrieve Predictions or
        /prelabel does, without a second prediction for a task). Without a queue, tasks or the setting, the
        event is ignored (the tasks are read when first predicted)."""
        action = "TASKS_CREATED"
        limit = self.settings.readahead_max_tasks
        raw_tasks = body.get("tasks")
        tasks = [
            {"id": t["id"], "data": t["data"]}
            for t in (raw_tasks if isinstance(raw_tasks, list) else [])
            if isinstance(t, Mapping) and type(t.get("id")) is int and isinstance(t.get("data"), Mapping)
        ]
        if not limit or not tasks or self.triggers is None:
            why = "READAHEAD_MAX_TASKS=0" if not limit else "no tasks in the payload" if not tasks else "no queue"
            return {"status": "ignored", "action": action, "reason": why}
        project = _webhook_project(action, body)
        chosen = tasks[:limit]
        try:
            config = body["project"].get("label_config") if isinstance(body.get("project"), Mapping) else None
            result = self.triggers.prelabel(
                project, tasks=chosen, label_config=config if isinstance(config, str) else None, why="new"
            )
        except Exception as exc:  # Redis down: the tasks are read when first predicted
            log.warning("project %s: cannot enqueue the read-ahead of %d task(s) (%s)", project, len(chosen), exc)
            return {"status": "ignored", "action": action, "reason": f"queue unavailable ({type(exc).__name__})"}
        if len(tasks) > len(chosen):
            log.info(
                "project %s: reading ahead %d of %d new task(s) (READAHEAD_MAX_TASKS)", project, len(chosen), len(tasks)
            )
        return {
            "status": result.status,
            "project": project,
            "action": action,
            "job": result.job_id,
            "tasks": len(chosen),
        }

    def prelabel(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Enqueue asynchronous pre-annotation of a project (``worker.jobs.prelabel_project``)."""
        try:
            project = parse_project(body.get("project"))
        except RegistryError as exc:
            raise RequestError(str(exc)) from None
        include_annotated = body.get("all", False)
        if not isinstance(include_annotated, bool):
            raise RequestError("'all' must be true or false")
        if self.triggers is None:
            raise RequestError("job queue unavailable: Redis is not configured", 503)
        try:
            result = self.triggers.prelabel(project, include_annotated)
        except Exception as exc:
            log.error("prelabel for project %s: queue unavailable (%s)", project, type(exc).__name__)
            raise RequestError(f"job queue unavailable ({type(exc).__name__}); nothing was enqueued", 503) from None
        return {"status": result.status, "project": project, "job": result.job_id}

    def job(self, job_id: str) -> dict[str, Any]:
        """Status and progress meta of a job this backend enqueued."""
        if self.triggers is None:
            raise RequestError("job queue unavailable: Redis is not configured", 503)
        try:
            info = self.triggers.job(job_id)
        except Exception as exc:  # Redis down or a malformed id
            log.error("job %s: queue unavailable (%s)", job_id, type(exc).__name__)
            raise RequestError(f"job queue unavailable ({type(exc).__name__})", 503) from None
        if info is None:
            raise RequestError(f"no job {job_id!r}", 404)
        return info

    # --- reports ---------------------------------------------------------------------------------

    def reports_index(self) -> dict[str, Any]:
        """Every project with its versions (``backend.reports.data.projects_index``)."""
        return projects_index(self.registry)

    def report(self, project: str) -> dict[str, Any]:
        """A project's report (``backend.reports.data.project_report``); ``ReportError`` when there is none."""
        return project_report(self.registry, project, self.prefill_policy, self.settings.label_studio_url)

    def label_queue(self, project: object, limit: int = 20) -> dict[str, Any]:
        """What to label next (``label_queue``)."""
        return label_queue(self.settings, self.registry, project, limit)

    def redis_status(self) -> str:
        """``ok``, ``unavailable`` (training triggers answer 503; predictions read the disk) or ``not configured``."""
        redis = self.registry.redis
        if redis is None:
            return "not configured"
        try:
            redis.ping()
        except Exception as exc:
            log.warning("Redis unavailable (%s)", type(exc).__name__)
            return "unavailable"
        return "ok"

    def status(self, project: object = None) -> dict[str, Any]:
        """Training state per project: queued/running job, its progress, pending annotation events."""
        if self.triggers is None:
            raise RequestError("training queue unavailable: Redis is not configured", 503)
        projects = [parse_project(project)] if project not in (None, "") else self.registry.projects()
        out = {}
        for p in projects:
            try:
                state = self.triggers.state(p)
            except Exception as exc:  # Redis down: say so (the queue state lives only there)
                log.error("status of project %s: queue unavailable (%s)", p, type(exc).__name__)
                raise RequestError(
                    f"training queue unavailable ({type(exc).__name__}); /predict still works", 503
                ) from None
            job_id = state.get("running") or state.get("queued")
            if job_id:
                state["job"] = None
                with contextlib.suppress(Exception):  # the rest of the state is still worth answering
                    state["job"] = self.triggers.job(job_id)
            state["active_version"] = self.registry.model_version(p, self.registry.active_version(p))
            with contextlib.suppress(Exception):
                state["last_deferral"] = self.triggers.last_deferral(p)
            with contextlib.suppress(Exception):
                state["prelabel"] = self.triggers.last_prelabel(p)
            state["prefill"] = self.prefill_summary(p)
            out[p] = state
        return {"projects": out}


def _webhook_project(action: str, body: Mapping[str, Any]) -> str:
    """The project a webhook event names (``project.id``, else ``annotation.project``), or a 400."""
    project_obj = body.get("project")
    raw: object = project_obj.get("id") if isinstance(project_obj, Mapping) else None
    if raw is None and isinstance(body.get("annotation"), Mapping):
        raw = body["annotation"].get("project")
    if raw is None:
        raise RequestError(f"{action}: missing project.id in the payload")
    try:
        return parse_project(raw)
    except RegistryError as exc:
        raise RequestError(f"{action}: {exc}") from None


def label_queue(settings: Settings, registry: Registry, project: object, limit: int = 20) -> dict[str, Any]:
    """What to label next: the project's unannotated tasks whose stored prediction by the active version is
    least certain, first (read through Label Studio's API; nothing is scored)."""
    if not 1 <= limit <= 10_000:
        raise RequestError(f"limit {limit}: expected 1 to 10000")
    pid = parse_project(project)
    model_version = registry.model_version(pid, registry.active_version(pid))
    url = settings.label_studio_url
    try:
        client = label_studio_client(url, settings.label_studio_api_key)
    except LabelStudioError as exc:  # the server's configuration, not the request: no Retry-After
        raise RequestError(str(exc), 500) from None
    try:
        listed = list(list_tasks(client, int(pid)))
        tasks = [t for t in listed if not is_annotated(t)]
        for task in tasks:
            task["predictions"] = task_predictions(client, task)
    except Exception as exc:  # the SDK raises ApiError, httpx errors, ...
        raise RequestError(
            f"cannot read project {pid} from Label Studio at {url} ({describe_error(exc, url, int(pid))})", 502
        ) from None
    groups = _task_groups(settings, registry, pid, listed)
    annotated = {groups[t.get("id")] for t in listed if is_annotated(t) and groups.get(t.get("id"))}
    queue = label_next(tasks, model_version, pid, url, limit, groups, annotated)
    predicted = sum(1 for t in tasks if any(p["model_version"] == model_version for p in t["predictions"]))
    return {
        "project": pid,
        "model_version": model_version,
        "unannotated": len(tasks),
        "predicted_by_active_version": predicted,
        "queue": queue,
    }


def _task_groups(
    settings: Settings, registry: Registry, pid: str, tasks: Sequence[Mapping[str, Any]]
) -> dict[Any, str]:
    """Task id -> group (``backend.core.labeling.task_group`` under the project's remembered rubric, else RUBRIC);
    tasks without the rubric's inputs are left out."""
    rubric = registry.remembered_rubric(pid, load_all(settings.rubric_dir), settings.rubric)
    if rubric is None:
        return {}
    out: dict[Any, str] = {}
    for task in tasks:
        data = task.get("data")
        inputs, _ = task_inputs(rubric, data, Binding.for_config(rubric, None))
        if inputs is not None:
            group = task_group(rubric, inputs, data, settings.group_by)
            if group:
                out[task.get("id")] = group
    return out


def build_service(settings: Settings, serving_mark: bool = True) -> Service:
    """Load the judge and connect the registry (Redis optional at start-up). ``serving_mark``: raise the
    serving mark while scoring (``backend.state.serving``); off in a worker's own service, which must not pause for
    itself."""
    judge = Judge.from_settings(settings)
    redis = redis_client(settings)
    registry = Registry(settings.model_dir, judge.base_name, redis)
    cache = None
    if settings.prediction_cache:
        cache = PredictionCache(
            redis,
            judge.base_name,
            settings.prediction_cache_ttl,
            settings.max_input_tokens,
            settings.model_precision,
            settings.score_read,
        )
    return Service(
        settings,
        judge,
        registry,
        triggers=Triggers(redis, judge.base_name, settings.queue_name),
        prediction_cache=cache,
        serving_mark=ServingMark(redis, judge.base_name) if serving_mark else None,
    )
