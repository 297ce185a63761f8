"""The benchmarks' shared logic that needs no data set: class-tempered subsampling and a few annotations per task
(``support/sampling.py``), v0 reuse checks (``support/runs.py``), and the learning curve with one annotation per
training task (``benchmarks/curve.py --annotators 1``) on synthetic features."""

from __future__ import annotations

import argparse
import random
from collections import Counter

import pytest

from backend.core.rubric import load_rubric
from support import runs, sampling
from worker.source import Annotation, Record


def _records(counts: dict[str, int]) -> list[Record]:
    return [
        Record(f"{label}-{i}", {"text": f"{label} comment {i}"}, (Annotation("a", {"emotion": label}),))
        for label, n in counts.items()
        for i in range(n)
    ]


def _classes(records: list[Record]) -> Counter:
    return Counter(r.annotations[0].labels["emotion"] for r in records)


def test_tempered_sample_quotas_follow_the_power_and_cap_small_classes():
    rubric = load_rubric("emotion-ekman")
    records = _records({"joy": 400, "neutral": 100, "fear": 40, "disgust": 4})
    balanced = sampling.tempered_sample(rubric, records, 100, 0.0, random.Random(1))
    # disgust has only 4: it gives all of them, the other 96 are split evenly
    assert _classes(balanced) == {"joy": 32, "neutral": 32, "fear": 32, "disgust": 4}
    tempered = sampling.tempered_sample(rubric, records, 100, 0.5, random.Random(1))
    counts = _classes(tempered)
    assert sum(counts.values()) == 100 and len({r.task_id for r in tempered}) == 100
    assert counts["joy"] == pytest.approx(2 * counts["neutral"], abs=2)  # sqrt(400) = 2 * sqrt(100)
    natural = sampling.tempered_sample(rubric, records, 100, 1.0, random.Random(1))
    assert _classes(natural)["joy"] == pytest.approx(74, abs=1)  # 400 / 544 of 100


def test_reuse_v0_refuses_a_run_of_another_split(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "RESULTS_JSON", tmp_path / "RESULTS.json")
    run = {
        "dataset": "goemotions",
        "tag": "old",
        "rubric": "emotion-ekman",
        "base_model": "smollm2-135m",
        "sizes": {"dev": 50},
        "systems": {"v0": {"test": {"accuracy": 0.1}}},
        "phases": {},
    }
    runs.RESULTS_JSON.write_text(__import__("json").dumps({"goemotions/old": run}), encoding="utf-8")
    args = argparse.Namespace(dataset="goemotions", reuse_v0="old", base_model="smollm2-135m", rubric_dir=None)
    rubric = load_rubric("emotion-ekman")
    assert runs.reused_v0(args, rubric, 50) == {"accuracy": 0.1, "reused_from": "old"}
    with pytest.raises(SystemExit, match="another base model, rubric or split"):
        runs.reused_v0(args, rubric, 49)
    with pytest.raises(SystemExit, match="no run goemotions/missing"):
        runs.reused_v0(argparse.Namespace(**{**vars(args), "reuse_v0": "missing"}), rubric, 50)


# --------------------------------------------------------------------------------------------------
# the learning curve with one annotation per task (benchmarks/curve.py --annotators 1)

SUMMARY = load_rubric("summary-quality")


def _rated(n: int, groups: int, seed: int, prefix: str) -> list[Record]:
    """``n`` summaries in ``groups`` dialogues, each rated by a1, a2 and a3 (a3 never rates coherence, as in
    DialSummEval); the quality shows in the task's number, which the synthetic features carry."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        truth = 1 + (i * 7 % 5)
        annotations = tuple(
            Annotation(
                who,
                {
                    d.name: str(min(5, max(1, truth + rng.choice([-1, 0, 0, 1]))))
                    for d in SUMMARY.dimensions
                    if not (who == "a3" and d.name == "coherence")
                },
            )
            for who in ("a1", "a2", "a3")
        )
        out.append(
            Record(f"{prefix}{i}", {"dialogue": f"d{i % groups}", "summary": f"s{i}"}, annotations, f"g{i % groups}")
        )
    return out


def test_keep_annotations_draws_one_per_task_deterministically_by_seed():
    records = _rated(300, 30, 1, "t")
    kept, draw = sampling.keep_annotations(records, 1, seed=5)
    assert [len(r.annotations) for r in kept] == [1] * 300
    for before, after in zip(records, kept, strict=True):
        assert (after.task_id, after.inputs, after.group) == (before.task_id, before.inputs, before.group)
        assert after.annotations[0] in before.annotations and draw[after.task_id] == [after.annotations[0].annotator]
    assert all(len(r.annotations) == 3 for r in records), "the input records are not changed"
    assert sampling.keep_annotations(records, 1, seed=5) == (kept, draw)
    other = sampling.keep_annotations(records, 1, seed=6)[1]
    assert sum(draw[t] != other[t] for t in draw) > 100, "another seed draws other annotators"
    assert all(70 <= c <= 130 for c in Counter(w for kept in draw.values() for w in kept).values())
    # a task's draw depends on the seed and the task only: the same in a subset, in any order
    assert sampling.keep_annotations(records[::-3], 1, seed=5)[1] == {r.task_id: draw[r.task_id] for r in records[::-3]}
    two = sampling.keep_annotations(records, 2, seed=5)[0]
    assert all(len(r.annotations) == 2 for r in two)
    assert sampling.keep_annotations(records, 3, seed=5)[0] == records  # no more than a task has: all of them
    with pytest.raises(ValueError, match="at least 1"):
        sampling.keep_annotations(records, 0, seed=5)


def test_curve_json_keys_and_the_shipped_order():
    """The one-annotator curve has a key of its own beside the three-annotator curve, every entry names the order
    the product's label queue follows, and every base model's default entry holds that order's curve."""
    import json

    from support import curves as curve
    from tests.conftest import REPO

    assert curve.curve_key("test", None) == "dialsummeval" and curve.curve_key("dev", None) == "dialsummeval-dev"
    assert curve.curve_key("test", 1) == "dialsummeval-1-annotator"
    stored = {"dialsummeval": {"smollm2-135m": {"random": {"10": {"alpha_dims": 0.1}}}}}
    new = {"random": {"10": {"alpha_dims": 0.05, "tasks": 10, "annotations": 10.0}}}
    curve.store_curves(stored, curve.curve_key("test", 1), "smollm2-135m", new)
    assert stored["dialsummeval"]["smollm2-135m"] == {"random": {"10": {"alpha_dims": 0.1}}}
    assert stored["dialsummeval-1-annotator"]["smollm2-135m"] == {**new, "shipped": curve.SHIPPED_ORDER}
    assert curve.curve_orders(stored["dialsummeval-1-annotator"]["smollm2-135m"]) == new
    recorded = json.loads((REPO / "benchmarks" / "CURVE.json").read_text(encoding="utf-8"))
    for key, bases in recorded.items():
        for base, entry in bases.items():
            assert entry.get("shipped") == curve.SHIPPED_ORDER, (key, base)
            if " " not in base and "+" not in base:  # a base's default curves; a lever's variant may hold a few
                assert curve.SHIPPED_ORDER in curve.curve_orders(entry), (key, base)
    assert any(" " not in b and "+" not in b for b in recorded["dialsummeval"]), "CURVE.json lost the defaults"
