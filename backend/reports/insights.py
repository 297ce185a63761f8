"""What an admin acts on, from a version's stored data (no model is run): who agrees with whom (pairwise α
between every annotator and the judge), where the judge is furthest from the humans on held-out tasks, and
which unannotated tasks a human should label next (the least certain stored predictions).

Inputs are the version folder's ``train.jsonl``/``heldout.jsonl`` rows (``{id, data, annotations:
[{annotator, scores}]}``) and the candidate's per-task ``predictions`` in ``metrics.json``
(``{task_id, labels, confidence}``). Pure module (numpy through ``backend.core.agreement``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from backend.core.agreement import consensus, krippendorff_alpha
from backend.core.metrics import finite, json_safe

JUDGE = "judge"
#: pairwise cells with fewer shared tasks than this are greyed: α on so few tasks says little
MIN_SHARED = 10
MAX_RATERS = 30  # annotators in the matrix at most, those with the most annotations
TOP_DISAGREEMENTS = 20
EXCERPT_CHARS = 160


def _scale_levels(dimensions: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each dimension's level from its stored metrics (interval for scales, nominal for classification)."""
    return {name: str(entry.get("level") or "interval") for name, entry in dimensions.items()}


def _value(label: Any, level: str) -> Any:
    if label is None:
        return None
    if level in ("interval", "ordinal"):
        try:
            return float(label)
        except (TypeError, ValueError):
            return None
    return str(label)


def rater_table(
    rows: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]], levels: Mapping[str, str]
) -> dict[str, dict[str, list[Any]]]:
    """Per dimension per rater (annotators sorted, then the judge) one value per task (None where
    that rater did not rate the task). The judge rates the tasks it has predictions for."""
    tasks = [str(r["id"]) for r in rows]
    index = {task: i for i, task in enumerate(tasks)}
    counts = Counter(_annotator(a) for r in rows for a in r.get("annotations") or [])
    # the MAX_RATERS annotators with the most annotations (a heatmap of hundreds of raters helps nobody)
    annotators = sorted(who for who, _ in counts.most_common(MAX_RATERS))
    table: dict[str, dict[str, list[Any]]] = {}
    for name, level in levels.items():
        per: dict[str, list[Any]] = {who: [None] * len(tasks) for who in [*annotators, JUDGE]}
        for row in rows:
            for annotation in row.get("annotations") or []:
                who = _annotator(annotation)
                if who in per:
                    per[who][index[str(row["id"])]] = _value((annotation.get("scores") or {}).get(name), level)
        for prediction in predictions:
            at = index.get(str(prediction.get("task_id")))
            if at is not None:
                per[JUDGE][at] = _value((prediction.get("labels") or {}).get(name), level)
        table[name] = per
    return table


def _annotator(annotation: Mapping[str, Any]) -> str:
    """An annotator's name as a rater; one literally called like the judge is told apart."""
    name = str(annotation["annotator"])
    return f"{name} (annotator)" if name == JUDGE else name


def pairwise_alpha(ratings: Mapping[str, Sequence[Any]], level: str, min_shared: int = MIN_SHARED) -> dict[str, Any]:
    """Krippendorff's α between every two raters over the tasks both rated, with the number of such tasks.

    ``{"raters": [...], "alpha": [[...]], "shared": [[...]], "reliable": [[...]], "min_shared": m}``: α is None
    on the diagonal and where it is undefined (fewer than two shared tasks, no variance); ``reliable`` is
    False where fewer than ``min_shared`` tasks are shared (the report greys those cells)."""
    raters = list(ratings)
    size = len(raters)
    alpha: list[list[float | None]] = [[None] * size for _ in range(size)]
    shared: list[list[int]] = [[0] * size for _ in range(size)]
    for i, a in enumerate(raters):
        shared[i][i] = sum(1 for v in ratings[a] if v is not None)
        for j in range(i + 1, size):  # symmetric: each pair once
            b = raters[j]
            both = [
                u
                for u, (x, y) in enumerate(zip(ratings[a], ratings[b], strict=True))
                if x is not None and y is not None
            ]
            shared[i][j] = shared[j][i] = len(both)
            if len(both) >= 2:
                pair = [[ratings[a][u] for u in both], [ratings[b][u] for u in both]]
                alpha[i][j] = alpha[j][i] = finite(krippendorff_alpha(pair, level))
    reliable = [[n >= min_shared for n in row] for row in shared]
    return json_safe(
        {
            "raters": raters,
            "level": level,
            "alpha": alpha,
            "shared": shared,
            "reliable": reliable,
            "min_shared": min_shared,
        }
    )


def agreement_matrix(
    rows: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    dimensions: Mapping[str, Mapping[str, Any]],
    flat_level: str,
    min_shared: int = MIN_SHARED,
) -> dict[str, Any]:
    """Pairwise α per dimension and flattened (every dimension's ratings pooled, a task-dimension pair a unit)
    between every annotator and the judge."""
    levels = _scale_levels(dimensions)
    table = rater_table(rows, predictions, levels)
    out: dict[str, Any] = {"dimensions": {}, "min_shared": min_shared}
    if not table:
        out["flat"] = None
        return out
    raters = list(next(iter(table.values())))
    for name, per in table.items():
        out["dimensions"][name] = pairwise_alpha(per, levels[name], min_shared)
    numeric = flat_level in ("interval", "ordinal")
    pooled_dims = [name for name in table if not numeric or levels[name] in ("interval", "ordinal")]
    pooled = {
        who: [v if numeric or v is None else str(v) for name in pooled_dims for v in table[name][who]] for who in raters
    }
    out["flat"] = pairwise_alpha(pooled, flat_level, min_shared) if pooled_dims else None
    return out


def _consensus(values: Sequence[Any], level: str) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    return consensus([present], "interval" if level in ("interval", "ordinal") else "nominal")[0]


def disagreements(
    rows: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    dimensions: Mapping[str, Mapping[str, Any]],
    project: str | None = None,
    label_studio_url: str = "",
    top: int = TOP_DISAGREEMENTS,
) -> dict[str, Any]:
    """The held-out tasks on which the judge is furthest from the human consensus, worst first: summed over
    dimensions and per dimension.

    Distance per dimension: for a scale, |judge − consensus mean| divided by the scale's span (so 1 is one end
    against the other); for classification, 0 when the judge's label is the consensus, else 1. Each entry has
    an excerpt of the task's inputs, every human's label, the judge's labels and confidence, and a link to
    the task in Label Studio (when ``label_studio_url`` and ``project`` are known)."""
    levels = _scale_levels(dimensions)
    spans = {}
    for name, entry in dimensions.items():
        labels = ((entry.get("ordinal") or {}).get("confusion") or {}).get("labels") or []
        numbers = [float(v) for v in labels if finite(_value(v, "interval")) is not None]
        spans[name] = (max(numbers) - min(numbers)) if len(numbers) >= 2 else 1.0
    by_id = {str(p.get("task_id")): p for p in predictions}
    entries = []
    for row in rows:
        prediction = by_id.get(str(row["id"]))
        if prediction is None:
            continue
        humans = {str(a["annotator"]): dict(a.get("scores") or {}) for a in row.get("annotations") or []}
        per_dim: dict[str, float | None] = {}
        agreed: dict[str, Any] = {}
        for name, level in levels.items():
            human_values = [_value(s.get(name), level) for s in humans.values()]
            gold = _consensus(human_values, level)
            judged = _value((prediction.get("labels") or {}).get(name), level)
            agreed[name] = gold
            if gold is None or judged is None:
                per_dim[name] = None
            elif level in ("interval", "ordinal"):
                per_dim[name] = round(abs(judged - gold) / (spans[name] or 1.0), 6)
            else:
                per_dim[name] = 0.0 if judged == gold else 1.0
        defined = [d for d in per_dim.values() if d is not None]
        entries.append(
            {
                "task_id": row["id"],
                "distance": round(sum(defined), 6) if defined else None,
                "distance_by_dimension": per_dim,
                "excerpt": {key: _excerpt(value) for key, value in (row.get("data") or {}).items()},
                "humans": humans,
                "consensus": agreed,
                "judge": dict(prediction.get("labels") or {}),
                "confidence": finite(prediction.get("confidence")),
                "link": task_link(label_studio_url, project, row["id"]),
            }
        )

    def worst(key: Any) -> list[dict[str, Any]]:
        ranked = [e for e in entries if key(e)]  # where the judge agrees with the humans it is not wrong
        ranked.sort(key=lambda e: (-key(e), str(e["task_id"])))
        return ranked[:top]

    return json_safe(
        {
            "summed": worst(lambda e: e["distance"]),
            "by_dimension": {
                name: [e["task_id"] for e in worst(lambda e, n=name: e["distance_by_dimension"][n])] for name in levels
            },
            "tasks": len(entries),
            "top": top,
        }
    )


def _excerpt(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1].rstrip() + "…"


def task_link(label_studio_url: str, project: str | None, task_id: Any) -> str | None:
    """The task's page in Label Studio's Data Manager, or None without a URL or project."""
    if not label_studio_url or project in (None, ""):
        return None
    return f"{label_studio_url.rstrip('/')}/projects/{project}/data?task={task_id}"


def label_next(
    tasks: Sequence[Mapping[str, Any]],
    model_version: str,
    project: str | None = None,
    label_studio_url: str = "",
    limit: int = 20,
    groups: Mapping[Any, str] | None = None,
    annotated_groups: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """What to label next, from the stored predictions at ``model_version`` of the unannotated ``tasks`` (Label
    Studio task objects with their ``predictions``; tasks without such a prediction are left out: pre-annotate
    them first). With ``groups`` (task id -> group, e.g. its dialogue or question): one task per group not yet
    annotated (``annotated_groups``), least certain (lowest ``score``) first, then the rest least certain first
    (``benchmarks/CURVE.json``, order ``diverse``). Measured on DialSummEval it is not the fastest order below a
    few hundred tasks: random order taught the head more at 40 tasks (3 annotators, test α per dimension 0.190
    against 0.074, run ``c5-test-3a``) and, with one annotator per task, up to 160 (run ``c5-test-1a``). Without
    ``groups``: least certain first."""
    ranked = []
    for task in tasks:
        if task.get("annotations") or task.get("total_annotations") or task.get("is_labeled"):
            continue
        scores = [  # a prediction that pre-fills nothing (score 0) is not uncertain, it is empty
            finite(p.get("score"))
            for p in task.get("predictions") or []
            if isinstance(p, Mapping) and p.get("model_version") == model_version and not p.get("empty")
        ]
        scores = [s for s in scores if s is not None]
        if not scores:
            continue
        ranked.append(
            {
                "task_id": task.get("id"),
                "score": min(scores),
                "excerpt": {k: _excerpt(v) for k, v in (task.get("data") or {}).items()},
                "link": task_link(label_studio_url, project, task.get("id")),
            }
        )
    ranked.sort(key=lambda e: (e["score"], str(e["task_id"])))
    if groups:
        seen = set(annotated_groups)
        first = []
        for entry in ranked:
            group = groups.get(entry["task_id"]) or f"task:{entry['task_id']}"
            if group not in seen:
                seen.add(group)
                first.append(entry)
        picked = {id(e) for e in first}
        ranked = first + [e for e in ranked if id(e) not in picked]
    return ranked[:limit]
