"""The quality benchmark's shared logic that needs no data set: class-tempered subsampling (``support/sampling.py``),
v0 reuse checks (``support/runs.py``)."""

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
