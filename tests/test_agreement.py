"""Tests for backend.core.agreement.

Alpha is checked against an independent coincidence-matrix implementation of
Krippendorff's alpha written here (Krippendorff 2011, "Computing Krippendorff's
Alpha-Reliability"), not against the krippendorff package the module wraps.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from fractions import Fraction

import numpy as np
import pytest

from backend.core.agreement import (
    accuracy,
    bootstrap_alpha,
    confusion_matrix,
    consensus,
    delta_alpha,
    dimension_report,
    exact_agreement,
    flatten_dimensions,
    krippendorff_alpha,
    macro_f1,
    mean_absolute_error,
)

# --------------------------------------------------------------------------- reference implementation


def ref_alpha(ratings, level, order=None):
    """Krippendorff's alpha from the coincidence matrix, in exact rational arithmetic.

    o_ck = sum_u (number of c-k pairs in unit u) / (m_u - 1) over units with m_u >= 2;
    n_c = sum_k o_ck; alpha = 1 - (n - 1) * sum o_ck d_ck / sum n_c n_k d_ck.
    ``order`` (ordinal only) lists the categories from low to high.
    """
    n_units = len(ratings[0])
    o = defaultdict(Fraction)
    for u in range(n_units):
        vals = [row[u] for row in ratings if row[u] is not None]
        m = len(vals)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[(vals[i], vals[j])] += Fraction(1, m - 1)
    n_c = defaultdict(Fraction)
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    cats = [c for c in order if c in n_c] if level == "ordinal" and order is not None else sorted(n_c)

    def d2(c, k):
        if level == "nominal":
            return 0 if c == k else 1
        if level == "interval":
            return (Fraction(c) - Fraction(k)) ** 2
        if level == "ordinal":
            i, j = sorted((cats.index(c), cats.index(k)))
            between = sum(n_c[cats[g]] for g in range(i, j + 1))
            return (between - (n_c[c] + n_c[k]) / 2) ** 2
        raise ValueError(level)

    observed = sum(w * d2(c, k) for (c, k), w in o.items())
    expected = sum(n_c[c] * n_c[k] * d2(c, k) for c in cats for k in cats)
    return float(1 - (n - 1) * observed / expected)


# Krippendorff (2011), section C: 4 observers x 12 units, values 1..5, with missing data.
K2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
SCALE = ["very low", "low", "mid", "high", "very high"]


def _relabel(matrix, labels):
    return [[None if v is None else labels[v - 1] for v in row] for row in matrix]


# --------------------------------------------------------------------------- alpha


def test_reference_reproduces_published_figures():
    # The published values for this example (nominal .743, ordinal .815, interval .849).
    assert round(ref_alpha(K2011, "nominal"), 3) == 0.743
    assert round(ref_alpha(K2011, "ordinal", order=[1, 2, 3, 4, 5]), 3) == 0.815
    assert round(ref_alpha(K2011, "interval"), 3) == 0.849


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_textbook_example_matches_reference(level):
    expected = ref_alpha(K2011, level, order=[1, 2, 3, 4, 5])
    assert krippendorff_alpha(K2011, level) == pytest.approx(expected, abs=1e-12)
    assert krippendorff_alpha(K2011, level, value_domain=[1, 2, 3, 4, 5]) == pytest.approx(expected, abs=1e-12)


def test_alpha_string_labels():
    labelled = _relabel(K2011, SCALE)
    assert krippendorff_alpha(labelled, "ordinal", value_domain=SCALE) == pytest.approx(
        ref_alpha(K2011, "ordinal", order=[1, 2, 3, 4, 5]), abs=1e-12
    )
    # Nominal strings need no domain; any domain order gives the same nominal alpha.
    nominal = ref_alpha(K2011, "nominal")
    assert krippendorff_alpha(labelled, "nominal") == pytest.approx(nominal, abs=1e-12)
    assert krippendorff_alpha(labelled, "nominal", value_domain=SCALE[::-1]) == pytest.approx(nominal, abs=1e-12)
    # On an interval scale, labels become their (equally spaced) position in the domain.
    assert krippendorff_alpha(labelled, "interval", value_domain=SCALE) == pytest.approx(
        ref_alpha(K2011, "interval"), abs=1e-12
    )
    # The domain order matters for ordinal data.
    shuffled = ["mid", "very low", "very high", "low", "high"]
    assert krippendorff_alpha(labelled, "ordinal", value_domain=shuffled) != pytest.approx(
        krippendorff_alpha(labelled, "ordinal", value_domain=SCALE), abs=1e-3
    )


def test_alpha_nan_for_missing_values_written_as_nan():
    with_nan = [[float("nan") if v is None else v for v in row] for row in K2011]
    assert krippendorff_alpha(with_nan, "interval") == pytest.approx(ref_alpha(K2011, "interval"), abs=1e-12)


def test_alpha_hand_made_with_missing():
    data = [
        [1, 2, None, 4, 4, None, 2],
        [1, 3, 3, None, 5, 2, None],
        [None, 2, 3, 4, None, 1, 1],
    ]
    for level in ("nominal", "interval"):
        assert krippendorff_alpha(data, level) == pytest.approx(ref_alpha(data, level), abs=1e-12)
    # Numeric values on an interval scale are used as numbers, not ranks.
    spread = [[None if v is None else v**2 for v in row] for row in data]
    assert krippendorff_alpha(spread, "interval") == pytest.approx(ref_alpha(spread, "interval"), abs=1e-12)
    assert krippendorff_alpha(spread, "interval") != pytest.approx(krippendorff_alpha(data, "interval"))


def test_alpha_random_matrices_match_reference():
    rng = np.random.default_rng(12345)
    for _ in range(40):
        raters, units = int(rng.integers(2, 5)), int(rng.integers(3, 12))
        truth = rng.integers(1, 5, size=units)
        noise = rng.integers(-1, 2, size=(raters, units))
        values = np.clip(truth + noise, 1, 5)
        missing = rng.random((raters, units)) < 0.25
        data = [[None if missing[r, u] else int(values[r, u]) for u in range(units)] for r in range(raters)]
        for level in ("nominal", "ordinal", "interval"):
            try:
                expected = ref_alpha(data, level, order=[1, 2, 3, 4, 5])
            except ZeroDivisionError:
                expected = float("nan")
            got = krippendorff_alpha(data, level)
            if math.isnan(expected):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(expected, abs=1e-10), (level, data)


@pytest.mark.parametrize(
    "data",
    [
        [[1, 2, 3]],  # one rater
        [[1, None, 3], [None, 2, None]],  # no unit with two ratings
        [[2, 2, 2], [2, 2, None]],  # no variance
        [[1, 2, 3], [None, None, None]],  # second rater silent
        [],  # nothing at all
        [[], []],  # no units
    ],
)
@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_undefined_is_nan(data, level):
    assert math.isnan(krippendorff_alpha(data, level))


def test_alpha_no_variance_with_domain_is_nan():
    assert math.isnan(krippendorff_alpha([["a", "a"], ["a", "a"]], "ordinal", value_domain=["a", "b"]))


def test_alpha_errors():
    with pytest.raises(ValueError):
        krippendorff_alpha([[1, 2]], "ratio")
    with pytest.raises(ValueError):
        krippendorff_alpha([[1, 2], [1]], "nominal")
    with pytest.raises(ValueError):
        krippendorff_alpha([["a", "b"], ["b", "a"]], "ordinal")  # strings need an ordered domain
    with pytest.raises(ValueError):
        krippendorff_alpha([["a", "b"], ["b", "z"]], "nominal", value_domain=["a", "b"])
    with pytest.raises(ValueError):
        krippendorff_alpha([[1, 2], [2, 7]], "interval", value_domain=[1, 2, 3])


# --------------------------------------------------------------------------- bootstrap


def _bootstrap_data():
    rng = np.random.default_rng(7)
    truth = rng.integers(1, 6, size=40)
    rows = np.clip(truth + rng.integers(-1, 2, size=(3, 40)), 1, 5)
    return [[int(v) for v in row] for row in rows]


def test_bootstrap_deterministic_and_ordered():
    data = _bootstrap_data()
    first = bootstrap_alpha(data, "interval", n_boot=300, seed=3)
    assert first == bootstrap_alpha(data, "interval", n_boot=300, seed=3)
    assert first != bootstrap_alpha(data, "interval", n_boot=300, seed=4)
    point, low, high = first
    assert point == pytest.approx(ref_alpha(data, "interval"), abs=1e-12)
    assert low <= point <= high
    assert low < high
    # A narrower interval nests inside a wider one from the same replicates.
    _, low80, high80 = bootstrap_alpha(data, "interval", n_boot=300, seed=3, ci=0.80)
    assert low <= low80 <= high80 <= high


def test_bootstrap_nominal_strings():
    data = _relabel(_bootstrap_data(), SCALE)
    point, low, high = bootstrap_alpha(data, "ordinal", value_domain=SCALE, n_boot=200, seed=0)
    assert point == pytest.approx(krippendorff_alpha(data, "ordinal", value_domain=SCALE))
    assert low <= point <= high


def test_bootstrap_undefined_is_all_nan():
    result = bootstrap_alpha([[1, 1, 1], [1, 1, 1]], "interval", n_boot=50)
    assert all(math.isnan(x) for x in result)
    result = bootstrap_alpha([[1, 2, 3]], "nominal", n_boot=50)
    assert all(math.isnan(x) for x in result)


def test_bootstrap_skips_undefined_replicates():
    # Only one of five units carries any disagreement; many replicates have no variance.
    data = [[1, 1, 1, 1, 2], [1, 1, 1, 1, 1]]
    point, low, high = bootstrap_alpha(data, "nominal", n_boot=200, seed=1)
    assert not math.isnan(point)
    assert not math.isnan(low) and not math.isnan(high)


def test_bootstrap_argument_validation():
    with pytest.raises(ValueError):
        bootstrap_alpha(K2011, "interval", n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_alpha(K2011, "interval", ci=1.0)


# --------------------------------------------------------------------------- consensus and delta alpha


def test_consensus_interval_mean():
    assert consensus([[1, 2, 4], [3, None], [], [None]], "interval") == [
        pytest.approx(7 / 3),
        3.0,
        None,
        None,
    ]


def test_consensus_ordinal_lower_median():
    assert consensus([[1, 2, 3, 4], [5, 1, 3], [4, 2]], "ordinal") == [2, 3, 2]
    dom = ["low", "mid", "high"]
    # Sorted by domain: low, mid, high, high -> lower median is "mid" (alphabetical order would give "high").
    assert consensus([["high", "low", "mid", "high"]], "ordinal", value_domain=dom) == ["mid"]
    with pytest.raises(ValueError):
        consensus([["low", "extreme"]], "ordinal", value_domain=dom)


def test_consensus_nominal_mode_and_ties():
    assert consensus([["b", "a", "b"]], "nominal") == ["b"]
    assert consensus([["b", "a", "b", "a"]], "nominal") == ["a"]
    assert consensus([["b", "a", "b", "a"]], "nominal", value_domain=["c", "b", "a"]) == ["b"]
    assert consensus([[None, None]], "nominal") == [None]


def test_delta_alpha_positive_when_system_is_consensus():
    humans = [
        [1, 2, 3, 4, 5, 2, 3, 4],
        [2, 2, 4, 4, 4, 1, 3, 5],
        [1, 3, 3, 5, 5, 2, 2, 4],
    ]
    units = [list(col) for col in zip(*humans, strict=True)]
    for level in ("interval", "ordinal", "nominal"):
        system = consensus(units, level)
        order = [1, 2, 3, 4, 5]
        delta = delta_alpha(humans, system, level)
        assert delta > 0, level
        assert delta == pytest.approx(
            ref_alpha([*humans, system], level, order=order) - ref_alpha(humans, level, order=order)
        )
    # A system that reverses the scale lowers alpha.
    reversed_system = [6 - v for v in consensus(units, "ordinal")]
    assert delta_alpha(humans, reversed_system, "interval") < 0


def test_delta_alpha_nan_with_single_human():
    assert math.isnan(delta_alpha([[1, 2, 3]], [1, 2, 3], "interval"))


# --------------------------------------------------------------------------- pairwise metrics

GOLD = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "c", "c"]
LABELS = ["a", "b", "c", "d"]


def test_macro_f1_hand_example():
    macro, per_class = macro_f1(GOLD, PRED, LABELS)
    # a: TP2 FP0 FN1 -> 4/5; b: TP1 FP1 FN1 -> 2/4; c: TP1 FP1 FN0 -> 2/3; d absent -> excluded.
    assert per_class["a"] == pytest.approx(0.8)
    assert per_class["b"] == pytest.approx(0.5)
    assert per_class["c"] == pytest.approx(2 / 3)
    assert math.isnan(per_class["d"])
    assert macro == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_f1_class_only_in_pred_counts():
    macro, per_class = macro_f1(["a", "a"], ["a", "b"], ["a", "b"])
    assert per_class == {"a": pytest.approx(2 / 3), "b": 0.0}
    assert macro == pytest.approx(1 / 3)


def test_macro_f1_ignores_missing_and_empty():
    macro, _ = macro_f1(["a", None, "b"], ["a", "b", None], ["a", "b"])
    assert macro == pytest.approx(1.0)
    macro, per_class = macro_f1([], [], ["a"])
    assert math.isnan(macro) and math.isnan(per_class["a"])


def test_confusion_matrix_rows_gold_cols_pred():
    assert confusion_matrix(GOLD, PRED, LABELS) == [
        [2, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
    ]
    assert confusion_matrix(["a"], ["b"], ["a", "b"]) == [[0, 1], [0, 0]]
    assert confusion_matrix(["a", None, "z"], ["a", "a", "a"], ["a"]) == [[1]]


def test_exact_accuracy_mae():
    a = [1, 2, None, 4, 5]
    b = [1, 3, 3, None, 2]
    assert exact_agreement(a, b) == pytest.approx(1 / 3)
    assert accuracy(GOLD, PRED) == pytest.approx(4 / 6)
    assert mean_absolute_error(a, b) == pytest.approx((0 + 1 + 3) / 3)
    assert math.isnan(exact_agreement([None], [1]))
    assert math.isnan(mean_absolute_error([], []))
    with pytest.raises(ValueError):
        exact_agreement([1, 2], [1])


# --------------------------------------------------------------------------- pooling and report


def test_flatten_dimensions_pads_and_pools():
    per_dim = {
        "fluency": [[1, 2, 3], [1, 2, 4]],
        "accuracy": [[5, 4], [5, 5], [4, 4]],
    }
    pooled = flatten_dimensions(per_dim)
    assert pooled == [
        [1, 2, 3, 5, 4],
        [1, 2, 4, 5, 5],
        [None, None, None, 4, 4],
    ]
    assert krippendorff_alpha(pooled, "interval") == pytest.approx(ref_alpha(pooled, "interval"))
    assert flatten_dimensions({}) == []


def test_dimension_report_nominal_json():
    human = [
        ["x", "y", "y", "z", "x", "x"],
        ["x", "y", "z", "z", "x", "y"],
        ["x", "y", "y", "z", None, "x"],
    ]
    system = ["x", "y", "y", "x", "x", None]
    report = dimension_report(human, system, "nominal", ["x", "y", "z"], n_boot=100)
    json.dumps(report, allow_nan=False)
    gold = ["x", "y", "y", "z", "x", "x"]
    assert report["n_units"] == 6
    assert report["mae"] is None
    assert report["exact"] == pytest.approx(4 / 5)
    assert report["alpha_humans"] == pytest.approx(ref_alpha(human, "nominal"))
    assert report["alpha_system"] == pytest.approx(ref_alpha([gold, system], "nominal"))
    low, high = report["alpha_system_ci"]
    assert low <= report["alpha_system"] <= high
    assert report["delta_alpha"] == pytest.approx(ref_alpha([*human, system], "nominal") - ref_alpha(human, "nominal"))
    assert report["confusion"] == {"labels": ["x", "y", "z"], "matrix": [[2, 0, 0], [0, 2, 0], [1, 0, 0]]}
    assert report["per_class_f1"]["z"] == 0.0
    assert report["macro_f1"] == pytest.approx((0.8 + 1.0 + 0.0) / 3)


def test_dimension_report_interval_and_undefined_values():
    human = [[1, 2, 3, 4], [2, 2, 3, 5]]
    report = dimension_report(human, [2, 2, 3, 4], "interval", [1, 2, 3, 4, 5], n_boot=100)
    json.dumps(report, allow_nan=False)
    assert report["mae"] == pytest.approx((0.5 + 0 + 0 + 0.5) / 4)
    assert report["exact"] == pytest.approx(0.5)  # consensus 1.5, 2, 3, 4.5 vs 2, 2, 3, 4
    assert report["macro_f1"] is None and report["confusion"] is None

    # A single human: alpha among humans and delta alpha are undefined -> None.
    single = dimension_report([[1, 2, 3]], [1, 2, 2], "ordinal", [1, 2, 3], n_boot=50)
    json.dumps(single, allow_nan=False)
    assert single["alpha_humans"] is None
    assert single["delta_alpha"] is None
    assert single["alpha_system"] == pytest.approx(ref_alpha([[1, 2, 3], [1, 2, 2]], "ordinal", order=[1, 2, 3]))
    assert single["mae"] == pytest.approx(1 / 3)
    assert single["confusion"]["matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]

    no_system = dimension_report(human, None, "interval", None)
    json.dumps(no_system, allow_nan=False)
    assert no_system["alpha_system"] is None and no_system["alpha_humans"] is not None


def test_dimension_report_ordinal_string_mae_in_steps():
    dom = ["bad", "ok", "good"]
    human = [["bad", "good", "ok"], ["bad", "good", "good"]]
    report = dimension_report(human, ["good", "good", "ok"], "ordinal", dom, n_boot=50)
    json.dumps(report, allow_nan=False)
    # consensus (lower median): bad, good, ok -> errors of 2, 0, 0 steps
    assert report["mae"] == pytest.approx(2 / 3)
    assert report["exact"] == pytest.approx(2 / 3)


def test_interval_alpha_closed_form_equals_the_krippendorff_package() -> None:
    """The O(n) interval formula gives the package's value, with missing ratings and continuous values."""
    import krippendorff
    import numpy as np

    from backend.core.agreement import krippendorff_alpha

    rng = np.random.default_rng(7)
    for trial in range(20):
        raters, units = int(rng.integers(2, 5)), int(rng.integers(3, 40))
        mat = rng.integers(1, 6, size=(raters, units)).astype(float)
        if trial % 2:
            mat = mat + rng.normal(0, 0.7, size=mat.shape)  # continuous, like expected scores
        mat[rng.random(mat.shape) < 0.25] = np.nan
        if (np.sum(~np.isnan(mat), axis=0) >= 2).sum() < 2:
            continue
        ours = krippendorff_alpha(mat.tolist(), "interval")
        theirs = krippendorff.alpha(reliability_data=mat, level_of_measurement="interval")
        assert abs(ours - theirs) < 1e-9, (trial, ours, theirs)
