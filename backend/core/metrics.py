"""The agreement metrics schema, from ``backend.core.agreement`` to ``backend.reports.data``, and its one NaN policy.

What is stored (``metrics.json`` of each version) and what the report shows are described here once:

* ``AgreementReport``: ``agreement.dimension_report`` for one dimension at one level;
* ``DimensionMetrics``: one dimension of an evaluation (its report at each level it is measured at, plus
  what ``worker.evaluate`` adds: the expected-score alpha, the predicted label counts, the majority label's
  alpha on the same tasks);
* ``EvaluationMetrics``: ``worker.evaluate.evaluate_predictions`` (the headline ``alpha_dims``, the paper's
  flattened ``alpha_flat``, and every dimension);
* ``DIMENSION_COLUMNS``: how a report row per dimension is read off a candidate's and the base model's
  ``DimensionMetrics`` (``dimension_row``), and which columns the HTML table shows.

NaN policy: an undefined statistic is ``None`` everywhere it is stored or shown. ``finite`` reads one value
(NaN, inf, booleans, non-numbers -> None); ``json_safe`` cleans a whole structure (and turns numpy scalars and
arrays into Python ones). Adding a metric to the report: compute it in ``backend/core/agreement.py`` (or
``worker/evaluate.py``), add its ``Column`` here; the JSON row and the HTML table follow.

Pure module: no numpy, torch, Flask or Redis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

# --------------------------------------------------------------------------------------------------
# NaN policy


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (a numpy scalar too), else None."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float):
        if getattr(type(value), "item", None) is None:  # not a numpy scalar (looked up on the type: a template's
            return None  # undefined value answers every attribute)
        return finite(value.item())
    return float(value) if math.isfinite(value) else None


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` fit for JSON: NaN/inf -> None, numpy scalars and arrays -> Python, keys -> str."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if getattr(type(obj), "tolist", None) is not None and not isinstance(obj, str | bytes):  # numpy array/scalar
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


# --------------------------------------------------------------------------------------------------
# stored shapes


class Confusion(TypedDict):
    labels: list[Any]
    matrix: list[list[int]]  # rows: human consensus, columns: the system


class AgreementReport(TypedDict):
    """One dimension at one level (``agreement.dimension_report``); system entries None without a system."""

    level: str  # interval | ordinal | nominal
    n_units: int
    n_raters: int
    alpha_system: float | None  # the system against the per-unit human consensus
    alpha_system_ci: list[float | None] | None
    alpha_humans: float | None  # among the human raters: the ceiling
    delta_alpha: float | None  # "one more annotator": alpha with the system as a rater minus without
    exact: float | None
    mae: float | None  # interval/ordinal only
    macro_f1: float | None  # nominal only
    per_class_f1: dict[str, float | None] | None
    confusion: Confusion | None  # nominal/ordinal only


class DimensionMetrics(TypedDict, total=False):
    """One dimension of an evaluation: ``interval`` and ``ordinal`` (scales) or ``nominal`` reports, and
    ``level``, the dimension's own level (the one its headline alpha is read at)."""

    level: str
    interval: AgreementReport
    ordinal: AgreementReport
    nominal: AgreementReport
    alpha_expected: float | None  # expected-score decoding (the mean of the label distribution), scales
    predicted_distribution: dict[str, int]  # the system's label counts
    nearly_constant: bool  # one label in at least CONSTANT_SHARE of the predictions
    alpha_majority: float | None  # the majority training label on the same tasks (the pre-fill reference)


class EvaluationMetrics(TypedDict, total=False):
    """``worker.evaluate.evaluate_predictions`` (and ``scored_metrics``'s additions)."""

    n_tasks: int
    n_annotations: int
    n_multi_annotator_tasks: int
    alpha_dims: float | None  # the headline: mean over dimensions of alpha against the consensus
    delta_alpha_dims: float | None
    alpha_dims_majority: float | None
    alpha_flat: float | None  # the paper's figure: every dimension flattened (a constant scores well)
    alpha_flat_ci: list[float | None] | None
    alpha_flat_ordinal: float | None
    alpha_flat_expected: float | None
    alpha_humans_flat: float | None
    delta_alpha_flat: float | None
    exact_flat: float | None
    mae_flat: float | None
    level_flat: str
    dimensions: dict[str, DimensionMetrics]
    scoring_seconds: float
    predictions: list[dict[str, Any]]


#: a dimension whose predictions are this share one label is flagged "nearly constant"
CONSTANT_SHARE = 0.9


def main_report(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """A dimension's report at its own level (interval for scales, nominal for classification)."""
    return entry.get(entry.get("level", "interval")) or entry.get("interval") or entry.get("nominal") or {}


def dimension_alpha(entry: Mapping[str, Any]) -> float | None:
    """A dimension's alpha against the human consensus at its own level."""
    return finite(main_report(entry).get("alpha_system"))


def mean(values: list[float | None]) -> float | None:
    """The mean of the defined values; None when none is."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


# --------------------------------------------------------------------------------------------------
# report rows


@dataclass(frozen=True)
class DimensionView:
    """What a report row is read from: the candidate's entry for one dimension and the base model's."""

    entry: Mapping[str, Any]
    base: Mapping[str, Any]

    @property
    def main(self) -> Mapping[str, Any]:
        return main_report(self.entry)

    @property
    def ordinal(self) -> Mapping[str, Any]:
        return self.entry.get("ordinal") or {}

    @property
    def floor(self) -> Mapping[str, Any]:
        return main_report(self.base)


@dataclass(frozen=True)
class Column:
    """One value of a report row: where it sits in the row (``path``), how it is read, how it is shown
    (``title`` and ``kind``; no title: JSON only)."""

    path: tuple[str, ...]
    read: Callable[[DimensionView], Any]
    title: str = ""
    kind: str = "number"  # number (3 decimals) | int | raw (not a number: kept as is)
    ci: tuple[str, ...] | None = None  # path of its interval, shown beside it


DIMENSION_COLUMNS: tuple[Column, ...] = (
    Column(("judge", "alpha"), lambda v: v.main.get("alpha_system"), "judge α", ci=("judge", "ci")),
    Column(("judge", "ci"), lambda v: v.main.get("alpha_system_ci"), kind="raw"),
    Column(("judge", "alpha_ordinal"), lambda v: v.ordinal.get("alpha_system"), "ordinal α"),
    Column(("ceiling", "alpha"), lambda v: v.main.get("alpha_humans"), "ceiling α"),
    Column(("ceiling", "n_raters"), lambda v: v.main.get("n_raters"), kind="int"),
    Column(("floor", "alpha"), lambda v: v.floor.get("alpha_system"), "floor α"),
    Column(("floor", "ci"), lambda v: v.floor.get("alpha_system_ci"), kind="raw"),
    Column(("majority", "alpha"), lambda v: v.entry.get("alpha_majority"), "majority α"),
    Column(("delta_alpha",), lambda v: v.main.get("delta_alpha"), "Δα"),
    Column(("judge", "exact"), lambda v: v.main.get("exact"), "exact"),
    Column(("judge", "mae"), lambda v: v.main.get("mae"), "MAE"),
    Column(("judge", "macro_f1"), lambda v: v.main.get("macro_f1"), "macro-F1"),
    Column(("judge", "per_class_f1"), lambda v: v.main.get("per_class_f1"), kind="raw"),
    Column(("n_units",), lambda v: v.main.get("n_units"), "units", kind="int"),
    Column(("level",), lambda v: v.main.get("level"), kind="raw"),
    Column(("confusion",), lambda v: v.main.get("confusion") or v.ordinal.get("confusion"), kind="raw"),
    Column(("predicted_distribution",), lambda v: v.entry.get("predicted_distribution"), kind="raw"),
    Column(("nearly_constant",), lambda v: bool(v.entry.get("nearly_constant")), kind="raw"),
)


def shown_columns() -> tuple[Column, ...]:
    """The columns the HTML table of dimensions shows (those with a title), in order."""
    return tuple(c for c in DIMENSION_COLUMNS if c.title)


def _value(column: Column, raw: Any) -> Any:
    if column.kind == "number":
        return finite(raw)
    if column.kind == "int":
        return None if raw is None else int(raw)
    return raw


def dimension_row(name: str, entry: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    """A report row for dimension ``name``: every ``DIMENSION_COLUMNS`` value at its path."""
    view = DimensionView(entry, base or {})
    row: dict[str, Any] = {"name": name}
    for column in DIMENSION_COLUMNS:
        target = row
        for key in column.path[:-1]:
            target = target.setdefault(key, {})
        target[column.path[-1]] = _value(column, column.read(view))
    return row


def at_path(row: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in a report row (None where it is absent)."""
    value: Any = row
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value
