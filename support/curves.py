"""What the learning-curve benchmark (``benchmarks/curve.py``) and its tests share: the keys of ``CURVE.json``,
how a run's curves are merged into it, the order the product ships, the annotator draw's seed."""

from __future__ import annotations

from typing import Any

#: The order ``rubric-judge queue`` / ``/reports/<project>/queue`` follows (``backend.reports.insights.label_next``
#: with the project's task groups): one task per group not yet annotated, least certain first, then the rest
#: least certain first. On DialSummEval a group is a dialogue, and that is this benchmark's ``diverse``.
SHIPPED_ORDER = "diverse"
#: repeat r of ``--annotators K`` draws each task's K annotations with seed ANNOTATOR_SEED + r
ANNOTATOR_SEED = 31_000


def curve_key(split: str, annotators: int | None) -> str:
    """CURVE.json's key of a run: ``dialsummeval``, ``dialsummeval-1-annotator``, ``-dev`` for the dev split."""
    key = "dialsummeval"
    if annotators is not None:
        key += f"-{annotators}-annotator" + ("s" if annotators > 1 else "")
    return key + ("-dev" if split == "dev" else "")


def store_curves(stored: dict[str, Any], key: str, base_model: str, curves: dict[str, Any]) -> dict[str, Any]:
    """CURVE.json with a run's ``curves`` merged under ``key`` and the base model (an order run again replaces
    its curve, the others stay), and ``shipped``: the order the product's label queue follows."""
    entry = stored.setdefault(key, {}).setdefault(base_model, {})
    entry.update(curves)
    entry["shipped"] = SHIPPED_ORDER
    return stored


def curve_orders(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The curves of one base model's entry in CURVE.json, per order (without ``shipped``)."""
    return {order: points for order, points in entry.items() if isinstance(points, dict)}
