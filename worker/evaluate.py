"""Held-out evaluation: the judge against the per-task human consensus, and the humans against each other.

Per dimension: Krippendorff's alpha (interval and ordinal for scales, nominal for classification), the
human-human alpha (the ceiling), the "one more annotator" delta-alpha, exact agreement, MAE or macro-F1, a
confusion matrix, and ``evidence``: alpha at the dimension's own level with its group-bootstrap interval
(``backend.core.evidence``, corrected for few groups; it is also the ``alpha_system_ci`` of that level), plus
``evidence_family``, the same at the family level that promotion tests (``backend.core.evidence.family_ci``).
The headline is per dimension: ``alpha_dims``, the mean over dimensions of alpha against the consensus (a
per-dimension constant cannot win it), and ``delta_alpha_dims``. Flattened over all dimensions
(``alpha_flat``): the paper's figure, which a constant per dimension scores well on, so it is reported but
decides nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from backend.core.agreement import consensus, dimension_report, flatten_dimensions
from backend.core.evidence import (
    CI,
    DimensionData,
    Evidence,
    alpha_interval,
    alpha_intervals,
    family_ci,
    paired_difference,
)
from backend.core.metrics import CONSTANT_SHARE, dimension_alpha, finite, main_report, mean
from backend.core.rubric import Dimension, Rubric
from backend.core.scores import DimensionScore, TaskScore
from backend.model.judge import Judge
from worker.source import Record

log = logging.getLogger(__name__)


def _value(dim: Dimension, label: str | None) -> int | str | None:
    return None if label is None else dim.value_of(label)


def human_matrix(rubric: Rubric, records: Sequence[Record], dim: Dimension) -> list[list[Any]]:
    """Raters x units for one dimension (None where a rater did not score the unit)."""
    annotators = sorted({a.annotator for r in records for a in r.annotations})
    rows = []
    for who in annotators:
        row = []
        for record in records:
            labels = next((a.labels for a in record.annotations if a.annotator == who), {})
            row.append(_value(dim, labels.get(dim.name)))
        rows.append(row)
    return rows


def evaluate_predictions(
    rubric: Rubric, records: Sequence[Record], predictions: Sequence[TaskScore] | None, n_boot: int = 500
) -> dict[str, Any]:
    """Agreement metrics of ``predictions`` (None: humans only) on ``records``."""
    if predictions is not None and len(predictions) != len(records):
        raise ValueError("one prediction per record expected")
    dims: dict[str, Any] = {}
    flat_humans: dict[str, list[list[Any]]] = {}
    flat_system: list[Any] = []
    flat_expected: list[Any] = []
    for dim in rubric.dimensions:
        human = human_matrix(rubric, records, dim)
        system = None if predictions is None else [_value(dim, p.dimensions[dim.name].label) for p in predictions]
        domain = list(dim.values) if dim.values is not None else list(dim.labels)
        # a dimension's interval is its evidence's (below), not a bootstrap over single tasks
        if dim.is_scale:
            entry = {
                "interval": dimension_report(human, system, "interval", domain, n_boot=1),
                "ordinal": dimension_report(human, system, "ordinal", domain, n_boot=1) | {"alpha_system_ci": None},
            }
        else:
            entry = {"nominal": dimension_report(human, system, "nominal", domain, n_boot=1)}
        entry["level"] = dim.level
        if predictions is not None and dim.is_scale:
            # expected-score decoding: the mean of the label distribution instead of its argmax
            expected = [p.dimensions[dim.name].expected for p in predictions]
            entry["alpha_expected"] = dimension_report(human, expected, "interval", None, n_boot=1)["alpha_system"]
            flat_expected.extend(expected)
        if predictions is not None:
            entry |= evidence_entry(dim, records, predictions, len(rubric.dimensions))
            # the interval of this alpha is the evidence's (groups resampled, corrected for few groups)
            entry[dim.level]["alpha_system_ci"] = [entry["evidence"]["low"], entry["evidence"]["high"]]
        dims[dim.name] = entry
        flat_humans[dim.name] = human
        if system is not None:
            flat_system.extend(system)
    level = "interval" if rubric.kind == "scores" else "nominal"
    flat = dimension_report(
        flatten_dimensions(flat_humans), flat_system if predictions is not None else None, level, None, n_boot=1
    )
    if predictions is not None:
        flat["alpha_system_ci"] = flat_interval(rubric, records, predictions, level)
    flat_ordinal = None
    if rubric.kind == "scores":
        flat_ordinal = dimension_report(flatten_dimensions(flat_humans), flat_system or None, "ordinal", None, n_boot=1)
    alpha_flat_expected = None
    if flat_expected:
        alpha_flat_expected = dimension_report(
            flatten_dimensions(flat_humans), flat_expected, "interval", None, n_boot=1
        )["alpha_system"]
    alphas = [dimension_alpha(e) for e in dims.values()]
    deltas = [finite(main_report(e).get("delta_alpha")) for e in dims.values()]
    return {
        "n_tasks": len(records),
        "alpha_dims": mean(alphas),
        "delta_alpha_dims": mean(deltas),
        "alpha_flat_expected": alpha_flat_expected,
        "n_annotations": sum(len(r.annotations) for r in records),
        "n_multi_annotator_tasks": sum(1 for r in records if len(r.annotations) >= 2),
        "alpha_flat": flat["alpha_system"],
        "alpha_flat_ci": flat["alpha_system_ci"],
        "alpha_flat_ordinal": flat_ordinal["alpha_system"] if flat_ordinal else None,
        "alpha_humans_flat": flat["alpha_humans"],
        "delta_alpha_flat": flat["delta_alpha"],
        "exact_flat": flat["exact"],
        "mae_flat": flat["mae"],
        "level_flat": level,
        "dimensions": dims,
    }


def flat_interval(
    rubric: Rubric, records: Sequence[Record], predictions: Sequence[TaskScore], level: str
) -> list[float | None]:
    """The interval of the flattened alpha (every dimension's units in one): the group bootstrap of
    ``backend.core.evidence``, each replicate drawing a task's group with all of its dimensions."""
    gold: list[Any] = []
    system: list[Any] = []
    for dim in rubric.dimensions:
        units = [[dim.value_of(a.labels[dim.name]) for a in r.annotations if dim.name in a.labels] for r in records]
        gold += consensus(units, level)
        system += [_value(dim, p.dimensions[dim.name].label) for p in predictions]
    if level == "interval":
        codes = None
        gold_values = [None if v is None else float(v) for v in gold]
        system_values_ = [None if v is None else float(v) for v in system]
    else:
        codes = sorted({str(v) for v in gold + system if v is not None})
        gold_values = [None if v is None else float(codes.index(str(v))) for v in gold]
        system_values_ = [None if v is None else float(codes.index(str(v))) for v in system]
    groups = [r.split_key for r in records] * len(rubric.dimensions)
    evidence = alpha_interval(gold_values, system_values_, groups, level, None if codes is None else len(codes))
    return [evidence.low, evidence.high]


def evidence_entry(
    dim: Dimension, records: Sequence[Record], predictions: Sequence[TaskScore], n_dimensions: int
) -> dict[str, Any]:
    """What the pre-fill gate and promotion read of one dimension (``backend.core.prefill.PrefillPolicy``):
    ``evidence`` and ``evidence_family`` (``dimension_evidence``), the predicted label counts and whether they
    are nearly constant."""
    system = [_value(dim, p.dimensions[dim.name].label) for p in predictions]
    evidence, family = dimension_evidence(dim, records, system, n_dimensions)
    counts = {label: sum(1 for p in predictions if p.dimensions[dim.name].label == label) for label in dim.labels}
    top = max(counts.values(), default=0)
    return {
        "evidence": evidence.as_dict(),
        "evidence_family": family.as_dict(),
        "predicted_distribution": counts,
        "nearly_constant": bool(predictions) and top >= CONSTANT_SHARE * len(predictions),
    }


def consensus_values(dim: Dimension, records: Sequence[Record], level: str | None = None) -> list[float | None]:
    """Per task, the human consensus of one dimension as the evidence statistics read it at ``level`` (the
    dimension's own by default): the mean score of a scale at ``interval``, the position on the scale of the
    lower median at ``ordinal``, the index of the consensus label at ``nominal`` (None where nobody rated it)."""
    level = level or dim.level
    units = [[dim.value_of(a.labels[dim.name]) for a in r.annotations if dim.name in a.labels] for r in records]
    if level == "interval":
        return [None if v is None else float(v) for v in consensus(units, "interval")]
    domain = list(dim.values) if level == "ordinal" and dim.values is not None else list(dim.labels)
    return [None if v is None else float(domain.index(v)) for v in consensus(units, level, domain)]


def system_values(dim: Dimension, system: Sequence[Any], level: str | None = None) -> list[float | None]:
    """A system's labels (``_value``: numbers for a scale, labels for a class) as the evidence statistics read
    them at ``level``: numbers at ``interval``, category codes (positions on the scale, label indices) else."""
    level = level or dim.level
    if level == "interval":
        return [None if v is None else float(v) for v in system]
    domain = list(dim.values) if level == "ordinal" and dim.values is not None else list(dim.labels)
    return [None if v is None else float(domain.index(v if level == "ordinal" else str(v))) for v in system]


def dimension_evidence(
    dim: Dimension, records: Sequence[Record], system: Sequence[Any], n_dimensions: int = 1
) -> tuple[Evidence, Evidence]:
    """Alpha of ``system`` against the consensus with its group-bootstrap interval (``backend.core.evidence``),
    at the pre-fill gate's coverage and at the family level of a rubric with ``n_dimensions`` dimensions."""
    evidence, family = alpha_intervals(
        consensus_values(dim, records),
        system_values(dim, system),
        [r.split_key for r in records],
        dim.level,
        None if dim.level == "interval" else len(dim.labels),
        cis=(CI, family_ci(n_dimensions)),
    )
    return evidence, family


def paired_comparison(
    rubric: Rubric, records: Sequence[Record], first: Sequence[TaskScore], second: Sequence[TaskScore | None]
) -> Evidence:
    """Alpha per dimension of ``first`` minus ``second`` on the tasks where ``second`` has a prediction (None:
    the second system learned from that task), with a paired group-bootstrap interval."""
    kept = [i for i, score in enumerate(second) if score is not None]
    shared = [records[i] for i in kept]
    dims = []
    for dim in rubric.dimensions:
        a = [_value(dim, first[i].dimensions[dim.name].label) for i in kept]
        b = [_value(dim, second[i].dimensions[dim.name].label) for i in kept]  # type: ignore[union-attr]
        dims.append(
            DimensionData(
                consensus_values(dim, shared),
                system_values(dim, a),
                system_values(dim, b),
                dim.level,
                None if dim.level == "interval" else len(dim.labels),
            )
        )
    return paired_difference(dims, [r.split_key for r in shared])


def majority_scores(rubric: Rubric, train: Sequence[Record], n: int) -> list[TaskScore]:
    """The most frequent human label of each dimension in ``train``, for ``n`` tasks (the constant that the
    pre-fill gate and the headline must beat)."""
    dims = {}
    for dim in rubric.dimensions:
        counts = Counter(a.labels[dim.name] for r in train for a in r.annotations if dim.name in a.labels)
        label = counts.most_common(1)[0][0] if counts else dim.labels[0]
        dims[dim.name] = DimensionScore(
            label=label,
            probs={x: float(x == label) for x in dim.labels},
            expected=float(dim.value_of(label)) if dim.is_scale else None,
        )
    score = TaskScore(dimensions=dims)
    return [score] * n


def add_majority_reference(metrics: dict[str, Any] | None, majority: Mapping[str, Any]) -> None:
    """Write the majority label's alpha on the same held-out tasks into each dimension (``alpha_majority``),
    which the pre-fill gate compares with."""
    if not metrics:
        return
    for name, entry in metrics.get("dimensions", {}).items():
        entry["alpha_majority"] = dimension_alpha(majority["dimensions"][name])
    metrics["alpha_dims_majority"] = majority.get("alpha_dims")


def scored_metrics(
    rubric: Rubric,
    records: Sequence[Record],
    predictions: Sequence[TaskScore],
    seconds: float,
    label: str,
    n_boot: int = 500,
) -> dict[str, Any]:
    """``evaluate_predictions`` plus the per-task predictions and the scoring time."""
    metrics = evaluate_predictions(rubric, records, predictions, n_boot=n_boot)
    metrics["scoring_seconds"] = round(seconds, 2)
    metrics["predictions"] = [
        {"task_id": r.task_id, "labels": p.labels, "confidence": round(p.confidence, 4)}
        for r, p in zip(records, predictions, strict=True)
    ]
    log.info(
        "evaluated %s on %d task(s): alpha per dimension %s, flattened %s (%.1f s)",
        label,
        len(records),
        _fmt(metrics["alpha_dims"]),
        _fmt(metrics["alpha_flat"]),
        seconds,
    )
    return metrics


def evaluate_judge(
    judge: Judge, rubric: Rubric, records: Sequence[Record], adapter: str | None, n_boot: int = 500
) -> dict[str, Any]:
    """Score ``records`` with ``adapter`` (None = base model) and compute the metrics."""
    started = time.monotonic()
    predictions = judge.score(rubric, [r.inputs for r in records], adapter) if records else []
    return scored_metrics(
        rubric, records, predictions, time.monotonic() - started, adapter or "base model", n_boot=n_boot
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
