"""The fast tier: a small head on the judge LM's own features, fitted in seconds on a project's annotations.

Per dimension, the features of a task are the judge's hidden states at that dimension's label position, the
hidden states pooled over the target input (answer, summary), a few language-model statistics of the target
and the judge's own label distribution (``backend.model.judge.TaskFeatures``). The head maps them to a label
distribution on the rubric's scale:

* **scale dimensions**: ridge regression on the human consensus mean. The ridge strength is chosen by
  cross-validation on the training tasks (grouped, so a group's tasks never sit on both sides of a fold). The
  out-of-fold predictions then fit the *calibration*: a linear map that gives the predictions the humans' mean
  and spread (for two raters, Krippendorff's interval alpha is highest when the variances match; a
  least-squares fit would shrink every task towards the mean) and the spread of its errors. The served
  distribution is that normal, discretized on the scale; the label is its most probable value and the
  confidence is that label's probability. **No signal:** the strength and feature subset are the best of a
  grid (16 cross-validated correlations), and the best of 16 noisy correlations is usually positive, so the
  head's cross-validated correlation is tested against the same best-of-grid statistic on ``NULL_PERMUTATIONS``
  restricted permutations of the targets (groups exchanged with groups of the same size, tasks shuffled within
  their group, the folds kept; ``restricted_permutations``). Unless it beats them (p <= ``SIGNAL_LEVEL``) the
  head predicts the humans' mean (``constant``), which the pre-fill gate refuses and promotion does not count.
  The permutations cost little: one eigendecomposition per fold serves every strength and every permutation.
* **nominal dimensions**: one-vs-rest ridge on the label indicators, a softmax whose temperature is fitted on
  the out-of-fold scores.

Pure module: numpy only. Stored as ``head.npz`` (arrays) and ``head.json`` (everything else) in a version
folder.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HEAD_JSON = "head.json"
HEAD_ARRAYS = "head.npz"
STRENGTHS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
TEMPERATURES = tuple(float(t) for t in np.geomspace(0.05, 20.0, 40))
MIN_SIGMA = 0.25
MIN_GROUPS = 4  # rated task groups a dimension needs before its head is fitted (else it predicts the prior)
#: permutations of a scale dimension's targets its best cross-validated correlation is tested against
NULL_PERMUTATIONS = 99
#: the largest permutation p-value at which a scale dimension's head is kept (else it predicts the mean)
SIGNAL_LEVEL = 0.05
#: sharing across a rubric's scale dimensions: a dimension's head may learn ``(1 - b) * z_own + b * z_all``
#: (standardized targets; ``z_all`` the mean over the task's rated scale dimensions) for each ``b`` here, chosen
#: by the same cross-validation as the strength (``(0.0,)``: every dimension learns from its own labels alone)
SHARE_BLENDS = (0.0, 0.5, 1.0)


class HeadError(ValueError):
    """A head cannot be fitted or loaded; the message says why."""


@dataclass
class DimensionHead:
    """One dimension's fitted map from features to a label distribution."""

    name: str
    labels: list[str]
    values: list[float] | None  # numeric values of a scale's labels; None for a nominal dimension
    mean: np.ndarray  # feature standardization
    scale: np.ndarray
    weights: np.ndarray  # (features,) for a scale, (features, labels) for a nominal dimension
    bias: np.ndarray
    strength: float
    #: scale: prediction -> (prediction - pred_mean) * gain + target_mean; sigma: spread of the errors
    calibration: dict[str, float] = field(default_factory=dict)
    cv: dict[str, Any] = field(default_factory=dict)
    #: the feature columns the head reads (None: all); chosen by cross-validation among ``subsets``
    columns: np.ndarray | None = None
    #: the width of the feature vectors it is given (all columns)
    inputs: int | None = None

    @property
    def constant(self) -> bool:
        """Whether this dimension predicts the same distribution for every task (too few tasks, or no
        cross-validated signal: the humans' mean)."""
        if self.values is not None:
            return float(self.calibration.get("gain", 0.0)) == 0.0 or not np.any(self.weights)
        return not np.any(self.weights)

    @property
    def width(self) -> int:
        return int(self.inputs if self.inputs is not None else self.mean.shape[0])

    def raw(self, x: np.ndarray) -> np.ndarray:
        if self.columns is not None:
            x = x[..., self.columns]
        z = (x - self.mean) / self.scale
        return z @ self.weights + self.bias

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (rows x labels), expected value per row or None)`` for feature rows ``x``."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        raw = self.raw(x)
        if self.values is None:
            return softmax(raw / self.calibration["temperature"]), None
        c = self.calibration
        mu = (raw - c["pred_mean"]) * c["gain"] + c["target_mean"]
        low, high = min(self.values), max(self.values)
        probs = discretized_normal(np.clip(mu, low, high), c["sigma"], self.values)
        return probs, probs @ np.asarray(self.values)  # the expected value of the served distribution


@dataclass
class Head:
    """Every dimension's head plus what it was fitted on (the features must come from the same base model)."""

    dimensions: dict[str, DimensionHead]
    feature_size: int
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        dim = self.dimensions.get(name)
        if dim is None:
            raise HeadError(
                f"the feature head has no dimension {name!r} (it has {', '.join(self.dimensions)}): "
                "it was fitted for another rubric"
            )
        if x.shape[-1] != dim.width:
            raise HeadError(
                f"the head of {name!r} expects {dim.width} features per task, got "
                f"{x.shape[-1]}: it was fitted on another base model"
            )
        return dim.predict(x)

    # --- storage ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        described = []
        for i, dim in enumerate(self.dimensions.values()):
            for key in ("mean", "scale", "weights", "bias"):
                arrays[f"{i}.{key}"] = getattr(dim, key)
            if dim.columns is not None:
                arrays[f"{i}.columns"] = dim.columns
            described.append(
                {
                    "inputs": dim.width,
                    "name": dim.name,
                    "labels": dim.labels,
                    "values": dim.values,
                    "strength": dim.strength,
                    "calibration": dim.calibration,
                    "cv": dim.cv,
                }
            )
        np.savez(folder / HEAD_ARRAYS, **arrays)
        (folder / HEAD_JSON).write_text(
            json.dumps(
                {"kind": "feature-head", "feature_size": self.feature_size, "meta": self.meta, "dimensions": described},
                indent=1,
            ),
            encoding="utf-8",
        )


def is_head(folder: Path) -> bool:
    """Whether a version folder holds a feature head (not a LoRA adapter)."""
    return (folder / HEAD_JSON).is_file()


def load_head(folder: Path) -> Head:
    try:
        described = json.loads((folder / HEAD_JSON).read_text(encoding="utf-8"))
        dims = {}
        with np.load(folder / HEAD_ARRAYS) as arrays:
            for i, d in enumerate(described["dimensions"]):
                dims[d["name"]] = DimensionHead(
                    name=d["name"],
                    labels=list(d["labels"]),
                    values=d["values"],
                    strength=float(d["strength"]),
                    calibration=dict(d["calibration"]),
                    cv=dict(d.get("cv", {})),
                    columns=np.asarray(arrays[f"{i}.columns"]) if f"{i}.columns" in arrays.files else None,
                    inputs=d.get("inputs"),
                    **{key: np.asarray(arrays[f"{i}.{key}"]) for key in ("mean", "scale", "weights", "bias")},
                )
        return Head(dimensions=dims, feature_size=int(described["feature_size"]), meta=described.get("meta", {}))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise HeadError(f"cannot load the feature head in {folder}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# fitting


def fit_head(
    dims: Sequence[Any],
    features: Mapping[str, np.ndarray],
    targets: Mapping[str, Sequence[Any]],
    groups: Sequence[str],
    folds: int = 5,
    meta: Mapping[str, Any] | None = None,
    quiet: bool = False,
    subsets: Mapping[str, Sequence[int] | None] | None = None,
    blends: Sequence[float] = (0.0,),
) -> Head:
    """Fit one head per dimension.

    ``dims`` are ``backend.core.rubric.Dimension`` objects; ``features[name]`` is (tasks x features);
    ``targets[name]`` per task: the consensus mean (a float, NaN when unrated) for a scale, the consensus
    label (None when unrated) for a nominal dimension; ``groups`` per task (tasks of a group share a fold).
    ``subsets``: named column subsets the cross-validation chooses among, with the ridge strength (None: all
    columns); the capacity follows the data: with few tasks a few strong features can beat them all.
    ``blends``: how far a scale dimension may learn from the rubric's other scale dimensions (``SHARE_BLENDS``;
    the default ``(0.0,)``: its own labels only); the cross-validation chooses, its permutation null covers it.
    """
    heads: dict[str, DimensionHead] = {}
    size = None
    standardized = _standardized_targets(dims, targets) if len(blends) > 1 or blends[0] else {}
    for dim in dims:
        x = np.asarray(features[dim.name], dtype=np.float64)
        size = x.shape[1] if size is None else size
        if dim.values is not None:
            y = np.array([np.nan if v is None else float(v) for v in targets[dim.name]])
            keep = ~np.isnan(y)
        else:
            raw = list(targets[dim.name])
            keep = np.array([v is not None for v in raw])
            y = np.array([dim.labels.index(v) if v is not None else -1 for v in raw])
        kept_groups = [g for g, k in zip(groups, keep, strict=True) if k]
        if len(set(kept_groups)) < MIN_GROUPS:
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "head %s: only %d rated task group(s); predicting the prior (needs %d to fit)",
                dim.name,
                len(set(kept_groups)),
                MIN_GROUPS,
            )
            heads[dim.name] = _constant_dimension(dim, x.shape[1], y[keep])
            continue
        others = _other_dimensions(dim.name, standardized, keep) if len(standardized) > 1 else None
        heads[dim.name] = _fit_dimension(dim, x[keep], y[keep], kept_groups, folds, quiet, subsets, blends, others)
    if size is None:
        raise HeadError("no dimensions to fit")
    return Head(dimensions=heads, feature_size=size, meta=dict(meta or {}))


def cross_fitted(
    dims: Sequence[Any],
    features: Mapping[str, np.ndarray],
    targets: Mapping[str, Sequence[Any]],
    groups: Sequence[str],
    folds: int = 5,
    subsets: Mapping[str, Sequence[int] | None] | None = None,
    blends: Sequence[float] = (0.0,),
) -> tuple[list[Head | None], np.ndarray]:
    """The evidence for a head fitted on every task: out-of-fold heads. Tasks are dealt into ``folds`` folds by
    group (a group never straddles two); for each fold, a head is fitted exactly as ``fit_head`` fits the final
    one (its own inner cross-validation included) on the other folds' tasks. Returns the per-fold heads (None
    where a fold could not be fitted) and the fold of every task: task ``i`` is predicted by
    ``heads[fold[i]]``, which never saw it or its group."""
    fold = _fold_ids(groups, folds)
    heads: list[Head | None] = []
    for f in range(int(fold.max()) + 1 if len(fold) else 0):
        train = fold != f
        if not train.any():
            heads.append(None)
            continue
        kept = [g for g, keep in zip(groups, train, strict=True) if keep]
        heads.append(
            fit_head(
                dims,
                {name: np.asarray(x)[train] for name, x in features.items()},
                {name: [v for v, keep in zip(values, train, strict=True) if keep] for name, values in targets.items()},
                kept,
                folds=folds,
                quiet=True,
                subsets=subsets,
                blends=blends,
            )
        )
    return heads, fold


def _standardized_targets(dims: Sequence[Any], targets: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Every scale dimension's targets standardized over its rated tasks (NaN where unrated)."""
    out = {}
    for dim in dims:
        if dim.values is None:
            continue
        y = np.array([np.nan if v is None else float(v) for v in targets[dim.name]])
        rated = ~np.isnan(y)
        if rated.sum() < 2:
            continue
        sd = float(y[rated].std())
        out[dim.name] = (y - y[rated].mean()) / (sd if sd > 1e-12 else 1.0)
    return out


def _other_dimensions(
    name: str, standardized: Mapping[str, np.ndarray], keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """For the tasks ``keep`` of dimension ``name``: the sum of the other scale dimensions' standardized
    targets and how many of them each task has (None when ``name`` is not among them)."""
    if name not in standardized:
        return None
    rest = [z[keep] for other, z in standardized.items() if other != name]
    stacked = np.stack(rest)
    return np.nansum(stacked, axis=0), np.sum(~np.isnan(stacked), axis=0).astype(np.float64)


def _constant_dimension(dim: Any, size: int, y: np.ndarray) -> DimensionHead:
    """A head that predicts the prior for every task (too little data to fit anything)."""
    zeros = np.zeros(size)
    if dim.values is None:
        counts = np.bincount(y.astype(int), minlength=len(dim.labels)) + 1.0  # add-one smoothing
        return DimensionHead(
            name=dim.name,
            labels=list(dim.labels),
            values=None,
            mean=zeros,
            scale=zeros + 1,
            weights=np.zeros((size, len(dim.labels))),
            bias=np.log(counts / counts.sum()),
            strength=0.0,
            calibration={"temperature": 1.0},
            cv={"skipped": "too few tasks"},
        )
    values = [float(v) for v in dim.values]
    mean = float(y.mean()) if len(y) else (min(values) + max(values)) / 2
    sigma = max(MIN_SIGMA, float(y.std())) if len(y) else 1.0
    return DimensionHead(
        name=dim.name,
        labels=list(dim.labels),
        values=values,
        mean=zeros,
        scale=zeros + 1,
        weights=zeros,
        bias=np.array([mean]),
        strength=0.0,
        calibration={"pred_mean": mean, "gain": 0.0, "target_mean": mean, "sigma": sigma, "oof_correlation": 0.0},
        cv={"skipped": "too few tasks"},
    )


def _fold_ids(groups: Sequence[str], folds: int) -> np.ndarray:
    """Fold number per task: groups dealt round-robin in first-seen order (deterministic)."""
    order: dict[str, int] = {}
    for g in groups:
        order.setdefault(g, len(order))
    k = max(2, min(folds, len(order)))
    return np.array([order[g] % k for g in groups])


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    return mean, scale


def ridge(x: np.ndarray, y: np.ndarray, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge on standardized ``x`` (``y``: vector or matrix of targets), solved in the dual when features
    outnumber rows. Returns ``(weights, bias)``."""
    y_mean = y.mean(axis=0)
    yc = y - y_mean
    n, p = x.shape
    if p > n:
        gram = x @ x.T
        gram[np.diag_indices_from(gram)] += strength
        weights = x.T @ np.linalg.solve(gram, yc)
    else:
        cov = x.T @ x
        cov[np.diag_indices_from(cov)] += strength
        weights = np.linalg.solve(cov, x.T @ yc)
    return weights, np.asarray(y_mean)


def _scaled_strength(strength: float, n_features: int) -> float:
    """Ridge strengths are given per 1,000 standardized features, so one grid fits any hidden size."""
    return strength * n_features / 1000.0


def _out_of_fold(x: np.ndarray, y: np.ndarray, fold: np.ndarray, strength: float) -> np.ndarray:
    """Out-of-fold ridge predictions for one strength, a solve per fold: the plain path that ``out_of_fold_grid``
    (what the head fits with) is tested against."""
    out = np.zeros(y.shape, dtype=np.float64)
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        mean, scale = _standardize(x[train])
        w, b = ridge((x[train] - mean) / scale, y[train], _scaled_strength(strength, x.shape[1]))
        out[test] = ((x[test] - mean) / scale) @ w + b
    return out


def out_of_fold_grid(
    x: np.ndarray, y: np.ndarray, fold: np.ndarray, strengths: Sequence[float]
) -> dict[float, np.ndarray]:
    """``_out_of_fold`` for every strength at about the cost of one: per fold, one eigendecomposition of the
    ridge's Gram matrix (dual when features outnumber rows, as ``ridge``) serves every strength. Equal to
    ``_out_of_fold`` to rounding (``tests/test_head.py``)."""
    out = {s: np.zeros(y.shape, dtype=np.float64) for s in strengths}
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        mean, scale = _standardize(x[train])
        xs, xt = (x[train] - mean) / scale, (x[test] - mean) / scale
        y_mean = y[train].mean(axis=0)
        yc = y[train] - y_mean
        if xs.shape[1] > xs.shape[0]:
            values, vectors = np.linalg.eigh(xs @ xs.T)
            left, right = (xt @ xs.T) @ vectors, vectors.T @ yc
        else:
            values, vectors = np.linalg.eigh(xs.T @ xs)
            left, right = xt @ vectors, vectors.T @ (xs.T @ yc)
        for strength in strengths:
            shrink = 1.0 / (values + _scaled_strength(strength, x.shape[1]))
            out[strength][test] = left @ (shrink[:, None] * right if right.ndim == 2 else shrink * right) + y_mean
    return out


def _grid_search(
    dim: Any,
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    fold: np.ndarray,
    choices: Mapping[str, Any],
    named: bool,
    blends: Sequence[float] = (0.0,),
    others: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[tuple[float, str, float, np.ndarray, float], dict[str, float], np.ndarray | None]:
    """Every (feature subset, strength, blend) of the grid, cross-validated on ``fold``: the best ``(score,
    subset, strength, out-of-fold predictions, blend)``, every score by name, and for a scale dimension the null
    of the best: the best correlation over the same grid of each of ``NULL_PERMUTATIONS`` restricted permutations
    of ``y`` (fitted alongside the real targets: one decomposition per fold serves them all). A blend ``b`` > 0
    learns ``_blended``'s target; its permuted twins permute this dimension's part only, so the null holds what
    the other dimensions bring and the test asks whether the head predicts *this* dimension."""
    nominal = dim.values is None
    permuted: np.ndarray | None = None
    shared = not nominal and _sharing(blends, others)
    if not shared:
        blends = (0.0,)
    if nominal:
        target = np.eye(len(dim.labels))[y]
    else:
        seed = zlib.crc32(dim.name.encode("utf-8"))
        permuted = y[restricted_permutations(groups, NULL_PERMUTATIONS, seed)].T  # (tasks, permutations)
        if not shared:
            target = np.column_stack([y, permuted])
        else:  # per blend: [own part, its permuted twins, the others' part] (ridge is linear in its targets)
            assert others is not None
            target = np.hstack([np.column_stack(_blended(y, permuted, others, b)) for b in blends])
    null = None if permuted is None else np.full(permuted.shape[1], -np.inf)
    best: tuple[float, str, float, np.ndarray, float] | None = None
    grid: dict[str, float] = {}
    width = 0 if permuted is None else permuted.shape[1]
    for subset, columns in choices.items():
        xs = x if columns is None else x[:, np.asarray(columns, dtype=np.int64)]
        for strength, fitted in out_of_fold_grid(xs, target, fold, STRENGTHS).items():
            for j, blend in enumerate(blends):
                if permuted is None:
                    oof, score = fitted, _nll_score(fitted, y)
                elif not shared:
                    oof, score = fitted[:, 0], _correlation(fitted[:, 0], y)
                    null = np.maximum(null, _column_correlations(fitted[:, 1:], permuted))
                else:
                    block = fitted[:, j * (width + 2) : (j + 1) * (width + 2)]
                    oof = block[:, 0] + block[:, -1]
                    score = _correlation(oof, y)
                    null = np.maximum(null, _column_correlations(block[:, 1:-1] + block[:, -1:], permuted))
                name = f"{subset}:{strength}" if named else str(strength)
                grid[name + (f":share {blend:g}" if shared else "")] = round(score, 4)
                if best is None or score > best[0]:
                    best = (score, subset, strength, oof, blend)
    assert best is not None
    return best, grid, null


def _sharing(blends: Sequence[float], others: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """Whether a scale dimension learns blended targets (on the standardized scale): there are other dimensions
    and a blend other than 0 to try. The grid search and the final fit must agree on it."""
    return others is not None and tuple(blends) != (0.0,)


def _blended(
    y: np.ndarray, permuted: np.ndarray, others: tuple[np.ndarray, np.ndarray], blend: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The target ``(1 - blend) * z + blend * mean(z, other dimensions' z)`` per task (``z``: ``y``
    standardized; ``others``: the sum of the other dimensions' standardized targets and their count per task),
    split as ``(own part, own part of each permutation (tasks x permutations), the others' part)``: their sum
    is the target, and the permuted targets share the others' part."""
    rest, count = others
    sd = float(y.std())
    scale = sd if sd > 1e-12 else 1.0
    own = (1.0 - blend) + blend / (1.0 + count)
    return own * (y - y.mean()) / scale, own[:, None] * (permuted - y.mean()) / scale, blend * rest / (1.0 + count)


def _fit_dimension(
    dim: Any,
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    folds: int,
    quiet: bool = False,
    subsets: Mapping[str, Sequence[int] | None] | None = None,
    blends: Sequence[float] = (0.0,),
    others: tuple[np.ndarray, np.ndarray] | None = None,
) -> DimensionHead:
    fold = _fold_ids(groups, folds)
    nominal = dim.values is None
    width = x.shape[1]
    choices = dict(subsets) if subsets else {"all": None}
    (score, subset, strength, oof, blend), grid, null = _grid_search(
        dim, x, y, groups, fold, choices, bool(subsets), blends, others
    )
    target = _final_target(dim, y, blend, blends, others)
    cv: dict[str, Any] = {"folds": int(len(np.unique(fold))), "grid": grid, "tasks": int(len(y))}
    if blend:
        cv["share"] = blend
    if null is not None:
        p_value = float((1 + np.count_nonzero(null >= score - 1e-12)) / (len(null) + 1))
        cv["signal_p"] = round(p_value, 4)
        if p_value > SIGNAL_LEVEL:
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "head %s: no signal (best cross-validated correlation %.3f of %d, permutation p %.2f > %g): "
                "predicting the humans' mean",
                dim.name,
                score,
                len(grid),
                p_value,
                SIGNAL_LEVEL,
            )
            constant = _constant_dimension(dim, width, y)
            constant.cv = cv | {"oof_correlation": round(score, 4), "no_signal": True}
            return constant
    columns = choices[subset]
    cols = None if columns is None else np.asarray(columns, dtype=np.int64)
    xs = x if cols is None else x[:, cols]
    mean, scale = _standardize(xs)
    weights, bias = ridge((xs - mean) / scale, target, _scaled_strength(strength, xs.shape[1]))
    if subsets:
        cv["subset"] = subset
    if nominal:
        temperature = _fit_temperature(oof, y)
        calibration = {"temperature": temperature}
        cv["oof_accuracy"] = round(float(np.mean(oof.argmax(axis=1) == y)), 4)
    else:
        calibration = _fit_scale_calibration(oof, y, dim.values)
        cv["oof_correlation"] = round(score, 4)
    log.log(
        logging.DEBUG if quiet else logging.INFO,
        "head %s: %sstrength %s, cross-validated %s",
        dim.name,
        f"features {subset}, " if subsets else "",
        strength,
        {k: v for k, v in cv.items() if k.startswith("oof")},
    )
    return DimensionHead(
        name=dim.name,
        labels=list(dim.labels),
        values=None if nominal else [float(v) for v in dim.values],
        mean=mean,
        scale=scale,
        weights=weights,
        bias=np.atleast_1d(bias),
        strength=strength,
        calibration=calibration,
        cv=cv,
        columns=cols,
        inputs=width,
    )


def _final_target(
    dim: Any, y: np.ndarray, blend: float, blends: Sequence[float], others: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """What the final ridge learns: label indicators (nominal), ``y`` itself, or with sharing the chosen blend on
    the standardized scale the grid's out-of-fold predictions (and so the calibration) were on, blend 0
    included."""
    if dim.values is None:
        return np.eye(len(dim.labels))[y]
    if _sharing(blends, others):
        assert others is not None
        own, _, rest = _blended(y, y[:, None], others, blend)
        return own + rest
    return y


def restricted_permutations(groups: Sequence[str], count: int, seed: int = 0) -> np.ndarray:
    """``(count, tasks)`` permutations of the tasks that keep their grouping: whole groups are exchanged with
    groups of the same size and tasks are shuffled within their group, so permuted targets keep the
    within-group likeness of the real ones (a task-level shuffle would not, and noise shared within groups would
    then beat it). Row ``k`` gives, for every task, the task whose target it takes."""
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_size: dict[int, list[list[int]]] = {}
    for block in members.values():
        by_size.setdefault(len(block), []).append(block)
    rng = np.random.default_rng(seed)
    out = np.empty((count, len(groups)), dtype=np.int64)
    for blocks in by_size.values():
        grid = np.asarray(blocks, dtype=np.int64)  # (groups of this size, size)
        order = rng.permuted(np.tile(np.arange(len(blocks)), (count, 1)), axis=1)
        source = rng.permuted(grid[order], axis=2)  # (count, groups, size)
        out[:, grid.ravel()] = source.reshape(count, -1)
    return out


def _column_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``_correlation`` of every column of ``a`` with the same column of ``b``."""
    ac, bc = a - a.mean(axis=0), b - b.mean(axis=0)
    sa, sb = np.sqrt((ac**2).sum(axis=0)), np.sqrt((bc**2).sum(axis=0))
    n = a.shape[0]
    flat = (sa / np.sqrt(n) < 1e-12) | (sb / np.sqrt(n) < 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (ac * bc).sum(axis=0) / (sa * sb)
    return np.where(flat, 0.0, r)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation; 0 where either side is constant."""
    return float(_column_correlations(a[:, None], b[:, None])[0])


def _fit_scale_calibration(oof: np.ndarray, y: np.ndarray, values: Sequence[float]) -> dict[str, float]:
    """The linear map that gives the out-of-fold predictions the humans' mean and spread (gain 0 without
    signal), and the spread of the calibrated errors."""
    r = _correlation(oof, y)
    gain = float(y.std() / oof.std()) if r > 0 and oof.std() > 1e-12 else 0.0
    calibrated = np.clip((oof - oof.mean()) * gain + y.mean(), min(values), max(values))
    sigma = max(MIN_SIGMA, float(np.sqrt(np.mean((calibrated - y) ** 2))))
    return {
        "pred_mean": float(oof.mean()),
        "gain": gain,
        "target_mean": float(y.mean()),
        "sigma": sigma,
        "oof_correlation": round(r, 4),
    }


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _nll_score(scores: np.ndarray, y: np.ndarray) -> float:
    """Negative log-likelihood (negated, higher is better) of the best-tempered softmax of the scores."""
    t = _fit_temperature(scores, y)
    p = softmax(scores / t)[np.arange(len(y)), y]
    return float(np.mean(np.log(np.maximum(p, 1e-12))))


def _fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    best = min(
        TEMPERATURES, key=lambda t: -np.mean(np.log(np.maximum(softmax(scores / t)[np.arange(len(y)), y], 1e-12)))
    )
    return float(best)


def discretized_normal(mu: np.ndarray, sigma: float, values: Sequence[float]) -> np.ndarray:
    """P(label) for a normal(mu, sigma) rounded to the nearest scale value (the ends take the tails); the
    columns follow the order of ``values``."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranked = [values[i] for i in order]
    edges = [(a + b) / 2 for a, b in zip(ranked[:-1], ranked[1:], strict=True)]
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    cdf = np.stack([_normal_cdf((e - mu) / sigma) for e in edges], axis=-1).reshape(len(mu), len(edges))
    lower = np.concatenate([np.zeros((len(mu), 1)), cdf], axis=1)
    upper = np.concatenate([cdf, np.ones((len(mu), 1))], axis=1)
    probs = np.empty((len(mu), len(values)))
    probs[:, order] = np.maximum(upper - lower, 0.0)
    return probs


_erf = np.vectorize(math.erf)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(np.asarray(z) / math.sqrt(2.0)))
