"""Agreement reports, the data: stored evaluation results -> JSON for machines (and for the HTML page of
``backend.reports.html``). Inputs are the ``metrics.json`` files the worker writes next to each version."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backend.core.metrics import dimension_row, finite, json_safe
from backend.core.prefill import PrefillPolicy
from backend.reports.insights import agreement_matrix, disagreements
from backend.state.registry import Registry

log = logging.getLogger(__name__)

SMALL_HELDOUT = 30  # below this many held-out tasks, alpha intervals are wide
LOW_VARIANCE_SHARE = 0.9


class ReportError(LookupError):
    """No report can be built (unknown project, no runs)."""


# --------------------------------------------------------------------------------------------------
# data


def dimension_rows(metrics: Mapping[str, Any], policy: PrefillPolicy | None = None) -> list[dict[str, Any]]:
    """One row per dimension (``backend.core.metrics.dimension_row``: judge vs consensus, the human ceiling, the
    base-model floor, the majority label's alpha on the same tasks...) and whether the version pre-fills it."""
    candidate = metrics.get("candidate") or {}
    base = (metrics.get("base") or {}).get("dimensions") or {}
    entries = candidate.get("dimensions") or {}
    decisions = (policy or PrefillPolicy()).decide(list(entries), candidate or None)
    rows = []
    for name, entry in entries.items():
        row = dimension_row(name, entry, base.get(name)) | {"prefill": decisions[name].as_dict()}
        _evidence_interval(row["judge"], entry)
        _evidence_interval(row["floor"], base.get(name) or {})
        rows.append(row)
    return rows


def _evidence_interval(shown: dict[str, Any], entry: Mapping[str, Any]) -> None:
    """The interval shown beside a dimension's alpha is its evidence's (groups resampled, corrected for few
    groups: the one the pre-fill gate reads), also for versions stored when ``alpha_system_ci`` came from a
    bootstrap over single tasks."""
    evidence = entry.get("evidence")
    if isinstance(evidence, Mapping) and "low" in evidence:
        shown["ci"] = [finite(evidence.get("low")), finite(evidence.get("high"))]


def warnings_for(metrics: Mapping[str, Any]) -> list[str]:
    """What a statistician would point out about these numbers."""
    out: list[str] = []
    counts = metrics.get("counts") or {}
    evidence = metrics.get("evidence") or {"kind": "held-out"}
    n = (metrics.get("candidate") or {}).get("n_tasks", counts.get("heldout_tasks", 0))
    if n < SMALL_HELDOUT:
        out.append(
            f"Only {n} {evidence['kind']} evidence task(s): alpha is unstable below {SMALL_HELDOUT}; read the "
            "intervals, not the point estimates."
        )
    if not counts.get("multi_annotator_heldout_tasks") and not (metrics.get("candidate") or {}).get(
        "n_multi_annotator_tasks"
    ):
        out.append(
            f"No {evidence['kind']} evidence task has two or more annotators: the judge is compared with one "
            "person's label per task (not a consensus), and the human ceiling (alpha among humans) and delta-alpha "
            "cannot be measured. Ask for overlapping annotations on some tasks."
        )
    for row in dimension_rows(metrics):
        distribution = _human_distribution(row)
        total = sum(distribution.values())
        if total and max(distribution.values()) / total >= LOW_VARIANCE_SHARE:
            label = max(distribution, key=distribution.get)  # type: ignore[arg-type]
            out.append(
                f"Dimension {row['name']!r}: {max(distribution.values()) / total:.0%} of the consensus "
                f"labels are {label!r}; with almost no variance alpha says little."
            )
        predicted = row.get("predicted_distribution") or {}
        if row.get("nearly_constant") and predicted:
            label = max(predicted, key=predicted.get)  # type: ignore[arg-type]
            out.append(
                f"Dimension {row['name']!r}: the judge predicts {label!r} for "
                f"{predicted[label] / max(1, sum(predicted.values())):.0%} of the held-out tasks; a "
                "(nearly) constant pre-annotation tells no task from another."
            )
    hidden = (metrics.get("evidence") or {}).get("hidden_groups")
    if hidden:
        out.append(f"Groups: {hidden}")
    for problem in metrics.get("label_config_problems") or []:
        out.append(f"The project's labeling config no longer matches the rubric: {problem}")
    return out


def _human_distribution(row: Mapping[str, Any]) -> dict[str, int]:
    confusion = row.get("confusion") or {}
    labels = confusion.get("labels") or []
    matrix = confusion.get("matrix") or []
    return {str(label): int(sum(matrix[i])) for i, label in enumerate(labels) if i < len(matrix)}


def version_summary(number: int, model_version: str, metrics: Mapping[str, Any], active: bool) -> dict[str, Any]:
    return {
        "number": number,
        "version": model_version,
        "active": active,
        "created": metrics.get("created"),
        "promoted": metrics.get("promoted"),
        "decision": metrics.get("decision"),
        "method": metrics.get("method", "lora"),
        "alpha_dims": finite(metrics.get("alpha_dims")),
        "alpha_dims_base": finite((metrics.get("base") or {}).get("alpha_dims")),
        "alpha_flat": finite(metrics.get("alpha_flat")),
        "alpha_flat_ci": metrics.get("alpha_flat_ci"),
        "alpha_base_flat": finite((metrics.get("base") or {}).get("alpha_flat")),
        "alpha_humans_flat": finite(metrics.get("alpha_humans_flat")),
        "counts": metrics.get("counts"),
        "evidence": metrics.get("evidence"),
        "comparison": metrics.get("comparison"),
        "training": metrics.get("training"),
        "dimensions": {
            row["name"]: {
                "alpha": row["judge"]["alpha"],
                "ci": row["judge"]["ci"],
                "floor": row["floor"]["alpha"],
                "ceiling": row["ceiling"]["alpha"],
            }
            for row in dimension_rows(metrics)
        },
    }


def run_details(metrics: Mapping[str, Any], policy: PrefillPolicy | None = None) -> dict[str, Any]:
    """The full picture of one run: the per-dimension headline, dimensions, the flattened figure (the paper's),
    loss history, counts, warnings."""
    candidate = metrics.get("candidate") or {}
    return {
        "rubric": metrics.get("rubric"),
        "model_name": metrics.get("model_name"),
        "method": metrics.get("method", "lora"),
        "headline": {
            "alpha_dims": finite(candidate.get("alpha_dims")),
            "delta_alpha_dims": finite(candidate.get("delta_alpha_dims")),
            "majority": finite(candidate.get("alpha_dims_majority")),
            "floor": finite((metrics.get("base") or {}).get("alpha_dims")),
        },
        "flat": {
            "alpha": finite(candidate.get("alpha_flat")),
            "ci": candidate.get("alpha_flat_ci"),
            "alpha_ordinal": finite(candidate.get("alpha_flat_ordinal")),
            "ceiling": finite(candidate.get("alpha_humans_flat")),
            "floor": finite((metrics.get("base") or {}).get("alpha_flat")),
            "delta_alpha": finite(candidate.get("delta_alpha_flat")),
            "exact": finite(candidate.get("exact_flat")),
            "mae": finite(candidate.get("mae_flat")),
            "level": candidate.get("level_flat"),
        },
        "dimensions": dimension_rows(metrics, policy),
        "history": metrics.get("history") or [],
        "counts": metrics.get("counts") or {},
        "evidence": evidence_summary(metrics),
        "comparison": metrics.get("comparison"),
        "source": metrics.get("source") or {},
        "config": metrics.get("config") or {},
        "warnings": warnings_for(metrics),
    }


def evidence_summary(metrics: Mapping[str, Any]) -> str:
    """``Evidence: 48 tasks in 16 groups, out-of-fold (5 folds)`` (a run written before evidence was recorded:
    its held-out task count)."""
    evidence = metrics.get("evidence")
    if not evidence:
        n = (metrics.get("candidate") or {}).get("n_tasks", 0)
        return f"Evidence: {n} held-out task(s) (groups not recorded)"
    folds = f" ({evidence['folds']} folds)" if evidence.get("folds") else ""
    return f"Evidence: {evidence['tasks']} task(s) in {evidence['groups']} group(s), {evidence['kind']}{folds}"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def actionable(
    run_dir: Path | None, metrics: Mapping[str, Any], project: str | None = None, label_studio_url: str = ""
) -> dict[str, Any]:
    """Who agrees with whom (pairwise α between annotators and the judge, per dimension and flattened: every
    annotated task of the run for human pairs, the held-out tasks for the judge) and where the judge is
    furthest from the humans on held-out tasks, from the run folder's data snapshot."""
    candidate = metrics.get("candidate") or {}
    dimensions = candidate.get("dimensions") or {}
    held = _jsonl(run_dir / "heldout.jsonl") if run_dir else []
    rows = _jsonl(run_dir / "train.jsonl") + held if run_dir else []
    predictions = candidate.get("predictions") or []
    if not rows or not dimensions:
        return {"agreement_matrix": None, "disagreements": None}
    level = candidate.get("level_flat") or "interval"
    return {
        "agreement_matrix": agreement_matrix(rows, predictions, dimensions, level),
        # the tasks the judge's stored predictions are evidence on (held-out, or out-of-fold over all)
        "disagreements": disagreements(rows, predictions, dimensions, project, label_studio_url),
    }


def project_report(
    registry: Registry,
    project: str,
    policy: PrefillPolicy | None = None,
    label_studio_url: str = "",
) -> dict[str, Any]:
    """Report data of a project: every version, and the details of the active (else latest) run (with the
    pre-fill decisions under ``policy``, and links to ``label_studio_url``)."""
    infos = registry.versions(project)
    runs = [(i, i.metrics) for i in infos if i.number > 0 and i.metrics]
    if not runs:
        needed = (policy or PrefillPolicy()).unevaluated_decision()
        what = "pre-fills every dimension" if needed.prefilled else "pre-fills nothing"
        raise ReportError(
            f"project {project} has no training runs yet: v0 {what} ({needed.reason}); "
            "press Start Training in Label Studio once tasks are annotated"
        )
    active = next((i for i in infos if i.active), infos[0])
    shown = next(((i, m) for i, m in runs if i.active), runs[-1])
    report = {
        "project": project,
        "active_version": active.model_version,
        "shown_version": shown[0].model_version,
        "versions": [version_summary(i.number, i.model_version, m, i.active) for i, m in runs],
        **run_details(shown[1], policy),
        **actionable(shown[0].path, shown[1], project, label_studio_url),
    }
    return json_safe(report)


def run_report(run_dir: Path) -> dict[str, Any]:
    """Report data of an offline ``rubric-judge train`` run folder."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise ReportError(f"{run_dir}: no metrics.json (is this a `rubric-judge train --out` folder?)")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    report = {
        "project": None,
        "active_version": None,
        "shown_version": str(run_dir),
        "versions": [version_summary(1, str(run_dir), metrics, True)],
        **run_details(metrics),
        **actionable(run_dir, metrics),
    }
    return json_safe(report)


def projects_index(registry: Registry) -> dict[str, Any]:
    out = []
    for project in registry.projects():
        infos = registry.versions(project)
        active = next((i for i in infos if i.active), infos[0])
        metrics = (active.metrics or {}) if active.number else {}
        latest = next((i for i in reversed(infos) if i.metrics and i.number), None)
        out.append(
            {
                "project": project,
                "active_version": active.model_version,
                "alpha_dims": finite(metrics.get("alpha_dims")),
                "alpha_flat": finite(metrics.get("alpha_flat")),
                "versions": len(infos) - 1,
                "latest_alpha_dims": finite((latest.metrics or {}).get("alpha_dims")) if latest else None,
                "latest_alpha_flat": finite((latest.metrics or {}).get("alpha_flat")) if latest else None,
            }
        )
    return {"projects": out}
