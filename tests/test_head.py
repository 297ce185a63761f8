"""The feature head (fast tier): fitting, calibration, storage, the judge's features, and a training run."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from backend.core.agreement import krippendorff_alpha
from backend.core.rubric import load_rubric
from backend.model.head import discretized_normal, fit_head, is_head, load_head
from backend.settings import Settings
from tests.conftest import REPO
from worker.source import Annotation, Record

SUMMARY = load_rubric("summary-quality", REPO / "rubric_configs")
EMOTION = load_rubric("emotion-ekman", REPO / "rubric_configs")


def _synthetic(n: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 40))
    y = np.clip(3 + signal * (x[:, 0] - 0.5 * x[:, 1]) + rng.normal(scale=0.6, size=n), 1, 5)
    return x, y, [f"g{i // 4}" for i in range(n)]


def test_scale_head_learns_the_signal_and_spreads_its_labels():
    x, y, groups = _synthetic(240, 1.0)
    dims = SUMMARY.dimensions[:1]
    head = fit_head(dims, {dims[0].name: x[:200]}, {dims[0].name: list(y[:200])}, groups[:200])
    probs, mu = head.predict(dims[0].name, x[200:])
    assert np.allclose(probs.sum(axis=1), 1.0)
    labels = probs.argmax(axis=1) + 1
    assert len(set(labels.tolist())) >= 3, "calibration keeps the humans' spread, not the mean"
    assert krippendorff_alpha([list(y[200:]), list(labels)], "interval") > 0.5
    assert head.dimensions[dims[0].name].cv["oof_correlation"] > 0.6
    assert mu is not None and abs(float(np.std(mu)) - float(np.std(y))) < 0.4  # variance matched


def test_scale_head_without_signal_predicts_one_value():
    x, _, groups = _synthetic(200, 0.0)
    y = np.random.default_rng(5).integers(1, 6, size=200).astype(float)
    dims = SUMMARY.dimensions[:1]
    head = fit_head(dims, {dims[0].name: x}, {dims[0].name: list(y)}, groups)
    probs, mu = head.predict(dims[0].name, x)
    assert head.dimensions[dims[0].name].calibration["gain"] == 0.0
    assert len(set(probs.argmax(axis=1).tolist())) == 1 and np.ptp(mu) == 0.0


def test_nominal_head_and_storage_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    dim = EMOTION.dimensions[0]
    y = rng.integers(0, len(dim.labels), size=160)
    x = rng.normal(size=(160, 30))
    x[np.arange(160), y] += 4.0  # the class shows in one feature
    labels = [dim.labels[i] for i in y]
    head = fit_head([dim], {dim.name: x[:120]}, {dim.name: labels[:120]}, [str(i) for i in range(120)])
    probs, expected = head.predict(dim.name, x[120:])
    assert expected is None and np.mean(probs.argmax(axis=1) == y[120:]) > 0.7
    head.save(tmp_path)
    assert is_head(tmp_path)
    again = load_head(tmp_path)
    assert np.array_equal(again.predict(dim.name, x[120:])[0], probs)


def test_discretized_normal_follows_the_order_of_the_values():
    up = discretized_normal(np.array([1.2]), 0.5, [1, 2, 3])
    down = discretized_normal(np.array([1.2]), 0.5, [3, 2, 1])
    assert np.allclose(up[0], down[0][::-1]) and up[0].argmax() == 0


def test_features_come_from_the_same_pass_and_do_not_change_the_scores(tiny_judge):
    tasks = [
        {"dialogue": f"A: we meet at {h}pm.\nB: fine, see you at {h}.", "summary": f"They meet at {h}pm."}
        for h in range(1, 8)
    ]
    plain = tiny_judge.score(SUMMARY, tasks)
    scores, features = tiny_judge.score_with_features(SUMMARY, tasks)
    assert scores == plain
    hidden = tiny_judge.model.config.hidden_size
    assert features[0].shared.shape == (2 * hidden + 3,)
    assert features[0].dimensions["coherence"].shape == (2 * hidden + 5,)
    alone = tiny_judge.score_with_features(SUMMARY, tasks[3:4])[1][0]
    assert np.allclose(alone.vector("fluency"), features[3].vector("fluency"), atol=1e-4), (
        "a task's features do not depend on its batch neighbours"
    )
    assert not np.allclose(features[0].shared, features[1].shared)


def _records(n: int, seed: int = 0) -> list[Record]:
    """Summaries whose quality shows in a word: 'excellent' summaries are rated high, 'garbled' ones low."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = i % 2 == 0
        word = "excellent" if good else "garbled"
        base = 5 if good else 1
        annotations = tuple(
            Annotation(
                f"a{k}",
                {
                    d.name: str(max(1, min(5, base + rng.choice([-1, 0, 0, 1]) * (1 if good else -1))))
                    for d in SUMMARY.dimensions
                },
            )
            for k in range(2)
        )
        out.append(
            Record(
                task_id=str(100 + i),
                inputs={"dialogue": f"A: the museum opens at {i % 12}am.", "summary": f"{word} {word} museum {word}"},
                annotations=annotations,
                group=f"d{i // 3}",
            )
        )
    return out


def test_training_a_feature_head_writes_a_version_that_serves(settings, tmp_path, tiny_judge):
    """The default configuration fits a head on every task; its evidence is the grouped out-of-fold predictions
    over all 48 (16 groups), it is promoted over v0 by the paired interval, and the served head answers what the
    fitted head computes."""
    from backend.core.prefill import PrefillPolicy
    from backend.model.judge import apply_head
    from worker.pipeline import run_training

    records = _records(48)
    out = tmp_path / "v1"
    result = run_training(settings, SUMMARY, records, out)  # default configuration: auto -> head
    metrics = result.metrics
    assert metrics["method"] == "head" and is_head(out) and not (out / "adapter_config.json").exists()
    assert metrics["training"]["feature_size"] > 0 and metrics["history"] == []
    assert metrics["evidence"] == {"kind": "out-of-fold", "tasks": 48, "groups": 16, "folds": 5}
    assert metrics["candidate"]["n_tasks"] == 48 and (out / "heldout.jsonl").read_text() == ""
    assert result.promoted is True and "lower bound" in metrics["decision"], metrics["decision"]
    assert metrics["comparison"]["against"] == "v0" and metrics["comparison"]["low"] > 0
    decisions = PrefillPolicy().decide(SUMMARY.dimension_names, metrics["candidate"])
    assert all(d.prefilled for d in decisions.values()), {n: d.reason for n, d in decisions.items()}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["alpha_dims"] == metrics["alpha_dims"] and saved["promoted"] is True
    inputs = [r.inputs for r in records[:9]]
    tiny_judge.load_adapter("head-test", out)
    served = tiny_judge.score(SUMMARY, inputs, "head-test")
    _, features = tiny_judge.score_with_features(SUMMARY, inputs)
    assert served == apply_head(SUMMARY, load_head(out), features)


def _permuted(records: list[Record], seed: int) -> list[Record]:
    """The same tasks with their annotation sets shuffled across tasks: the humans still agree with each
    other, but their labels no longer depend on the text."""
    sets = [r.annotations for r in records]
    random.Random(seed).shuffle(sets)
    return [Record(r.task_id, r.inputs, a, group=r.group) for r, a in zip(records, sets, strict=True)]


class _StoredFeatures:
    """The tiny judge's features and base scores read once; every fit of a permutation reads them from here, as
    a retraining reads the feature store."""

    feature_store = None

    def __init__(self, judge, records: list[Record]) -> None:
        self.base_name, self.model, self.judge = judge.base_name, judge.model, judge
        scores, features = judge.score_with_features(SUMMARY, [r.inputs for r in records])
        read = zip(records, scores, features, strict=True)
        self.read = {json.dumps(r.inputs, sort_keys=True): (s, f) for r, s, f in read}

    def read_mode(self, rubric, adapter=None):
        return self.judge.read_mode(rubric, adapter)

    def score_with_features(self, rubric, inputs):
        found = [self.read[json.dumps(x, sort_keys=True)] for x in inputs]
        return [s for s, _ in found], [f for _, f in found]


def test_labels_unrelated_to_the_text_prefill_almost_nothing_and_are_not_promoted(settings, tmp_path, tiny_judge):
    """The pipeline's head, evidence, gate and promotion on 60 tasks of the tiny model with their annotation sets
    permuted across tasks, 25 times: at most 5% of the 100 dimension decisions pre-fill (a gate passing 15% of
    them would pass this 2 times in 1,000), no version is promoted, and most heads fall back to the humans'
    mean. The real labels of the same tasks pre-fill and are promoted (``run_training`` itself)."""
    from backend.core.prefill import PrefillPolicy
    from worker.pipeline import PromotionRule, fit_feature_head, promotion, run_training
    from worker.train import TrainConfig

    records = _records(60, seed=2)
    stored = _StoredFeatures(tiny_judge, records)
    config = TrainConfig.build(SUMMARY, None)
    runs, prefilled, promoted, fallbacks = 25, 0, 0, 0
    for seed in range(runs):
        permuted = _permuted(records, seed)
        fitted = fit_feature_head(stored, SUMMARY, permuted, [], config)
        decisions = PrefillPolicy().decide(SUMMARY.dimension_names, fitted.candidate)
        prefilled += sum(d.prefilled for d in decisions.values())
        fallbacks += sum(d.constant for d in fitted.head.dimensions.values())
        candidate = (fitted.candidate, fitted.oof_scores)
        promoted += promotion(SUMMARY, permuted, candidate, fitted.base_scores, "v0", PromotionRule(), PrefillPolicy())[
            1
        ]
    decisions_made = runs * len(SUMMARY.dimensions)
    assert prefilled <= 0.05 * decisions_made and promoted == 0, (prefilled, promoted)
    assert fallbacks >= 0.8 * decisions_made, f"the fallback fired on {fallbacks} of {decisions_made} noise heads"
    real = run_training(settings, SUMMARY, records, tmp_path / "real")
    decisions = PrefillPolicy().decide(SUMMARY.dimension_names, real.metrics["candidate"])
    assert sum(d.prefilled for d in decisions.values()) >= 1 and real.promoted


def _grouped_features(
    rng: np.random.Generator, n_groups: int, signal: float
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """40 features and a 1..5 target per task, both alike within a group (4 tasks per group on average); the
    target reads the last feature (one of the three "LM statistics") with weight ``signal``."""
    n = 4 * n_groups
    gi = np.sort(np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, n - n_groups)]))
    x = rng.normal(size=(n, 40)) + 0.7 * rng.normal(size=(n_groups, 40))[gi]
    y = np.clip(3 + rng.normal(0, 0.6, n_groups)[gi] + rng.normal(0, 0.6, n) + signal * x[:, 39], 1, 5)
    return x, y, [f"g{g}" for g in gi]


@pytest.mark.parametrize("n_groups", [5, 10, 20])
def test_the_no_signal_fallback_fires_on_noise_and_keeps_a_clear_signal(n_groups):
    """Counted: features unrelated to the target end as the constant head at least 90% of the time (the best of
    the 16 grid correlations is tested against its permutation null; the old rule, best correlation <= 0, fired
    far less often), while a clear signal (correlation about 0.75) keeps its head. Measured over 1,000 noise and
    300 signal fits: fired 94.5%, 95.4%, 95.3% at 5, 10, 20 groups (the old rule 51%, 34%, 39%); signal kept
    63%, 92%, 100%."""
    dim = SUMMARY.dimensions[0]
    subsets = {"target": None, "lm-statistics": [37, 38, 39]}
    rng = np.random.default_rng(n_groups)
    runs, fired, old_rule, kept = 200, 0, 0, 0
    for _ in range(runs):
        x, y, groups = _grouped_features(rng, n_groups, 0.0)
        fitted = fit_head([dim], {dim.name: x}, {dim.name: list(y)}, groups, quiet=True, subsets=subsets)
        fired += fitted.dimensions[dim.name].constant
        old_rule += fitted.dimensions[dim.name].cv["oof_correlation"] <= 0
    for _ in range(50):
        x, y, groups = _grouped_features(rng, n_groups, 0.8)
        fitted = fit_head([dim], {dim.name: x}, {dim.name: list(y)}, groups, quiet=True, subsets=subsets)
        kept += not fitted.dimensions[dim.name].constant
    assert fired >= 0.9 * runs and old_rule < fired, (fired, old_rule)
    assert kept >= {5: 0.4, 10: 0.8, 20: 0.9}[n_groups] * 50, kept


def test_a_constant_candidate_is_not_promoted_over_one_with_signal():
    from worker.evaluate import evaluate_predictions, majority_scores, paired_comparison
    from worker.pipeline import should_promote

    records = _records(60, seed=3)
    constant = majority_scores(SUMMARY, records, len(records))
    informed = [_noisy_truth(r, i) for i, r in enumerate(records)]
    assert should_promote(paired_comparison(SUMMARY, records, constant, informed), "v1")[0] is False
    ok, reason = should_promote(paired_comparison(SUMMARY, records, informed, constant), "v1")
    assert ok is True and "60 task(s) in 20 group(s)" in reason
    a = evaluate_predictions(SUMMARY, records, constant, n_boot=1)
    b = evaluate_predictions(SUMMARY, records, informed, n_boot=1)
    assert all(e["nearly_constant"] for e in a["dimensions"].values())
    assert not any(e["nearly_constant"] for e in b["dimensions"].values())


def _noisy_truth(record: Record, i: int):
    from backend.core.scores import DimensionScore, TaskScore

    dims = {}
    for dim in SUMMARY.dimensions:
        values = [int(a.labels[dim.name]) for a in record.annotations]
        label = str(round(sum(values) / len(values)) if i % 5 else 3)
        dims[dim.name] = DimensionScore(
            label=label, probs={x: float(x == label) for x in dim.labels}, expected=float(label)
        )
    return TaskScore(dims)


def _evidence(estimate: float, low: float, tasks: int = 40, groups: int = 10) -> dict:
    return {"estimate": estimate, "low": low, "high": estimate + 0.1, "tasks": tasks, "groups": groups, "ci": 0.95}


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("interval", {"coherence": True, "fluency": False, "relevance": False, "consistency": False}),
        ("majority", {"coherence": True, "fluency": False, "relevance": True, "consistency": True}),
        (0.5, {"coherence": True, "fluency": False, "relevance": False, "consistency": True}),
        ("off", {"coherence": True, "fluency": True, "relevance": True, "consistency": True}),
    ],
)
def test_prefill_decisions(rule, expected):
    from backend.core.prefill import PrefillPolicy

    def entry(alpha: float, low: float, **extra) -> dict:
        return {"interval": {"alpha_system": alpha}, "alpha_majority": -0.1, "evidence": _evidence(alpha, low)} | extra

    evaluation = {
        "n_tasks": 40,
        "dimensions": {
            "coherence": entry(0.6, 0.2),
            "fluency": entry(-0.2, -0.5),
            "relevance": entry(0.3, -0.05),  # the point estimate beats the majority; the interval does not
            "consistency": entry(0.7, 0.4, nearly_constant=True),
        },
    }
    decisions = PrefillPolicy(rule=rule).decide(list(expected), evaluation)
    assert {k: v.prefilled for k, v in decisions.items()} == expected
    assert all(v.reason for v in decisions.values())
    if rule == "interval":
        assert "[0.200, 0.700]" in decisions["coherence"].reason and "40 task(s) in 10 group(s)" in (
            decisions["coherence"].reason
        )
        assert "nearly constant" in decisions["consistency"].reason
    unevaluated = PrefillPolicy().decide(["coherence"], None)  # the default: nothing unproven is pre-filled
    assert unevaluated["coherence"].prefilled is False
    assert "about 10 more annotated task(s)" in unevaluated["coherence"].reason, unevaluated
    assert PrefillPolicy(unevaluated=True).decide(["coherence"], None)["coherence"].prefilled is True
    legacy = PrefillPolicy().decide(["coherence"], {"dimensions": {"coherence": {"interval": {"alpha_system": 0.9}}}})
    assert not legacy["coherence"].prefilled and "retrain" in legacy["coherence"].reason


def test_predict_leaves_out_the_dimensions_the_active_version_has_not_proven(settings, tiny_judge, tmp_path):
    """A trained head as v1 of project 12; PREFILL_MIN_ALPHA between two dimensions' held-out alpha keeps only
    the better one; the prediction still validates; /versions and the report say which and why."""
    from label_studio_sdk.label_interface import LabelInterface

    from backend.core.labeling import label_config
    from backend.core.prefill import dimension_alpha
    from support.ls_bodies import ls_task, predict_body
    from tests.test_app import make_client
    from worker.pipeline import run_training

    xml = label_config(SUMMARY)
    _, registry = make_client(settings, tiny_judge)
    result = run_training(settings, SUMMARY, _records(48, seed=1), registry.version_dir("12", 1))
    registry.set_active("12", 1)
    alphas = {n: dimension_alpha(e) for n, e in result.metrics["candidate"]["dimensions"].items()}
    ranked = sorted(alphas, key=lambda n: alphas[n])
    threshold = (alphas[ranked[0]] + alphas[ranked[-1]]) / 2
    assert alphas[ranked[0]] < threshold < alphas[ranked[-1]], alphas
    kept = {n for n, a in alphas.items() if a >= threshold}

    tasks = [
        ls_task(i, {"dialogue": "A: the museum opens at 9am.", "summary": s})
        for i, s in enumerate(["excellent excellent museum", "garbled garbled museum"])
    ]
    interface = LabelInterface(xml)
    for rule, expected in ((f"{threshold:.6f}", kept), ("off", set(SUMMARY.dimension_names)), ("1", set())):
        client, _ = make_client(settings, tiny_judge, prefill_min_alpha=rule)
        results = client.post("/predict", json=predict_body(tasks, xml)).get_json()["results"]
        for item in results:
            assert {r["from_name"] for r in item["result"]} == expected, rule
            assert item["model_version"].endswith(".p12.v1")
            assert interface.validate_prediction(item, return_errors=True) == []
            assert (item["score"] == 0) == (not expected)
        details = client.get("/versions?project=12").get_json()["details"]
        v1 = next(d for d in details if d["number"] == 1)
        assert {n for n, d in v1["prefill"].items() if d["prefilled"]} == expected
        assert v1["method"] == "head" and v1["alpha"] == result.metrics["alpha_dims"]
    report = client.get("/reports/12.json").get_json()
    assert report["headline"]["alpha_dims"] == pytest.approx(result.metrics["alpha_dims"])
    assert all(not row["prefill"]["prefilled"] for row in report["dimensions"])  # the last client: rule "1"


def test_unevaluated_v0_prefills_nothing_unless_told_to(settings, tiny_judge):
    """Day one: a v0 with no evidence answers a prediction with its model version, score 0 and no choice (the
    default); PREFILL_UNEVALUATED=true pre-fills every dimension."""
    from backend.core.labeling import label_config
    from support.ls_bodies import ls_task, predict_body
    from tests.test_app import make_client

    xml = label_config(SUMMARY)
    tasks = [ls_task(1, {"dialogue": "A: hi.", "summary": "They greet."})]
    default = Settings().prefill_unevaluated  # the product's default, not the test fixture's
    for overrides, count in (({"prefill_unevaluated": default}, 0), ({"prefill_unevaluated": True}, 4)):
        client, _ = make_client(settings, tiny_judge, **overrides)
        item = client.post("/predict", json=predict_body(tasks, xml)).get_json()["results"][0]
        assert len(item["result"]) == count and item["model_version"].endswith(".v0")
        assert (item["score"] == 0) == (count == 0)
        prefill = client.get("/versions?project=1").get_json()["details"][0]["prefill"]
        assert all(d["prefilled"] == bool(count) for d in prefill.values()), prefill


def test_day_one_says_what_is_still_needed_in_status_and_the_report(settings, tiny_judge, redis_client):
    """Before any training run, /status and the report say that v0 pre-fills nothing and how many annotated
    tasks the gate needs; once a run has written v0's evidence, /status follows the interval gate instead."""
    import uuid

    from backend.core.rubric import load_all
    from backend.service import Service
    from backend.state.registry import Registry
    from backend.state.triggers import Triggers
    from backend.web.app import create_app

    settings = settings.with_overrides(prefill_unevaluated=Settings().prefill_unevaluated)
    base = f"day-one-{uuid.uuid4().hex[:8]}"
    service = Service(
        settings,
        tiny_judge,
        Registry(settings.model_dir, base, redis_client),
        load_all(settings.rubric_dir),
        triggers=Triggers(redis_client, base, f"q-{base}"),
    )
    client = create_app(settings, service).test_client()
    state = client.get("/status?project=77").get_json()["projects"]["77"]
    assert state["prefill"]["prefilled"] == [] and state["prefill"]["version"] == "v0", state["prefill"]
    assert "about 10 more annotated task(s)" in state["prefill"]["summary"], state["prefill"]
    qa = load_rubric("qa-quality", REPO / "rubric_configs")
    assert set(state["prefill"]["left_empty"]) == set(qa.dimension_names)
    missing = client.get("/reports/77.json").get_json()["error"]
    assert "pre-fills nothing" in missing and "about 10 more annotated task(s)" in missing, missing


def test_target_token_span_covers_the_summary(tiny_judge):
    from backend.core.prompts import encode_prompt, target_token_span

    inputs = {"dialogue": "A: the museum opens at 9am.\nB: and closes at 6pm.", "summary": "The museum opens at 9am."}
    _, task = encode_prompt(SUMMARY, inputs, tiny_judge.tokenizer)
    start, end = target_token_span(SUMMARY, inputs, tiny_judge.tokenizer)
    text = tiny_judge.tokenizer.decode(task[start:end])
    assert "museum opens at 9am" in text and "closes" not in text and "Reply" not in text


def test_a_dimension_with_too_few_rated_tasks_predicts_its_prior():
    dims = SUMMARY.dimensions[:2]
    x = np.random.default_rng(0).normal(size=(12, 8))
    targets = {dims[0].name: [4.0] * 3 + [float("nan")] * 9, dims[1].name: [float(i % 5 + 1) for i in range(12)]}
    head = fit_head(dims, {d.name: x for d in dims}, targets, [str(i) for i in range(12)])
    probs, mu = head.predict(dims[0].name, x)
    assert np.allclose(mu, 4.0) and set(probs.argmax(axis=1).tolist()) == {3}
    assert head.dimensions[dims[0].name].cv == {"skipped": "too few tasks"}


def test_dimensions_with_different_label_counts_and_a_mismatched_rubric():
    from backend.core.scores import TaskFeatures
    from backend.model.head import HeadError
    from backend.model.judge import apply_head

    three = load_rubric("qa-quality", REPO / "rubric_configs").dimensions[0]  # -2..2 (5 labels)
    dims = [three, EMOTION.dimensions[0]]  # 5 and 7 labels: feature vectors of different sizes
    rng = np.random.default_rng(2)
    features = [
        TaskFeatures(
            shared=rng.normal(size=6), dimensions={three.name: rng.normal(size=5), dims[1].name: rng.normal(size=7)}
        )
        for _ in range(40)
    ]
    targets = {
        three.name: [float(i % 5 - 2) for i in range(40)],
        dims[1].name: [dims[1].labels[i % 7] for i in range(40)],
    }
    head = fit_head(
        dims,
        {d.name: np.stack([f.vector(d.name) for f in features]) for d in dims},
        targets,
        [str(i) for i in range(40)],
    )
    for dim in dims:
        probs, _ = head.predict(dim.name, np.stack([f.vector(dim.name) for f in features]))
        assert probs.shape == (40, len(dim.labels))
    with pytest.raises(HeadError, match="does not fit rubric"):
        apply_head(SUMMARY, head, features)


def test_the_head_chooses_its_features_by_cross_validation_and_stores_the_choice(tmp_path):
    """Few tasks whose signal sits in the last three columns (the LM statistics) among 300 noise columns: the
    cross-validation picks those three; when the signal is spread over the wide columns it keeps them all."""
    rng = np.random.default_rng(3)
    dims = SUMMARY.dimensions[:1]
    n, wide = 40, 300
    subsets = {"target": None, "lm-statistics": [wide, wide + 1, wide + 2]}
    x = np.hstack([rng.normal(size=(n, wide)), rng.normal(size=(n, 3))])
    y = np.clip(3 + x[:, wide] - x[:, wide + 1] + rng.normal(scale=0.3, size=n), 1, 5)
    groups = [f"g{i // 2}" for i in range(n)]
    head = fit_head(dims, {dims[0].name: x}, {dims[0].name: list(y)}, groups, subsets=subsets)
    fitted = head.dimensions[dims[0].name]
    assert fitted.cv["subset"] == "lm-statistics" and list(fitted.columns) == subsets["lm-statistics"]
    assert fitted.weights.shape == (3,) and fitted.width == wide + 3
    head.save(tmp_path)
    again = load_head(tmp_path)
    assert np.array_equal(again.predict(dims[0].name, x)[0], head.predict(dims[0].name, x)[0])
    many = 400
    x2 = np.hstack([rng.normal(size=(many, wide)), rng.normal(size=(many, 3))])
    spread = np.clip(3 + x2[:, :40].sum(axis=1) / 4 + rng.normal(scale=0.3, size=many), 1, 5)
    wide_head = fit_head(
        dims, {dims[0].name: x2}, {dims[0].name: list(spread)}, [f"g{i // 2}" for i in range(many)], subsets=subsets
    )
    assert wide_head.dimensions[dims[0].name].cv["subset"] == "target"


@pytest.mark.parametrize(("rows", "width", "targets"), [(60, 200, 1), (60, 200, 3), (90, 20, 1), (90, 20, 4)])
def test_the_strength_grid_from_one_decomposition_equals_a_solve_per_strength(rows, width, targets):
    """``out_of_fold_grid`` (one eigendecomposition per fold for every ridge strength; dual and primal, one
    target or several) gives the out-of-fold predictions of ``_out_of_fold`` (a solve per strength and fold)."""
    from backend.model.head import STRENGTHS, _fold_ids, _out_of_fold, out_of_fold_grid

    rng = np.random.default_rng(rows + width + targets)
    x = rng.normal(size=(rows, width)) * rng.uniform(0.1, 10, size=width) + rng.normal(size=width)
    y = x[:, :3].sum(axis=1, keepdims=True) + rng.normal(size=(rows, targets))
    y = y[:, 0] if targets == 1 else y
    fold = _fold_ids([f"g{i % 12}" for i in range(rows)], 5)
    grid = out_of_fold_grid(x, y, fold, STRENGTHS)
    for strength in STRENGTHS:
        plain = _out_of_fold(x, y, fold, strength)
        assert grid[strength].shape == plain.shape
        np.testing.assert_allclose(grid[strength], plain, rtol=1e-8, atol=1e-8 * np.abs(plain).max())


@pytest.mark.parametrize("n_groups", [5, 20])
def test_sharing_dimensions_lets_no_noise_dimension_through_and_finds_a_weak_common_signal(n_groups):
    """With the other dimensions' targets blended in (``SHARE_BLENDS``), a dimension whose labels are noise
    still ends as the constant head at least 90% of the time although its three siblings carry a real signal
    (the permuted twins keep the siblings' part, so the null holds what they bring). A weak signal common to
    four dimensions is kept more often with sharing at 20 groups; at 5 groups the larger grid's null costs what
    the averaged labels bring. Measured: noise fired 190/200 (5 groups), 194/200 (20 groups); weak signal kept
    35 against 36 (5 groups), 196 against 163 (20 groups) dimension heads of 240."""
    from backend.model.head import SHARE_BLENDS

    dims = SUMMARY.dimensions[:4]
    subsets = {"target": None, "lm-statistics": [37, 38, 39]}
    rng = np.random.default_rng(100 + n_groups)
    fired = 0
    for _ in range(200):
        x, signal_y, groups = _grouped_features(rng, n_groups, 0.8)
        targets = {d.name: list(np.clip(signal_y + rng.normal(0, 0.4, len(signal_y)), 1, 5)) for d in dims[1:]}
        targets[dims[0].name] = list(rng.permutation(signal_y))  # this dimension's labels: noise
        fitted = fit_head(
            dims, {d.name: x for d in dims}, targets, groups, quiet=True, subsets=subsets, blends=SHARE_BLENDS
        )
        fired += fitted.dimensions[dims[0].name].constant
    assert fired >= 0.9 * 200, fired
    kept = {(0.0,): 0, SHARE_BLENDS: 0}
    for _ in range(60):
        x, _, groups = _grouped_features(rng, n_groups, 0.0)
        common = 3 + 0.3 * x[:, 39]  # each dimension: the common signal and its own noise
        targets = {d.name: list(np.clip(common + rng.normal(0, 0.8, len(common)), 1, 5)) for d in dims}
        for blends in kept:
            fitted = fit_head(
                dims, {d.name: x for d in dims}, targets, groups, quiet=True, subsets=subsets, blends=blends
            )
            kept[blends] += sum(not h.constant for h in fitted.dimensions.values())
    if n_groups >= 20:  # with 5 groups the larger grid's null costs what the averaged labels bring
        assert kept[SHARE_BLENDS] > kept[(0.0,)], kept


def test_a_shared_head_that_keeps_its_own_labels_predicts_as_the_unshared_one():
    """Where the cross-validation of a head fitted with ``SHARE_BLENDS`` picks blend 0 (its own labels), it
    serves what the head fitted without sharing serves (the grid's blend-0 scores equal the plain grid's); and
    where it blends, its predictions keep the humans' scale (regression: a blend-0 head fitted on the raw scale
    but calibrated on the standardized one served a constant)."""
    from backend.model.head import SHARE_BLENDS

    dims = SUMMARY.dimensions[:4]
    subsets = {"target": None, "lm-statistics": [37, 38, 39]}
    own_kept = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        x, y, groups = _grouped_features(rng, 20, 0.8)
        targets = {d.name: list(np.clip(y + rng.normal(0, 0.3 + 0.5 * i, len(y)), 1, 5)) for i, d in enumerate(dims)}
        targets[dims[0].name] = list(y)
        matrices = {d.name: x for d in dims}
        plain = fit_head(dims, matrices, targets, groups, quiet=True, subsets=subsets)
        shared = fit_head(dims, matrices, targets, groups, quiet=True, subsets=subsets, blends=SHARE_BLENDS)
        for d in dims:
            if shared.dimensions[d.name].constant:
                continue
            _, served = shared.predict(d.name, x)
            assert float(np.std(served)) > 0.2 and np.corrcoef(served, targets[d.name])[0, 1] > 0.3
            if "share" not in shared.dimensions[d.name].cv:
                own_kept += 1
                assert np.allclose(served, plain.predict(d.name, x)[1], atol=1e-6)
    assert own_kept >= 1
