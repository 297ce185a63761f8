"""The training pipeline shared by the RQ job (``worker.jobs.train_project``) and ``rubric-judge train``:
split the records by task, build a feature head (``TRAIN_METHOD=head``, the default for rating rubrics) or
train a LoRA adapter on the training part, evaluate candidate / active / base (and the majority label) on the
held-out tasks, and write the version atomically (temporary folder, then rename) with its metrics and the
promotion decision (``should_promote``: alpha per dimension not lower than the active version's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.metrics import finite
from backend.rubric import Rubric
from backend.serving import ServingGate, pause_hooks
from backend.settings import Settings
from worker.dataset import describe, split_records, targets_for
from worker.source import Record
from worker.train import TrainConfig, train_lora

log = logging.getLogger(__name__)

MIN_TASKS = 4


class TrainingError(RuntimeError):
    """Training cannot run; the message says why."""


@dataclass
class RunResult:
    path: Path
    metrics: dict[str, Any]
    promoted: bool | None


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def data_fingerprint(records: Sequence[Record]) -> str:
    """A hash of the annotated tasks (ids, inputs, every annotator's labels), independent of their order: the
    same annotations give the same fingerprint, any created, updated or deleted annotation another."""
    rows = sorted(json.dumps(_record_row(r), sort_keys=True, ensure_ascii=False) for r in records)
    return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()


def _record_row(record: Record) -> dict[str, Any]:
    return {
        "id": record.task_id,
        "group": record.group,
        "data": dict(record.inputs),
        "annotations": [{"annotator": a.annotator, "scores": dict(a.labels)} for a in record.annotations],
    }


def _alpha(metrics: Mapping[str, Any] | None) -> float | None:
    return finite((metrics or {}).get("alpha_dims"))


def should_promote(candidate: Mapping[str, Any], incumbent: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Promote when the candidate's alpha per dimension (the mean over dimensions of alpha against the human
    consensus, ``alpha_dims``) is not lower than the incumbent's on the same tasks. The flattened alpha
    decides nothing: a constant label per dimension scores well on it."""
    new, old = _alpha(candidate), _alpha(incumbent)
    if new is None:
        return False, "the candidate's alpha per dimension is undefined on the held-out tasks"
    if old is None:
        return True, f"alpha per dimension {new:.3f}; the incumbent's is undefined"
    if new >= old:
        return True, f"alpha per dimension {new:.3f} >= incumbent {old:.3f}"
    return False, f"alpha per dimension {new:.3f} < incumbent {old:.3f}"


def run_training(
    settings: Settings,
    rubric: Rubric,
    records: Sequence[Record],
    destination: Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    heldout: Sequence[Record] | None = None,
    incumbent: tuple[str, Path] | None = None,
    snapshot: Mapping[str, Any] | list[Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    extra: Mapping[str, Any] | None = None,
    gate: ServingGate | None = None,
) -> RunResult:
    """Train on ``records`` (split by task unless ``heldout`` is given), evaluate, and write the adapter,
    metrics and data snapshot into ``destination`` atomically (temporary folder, then rename).

    ``incumbent`` is ``(version name, adapter path)`` of the active adapter to compare with; without it the
    base model is the incumbent. ``metrics.json`` records the decision; the caller moves the active pointer.
    ``gate``: every layer of the model waits there while a backend on this machine scores (``backend.serving``).
    """
    from backend.judge import Judge
    from backend.model_loader import load_base_model
    from worker.evaluate import add_majority_reference, evaluate_judge, evaluate_predictions, majority_scores

    config = TrainConfig.build(rubric, overrides)
    method = config.method_for(rubric)
    if heldout is None:
        train, held = split_records(records, config.heldout_fraction, config.seed)
    else:
        train, held = list(records), list(heldout)
    if not train:
        raise TrainingError("no training tasks: every annotated task is held out")
    if len(train) + len(held) < MIN_TASKS:
        raise TrainingError(f"only {len(train) + len(held)} annotated task(s); at least {MIN_TASKS} are needed")
    train_targets = targets_for(rubric, train, config.targets)
    val_targets = targets_for(rubric, held, "consensus")
    counts = describe(train, held, train_targets)
    log.info("data: %s", counts)
    if destination.exists():
        raise TrainingError(f"{destination} already exists; versions are never overwritten")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.tmp-"))
    hooks = contextlib.ExitStack()
    try:
        _write_jsonl(tmp / "train.jsonl", [_record_row(r) for r in train])
        _write_jsonl(tmp / "heldout.jsonl", [_record_row(r) for r in held])
        if snapshot is not None:
            (tmp / "export.json").write_text(json.dumps(snapshot, ensure_ascii=False), encoding="utf-8")

        model, tokenizer, base_name = load_base_model(settings)
        hooks.enter_context(pause_hooks(model, gate))
        if method == "head":
            judge = Judge(model, tokenizer, base_name, settings)
            fitted = fit_feature_head(judge, rubric, train, held, config, progress)
            fitted.head.save(tmp)
            fault_point(settings, "adapter-written", progress)
            judge.adopt_head("default", fitted.head, tmp)
            candidate, base = fitted.candidate, fitted.base
            history: list[dict[str, Any]] = []
            training = fitted.training
        else:
            result = train_lora(
                model,
                tokenizer,
                rubric,
                train_targets,
                val_targets,
                config,
                quantized=settings.quantization != "none",
                progress=progress,
            )
            result.model.save_pretrained(tmp)  # adapter_config.json + adapter weights
            fault_point(settings, "adapter-written", progress)
            judge = Judge(result.model, tokenizer, base_name, settings)
            judge.adopt_adapter("default", tmp)
            if progress:
                progress({"stage": "evaluating candidate"})
            candidate = evaluate_judge(judge, rubric, held, "default")
            if progress:
                progress({"stage": "evaluating base model"})
            base = evaluate_judge(judge, rubric, held, None)
            history = result.history
            training = {
                "method": "lora",
                "steps": result.steps,
                "seconds": round(result.seconds, 1),
                "tokens": result.tokens,
                "computed_tokens": result.computed_tokens,
                "share_prefix": config.share_prefix,
                "padding_share": result.padding_share,
                "precision": result.precision,
                "tokens_per_s": round(result.tokens / result.seconds, 1) if result.seconds else None,
            }
        active_metrics = None
        if incumbent is not None:
            if progress:
                progress({"stage": "evaluating active version"})
            judge.load_adapter(incumbent[0], incumbent[1])
            active_metrics = evaluate_judge(judge, rubric, held, incumbent[0])
        majority = evaluate_predictions(rubric, held, majority_scores(rubric, train, len(held)), n_boot=1)
        for evaluated in (candidate, base, active_metrics):
            add_majority_reference(evaluated, majority)
        promote, reason = should_promote(candidate, active_metrics if incumbent else base)
        metrics = {
            "rubric": rubric.name,
            "base_model": settings.base_model,
            "model_name": base_name,
            "quantization": settings.quantization,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config.as_dict(),
            "method": method,
            "counts": counts,
            "data_fingerprint": data_fingerprint(list(train) + list(held)),
            "alpha_dims": candidate["alpha_dims"],
            "delta_alpha_dims": candidate["delta_alpha_dims"],
            "alpha_dims_majority": majority["alpha_dims"],
            "alpha_flat": candidate["alpha_flat"],
            "alpha_flat_ci": candidate["alpha_flat_ci"],
            "alpha_humans_flat": candidate["alpha_humans_flat"],
            "candidate": candidate,
            "base": base,
            "incumbent": active_metrics,
            "incumbent_version": incumbent[0] if incumbent else "v0",
            "promoted": promote,
            "decision": reason,
            "history": history,
            "training": training | ({"serving_pauses": gate.summary()} if gate is not None else {}),
            **(extra or {}),
        }
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hooks.close()
    log.info("wrote %s: alpha per dimension %s (base %s); %s", destination, _alpha(candidate), _alpha(base), reason)
    return RunResult(destination, metrics, promote)


@dataclass
class FittedHead:
    head: Any
    candidate: dict[str, Any]
    base: dict[str, Any]
    training: dict[str, Any]


FEATURE_CHUNK = 32  # tasks per feature-extraction call (progress and heartbeat between calls)


def extract_features(
    judge: Any,
    rubric: Rubric,
    records: Sequence[Record],
    what: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[Any], list[Any]]:
    """The base model's scores and features (``Judge.score_with_features``) of ``records``, in chunks."""
    scores: list[Any] = []
    features: list[Any] = []
    for start in range(0, len(records), FEATURE_CHUNK):
        chunk = records[start : start + FEATURE_CHUNK]
        got_scores, got_features = judge.score_with_features(rubric, [r.inputs for r in chunk])
        scores += got_scores
        features += got_features
        if progress:
            progress({"stage": f"features of the {what} tasks", "done": len(scores), "total": len(records)})
    return scores, features


def head_targets(rubric: Rubric, records: Sequence[Record]) -> dict[str, list[Any]]:
    """What the head learns per task: the mean human score of a scale dimension (NaN when unrated), the
    consensus label of a nominal one (None when unrated)."""
    from worker.dataset import record_consensus

    out: dict[str, list[Any]] = {d.name: [] for d in rubric.dimensions}
    for record in records:
        agreed = record_consensus(rubric, record)
        for dim in rubric.dimensions:
            if dim.is_scale:
                values = [dim.value_of(a.labels[dim.name]) for a in record.annotations if dim.name in a.labels]
                out[dim.name].append(sum(values) / len(values) if values else float("nan"))
            else:
                out[dim.name].append(agreed.get(dim.name))
    return out


def fit_feature_head(
    judge: Any,
    rubric: Rubric,
    train: Sequence[Record],
    held: Sequence[Record],
    config: TrainConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> FittedHead:
    """One scoring pass of the base model over the training tasks gives the features; the head is fitted on
    them (cross-validated, calibrated: ``backend.head``); one pass over the held-out tasks gives both the base
    model's and the head's held-out metrics."""
    import numpy as np

    from backend.head import fit_head
    from backend.judge import apply_head
    from worker.evaluate import scored_metrics

    started = time.monotonic()
    _, train_features = extract_features(judge, rubric, train, "training", progress)
    extracted = time.monotonic() - started
    if progress:
        progress({"stage": "fitting the feature head"})
    fit_started = time.monotonic()
    selection = config.head_features_for(rubric)
    matrices = {d.name: np.stack([f.vector(d.name, selection) for f in train_features]) for d in rubric.dimensions}
    head = fit_head(
        rubric.dimensions,
        matrices,
        head_targets(rubric, train),
        [r.split_key for r in train],
        folds=config.head_folds,
        meta={
            "base_model": judge.base_name,
            "rubric": rubric.name,
            "features": selection,
            "precision": str(next(judge.model.parameters()).dtype),
        },
    )
    fit_seconds = time.monotonic() - fit_started
    if progress:
        progress({"stage": "evaluating candidate and base model"})
    eval_started = time.monotonic()
    base_scores, held_features = extract_features(judge, rubric, held, "held-out", progress)
    seconds = time.monotonic() - eval_started
    candidate = scored_metrics(
        rubric, held, apply_head(rubric, head, held_features) if held else [], seconds, "feature head"
    )
    base = scored_metrics(rubric, held, base_scores, seconds, "base model")
    training = {
        "method": "head",
        "seconds": round(time.monotonic() - started, 1),
        "feature_seconds": round(extracted, 1),
        "fit_seconds": round(fit_seconds, 2),
        "tasks": len(train),
        "feature_size": head.feature_size,
        "cross_validation": {name: dim.cv for name, dim in head.dimensions.items()},
    }
    log.info("feature head fitted on %d tasks: features %.0f s, fit %.1f s", len(train), extracted, fit_seconds)
    return FittedHead(head, candidate, base, training)


def fault_point(settings: Settings, name: str, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Test hook (FAULT_PAUSE_AT): sleep at the named point so a test can SIGKILL the worker there."""
    if settings.fault_pause_at != name:
        return
    log.warning("FAULT_PAUSE_AT=%s: pausing %.0f s", name, settings.fault_pause_seconds)
    if progress:
        progress({"stage": f"paused at {name}", "pid": os.getpid()})
    time.sleep(settings.fault_pause_seconds)
