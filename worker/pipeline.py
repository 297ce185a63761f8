"""The training pipeline shared by the RQ job (``worker.jobs.train_project``) and ``rubric-judge train``: build a
feature head (``TRAIN_METHOD=head``, the default for rating rubrics) on every annotated task, judged by its
grouped out-of-fold predictions, or train a LoRA adapter on a grouped split, judged on the held-out groups;
evaluate candidate / active / base (and the majority label) on that evidence, and write the version atomically
(temporary folder, then rename) with its metrics and the promotion decision (``should_promote``: the lower bound
of the paired interval of alpha per dimension against the active version's above PROMOTE_TOLERANCE, on enough
tasks the active version did not learn from, and signal shown in at least one dimension at the family level).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.core.evidence import FAMILY_LEVEL, Evidence, family_ci
from backend.core.lexical import LEXICAL_NAMES
from backend.core.metrics import finite
from backend.core.prefill import PrefillPolicy
from backend.core.rubric import Rubric
from backend.model.head import SHARE_BLENDS, cross_fitted, fit_head, is_head
from backend.model.judge import Judge, apply_head
from backend.model.model_loader import load_base_model
from backend.settings import Settings
from backend.state.registry import staging_folder
from backend.state.serving import ServingGate, pause_hooks
from worker.dataset import describe, record_consensus, split_records, targets_for
from worker.evaluate import (
    add_majority_reference,
    evaluate_predictions,
    majority_scores,
    paired_comparison,
    scored_metrics,
)
from worker.faults import fault_point
from worker.source import Record, hidden_groups
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


@dataclass(frozen=True)
class PromotionRule:
    """When a candidate replaces the active version (settings PROMOTE_TOLERANCE, EVIDENCE_MIN_TASKS/GROUPS)."""

    tolerance: float = 0.0
    min_tasks: int = 10
    min_groups: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> PromotionRule:
        return cls(settings.promote_tolerance, settings.evidence_min_tasks, settings.evidence_min_groups)


def should_promote(
    comparison: Evidence,
    against: str,
    rule: PromotionRule | None = None,
    proven: Sequence[str] | None = None,
    family: str = "",
) -> tuple[bool, str]:
    """Promote when the lower bound of the paired group-bootstrap interval of (the candidate's alpha per
    dimension - the active version's), on tasks neither learned from, is above ``rule.tolerance``, on at least
    ``rule.min_tasks`` tasks in ``rule.min_groups`` groups, and the candidate has something to offer: at least
    one dimension whose alpha clears the pre-fill floor at the family level (``proven``, from
    ``PrefillPolicy.family_proven``; None: not checked; ``family`` says at which level). Beating a base model
    whose alpha is far below 0 proves nothing by itself, and with D dimensions "one of them passes a 2.5% gate"
    would pass noise up to D times as often: the family level keeps a version without signal at 5% in all.
    The flattened alpha decides nothing: a constant label per dimension scores well on it."""
    rule = rule or PromotionRule()
    shown = comparison.describe(f"alpha per dimension minus {against}'s")
    if proven is not None and not proven:
        return False, (
            f"no dimension of the candidate has an alpha lower bound above the pre-fill floor{family}, so it "
            f"shows no signal as a whole ({shown}); keeping {against}"
        )
    if comparison.tasks < rule.min_tasks or comparison.groups < rule.min_groups:
        per_group = comparison.tasks / comparison.groups if comparison.groups else 1.0
        more = max(rule.min_tasks - comparison.tasks, math.ceil((rule.min_groups - comparison.groups) * per_group), 1)
        return False, (
            f"too little evidence to compare with {against}: {comparison.tasks} task(s) in {comparison.groups} "
            f"group(s) that neither version learned from, needs at least {rule.min_tasks} in {rule.min_groups} "
            f"(about {more} more annotated task(s) of new groups); keeping {against}"
        )
    if comparison.estimate is None or comparison.low is None:
        return False, f"{shown}; keeping {against}"
    if comparison.low > rule.tolerance:
        return True, f"{shown}: lower bound {comparison.low:+.3f} > PROMOTE_TOLERANCE={rule.tolerance:g}"
    return (
        False,
        f"{shown}: lower bound {comparison.low:+.3f} <= PROMOTE_TOLERANCE={rule.tolerance:g}; keeping {against}",
    )


def family_words(n_dimensions: int) -> str:
    """`` at the family level (one-sided 1.25% for each of 4 dimension(s): at most 5% for the version, Holm
    across dimensions)``."""
    per_dimension = (1.0 - family_ci(n_dimensions)) / 2.0
    return (
        f" at the family level (one-sided {100 * per_dimension:.3g}% for each of {n_dimensions} dimension(s): "
        f"at most {FAMILY_LEVEL:.0%} for the version, Holm across dimensions)"
    )


@dataclass(frozen=True)
class Seen:
    """What a stored version learned from (the rows of its ``train.jsonl``): task ids, groups (task ids where
    ungrouped) and a digest of each task's inputs."""

    ids: frozenset[str]
    groups: frozenset[str]
    inputs: frozenset[str]

    def knows(self, record: Record) -> bool:
        return (
            record.task_id in self.ids or record.split_key in self.groups or inputs_digest(record.inputs) in self.inputs
        )


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """A digest of a task's inputs (what a version reads of it)."""
    return hashlib.sha256(json.dumps(dict(inputs), sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def promotion(
    rubric: Rubric,
    records: Sequence[Record],
    candidate: tuple[Mapping[str, Any], Sequence[Any]],
    incumbent_scores: Sequence[Any],
    against: str,
    rule: PromotionRule,
    gate: PrefillPolicy,
) -> tuple[Evidence, bool, str]:
    """The promotion decision of a candidate (its metrics and scores on the evidence ``records``) over the
    incumbent (its scores there, None where it learned from the task): the paired comparison, and the dimensions
    that pass ``gate`` at the family level (``should_promote``)."""
    metrics, scores = candidate
    comparison = paired_comparison(rubric, records, scores, incumbent_scores)
    proven = gate.family_proven(rubric.dimension_names, metrics)
    promote, reason = should_promote(comparison, against, rule, proven, family_words(len(rubric.dimensions)))
    return comparison, promote, reason


def seen_tasks(version_dir: Path) -> Seen:
    """What a stored version learned from: the rows of its ``train.jsonl`` (nothing when it has none)."""
    path = version_dir / "train.jsonl"
    ids, groups, inputs = set(), set(), set()
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                ids.add(str(row.get("id")))
                groups.add(str(row.get("group") or "") or str(row.get("id")))
                inputs.add(inputs_digest(row.get("data") or {}))
    return Seen(frozenset(ids), frozenset(groups), frozenset(inputs))


def unseen(records: Sequence[Record], seen: Seen) -> list[int]:
    """The positions of the ``records`` that a version which learned from ``seen`` can be judged on: not a task
    it learned from (by id, group or inputs, so a changed ``GROUP_BY`` or a re-imported task is still
    recognised), nor any task of the same group (today's grouping) as one it learned from."""
    tainted = {r.split_key for r in records if seen.knows(r)}
    return [i for i, r in enumerate(records) if r.split_key not in tainted]


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
    """Train on ``records``, gather the evidence, decide promotion, and write the version, its metrics and the
    data snapshot into ``destination`` atomically (temporary folder, then rename).

    Evidence: a feature head is fitted on every record and judged by its grouped out-of-fold predictions over
    all of them; a LoRA adapter is trained on a grouped split and judged on the held-out part. ``heldout``
    (benchmarks) gives an extra held-out set that is scored and stored as ``metrics["heldout"]`` (a LoRA
    adapter takes it as its held-out part instead of splitting).

    ``incumbent`` is ``(version name, version folder)`` of the active version; without it the base model is
    the incumbent. Promotion compares the candidate with it on the evidence tasks the incumbent did not learn
    from (``should_promote``). ``metrics.json`` records the decision; the caller moves the active pointer.
    ``gate``: every layer of the model waits there while a backend on this machine scores (``backend.state.serving``).
    """
    config = TrainConfig.build(rubric, overrides)
    method = config.method_for(rubric)
    if method == "head":
        train, held = list(records), list(heldout or [])
    elif heldout is None:
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
    hidden = hidden_groups(rubric, list(train) + list(held))
    if hidden:
        log.warning("groups: %s", hidden)
    if destination.exists():
        raise TrainingError(f"{destination} already exists; versions are never overwritten")
    tmp = staging_folder(destination)
    hooks = contextlib.ExitStack()
    try:
        _write_jsonl(tmp / "train.jsonl", [_record_row(r) for r in train])
        _write_jsonl(tmp / "heldout.jsonl", [_record_row(r) for r in held])
        if snapshot is not None:
            (tmp / "export.json").write_text(json.dumps(snapshot, ensure_ascii=False), encoding="utf-8")

        model, tokenizer, base_name = load_base_model(settings)
        hooks.enter_context(pause_hooks(model, gate))
        extra_heldout: dict[str, Any] | None = None
        if method == "head":
            judge = Judge(model, tokenizer, base_name, settings)
            judge.open_feature_store()  # tasks read before (by any job, the backend or the CLI) are not read again
            fitted = fit_feature_head(judge, rubric, train, held, config, progress)
            fitted.head.save(tmp)
            fault_point(settings, "adapter-written", progress)
            judge.adopt_head("default", fitted.head, tmp)
            evidence_records, candidate_scores, base_scores = train, fitted.oof_scores, fitted.base_scores
            candidate, base = fitted.candidate, fitted.base
            extra_heldout = fitted.heldout
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
            evidence_records = held
            if progress:
                progress({"stage": "evaluating candidate"})
            started = time.monotonic()
            candidate_scores = judge.score(rubric, [r.inputs for r in held], "default") if held else []
            candidate = scored_metrics(rubric, held, candidate_scores, time.monotonic() - started, "default")
            if progress:
                progress({"stage": "evaluating base model"})
            started = time.monotonic()
            base_scores = judge.score(rubric, [r.inputs for r in held], None) if held else []
            base = scored_metrics(rubric, held, base_scores, time.monotonic() - started, "base model")
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
            incumbent_scores = _incumbent_scores(
                judge, rubric, evidence_records, incumbent, fitted.features if method == "head" else None
            )
            known = [r for r, sc in zip(evidence_records, incumbent_scores, strict=True) if sc is not None]
            active_metrics = scored_metrics(
                rubric, known, [sc for sc in incumbent_scores if sc is not None], 0.0, incumbent[0]
            )
            against = incumbent[0]
        else:
            incumbent_scores, against = list(base_scores), "v0"
        rule = PromotionRule.from_settings(settings)
        comparison, promote, reason = promotion(
            rubric,
            evidence_records,
            (candidate, candidate_scores),
            incumbent_scores,
            against,
            rule,
            dataclasses.replace(PrefillPolicy.from_settings(settings), rule="interval"),
        )
        majority = evaluate_predictions(
            rubric, evidence_records, majority_scores(rubric, train, len(evidence_records)), n_boot=1
        )
        for evaluated in (candidate, base, active_metrics):
            add_majority_reference(evaluated, majority)
        evidence = {
            "kind": "out-of-fold" if method == "head" else "held-out",
            "tasks": len(evidence_records),
            "groups": len({r.split_key for r in evidence_records}),
            "folds": fitted.folds if method == "head" else None,
            **({"hidden_groups": hidden} if hidden else {}),
        }
        metrics = {
            "rubric": rubric.name,
            "base_model": settings.base_model,
            "model_name": base_name,
            "quantization": settings.quantization,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config.as_dict(),
            "method": method,
            "counts": counts | {"evidence_tasks": evidence["tasks"], "evidence_groups": evidence["groups"]},
            "evidence": evidence,
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
            "incumbent_version": against,
            "comparison": comparison.as_dict() | {"against": against, "tolerance": rule.tolerance},
            "promoted": promote,
            "decision": reason,
            "history": history,
            "training": training | ({"serving_pauses": gate.summary()} if gate is not None else {}),
            **({"heldout": extra_heldout} if extra_heldout else {}),
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


def _incumbent_scores(
    judge: Any, rubric: Rubric, records: Sequence[Record], incumbent: tuple[str, Path], features: Any
) -> list[Any]:
    """The active version's scores of the evidence ``records``, None for each task whose group it learned
    from (its predictions there would flatter it). A feature head reads the stored ``features``; an adapter
    scores the tasks."""
    name, folder = incumbent
    fresh = unseen(records, seen_tasks(folder))
    out: list[Any] = [None] * len(records)
    if not fresh:
        return out
    judge.load_adapter(name, folder)
    if is_head(folder) and features is not None:
        scores = apply_head(rubric, judge.head(name), [features[i] for i in fresh])
    else:
        scores = judge.score(rubric, [records[i].inputs for i in fresh], name)
    for i, score in zip(fresh, scores, strict=True):
        out[i] = score
    return out


@dataclass
class FittedHead:
    """A head fitted on every training task, and its evidence: the out-of-fold scores of those tasks."""

    head: Any
    candidate: dict[str, Any]  # metrics of the out-of-fold scores
    base: dict[str, Any]  # metrics of the base model on the same tasks
    training: dict[str, Any]
    oof_scores: list[Any]
    base_scores: list[Any]
    features: list[Any]
    folds: int
    heldout: dict[str, Any] | None = None  # candidate and base metrics on an extra held-out set


FEATURE_CHUNK = 32  # tasks per feature-extraction call (progress and heartbeat between calls)


def extract_features(
    judge: Any,
    rubric: Rubric,
    records: Sequence[Record],
    what: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[Any], list[Any]]:
    """The base model's scores and features (``Judge.score_with_features``) of ``records``, in the order of
    ``records``; tasks in the feature store are not read again (the progress says how many were read and how
    many were stored). Read in chunks of tasks of similar length (sorted by the length of their text, so a
    batch holds little padding: on DialSummEval 1 % padded tokens instead of 15 % in chunks taken in order)."""
    scores: list[Any] = [None] * len(records)
    features: list[Any] = [None] * len(records)
    store = getattr(judge, "feature_store", None)
    before = store.stats.hits if store is not None else 0
    order = sorted(range(len(records)), key=lambda i: sum(len(str(v)) for v in records[i].inputs.values()))
    for start in range(0, len(records), FEATURE_CHUNK):
        members = order[start : start + FEATURE_CHUNK]
        got_scores, got_features = judge.score_with_features(rubric, [records[i].inputs for i in members])
        for i, score, feature in zip(members, got_scores, got_features, strict=True):
            scores[i], features[i] = score, feature
        if progress:
            stored = (store.stats.hits - before) if store is not None else 0
            done = start + len(members)
            progress(
                {
                    "stage": f"features of the {what} tasks",
                    "done": done,
                    "total": len(records),
                    "read": done - stored,
                    "from_store": stored,
                }
            )
    if store is not None:
        log.info(
            "features of %d %s task(s): %d from the feature store, %d read by the model",
            len(records),
            what,
            store.stats.hits - before,
            len(records) - (store.stats.hits - before),
        )
    return scores, features


def out_of_fold_scores(
    rubric: Rubric, fold_heads: Sequence[Any], fold: Sequence[int], features: Sequence[Any], meta: Mapping[str, Any]
) -> list[Any]:
    """Each task scored by the head of its fold (``backend.model.head.cross_fitted``), which never saw its group;
    None where that fold has no head."""
    scores: list[Any] = [None] * len(features)
    for f, fold_head in enumerate(fold_heads):
        rows = [i for i in range(len(features)) if fold[i] == f]
        if fold_head is None or not rows:
            continue
        fold_head.meta = dict(meta)
        for i, score in zip(rows, apply_head(rubric, fold_head, [features[i] for i in rows]), strict=True):
            scores[i] = score
    return scores


@dataclass(frozen=True)
class HeadDesign:
    """How the feature head reads a task and learns (``head_design``): the feature ``selection`` of
    ``TaskFeatures.vector``, whether the lexical features follow it, the column ``subsets`` its
    cross-validation chooses among, and the ``blends`` of the other rating dimensions' targets."""

    selection: str
    lexical: bool
    subsets: dict[str, list[int] | None]
    blends: tuple[float, ...]

    def matrices(self, rubric: Rubric, features: Sequence[Any]) -> dict[str, np.ndarray]:
        """Per dimension, the (tasks x features) matrix the head reads."""
        return {
            d.name: np.stack([f.vector(d.name, self.selection, self.lexical) for f in features])
            for d in rubric.dimensions
        }

    @property
    def meta(self) -> dict[str, Any]:
        """What a saved head must remember to read features the same way (``backend.model.judge.apply_head``)."""
        return {"features": self.selection, "lexical": self.lexical}


def head_design(config: TrainConfig, rubric: Rubric, sample: Any) -> HeadDesign:
    """The head's design for ``rubric`` under ``config``, laid out on one task's ``TaskFeatures`` (``sample``).
    The subsets: everything the selection gives; only the target's three LM statistics (the last three shared
    features), which carry most of the signal a few annotated tasks can find; with ``head_lexical``, the
    lexical features with those three statistics."""
    selection = config.head_features_for(rubric)
    shared = len(sample.shared)
    stats = list(range(shared - 3, shared))
    subsets: dict[str, list[int] | None] = {selection: None, "lm-statistics": stats}
    if config.head_lexical:
        width = len(sample.vector(rubric.dimensions[0].name, selection, True))
        subsets["lexical"] = stats + list(range(width - len(LEXICAL_NAMES), width))
    return HeadDesign(selection, config.head_lexical, subsets, SHARE_BLENDS if config.head_share else (0.0,))


def head_targets(rubric: Rubric, records: Sequence[Record]) -> dict[str, list[Any]]:
    """What the head learns per task: the mean human score of a scale dimension (NaN when unrated), the
    consensus label of a nominal one (None when unrated)."""
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
    """One scoring pass of the base model over the training tasks gives the features and the base model's
    scores; the head is fitted on all of them (cross-validated, calibrated: ``backend.model.head``), and the same fit
    is repeated in grouped folds for the out-of-fold scores that are its evidence. ``held`` (optional) is
    scored too, for a separate held-out figure."""
    started = time.monotonic()
    base_scores, train_features = extract_features(judge, rubric, train, "training", progress)
    extracted = time.monotonic() - started
    if progress:
        progress({"stage": "fitting the feature head"})
    fit_started = time.monotonic()
    if not train_features:
        raise TrainingError("no training tasks to fit the feature head on")
    design = head_design(config, rubric, train_features[0])
    matrices = design.matrices(rubric, train_features)
    targets = head_targets(rubric, train)
    groups = [r.split_key for r in train]
    meta = {
        "base_model": judge.base_name,
        "rubric": rubric.name,
        **design.meta,
        "precision": str(next(judge.model.parameters()).dtype),
        "read": judge.read_mode(rubric),  # how extract_features read them: the head is served on the same read
    }
    subsets, blends = design.subsets, design.blends
    head = fit_head(
        rubric.dimensions, matrices, targets, groups, folds=config.head_folds, meta=meta, subsets=subsets, blends=blends
    )
    fold_heads, fold = cross_fitted(
        rubric.dimensions, matrices, targets, groups, folds=config.head_folds, subsets=subsets, blends=blends
    )
    oof_scores = out_of_fold_scores(rubric, fold_heads, fold, train_features, meta)
    if any(score is None for score in oof_scores):  # a single fold: no task has an out-of-fold prediction
        raise TrainingError(f"only {len(set(groups))} group(s) of tasks: the head needs at least 2 to be judged")
    fit_seconds = time.monotonic() - fit_started
    candidate = scored_metrics(rubric, train, oof_scores, fit_seconds, "feature head (out-of-fold)")
    for name, fitted_dim in head.dimensions.items():  # a head that found no signal is neither served nor counted
        candidate["dimensions"][name]["head_constant"] = fitted_dim.constant
    base = scored_metrics(rubric, train, base_scores, extracted, "base model")
    heldout = None
    if held:
        if progress:
            progress({"stage": "scoring the held-out tasks"})
        held_started = time.monotonic()
        held_base, held_features = extract_features(judge, rubric, held, "held-out", progress)
        seconds = time.monotonic() - held_started
        heldout = {
            "candidate": scored_metrics(rubric, held, apply_head(rubric, head, held_features), seconds, "feature head"),
            "base": scored_metrics(rubric, held, held_base, seconds, "base model"),
        }
    training = {
        "method": "head",
        "seconds": round(time.monotonic() - started, 1),
        "feature_seconds": round(extracted, 1),
        "fit_seconds": round(fit_seconds, 2),
        "tasks": len(train),
        "feature_size": head.feature_size,
        "cross_validation": {name: dim.cv for name, dim in head.dimensions.items()},
    }
    log.info(
        "feature head fitted on %d tasks in %d groups: features %.0f s, fit and %d-fold evidence %.1f s",
        len(train),
        len(set(groups)),
        extracted,
        len(fold_heads),
        fit_seconds,
    )
    return FittedHead(
        head, candidate, base, training, oof_scores, base_scores, train_features, len(fold_heads), heldout
    )
