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
ordinal alpha from the weighted coincidence matrix of category codes. With unit weights it equals
``backend.core.agreement.krippendorff_alpha`` (tested).

**Few groups.** A new project's evidence is a dozen tasks in a handful of groups. The spread of a bootstrap
over G groups understates the sampling spread by about sqrt((G-1)/G), and its quantiles are those of a
statistic estimated from G values (G-1 degrees of freedom), so a plain percentile interval is too narrow where
G is small: a no-signal dimension passed a one-sided 2.5% percentile gate 4-7% of the time at 5 groups in the
simulations of ``tests/test_evidence.py``. Every interval here is therefore the percentile interval *stretched
about the point estimate* by ``small_sample_factor``: sqrt(G/(G-1)) * t(G-1) / z at the interval's tail (1.58 at 5
groups, 1.22 at 10, 1.10 at 20, 1.03 at 60). Stretching keeps the bootstrap's asymmetry (alpha's lower tail is
the longer one); a symmetric t interval from the bootstrap's standard deviation passed 3-4% at 10 to 20 groups.
A replicate where the statistic is undefined (no variance among the drawn tasks) counts against both bounds:
when more than the interval's tail of the replicates is undefined there is no interval.

Promotion tests a whole version at once (``family_ci``): at least one dimension must clear the pre-fill floor
at the one-sided level ``FAMILY_LEVEL`` / (number of dimensions) (at most the pre-fill gate's 2.5%), Holm's first
step, so that a candidate with no signal in any dimension is promoted at most ``FAMILY_LEVEL`` of the time
however many dimensions it has.
Pure module: numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

#: replicates of every bootstrap; seeded, so a decision is reproducible
N_BOOT = 2000
#: two-sided coverage of the intervals (the lower bound is a one-sided 2.5% bound)
CI = 0.95
SEED = 0
#: the chance that a version without signal in any dimension is promoted (one-sided, for the whole version)
FAMILY_LEVEL = 0.05


@dataclass(frozen=True)
class Evidence:
    """A statistic on ``tasks`` tasks in ``groups`` groups, with its group-bootstrap interval (None where
    undefined); ``undefined``: the bootstrap replicates where the statistic was undefined."""

    estimate: float | None
    low: float | None
    high: float | None
    tasks: int
    groups: int
    ci: float = CI
    undefined: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {
            "estimate": _round(self.estimate),
            "low": _round(self.low),
            "high": _round(self.high),
            "tasks": self.tasks,
            "groups": self.groups,
            "ci": self.ci,
        }
        return out | ({"undefined": self.undefined} if self.undefined else {})

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
                int(raw.get("undefined") or 0),
            )
        except (TypeError, ValueError):
            return None

    def describe(self, what: str = "alpha") -> str:
        """``alpha 0.412 [0.251, 0.560] (95% group bootstrap, 40 task(s) in 12 group(s))``."""
        if self.estimate is None:
            return f"{what} undefined on {self.tasks} task(s) in {self.groups} group(s)"
        interval = "no interval" if self.low is None else f"[{self.low:.3f}, {self.high:.3f}]"
        undefined = f", undefined in {self.undefined} of {N_BOOT} resamples" if self.undefined else ""
        return (
            f"{what} {self.estimate:.3f} {interval} ({_percent(self.ci)} group bootstrap, "
            f"{self.tasks} task(s) in {self.groups} group(s){undefined})"
        )


def _percent(ci: float) -> str:
    """``95%``, ``97.5%``."""
    text = f"{ci:.2%}"
    return text.rstrip("0%").rstrip(".") + "%"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------------------------------
# the small-sample correction


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 400):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (bisection on ``t_cdf``; exact to about 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


@lru_cache(maxsize=1024)
def small_sample_factor(groups: int, tail: float) -> float:
    """How far a group-bootstrap percentile bound is stretched about the point estimate at one-sided level
    ``tail``: sqrt(G/(G-1)) (the bootstrap's spread of G resampled groups is sqrt((G-1)/G) of the sampling
    spread) times t(G-1)/z at ``1 - tail`` (its quantiles rest on G-1 degrees of freedom). Infinite below 2
    groups."""
    if groups < 2:
        return math.inf
    z = NormalDist().inv_cdf(1.0 - tail)
    return math.sqrt(groups / (groups - 1)) * t_quantile(1.0 - tail, groups - 1) / z


def family_ci(n_dimensions: int) -> float:
    """The two-sided coverage whose lower bound is the one-sided ``FAMILY_LEVEL / n_dimensions`` bound (never
    wider than ``CI``'s, so a dimension shown at the family level is also pre-filled): a version shows signal
    when one of its dimensions clears the floor at it (Holm's first step across dimensions)."""
    return max(CI, 1.0 - 2.0 * FAMILY_LEVEL / max(1, n_dimensions))


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
    flat = (np.arange(n_boot)[:, None] * n_groups + draws).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_groups).reshape(n_boot, n_groups).astype(np.float64)
    return counts[:, index]


# --------------------------------------------------------------------------------------------------
# weighted two-coder alpha


def _codes(values: np.ndarray, k: int) -> np.ndarray:
    """Category codes as integers; a value that is not one of ``0..k-1`` is an error (a consensus mean or a
    scale value would be truncated or wrap around)."""
    codes = values.astype(np.int64)
    if values.size and (np.any(codes != values) or codes.min() < 0 or codes.max() >= k):
        raise ValueError(f"nominal and ordinal alpha need category codes 0..{k - 1}, got {sorted(set(values))[:8]}")
    return codes


def weighted_alpha(
    gold: np.ndarray, system: np.ndarray, weights: np.ndarray, level: str, n_categories: int | None = None
) -> np.ndarray:
    """Krippendorff's alpha of two coders per row of ``weights`` (``(replicates, units)``; a unit counts that
    often). ``gold`` and ``system`` are floats per unit, NaN where missing (a unit missing either is not
    pairable); for ``nominal`` and ``ordinal`` they are category codes ``0..n_categories-1`` (in the scale's
    order for ``ordinal``; anything else is a ValueError). NaN where alpha is undefined (no variance)."""
    gold = np.asarray(gold, dtype=np.float64)
    system = np.asarray(system, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    paired = ~(np.isnan(gold) | np.isnan(system))
    a, b = gold[paired], system[paired]
    w = weights if paired.all() else weights[:, paired]
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
            ai, bi = _codes(a, k), _codes(b, k)
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


def _bound(replicates: np.ndarray, tail: float, upper: bool) -> float | None:
    """The ``tail`` (or ``1 - tail``) quantile of the replicates with the undefined ones counted as beyond it
    (below the lower bound, above the upper one): None when they reach it."""
    ranked = np.sort(np.where(np.isfinite(replicates), replicates, np.inf if upper else -np.inf))
    position = (1.0 - tail if upper else tail) * (ranked.size - 1)
    below, above = ranked[math.floor(position)], ranked[math.ceil(position)]
    if not (math.isfinite(below) and math.isfinite(above)):
        return None
    return float(below + (above - below) * (position - math.floor(position)))


def _interval_of(point: float, replicates: np.ndarray, ci: float, groups: int) -> tuple[float | None, float | None]:
    """The percentile interval of the replicates stretched about ``point`` by ``small_sample_factor``."""
    tail = (1.0 - ci) / 2.0
    if replicates.size < 10 or groups < 2:
        return None, None
    low, high = _bound(replicates, tail, upper=False), _bound(replicates, tail, upper=True)
    if low is None or high is None:
        return None, None
    stretch = small_sample_factor(groups, tail)
    return point - stretch * max(point - low, 0.0), point + stretch * max(high - point, 0.0)


def _undefined(replicates: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isfinite(replicates)))


def alpha_intervals(
    gold: Sequence[float | None],
    system: Sequence[float | None],
    groups: Sequence[str],
    level: str,
    n_categories: int | None = None,
    *,
    cis: Sequence[float] = (CI,),
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> list[Evidence]:
    """``alpha_interval`` at several coverages from one set of replicates (the pre-fill gate's and the family's)."""
    g, s = _array(gold), _array(system)
    paired = ~(np.isnan(g) | np.isnan(s))
    kept_groups = [x for x, keep in zip(groups, paired, strict=True) if keep]
    n_groups = len(set(kept_groups))
    point = weighted_alpha(g[paired], s[paired], np.ones((1, int(paired.sum()))), level, n_categories)[0]
    if not np.isfinite(point):
        return [Evidence(None, None, None, int(paired.sum()), n_groups, ci) for ci in cis]
    weights = resample_weights(kept_groups, n_boot, seed)
    replicates = weighted_alpha(g[paired], s[paired], weights, level, n_categories)
    out = []
    for ci in cis:
        low, high = _interval_of(float(point), replicates, ci, n_groups)
        out.append(Evidence(float(point), low, high, int(paired.sum()), n_groups, ci, _undefined(replicates)))
    return out


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
    """Alpha of ``system`` against ``gold`` (per task; None where missing) with a group-bootstrap interval
    corrected for few groups. ``tasks``/``groups`` count the pairable tasks and their groups."""
    return alpha_intervals(gold, system, groups, level, n_categories, cis=(ci,), n_boot=n_boot, seed=seed)[0]


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
    with a paired group-bootstrap interval (each replicate weighs both systems' tasks alike) corrected for few
    groups. Dimensions where either alpha is undefined on the full data are left out; a replicate where any
    remaining dimension is undefined is undefined (and counts against both bounds), so every replicate averages
    the same dimensions as the estimate."""
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
    replicates = np.vstack(replicate_rows).mean(axis=0)  # NaN wherever one dimension is undefined
    point = float(np.mean(points))
    low, high = _interval_of(point, replicates, ci, n_groups)
    return Evidence(point, low, high, len(groups), n_groups, ci, _undefined(replicates))


def _array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
