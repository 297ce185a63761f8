"""How sure a decision taken from agreement can be: group-resampled bootstrap intervals of Krippendorff's alpha.

Tasks that share their context (the summaries of one dialogue, the answers to one question) are not
independent, so every interval here resamples *groups* of tasks with replacement, never single tasks. Two
statistics decide what the product does:

* ``alpha_interval``: alpha of a system against the human consensus on one dimension, with its interval (the
  pre-fill gate, ``backend.core.prefill``);
* ``paired_difference``: the difference of two systems' mean per-dimension alpha on the *same* tasks, each
  replicate resampling the same groups for both (promotion, ``worker.pipeline.should_promote``).

Alpha is computed for two coders (the consensus and the system) on weighted units, vectorized over the
replicates: interval alpha in closed form (the consensus of a scale is a mean, not a label), nominal and
ordinal alpha from the weighted coincidence matrix. With unit weights it equals
``backend.core.agreement.krippendorff_alpha`` (tested). Pure module: numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: replicates of every bootstrap; seeded, so a decision is reproducible
N_BOOT = 2000
#: two-sided coverage of the intervals (the lower bound is the 2.5th percentile)
CI = 0.95
SEED = 0


@dataclass(frozen=True)
class Evidence:
    """A statistic on ``tasks`` tasks in ``groups`` groups, with its group-bootstrap interval (None where
    undefined)."""

    estimate: float | None
    low: float | None
    high: float | None
    tasks: int
    groups: int
    ci: float = CI

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate": _round(self.estimate),
            "low": _round(self.low),
            "high": _round(self.high),
            "tasks": self.tasks,
            "groups": self.groups,
            "ci": self.ci,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Evidence | None:
        if not isinstance(raw, dict):
            return None
        try:
            return cls(
                _finite(raw.get("estimate")),
                _finite(raw.get("low")),
                _finite(raw.get("high")),
                int(raw.get("tasks") or 0),
                int(raw.get("groups") or 0),
                float(raw.get("ci") or CI),
            )
        except (TypeError, ValueError):
            return None

    def describe(self, what: str = "alpha") -> str:
        """``alpha 0.412 [0.251, 0.560] (95% group bootstrap, 40 tasks in 12 groups)``."""
        if self.estimate is None:
            return f"{what} undefined on {self.tasks} task(s) in {self.groups} group(s)"
        interval = "no interval" if self.low is None else f"[{self.low:.3f}, {self.high:.3f}]"
        return (
            f"{what} {self.estimate:.3f} {interval} ({self.ci:.0%} group bootstrap, "
            f"{self.tasks} task(s) in {self.groups} group(s))"
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------------------------------
# resampling


def group_index(groups: Sequence[str]) -> tuple[np.ndarray, int]:
    """Per task, the number of its group (first-seen order), and the number of groups."""
    order: dict[str, int] = {}
    index = np.array([order.setdefault(g, len(order)) for g in groups], dtype=np.int64)
    return index, len(order)


def resample_weights(groups: Sequence[str], n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``(n_boot, tasks)`` weights: each replicate draws as many groups as there are, with replacement, and
    every task counts as often as its group was drawn."""
    index, n_groups = group_index(groups)
    if n_groups == 0:
        return np.zeros((n_boot, 0))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    counts = np.zeros((n_boot, n_groups))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_groups), draws.ravel()), 1.0)
    return counts[:, index]


# --------------------------------------------------------------------------------------------------
# weighted two-coder alpha


def weighted_alpha(
    gold: np.ndarray, system: np.ndarray, weights: np.ndarray, level: str, n_categories: int | None = None
) -> np.ndarray:
    """Krippendorff's alpha of two coders per row of ``weights`` (``(replicates, units)``; a unit counts that
    often). ``gold`` and ``system`` are floats per unit, NaN where missing (a unit missing either is not
    pairable); for ``nominal`` and ``ordinal`` they are category codes ``0..n_categories-1``. NaN where alpha
    is undefined (no variance)."""
    gold = np.asarray(gold, dtype=np.float64)
    system = np.asarray(system, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    paired = ~(np.isnan(gold) | np.isnan(system))
    a, b, w = gold[paired], system[paired], weights[:, paired]
    n = 2.0 * w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if level == "interval":
            observed = w @ ((a - b) ** 2)  # sum over units of the pair's squared difference
            s1 = w @ (a + b)
            s2 = w @ (a**2 + b**2)
            expected = n * s2 - s1**2  # half the sum over ordered pairs of all values
            alpha = 1.0 - (n - 1.0) * observed / expected
        elif level in ("nominal", "ordinal"):
            k = int(n_categories if n_categories is not None else max(a.max(initial=0), b.max(initial=0)) + 1)
            ai, bi = a.astype(np.int64), b.astype(np.int64)
            eye = np.eye(k)
            # coincidences: each unit adds (a, b) and (b, a)
            pairs = np.einsum("ui,uj->uij", eye[ai], eye[bi]).reshape(len(ai), k * k)
            o = (w @ pairs).reshape(-1, k, k)
            o = o + o.transpose(0, 2, 1)
            marg = o.sum(axis=2)  # n_c per replicate
            if level == "nominal":
                delta = np.broadcast_to(1.0 - eye, o.shape)
            else:
                cum = np.cumsum(marg, axis=1)
                lower = np.minimum.outer(np.arange(k), np.arange(k))
                upper = np.maximum.outer(np.arange(k), np.arange(k))
                between = cum[:, upper] - np.where(lower > 0, cum[:, np.maximum(lower - 1, 0)], 0.0)
                delta = (between - (marg[:, :, None] + marg[:, None, :]) / 2.0) ** 2
                delta = delta * (1.0 - eye)
            observed = (o * delta).sum(axis=(1, 2))
            expected = np.einsum("bi,bj,bij->b", marg, marg, delta) / (n - 1.0)
            alpha = 1.0 - observed / expected
        else:
            raise ValueError(f"unknown level {level!r}: use interval, ordinal or nominal")
    alpha = np.where(np.isfinite(alpha) & (expected > 1e-12), alpha, np.nan)
    return alpha


def _interval_of(replicates: np.ndarray, ci: float) -> tuple[float | None, float | None]:
    defined = replicates[np.isfinite(replicates)]
    if defined.size < max(10, replicates.size // 2):  # mostly undefined: no interval to speak of
        return None, None
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(defined, [tail, 1.0 - tail])
    return float(low), float(high)


def alpha_interval(
    gold: Sequence[float | None],
    system: Sequence[float | None],
    groups: Sequence[str],
    level: str,
    n_categories: int | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    ci: float = CI,
) -> Evidence:
    """Alpha of ``system`` against ``gold`` (per task; None where missing) with a group-bootstrap interval.
    ``tasks``/``groups`` count the pairable tasks and their groups."""
    g, s = _array(gold), _array(system)
    paired = ~(np.isnan(g) | np.isnan(s))
    kept_groups = [x for x, keep in zip(groups, paired, strict=True) if keep]
    n_groups = len(set(kept_groups))
    point = weighted_alpha(g[paired], s[paired], np.ones((1, int(paired.sum()))), level, n_categories)[0]
    if not np.isfinite(point):
        return Evidence(None, None, None, int(paired.sum()), n_groups, ci)
    weights = resample_weights(kept_groups, n_boot, seed)
    low, high = _interval_of(weighted_alpha(g[paired], s[paired], weights, level, n_categories), ci)
    return Evidence(float(point), low, high, int(paired.sum()), n_groups, ci)


@dataclass(frozen=True)
class DimensionData:
    """One dimension's consensus and two systems' values per task, at the dimension's level."""

    gold: Sequence[float | None]
    first: Sequence[float | None]
    second: Sequence[float | None]
    level: str
    n_categories: int | None = None


def paired_difference(
    dimensions: Sequence[DimensionData],
    groups: Sequence[str],
    *,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    ci: float = CI,
) -> Evidence:
    """The mean over dimensions of alpha(first) - alpha(second), both against the consensus on the same tasks,
    with a paired group-bootstrap interval (each replicate weighs both systems' tasks alike). Dimensions where
    either alpha is undefined on the full data are left out of every replicate."""
    _, n_groups = group_index(groups)
    weights = resample_weights(groups, n_boot, seed)
    ones = np.ones((1, len(groups)))
    points, replicate_rows = [], []
    for dim in dimensions:
        g, a, b = _array(dim.gold), _array(dim.first), _array(dim.second)
        both = ~(np.isnan(a) | np.isnan(b))  # the same tasks for both systems
        a, b = np.where(both, a, np.nan), np.where(both, b, np.nan)
        pa = weighted_alpha(g, a, ones, dim.level, dim.n_categories)[0]
        pb = weighted_alpha(g, b, ones, dim.level, dim.n_categories)[0]
        if not (np.isfinite(pa) and np.isfinite(pb)):
            continue
        points.append(pa - pb)
        replicate_rows.append(
            weighted_alpha(g, a, weights, dim.level, dim.n_categories)
            - weighted_alpha(g, b, weights, dim.level, dim.n_categories)
        )
    if not points:
        return Evidence(None, None, None, len(groups), n_groups, ci)
    replicates = np.nanmean(np.vstack(replicate_rows), axis=0) if len(replicate_rows) > 1 else replicate_rows[0]
    low, high = _interval_of(replicates, ci)
    return Evidence(float(np.mean(points)), low, high, len(groups), n_groups, ci)


def _array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
