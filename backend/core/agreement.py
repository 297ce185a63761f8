"""Agreement statistics between human annotators and the rubric judge.

This module is pure: it depends only on :mod:`numpy` and the :mod:`krippendorff`
package, so it can be imported by the web backend, the training worker and the
benchmark scripts alike without pulling in torch, flask or redis.

Conventions used throughout:

* A *ratings matrix* is ``raters x units`` (one row per rater, one column per
  item being rated).  ``None`` (or a float NaN) marks a missing rating.
* ``level`` is Krippendorff's level of measurement: ``"interval"``,
  ``"ordinal"`` or ``"nominal"``.
* ``value_domain`` is the optional list of admissible values.  For ordinal data
  its order is the order of the scale; string labels are mapped to their
  position in it.
* Statistics that are undefined (too little data, no variance) are returned as
  ``float('nan')`` rather than raising; :func:`dimension_report` turns NaN into
  ``None`` so its output is valid JSON.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal, TypeGuard, cast

import krippendorff
import numpy as np

from backend.core.metrics import AgreementReport, json_safe

logger = logging.getLogger(__name__)

Value = float | int | str
Rating = Value | None

LEVELS: tuple[str, ...] = ("interval", "ordinal", "nominal")

__all__ = [
    "LEVELS",
    "accuracy",
    "bootstrap_alpha",
    "confusion_matrix",
    "consensus",
    "delta_alpha",
    "dimension_report",
    "exact_agreement",
    "flatten_dimensions",
    "krippendorff_alpha",
    "macro_f1",
    "mean_absolute_error",
]


# --------------------------------------------------------------------------- helpers


def _is_missing(value: Any) -> bool:
    """Return True for ``None`` and float NaN (Python or numpy floats)."""
    if value is None:
        return True
    kind = type(value)
    if kind is int or kind is str:  # the common cases first: this runs for every rating
        return False
    if kind is float or isinstance(value, np.floating):
        return bool(math.isnan(value))
    return False


def _is_number(value: Any) -> TypeGuard[float]:
    """Return True for real numbers (bools excluded)."""
    kind = type(value)
    if kind is int or kind is float:  # the common cases first: this runs for every rating
        return True
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def _as_rows(ratings: Sequence[Sequence[Rating]]) -> list[list[Rating]]:
    """Copy a raters x units matrix into lists, checking that it is rectangular."""
    rows = [list(row) for row in ratings]
    if rows:
        width = len(rows[0])
        for i, row in enumerate(rows):
            if len(row) != width:
                raise ValueError(f"ratings must be rectangular: row 0 has {width} units, row {i} has {len(row)}")
    return rows


def _sort_key_for_domain(value_domain: Sequence[Any] | None) -> Any:
    """Key ordering values by their position in ``value_domain`` (or naturally)."""
    if value_domain is None:
        return None
    index = {v: i for i, v in enumerate(value_domain)}

    def key(v: Any) -> int:
        try:
            return index[v]
        except KeyError:
            raise ValueError(f"value {v!r} is not in value_domain {list(value_domain)!r}") from None

    return key


def _to_matrix(
    ratings: Sequence[Sequence[Rating]],
    level: str,
    value_domain: Sequence[Any] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert ratings to a float matrix (NaN = missing) plus the domain to hand to krippendorff.

    Nominal and ordinal data are encoded as integer codes ``0..K-1`` (their index
    in ``value_domain``, or in the sorted observed values when no domain is given),
    which leaves nominal and ordinal alpha unchanged.  Interval data keeps numeric
    values as they are; string labels on an interval scale are replaced by their
    (equally spaced) position in ``value_domain``.
    """
    _check_level(level)
    rows = _as_rows(ratings)
    observed = [v for row in rows for v in row if not _is_missing(v)]
    all_numeric = all(_is_number(v) for v in observed)
    n_raters = len(rows)
    n_units = len(rows[0]) if rows else 0

    if level == "interval" and all_numeric:
        mat = np.array([[np.nan if _is_missing(v) else float(cast(float, v)) for v in row] for row in rows]).reshape(
            n_raters, n_units
        )
        domain: np.ndarray | None = None
        if value_domain is not None:
            if not all(_is_number(v) for v in value_domain):
                raise ValueError("value_domain must be numeric for numeric interval ratings")
            domain = np.asarray(sorted(float(v) for v in value_domain), dtype=float)
            bad = sorted({float(cast(float, v)) for v in observed} - set(domain.tolist()))
            if bad:
                raise ValueError(f"ratings contain values outside value_domain: {bad!r}")
        return mat, domain

    if value_domain is None:
        if level != "nominal" and not all_numeric:
            raise ValueError(f"string labels on an {level} scale need an ordered value_domain")
        try:
            labels = sorted(set(observed))  # type: ignore[type-var]  # mixed types raise TypeError, handled
        except TypeError as exc:
            raise ValueError("cannot order mixed-type labels; pass value_domain") from exc
    else:
        labels = list(value_domain)
    codes = {v: i for i, v in enumerate(labels)}
    if len(codes) != len(labels):
        raise ValueError("value_domain contains duplicates")

    def encode(v: Any) -> float:
        if _is_missing(v):
            return np.nan
        try:
            return float(codes[v])
        except (KeyError, TypeError):
            raise ValueError(f"rating {v!r} is not in value_domain {labels!r}") from None

    mat = np.array([[encode(v) for v in row] for row in rows], dtype=float).reshape(n_raters, n_units)
    return mat, np.arange(len(labels), dtype=float)


def _alpha_from_matrix(mat: np.ndarray, level: str, domain: np.ndarray | None) -> float:
    """Krippendorff's alpha of an encoded float matrix; NaN when undefined."""
    if mat.ndim != 2 or mat.shape[0] < 2 or mat.shape[1] == 0:
        return float("nan")
    present = ~np.isnan(mat)
    pairable_units = present.sum(axis=0) >= 2
    if not pairable_units.any():
        return float("nan")
    pairable_values = mat[:, pairable_units]
    if np.unique(pairable_values[~np.isnan(pairable_values)]).size < 2:
        # No variance among pairable values: expected disagreement is zero.
        return float("nan")
    if domain is not None and domain.size < 2:
        return float("nan")
    if level == "interval":
        return _interval_alpha(pairable_values)
    try:
        with np.errstate(all="ignore"):
            measure = cast(Literal["nominal", "ordinal", "interval", "ratio"], level)
            value = float(krippendorff.alpha(reliability_data=mat, level_of_measurement=measure, value_domain=domain))
    except ValueError as exc:
        logger.debug("krippendorff.alpha undefined: %s", exc)
        return float("nan")
    return value if math.isfinite(value) else float("nan")


def _interval_alpha(mat: np.ndarray) -> float:
    """Interval alpha in closed form, O(raters x units): with squared differences, the sums over pairs of
    values reduce to sums and sums of squares. Equal to ``krippendorff.alpha(..., "interval")``, whose
    coincidence matrix grows with the square of the number of distinct values (continuous ratings such as
    expected scores made it allocate gigabytes)."""
    values = np.where(np.isnan(mat), 0.0, mat)
    present = (~np.isnan(mat)).astype(float)
    m = present.sum(axis=0)
    units = m >= 2
    m, values, present = m[units], values[:, units], present[:, units]
    total, squares = values.sum(axis=0), (values**2).sum(axis=0)
    within = 2 * m * squares - 2 * total**2  # sum over ordered pairs (i != j) in a unit of (v_i - v_j)^2
    n = m.sum()
    observed = float((within / (m - 1)).sum() / n)
    grand, grand_squares = float(total.sum()), float(squares.sum())
    expected = (2 * n * grand_squares - 2 * grand**2) / (n * (n - 1))
    if expected <= 0:
        return float("nan")
    return 1.0 - observed / expected


def _paired(a: Sequence[Rating], b: Sequence[Rating]) -> list[tuple[Any, Any]]:
    """Pairs ``(a[i], b[i])`` where neither side is missing; lengths must match."""
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} vs {len(b)}")
    return [(x, y) for x, y in zip(a, b, strict=True) if not _is_missing(x) and not _is_missing(y)]


# --------------------------------------------------------------------------- alpha


def krippendorff_alpha(
    ratings: Sequence[Sequence[Rating]],
    level: str,
    value_domain: Sequence[Any] | None = None,
) -> float:
    """Krippendorff's alpha for a ``raters x units`` matrix.

    Args:
        ratings: one row per rater, one column per unit; ``None``/NaN = missing.
        level: ``"interval"``, ``"ordinal"`` or ``"nominal"``.
        value_domain: admissible values.  Required for string labels on an
            ordinal (or interval) scale, where its order defines the scale;
            optional otherwise.  For nominal strings without a domain the sorted
            observed labels are used.

    Returns:
        Alpha as a float, or ``nan`` when it is undefined: fewer than two raters,
        no unit rated by at least two raters (fewer than two pairable values), or
        no variance among the pairable values.

    Raises:
        ValueError: unknown ``level``, ragged matrix, a rating outside
            ``value_domain``, or string labels on an ordered scale without a domain.
    """
    mat, domain = _to_matrix(ratings, level, value_domain)
    return _alpha_from_matrix(mat, level, domain)


def bootstrap_alpha(
    ratings: Sequence[Sequence[Rating]],
    level: str,
    value_domain: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval of Krippendorff's alpha.

    Units (columns) are resampled with replacement ``n_boot`` times using
    ``numpy.random.default_rng(seed)``, so the result is deterministic for a given
    seed.  Replicates where alpha is undefined are dropped.  The interval is the
    plain percentile interval, so in strongly skewed samples it need not contain
    the point estimate.

    Returns:
        ``(point, low, high)``; ``(nan, nan, nan)`` if alpha is undefined on the
        full data or on every replicate.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0.0 < ci < 1.0:
        raise ValueError("ci must be in (0, 1)")
    mat, domain = _to_matrix(ratings, level, value_domain)
    nan3 = (float("nan"), float("nan"), float("nan"))
    point = _alpha_from_matrix(mat, level, domain)
    if math.isnan(point):
        return nan3
    n_units = mat.shape[1]
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot, dtype=float)
    for b in range(n_boot):
        idx = rng.integers(0, n_units, size=n_units)
        replicates[b] = _alpha_from_matrix(mat[:, idx], level, domain)
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return nan3
    if finite.size < n_boot:
        logger.debug("bootstrap_alpha: %d of %d replicates undefined", n_boot - finite.size, n_boot)
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return point, float(low), float(high)


def delta_alpha(
    human_ratings: Sequence[Sequence[Rating]],
    system: Sequence[Rating],
    level: str,
    value_domain: Sequence[Any] | None = None,
) -> float:
    """Change in alpha when the system is added to the humans as one more rater.

    Returns ``alpha(humans + [system]) - alpha(humans)``: positive when the system
    agrees with the humans at least as well as they agree with each other.  NaN if
    either alpha is undefined.
    """
    humans = _as_rows(human_ratings)
    if humans and len(system) != len(humans[0]):
        raise ValueError(f"system has {len(system)} units, humans have {len(humans[0])}")
    with_system = krippendorff_alpha([*humans, list(system)], level, value_domain)
    without = krippendorff_alpha(humans, level, value_domain)
    return with_system - without


def flatten_dimensions(per_dim: Mapping[str, Sequence[Sequence[Rating]]]) -> list[list[Rating]]:
    """Pool several ``raters x units`` matrices into one by concatenating units.

    Dimensions are taken in mapping order.  Matrices with fewer raters are padded
    with rows of ``None``; alpha depends only on which values co-occur within a
    unit, not on rater identity, so padding does not change the pooled alpha.
    """
    mats = {name: _as_rows(m) for name, m in per_dim.items()}
    n_raters = max((len(m) for m in mats.values()), default=0)
    pooled: list[list[Rating]] = [[] for _ in range(n_raters)]
    for name, rows in mats.items():
        n_units = len(rows[0]) if rows else 0
        if len(rows) < n_raters:
            logger.debug("flatten_dimensions: padding %r from %d to %d raters", name, len(rows), n_raters)
        for r in range(n_raters):
            pooled[r].extend(rows[r] if r < len(rows) else [None] * n_units)
    return pooled


# --------------------------------------------------------------------------- consensus


def consensus(
    labels_per_unit: Sequence[Sequence[Rating]],
    kind: str,
    value_domain: Sequence[Any] | None = None,
) -> list[Rating]:
    """Per-unit human consensus.

    Missing labels (``None``/NaN) are ignored; a unit with no labels gives ``None``.

    * ``"interval"``: arithmetic mean, as a float.
    * ``"ordinal"``: lower median, i.e. element ``(n - 1) // 2`` of the labels
      sorted by their position in ``value_domain`` (natural order if no domain).
      The result is always one of the observed labels.
    * ``"nominal"``: most frequent label; ties go to the label that comes first in
      ``value_domain`` if given, else first in sorted order.
    """
    _check_level(kind)
    key = _sort_key_for_domain(value_domain)
    out: list[Rating] = []
    for unit in labels_per_unit:
        labels = [v for v in unit if not _is_missing(v)]
        if not labels:
            out.append(None)
        elif kind == "interval":
            out.append(float(np.mean([float(cast(float, v)) for v in labels])))
        elif kind == "ordinal":
            ordered = sorted(labels, key=key)
            out.append(ordered[(len(ordered) - 1) // 2])
        else:
            counts = Counter(labels)
            top = max(counts.values())
            tied = [v for v, c in counts.items() if c == top]
            out.append(sorted(tied, key=key)[0])
    return out


# --------------------------------------------------------------------------- pairwise metrics


def exact_agreement(a: Sequence[Rating], b: Sequence[Rating]) -> float:
    """Fraction of positions where ``a`` and ``b`` are equal.

    Pairs where either side is missing are ignored; NaN if no pair remains.
    """
    pairs = _paired(a, b)
    if not pairs:
        return float("nan")
    return sum(1 for x, y in pairs if x == y) / len(pairs)


def accuracy(gold: Sequence[Rating], pred: Sequence[Rating]) -> float:
    """Classification accuracy; identical to :func:`exact_agreement`."""
    return exact_agreement(gold, pred)


def mean_absolute_error(a: Sequence[Rating], b: Sequence[Rating]) -> float:
    """Mean of ``|a[i] - b[i]|`` over pairs where neither is missing; NaN if none."""
    pairs = _paired(a, b)
    if not pairs:
        return float("nan")
    return float(np.mean([abs(float(x) - float(y)) for x, y in pairs]))


def macro_f1(
    gold: Sequence[Rating],
    pred: Sequence[Rating],
    labels: Sequence[Hashable],
) -> tuple[float, dict[Hashable, float]]:
    """Macro-averaged F1 over ``labels`` plus the per-class F1.

    Pairs where either side is missing are ignored.  A value outside ``labels``
    counts as an error for the other side's class but gets no class of its own.
    Per-class F1 is ``2TP / (2TP + FP + FN)``; a class that appears in neither
    gold nor pred has F1 ``nan`` and is excluded from the macro mean.

    Returns:
        ``(macro_f1, {label: f1})``; macro is NaN if no class is present.
    """
    pairs = _paired(gold, pred)
    per_class: dict[Hashable, float] = {}
    for label in labels:
        tp = sum(1 for g, p in pairs if g == label and p == label)
        fp = sum(1 for g, p in pairs if g != label and p == label)
        fn = sum(1 for g, p in pairs if g == label and p != label)
        denom = 2 * tp + fp + fn
        per_class[label] = (2 * tp / denom) if denom else float("nan")
    present = [f for f in per_class.values() if not math.isnan(f)]
    macro = float(np.mean(present)) if present else float("nan")
    return macro, per_class


def confusion_matrix(
    gold: Sequence[Rating],
    pred: Sequence[Rating],
    labels: Sequence[Hashable],
) -> list[list[int]]:
    """Confusion counts, rows = gold label, columns = predicted label, in ``labels`` order.

    Pairs with a missing value or a value outside ``labels`` are skipped.
    """
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in _paired(gold, pred):
        if g in index and p in index:
            matrix[index[g]][index[p]] += 1
    return matrix


# --------------------------------------------------------------------------- report


def dimension_report(
    human: Sequence[Sequence[Rating]],
    system: Sequence[Rating] | None,
    level: str,
    value_domain: Sequence[Any] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> AgreementReport:
    """Agreement summary for one rubric dimension, as a JSON-serialisable dict.

    The human consensus per unit (see :func:`consensus`) is the gold standard
    against which the system is compared.

    Keys:
        ``level``, ``n_units``, ``n_raters``;
        ``alpha_system``: alpha between the consensus and the system (2 raters);
        ``alpha_system_ci``: ``[low, high]`` bootstrap interval of that alpha;
        ``alpha_humans``: alpha among the human raters;
        ``delta_alpha``: see :func:`delta_alpha`;
        ``exact``: exact agreement of system and consensus;
        ``mae``: mean absolute error (interval/ordinal; ordinal string labels are
        measured in scale steps of ``value_domain``); ``None`` for nominal;
        ``macro_f1`` / ``per_class_f1`` (labels as strings): nominal only, else ``None``;
        ``confusion``: ``{"labels": [...], "matrix": [[...]]}`` (rows consensus,
        columns system) for nominal/ordinal, ``None`` for interval.

    Every system-dependent entry is ``None`` when ``system`` is ``None``, and every
    undefined (NaN) statistic is reported as ``None``.
    """
    _check_level(level)
    rows = _as_rows(human)
    n_units = len(rows[0]) if rows else 0
    if system is not None and len(system) != n_units:
        raise ValueError(f"system has {len(system)} units, humans have {n_units}")

    report: dict[str, Any] = {
        "level": level,
        "n_units": n_units,
        "n_raters": len(rows),
        "alpha_system": None,
        "alpha_system_ci": None,
        "alpha_humans": krippendorff_alpha(rows, level, value_domain),
        "delta_alpha": None,
        "exact": None,
        "mae": None,
        "macro_f1": None,
        "per_class_f1": None,
        "confusion": None,
    }
    if system is None:
        return json_safe(report)

    sys_list = list(system)
    # Validates the system's values against value_domain as a side effect.
    report["delta_alpha"] = delta_alpha(rows, sys_list, level, value_domain)

    cmp_domain = value_domain
    if level == "interval":
        # The consensus is a mean, generally not a member of value_domain: compare on numbers.
        rows = [[_interval_number(v, value_domain) for v in row] for row in rows]
        sys_list = [_interval_number(v, value_domain) for v in sys_list]
        cmp_domain = None

    units = [[row[u] for row in rows] for u in range(n_units)]
    gold = consensus(units, level, cmp_domain)
    point, low, high = bootstrap_alpha([gold, sys_list], level, cmp_domain, n_boot=n_boot, seed=seed, ci=ci)
    report["alpha_system"] = point
    report["alpha_system_ci"] = [low, high]
    report["exact"] = exact_agreement(gold, sys_list)
    report.update(_label_measures(gold, sys_list, level, value_domain))
    return json_safe(report)


def _label_measures(
    gold: Sequence[Rating], sys_list: Sequence[Rating], level: str, value_domain: Sequence[Any] | None
) -> dict[str, Any]:
    """``dimension_report``'s label-level measures of the system against the consensus: macro-F1 and per-class
    F1 (nominal) or MAE (interval, ordinal), and the confusion matrix (nominal, ordinal)."""
    out: dict[str, Any] = {}
    if level == "nominal":
        labels = _category_labels(gold, sys_list, value_domain)
        macro, per_class = macro_f1(gold, sys_list, labels)
        out["macro_f1"] = macro
        out["per_class_f1"] = {str(k): v for k, v in per_class.items()}
    else:
        numeric = all(_is_number(v) for v in [*gold, *sys_list] if not _is_missing(v))
        if numeric:
            out["mae"] = mean_absolute_error(gold, sys_list)
        else:
            key = _sort_key_for_domain(value_domain)
            if key is None:
                raise ValueError("string labels need a value_domain to compute MAE")
            out["mae"] = mean_absolute_error(
                [None if _is_missing(v) else key(v) for v in gold],
                [None if _is_missing(v) else key(v) for v in sys_list],
            )

    if level in ("nominal", "ordinal"):
        labels = _category_labels(gold, sys_list, value_domain)
        out["confusion"] = {"labels": labels, "matrix": confusion_matrix(gold, sys_list, labels)}
    return out


def _interval_number(value: Rating, value_domain: Sequence[Any] | None) -> float | None:
    """A rating as a number on an interval scale: numbers as is, labels as their index in the domain."""
    if _is_missing(value):
        return None
    if _is_number(value):
        return float(value)
    key = _sort_key_for_domain(value_domain)
    if key is None:
        raise ValueError(f"non-numeric interval rating {value!r} needs a value_domain")
    return float(key(value))


def _category_labels(gold: Sequence[Rating], pred: Sequence[Rating], value_domain: Sequence[Any] | None) -> list[Any]:
    """``value_domain`` as a list, or the sorted union of observed labels."""
    if value_domain is not None:
        return list(value_domain)
    observed = {v for v in [*gold, *pred] if not _is_missing(v)}
    try:
        return sorted(observed)
    except TypeError as exc:
        raise ValueError("cannot order mixed-type labels; pass value_domain") from exc
