"""Agreement reports: stored evaluation results -> JSON for machines and an HTML page for admins.

The page needs no network and no JavaScript: plots are rendered here with matplotlib as inline SVG.
Inputs are the ``metrics.json`` files the worker writes next to each adapter version.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.insights import agreement_matrix, disagreements
from backend.metrics import at_path, dimension_row, finite, json_safe, shown_columns
from backend.prefill import PrefillPolicy
from backend.registry import Registry

log = logging.getLogger(__name__)

SMALL_HELDOUT = 30  # below this many held-out tasks, alpha intervals are wide
LOW_VARIANCE_SHARE = 0.9


class ReportError(LookupError):
    """No report can be built (unknown project, no runs)."""


# --------------------------------------------------------------------------------------------------
# data


def dimension_rows(metrics: Mapping[str, Any], policy: PrefillPolicy | None = None) -> list[dict[str, Any]]:
    """One row per dimension (``backend.metrics.dimension_row``: judge vs consensus, the human ceiling, the
    base-model floor, the majority label's alpha on the same tasks...) and whether the version pre-fills it."""
    candidate = metrics.get("candidate") or {}
    base = (metrics.get("base") or {}).get("dimensions") or {}
    entries = candidate.get("dimensions") or {}
    decisions = (policy or PrefillPolicy()).decide(list(entries), candidate or None)
    return [
        dimension_row(name, entry, base.get(name)) | {"prefill": decisions[name].as_dict()}
        for name, entry in entries.items()
    ]


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
            "No held-out task has two or more annotators: the human ceiling (alpha among humans) "
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
        raise ReportError(f"project {project} has no training runs yet: press Start Training in Label Studio")
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


# --------------------------------------------------------------------------------------------------
# plots


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return text[text.index("<svg") :]


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none", "axes.spines.top": False, "axes.spines.right": False})
    return plt.subplots(figsize=(width, height))


def plot_alpha_by_dimension(rows: Sequence[Mapping[str, Any]], flat: Mapping[str, Any]) -> str:
    fig, ax = _figure(7.5, 3.2)
    names = [r["name"] for r in rows] + ["all (flattened)"]
    judge = [r["judge"]["alpha"] for r in rows] + [flat.get("alpha")]
    ceiling = [r["ceiling"]["alpha"] for r in rows] + [flat.get("ceiling")]
    floor = [r["floor"]["alpha"] for r in rows] + [flat.get("floor")]
    cis = [r["judge"]["ci"] for r in rows] + [flat.get("ci")]
    xs = range(len(names))
    width = 0.26
    for offset, values, label, color in (
        (-width, floor, "base model (floor)", "#b0b0b0"),
        (0, judge, "judge vs humans", "#2f6db5"),
        (width, ceiling, "humans vs humans (ceiling)", "#e39b2d"),
    ):
        ax.bar([x + offset for x in xs], [v if v is not None else 0 for v in values], width, label=label, color=color)
    for x, ci, value in zip(xs, cis, judge, strict=True):
        if ci and value is not None and ci[0] is not None and ci[1] is not None:
            ax.errorbar(
                [x], [value], yerr=[[value - ci[0]], [ci[1] - value]], fmt="none", ecolor="black", capsize=3, lw=1
            )
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(list(xs), names, rotation=15, ha="right")
    ax.set_ylabel("Krippendorff's alpha")
    ax.legend(frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    return _svg(fig)


def plot_confusion(row: Mapping[str, Any]) -> str:
    confusion = row.get("confusion") or {}
    labels = [str(x) for x in confusion.get("labels") or []]
    matrix = confusion.get("matrix") or []
    fig, ax = _figure(2.2 + 0.28 * len(labels), 1.9 + 0.28 * len(labels))
    if not labels:
        ax.text(0.5, 0.5, "no data", ha="center", va="center")
        ax.axis("off")
        return _svg(fig)
    ax.imshow(matrix, cmap="Blues")
    peak = max((max(r) for r in matrix if r), default=0) or 1
    for i, line in enumerate(matrix):
        for j, value in enumerate(line):
            ax.text(
                j, i, str(value), ha="center", va="center", fontsize=8, color="white" if value > peak / 2 else "black"
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(max(labels, key=len)) > 2 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("judge")
    ax.set_ylabel("human consensus")
    ax.set_title(row["name"])
    return _svg(fig)


def plot_agreement_matrix(cell: Mapping[str, Any], title: str) -> str:
    """A heatmap of pairwise α (annotators and the judge); a cell with fewer than ``min_shared`` shared tasks
    is grey and says so, every cell names its number of shared tasks."""
    raters = [rater_name(r) for r in cell.get("raters") or []]
    size = max(1, len(raters))
    fig, ax = _figure(1.6 + 0.75 * size, 1.3 + 0.6 * size)
    if not raters:
        ax.text(0.5, 0.5, "no raters", ha="center", va="center")
        ax.axis("off")
        return _svg(fig)
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in cell["alpha"]], dtype=float)
    reliable = cell["reliable"]
    shown = np.where(np.array(reliable), values, np.nan)
    ax.imshow(np.where(np.eye(size, dtype=bool), np.nan, shown), cmap="RdYlGn", vmin=-0.5, vmax=1.0)
    for i in range(size):
        for j in range(size):
            n = cell["shared"][i][j]
            if i == j:
                ax.add_patch(_patch(j, i, "#ffffff"))
                ax.text(j, i, f"n={n}", ha="center", va="center", fontsize=7, color="#666666")
            elif not reliable[i][j]:
                ax.add_patch(_patch(j, i, "#d9d9d9"))
                ax.text(j, i, f"n={n}\n< {cell['min_shared']}", ha="center", va="center", fontsize=7, color="#555555")
            else:
                text = "–" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
                ax.text(j, i, f"{text}\nn={n}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(size), raters, rotation=30, ha="right")
    ax.set_yticks(range(size), raters)
    ax.set_title(title)
    return _svg(fig)


def _patch(x: int, y: int, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=color, edgecolor="white")


def plot_losses(history: Sequence[Mapping[str, Any]]) -> str:
    fig, ax = _figure(6.5, 2.8)
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="#2f6db5", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation loss (held-out)", color="#c0392b", marker="o", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per label token")
    if train or val:
        ax.legend(frameon=False)
    else:  # a feature head has no optimizer steps
        ax.text(
            0.5,
            0.5,
            "no training loss: this version is a feature head",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#666666",
        )
    return _svg(fig)


def plot_versions(versions: Sequence[Mapping[str, Any]]) -> str:
    fig, ax = _figure(6.5, 2.8)
    xs = [v["number"] for v in versions]
    ax.plot(xs, [v["alpha_flat"] for v in versions], marker="o", color="#2f6db5", label="judge (candidate)")
    ax.plot(
        xs, [v["alpha_base_flat"] for v in versions], ls="--", marker="s", ms=3, color="#888888", label="base model"
    )
    ax.plot(xs, [v["alpha_humans_flat"] for v in versions], ls=":", marker="^", ms=3, color="#e39b2d", label="humans")
    for v in versions:
        if v["alpha_flat"] is not None:
            ax.annotate(
                "promoted" if v["promoted"] else "kept previous",
                (v["number"], v["alpha_flat"]),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=7,
                color="#1e7b34" if v["promoted"] else "#a33",
            )
    ax.set_xticks(xs, [f"v{x}" for x in xs])
    ax.set_ylabel("flattened alpha")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


# --------------------------------------------------------------------------------------------------
# HTML (Jinja2 templates in backend/templates, autoescaped)


def fmt_alpha(value: Any) -> str:
    number = finite(value)
    return "–" if number is None else f"{number:.3f}"


def fmt_int(value: Any) -> str:
    number = finite(value)
    return "–" if number is None else f"{int(number):,}"


def rater_name(name: Any) -> str:
    """An annotator id as shown: Label Studio exports user ids, which read as labels on their own."""
    text = str(name)
    return f"annotator {text}" if text.isdigit() else text


def _cell(value: Any, kind: str) -> str:
    return fmt_int(value) if kind == "int" else fmt_alpha(value)


@functools.cache
def _templates() -> Any:
    from jinja2 import ChainableUndefined, Environment, PackageLoader, select_autoescape

    # ChainableUndefined: a key absent from older metrics.json files renders as "–", never fails the page
    env = Environment(
        loader=PackageLoader("backend", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=ChainableUndefined,
    )
    env.filters.update(alpha=fmt_alpha, integer=fmt_int, at=at_path, cell=_cell, rater=rater_name)
    return env


def render_html(report: Mapping[str, Any]) -> str:
    """The report page: self-contained HTML (no script, no network) with inline SVG plots."""
    rows = report.get("dimensions") or []
    matrix = report.get("agreement_matrix") or {}
    cells = ([("all dimensions (flattened)", matrix["flat"])] if matrix.get("flat") else []) + list(
        (matrix.get("dimensions") or {}).items()
    )
    plots = {
        "alpha": plot_alpha_by_dimension(rows, report.get("flat") or {}),
        "matrix": [plot_agreement_matrix(cell, name) for name, cell in cells],
        "confusion": [plot_confusion(row) for row in rows],
        "losses": plot_losses(report.get("history") or []),
        "versions": plot_versions(report.get("versions") or []),
    }
    return _templates().get_template("report.html").render(report=report, plots=plots, columns=shown_columns())


def render_queue(data: Mapping[str, Any]) -> str:
    """What to label next (``Service.label_queue``) as a page with links into Label Studio."""
    return _templates().get_template("queue.html").render(data=data)


def render_index(index: Mapping[str, Any]) -> str:
    """The projects index page."""
    return _templates().get_template("index.html").render(index=index)
