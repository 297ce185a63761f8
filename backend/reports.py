"""Agreement reports: stored evaluation results -> JSON for machines and an HTML page for admins.

The page needs no network and no JavaScript: plots are rendered here with matplotlib as inline SVG.
Inputs are the ``metrics.json`` files the worker writes next to each adapter version.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backend.prefill import decide, main_report
from backend.registry import Registry

log = logging.getLogger(__name__)

SMALL_HELDOUT = 30  # below this many held-out tasks, alpha intervals are wide
LOW_VARIANCE_SHARE = 0.9


class ReportError(LookupError):
    """No report can be built (unknown project, no runs)."""


# --------------------------------------------------------------------------------------------------
# data


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def dimension_rows(metrics: Mapping[str, Any], prefill_rule: str | float = "majority",
                   prefill_unevaluated: bool = True) -> list[dict[str, Any]]:
    """One row per dimension: judge vs consensus, the human ceiling, the base-model floor, the majority
    label's alpha on the same tasks, and whether the version pre-fills the dimension (and why)."""
    candidate = metrics.get("candidate") or {}
    base = metrics.get("base") or {}
    names = list(candidate.get("dimensions") or {})
    decisions = decide(names, candidate or None, prefill_rule, prefill_unevaluated)
    rows = []
    for name, entry in (candidate.get("dimensions") or {}).items():
        main = main_report(entry)
        ordinal = entry.get("ordinal") or {}
        floor = main_report((base.get("dimensions") or {}).get(name, {}))
        confusion = main.get("confusion") or ordinal.get("confusion")
        rows.append({
            "name": name,
            "level": main.get("level"),
            "judge": {"alpha": _finite(main.get("alpha_system")), "ci": main.get("alpha_system_ci"),
                      "alpha_ordinal": _finite(ordinal.get("alpha_system")) if ordinal else None,
                      "exact": _finite(main.get("exact")), "mae": _finite(main.get("mae")),
                      "macro_f1": _finite(main.get("macro_f1")), "per_class_f1": main.get("per_class_f1")},
            "ceiling": {"alpha": _finite(main.get("alpha_humans")), "n_raters": main.get("n_raters")},
            "floor": {"alpha": _finite(floor.get("alpha_system")), "ci": floor.get("alpha_system_ci")},
            "delta_alpha": _finite(main.get("delta_alpha")),
            "majority": {"alpha": _finite(entry.get("alpha_majority"))},
            "prefill": decisions[name].as_dict(),
            "nearly_constant": bool(entry.get("nearly_constant")),
            "n_units": main.get("n_units"),
            "confusion": confusion,
            "predicted_distribution": entry.get("predicted_distribution"),
        })
    return rows


def warnings_for(metrics: Mapping[str, Any]) -> list[str]:
    """What a statistician would point out about these numbers."""
    out: list[str] = []
    counts = metrics.get("counts") or {}
    heldout = counts.get("heldout_tasks", (metrics.get("candidate") or {}).get("n_tasks", 0))
    if heldout < SMALL_HELDOUT:
        out.append(f"Only {heldout} held-out task(s): alpha is unstable below {SMALL_HELDOUT}; read the intervals, "
                   "not the point estimates.")
    if not counts.get("multi_annotator_heldout_tasks") and not (metrics.get("candidate") or {}).get(
            "n_multi_annotator_tasks"):
        out.append("No held-out task has two or more annotators: the human ceiling (alpha among humans) "
                   "cannot be measured. Ask for overlapping annotations on some tasks.")
    for row in dimension_rows(metrics):
        distribution = _human_distribution(row)
        total = sum(distribution.values())
        if total and max(distribution.values()) / total >= LOW_VARIANCE_SHARE:
            label = max(distribution, key=distribution.get)  # type: ignore[arg-type]
            out.append(f"Dimension {row['name']!r}: {max(distribution.values()) / total:.0%} of the consensus "
                       f"labels are {label!r}; with almost no variance alpha says little.")
        predicted = row.get("predicted_distribution") or {}
        if row.get("nearly_constant") and predicted:
            label = max(predicted, key=predicted.get)  # type: ignore[arg-type]
            out.append(f"Dimension {row['name']!r}: the judge predicts {label!r} for "
                       f"{predicted[label] / max(1, sum(predicted.values())):.0%} of the held-out tasks; a "
                       "(nearly) constant pre-annotation tells no task from another.")
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
        "number": number, "version": model_version, "active": active,
        "created": metrics.get("created"), "promoted": metrics.get("promoted"), "decision": metrics.get("decision"),
        "method": metrics.get("method", "lora"),
        "alpha_dims": _finite(metrics.get("alpha_dims")),
        "alpha_dims_base": _finite((metrics.get("base") or {}).get("alpha_dims")),
        "alpha_flat": _finite(metrics.get("alpha_flat")), "alpha_flat_ci": metrics.get("alpha_flat_ci"),
        "alpha_base_flat": _finite((metrics.get("base") or {}).get("alpha_flat")),
        "alpha_humans_flat": _finite(metrics.get("alpha_humans_flat")),
        "counts": metrics.get("counts"), "training": metrics.get("training"),
        "dimensions": {row["name"]: {"alpha": row["judge"]["alpha"], "ci": row["judge"]["ci"],
                                     "floor": row["floor"]["alpha"], "ceiling": row["ceiling"]["alpha"]}
                       for row in dimension_rows(metrics)},
    }


def run_details(metrics: Mapping[str, Any], prefill_rule: str | float = "majority",
                prefill_unevaluated: bool = True) -> dict[str, Any]:
    """The full picture of one run: the per-dimension headline, dimensions, the flattened figure (the paper's),
    loss history, counts, warnings."""
    candidate = metrics.get("candidate") or {}
    return {
        "rubric": metrics.get("rubric"), "model_name": metrics.get("model_name"),
        "method": metrics.get("method", "lora"),
        "headline": {"alpha_dims": _finite(candidate.get("alpha_dims")),
                     "delta_alpha_dims": _finite(candidate.get("delta_alpha_dims")),
                     "majority": _finite(candidate.get("alpha_dims_majority")),
                     "floor": _finite((metrics.get("base") or {}).get("alpha_dims"))},
        "flat": {"alpha": _finite(candidate.get("alpha_flat")), "ci": candidate.get("alpha_flat_ci"),
                 "alpha_ordinal": _finite(candidate.get("alpha_flat_ordinal")),
                 "ceiling": _finite(candidate.get("alpha_humans_flat")),
                 "floor": _finite((metrics.get("base") or {}).get("alpha_flat")),
                 "delta_alpha": _finite(candidate.get("delta_alpha_flat")),
                 "exact": _finite(candidate.get("exact_flat")), "mae": _finite(candidate.get("mae_flat")),
                 "level": candidate.get("level_flat")},
        "dimensions": dimension_rows(metrics, prefill_rule, prefill_unevaluated),
        "history": metrics.get("history") or [],
        "counts": metrics.get("counts") or {},
        "source": metrics.get("source") or {},
        "config": metrics.get("config") or {},
        "warnings": warnings_for(metrics),
    }


def project_report(registry: Registry, project: str, prefill_rule: str | float = "majority",
                   prefill_unevaluated: bool = True) -> dict[str, Any]:
    """Report data of a project: every version, and the details of the active (else latest) run (with the
    pre-fill decisions under PREFILL_MIN_ALPHA = ``prefill_rule``)."""
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
        **run_details(shown[1], prefill_rule, prefill_unevaluated),
    }
    return _json_safe(report)


def run_report(run_dir: Path) -> dict[str, Any]:
    """Report data of an offline ``rubric-judge train`` run folder."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise ReportError(f"{run_dir}: no metrics.json (is this a `rubric-judge train --out` folder?)")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    report = {"project": None, "active_version": None, "shown_version": str(run_dir),
              "versions": [version_summary(1, str(run_dir), metrics, True)], **run_details(metrics)}
    return _json_safe(report)


def projects_index(registry: Registry) -> dict[str, Any]:
    out = []
    for project in registry.projects():
        infos = registry.versions(project)
        active = next((i for i in infos if i.active), infos[0])
        metrics = (active.metrics or {}) if active.number else {}
        latest = next((i for i in reversed(infos) if i.metrics and i.number), None)
        out.append({"project": project, "active_version": active.model_version,
                    "alpha_dims": _finite(metrics.get("alpha_dims")), "alpha_flat": _finite(metrics.get("alpha_flat")),
                    "versions": len(infos) - 1,
                    "latest_alpha_dims": _finite((latest.metrics or {}).get("alpha_dims")) if latest else None,
                    "latest_alpha_flat": _finite((latest.metrics or {}).get("alpha_flat")) if latest else None})
    return {"projects": out}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# plots


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return text[text.index("<svg"):]


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none", "axes.spines.top": False,
                         "axes.spines.right": False})
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
    for offset, values, label, color in ((-width, floor, "base model (floor)", "#b0b0b0"),
                                          (0, judge, "judge vs humans", "#2f6db5"),
                                          (width, ceiling, "humans vs humans (ceiling)", "#e39b2d")):
        ax.bar([x + offset for x in xs], [v if v is not None else 0 for v in values], width, label=label,
               color=color)
    for x, ci, value in zip(xs, cis, judge, strict=True):
        if ci and value is not None and ci[0] is not None and ci[1] is not None:
            ax.errorbar([x], [value], yerr=[[value - ci[0]], [ci[1] - value]], fmt="none", ecolor="black",
                        capsize=3, lw=1)
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
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(max(labels, key=len)) > 2 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("judge")
    ax.set_ylabel("human consensus")
    ax.set_title(row["name"])
    return _svg(fig)


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
    ax.legend(frameon=False)
    return _svg(fig)


def plot_versions(versions: Sequence[Mapping[str, Any]]) -> str:
    fig, ax = _figure(6.5, 2.8)
    xs = [v["number"] for v in versions]
    ax.plot(xs, [v["alpha_flat"] for v in versions], marker="o", color="#2f6db5", label="judge (candidate)")
    ax.plot(xs, [v["alpha_base_flat"] for v in versions], ls="--", marker="s", ms=3, color="#888888",
            label="base model")
    ax.plot(xs, [v["alpha_humans_flat"] for v in versions], ls=":", marker="^", ms=3, color="#e39b2d",
            label="humans")
    for v in versions:
        if v["alpha_flat"] is not None:
            ax.annotate("promoted" if v["promoted"] else "kept previous", (v["number"], v["alpha_flat"]),
                        textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7,
                        color="#1e7b34" if v["promoted"] else "#a33")
    ax.set_xticks(xs, [f"v{x}" for x in xs])
    ax.set_ylabel("flattened alpha")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


# --------------------------------------------------------------------------------------------------
# HTML


def fmt_alpha(value: Any) -> str:
    number = _finite(value)
    return "–" if number is None else f"{number:.3f}"


def fmt_int(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _ci(ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" <span class=ci>[{fmt_alpha(ci[0])}, {fmt_alpha(ci[1])}]</span>"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1d1d1f;max-width:1180px;
margin:24px auto;padding:0 20px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:4px 10px;border-bottom:1px solid #eee;text-align:right}
th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}.ci{color:#666;font-size:12px}
.warn{background:#fff6e0;border-left:4px solid #e39b2d;padding:6px 10px;margin:6px 0}.muted{color:#666}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}svg{max-width:100%;height:auto}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px}.yes{background:#dff3e4}
.no{background:#f8e0e0}@media print{body{max-width:none}h2{break-after:avoid}}
"""


def render_html(report: Mapping[str, Any]) -> str:
    """The report page: self-contained HTML with inline SVG plots."""
    e = html.escape
    flat = report.get("flat") or {}
    rows = report.get("dimensions") or []
    counts = report.get("counts") or {}
    title = f"Agreement report — project {report['project']}" if report.get("project") else "Agreement report"
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             f"<p class=muted>Rubric <b>{e(str(report.get('rubric')))}</b> · model "
             f"<b>{e(str(report.get('model_name')))}</b> · active version "
             f"<b>{e(str(report.get('active_version')))}</b> · shown "
             f"<b>{e(str(report.get('shown_version')))}</b></p>"]

    headline = report.get("headline") or {}
    parts.append("<section id=summary><h2>Summary</h2><table><tr><th></th><th>alpha</th><th>95% interval</th></tr>")
    parts.append(f"<tr><td><b>Judge vs human consensus, mean over dimensions</b> ({e(str(report.get('method')))})"
                 f"</td><td><b>{fmt_alpha(headline.get('alpha_dims'))}</b></td><td></td></tr>")
    parts.append(f"<tr><td>Majority label per dimension (a constant) on the same tasks</td>"
                 f"<td>{fmt_alpha(headline.get('majority'))}</td><td></td></tr>")
    parts.append(f"<tr><td>Untrained base model v0, mean over dimensions</td>"
                 f"<td>{fmt_alpha(headline.get('floor'))}</td><td></td></tr>")
    parts.append(f"<tr><td>One more annotator: Δα, mean over dimensions</td>"
                 f"<td>{fmt_alpha(headline.get('delta_alpha_dims'))}</td><td></td></tr>")
    parts.append(f"<tr><td class=muted>The paper's figure: all dimensions flattened ({e(str(flat.get('level')))}"
                 f"; a constant per dimension scores well on it)</td>"
                 f"<td>{fmt_alpha(flat.get('alpha'))}</td><td>{_ci(flat.get('ci'))}</td></tr>")
    parts.append(f"<tr><td class=muted>flattened: humans vs each other (ceiling)</td>"
                 f"<td>{fmt_alpha(flat.get('ceiling'))}</td><td></td></tr>")
    parts.append(f"<tr><td class=muted>flattened: untrained base model v0 (floor)</td>"
                 f"<td>{fmt_alpha(flat.get('floor'))}</td><td></td></tr>")
    parts.append("</table></section>")

    warnings = report.get("warnings") or []
    parts.append("<section id=warnings><h2>Warnings</h2>")
    parts.extend(f"<div class=warn>{e(w)}</div>" for w in warnings)
    if not warnings:
        parts.append("<p class=muted>None.</p>")
    parts.append("</section>")

    parts.append("<section id=dimensions><h2>Agreement per dimension</h2>")
    parts.append(plot_alpha_by_dimension(rows, flat))
    parts.append("<table><tr><th>dimension</th><th>judge α</th><th>ordinal α</th><th>ceiling α</th><th>floor α</th>"
                 "<th>majority α</th><th>Δα</th><th>exact</th><th>MAE</th><th>macro-F1</th><th>units</th>"
                 "<th>pre-filled</th></tr>")
    for row in rows:
        judge = row["judge"]
        prefill = row.get("prefill") or {}
        badge = "<span class='badge yes'>yes</span>" if prefill.get("prefilled") else "<span class='badge no'>no</span>"
        parts.append(
            f"<tr><td>{e(row['name'])}</td><td>{fmt_alpha(judge['alpha'])}{_ci(judge['ci'])}</td>"
            f"<td>{fmt_alpha(judge['alpha_ordinal'])}</td><td>{fmt_alpha(row['ceiling']['alpha'])}</td>"
            f"<td>{fmt_alpha(row['floor']['alpha'])}</td><td>{fmt_alpha((row.get('majority') or {}).get('alpha'))}</td>"
            f"<td>{fmt_alpha(row['delta_alpha'])}</td>"
            f"<td>{fmt_alpha(judge['exact'])}</td><td>{fmt_alpha(judge['mae'])}</td>"
            f"<td>{fmt_alpha(judge['macro_f1'])}</td><td>{fmt_int(row['n_units'])}</td>"
            f"<td>{badge} <span class=muted>{e(str(prefill.get('reason', '')))}</span></td></tr>")
    parts.append("</table>")
    for row in rows:
        if row["judge"].get("per_class_f1"):
            cells = "".join(f"<tr><td>{e(str(k))}</td><td>{fmt_alpha(v)}</td></tr>"
                            for k, v in row["judge"]["per_class_f1"].items())
            parts.append(f"<h3>Per-class F1: {e(row['name'])}</h3><table><tr><th>class</th><th>F1</th></tr>"
                         f"{cells}</table>")
    parts.append("</section>")

    parts.append("<section id=confusion><h2>Confusion matrices</h2><div class=grid>")
    parts.extend(f"<figure>{plot_confusion(row)}</figure>" for row in rows)
    parts.append("</div></section>")

    parts.append("<section id=losses><h2>Training and validation loss</h2>")
    parts.append(plot_losses(report.get("history") or []))
    parts.append("</section>")

    versions = report.get("versions") or []
    parts.append("<section id=versions><h2>Versions</h2>")
    parts.append(plot_versions(versions))
    parts.append("<table><tr><th>version</th><th>method</th><th>created</th><th>α per dimension (judge)</th>"
                 "<th>α per dimension (base)</th><th>flattened α</th><th>decision</th>"
                 "<th>train / held-out tasks</th><th>training time</th></tr>")
    for v in versions:
        badge = ("<span class='badge yes'>promoted</span>" if v["promoted"]
                 else "<span class='badge no'>not promoted</span>")
        c = v.get("counts") or {}
        t = v.get("training") or {}
        active = " (active)" if v["active"] else ""
        parts.append(f"<tr><td>{e(str(v['version']))}{active}</td><td>{e(str(v.get('method') or ''))}</td>"
                     f"<td>{e(str(v.get('created') or ''))}</td>"
                     f"<td>{fmt_alpha(v.get('alpha_dims'))}</td><td>{fmt_alpha(v.get('alpha_dims_base'))}</td>"
                     f"<td>{fmt_alpha(v['alpha_flat'])}{_ci(v.get('alpha_flat_ci'))}</td>"
                     f"<td>{badge} {e(str(v.get('decision') or ''))}</td>"
                     f"<td>{fmt_int(c.get('train_tasks'))} / {fmt_int(c.get('heldout_tasks'))}</td>"
                     f"<td>{fmt_int(t.get('seconds'))} s</td></tr>")
    parts.append("</table>")
    names = [row["name"] for row in rows]
    if len(versions) > 1 and names:
        parts.append("<h3>Judge α per dimension, every version</h3><table><tr><th>version</th>"
                     + "".join(f"<th>{e(n)}</th>" for n in names) + "</tr>")
        for v in versions:
            cells = "".join(f"<td>{fmt_alpha((v.get('dimensions') or {}).get(n, {}).get('alpha'))}</td>"
                            for n in names)
            parts.append(f"<tr><td>{e(str(v['version']))}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("</section>")

    source = report.get("source") or {}
    parts.append("<section id=counts><h2>Data</h2><table>")
    for label, value in (("tasks", counts.get("tasks")), ("annotations", counts.get("annotations")),
                         ("annotators", counts.get("annotators")), ("training tasks", counts.get("train_tasks")),
                         ("training examples", counts.get("train_examples")),
                         ("held-out tasks", counts.get("heldout_tasks")),
                         ("held-out tasks with 2+ annotators", counts.get("multi_annotator_heldout_tasks")),
                         ("cancelled annotations skipped", source.get("cancelled"))):
        parts.append(f"<tr><td>{e(label)}</td><td>{fmt_int(value)}</td></tr>")
    parts.append("</table></section></body></html>")
    return "\n".join(parts)


def render_index(index: Mapping[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td><a href='/reports/{e(p['project'])}'>project {e(p['project'])}</a></td>"
        f"<td>{e(p['active_version'])}</td><td>{fmt_alpha(p.get('alpha_dims'))}</td><td>{fmt_alpha(p['alpha_flat'])}"
        f"</td><td>{fmt_int(p['versions'])}</td></tr>"
        for p in index["projects"])
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>rubric-judge reports</title>"
            f"<style>{CSS}</style></head><body><h1>Projects</h1><table><tr><th>project</th><th>active version</th>"
            f"<th>α per dimension</th><th>α flattened (paper)</th><th>trained versions</th></tr>{rows}</table>"
            f"</body></html>")
