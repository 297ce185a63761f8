"""The lexical features (``backend.core.lexical``): what each number says on a known task, a rubric without
context, and the head reading them through the judge and the store exactly as it read them in training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.core.lexical import LEXICAL_NAMES, lexical_features, words
from backend.core.rubric import load_rubric
from tests.conftest import REPO

SUMMARY = load_rubric("summary-quality", REPO / "rubric_configs")
EMOTION = load_rubric("emotion-ekman", REPO / "rubric_configs")


def test_each_lexical_feature_on_a_known_task():
    task = {
        "dialogue": "Tom: I'll buy the milk today.\nAnn: Thanks, Tom! Bring bread too.",
        "summary": "Tom will buy milk. Tom will buy milk.",
    }
    got = dict(zip(LEXICAL_NAMES, lexical_features(SUMMARY, task), strict=True))
    target, context = words(task["summary"]), words(task["dialogue"])
    assert target == ["tom", "will", "buy", "milk", "tom", "will", "buy", "milk"] and len(context) == 12
    assert got["target words (log)"] == pytest.approx(math.log(9))
    assert got["target/context length (log ratio)"] == pytest.approx(math.log(9) - math.log(13))
    assert got["target words found in the context"] == pytest.approx(6 / 8)  # "will" is not in the dialogue
    assert got["target word pairs found in the context"] == 0.0  # "buy milk": "buy the milk" in the dialogue
    # content words (over 3 letters) of the dialogue: i'll, milk, today, thanks, bring, bread -> 1 of 6 covered
    assert got["context words covered by the target"] == pytest.approx(1 / 6)
    assert got["repeated word pairs in the target"] == pytest.approx(1 - 4 / 7)
    assert got["distinct words in the target"] == pytest.approx(4 / 8)
    assert got["target sentences (log)"] == pytest.approx(math.log(3))
    assert got["mean target word length"] == pytest.approx(28 / 8)


def test_a_rubric_without_context_and_an_empty_target_give_zero_relations():
    alone = dict(zip(LEXICAL_NAMES, lexical_features(EMOTION, {"text": "so happy today"}), strict=True))
    assert alone["context words (log)"] == 0.0 and alone["target words found in the context"] == 0.0
    assert alone["target words (log)"] == pytest.approx(math.log(4))
    empty = lexical_features(SUMMARY, {"dialogue": "A: hi", "summary": ""})
    assert all(math.isfinite(v) for v in empty) and empty[0] == 0.0


def test_a_head_with_lexical_features_serves_what_it_learned(settings, tiny_judge, tmp_path):
    """Designed with ``head_lexical``, the head reads the lexical features again when it serves (its meta says
    so), from the plain path and through the feature store alike (the store keeps only what the model computed;
    the lexical features are attached again), and serves what it predicts on the training-time matrices."""
    from backend.model.feature_store import FeatureStore
    from backend.model.head import fit_head, load_head
    from backend.model.judge import apply_head
    from worker.pipeline import head_design
    from worker.train import TrainConfig

    tasks = [
        {"dialogue": f"A: we meet at {h}pm.\nB: fine, see you at {h}.", "summary": f"They meet at {h}pm." * (h % 3 + 1)}
        for h in range(1, 9)
    ]
    scores, features = tiny_judge.score_with_features(SUMMARY, tasks)
    assert all(f.lexical is not None and len(f.lexical) == len(LEXICAL_NAMES) for f in features)
    config = TrainConfig.build(SUMMARY, {"head_lexical": True})
    design = head_design(config, SUMMARY, features[0])
    width = len(features[0].vector(SUMMARY.dimensions[0].name, design.selection))
    assert design.subsets["lexical"][-len(LEXICAL_NAMES) :] == list(range(width, width + len(LEXICAL_NAMES)))
    matrices = design.matrices(SUMMARY, features)
    assert all(m.shape == (8, width + len(LEXICAL_NAMES)) for m in matrices.values())
    assert design.meta == {"features": design.selection, "lexical": True}
    previous = tiny_judge.feature_store
    try:
        tiny_judge.feature_store = FeatureStore(tmp_path / "store", tiny_judge.model_fingerprint(), 64 << 20)
        _, cold = tiny_judge.score_with_features(SUMMARY, tasks)
        _, warm = tiny_judge.score_with_features(SUMMARY, tasks)
    finally:
        tiny_judge.feature_store = previous
    assert all(np.array_equal(a.lexical, b.lexical) for a, b in zip(features, warm, strict=True))
    assert all(np.array_equal(a.lexical, b.lexical) for a, b in zip(cold, warm, strict=True))
    with pytest.raises(ValueError, match="no lexical features"):
        type(features[0])(shared=features[0].shared, dimensions=features[0].dimensions).vector(
            "coherence", "target", True
        )
    targets = {d.name: [float(1 + (h * (i + 2)) % 5) for h in range(8)] for i, d in enumerate(SUMMARY.dimensions)}
    head = fit_head(SUMMARY.dimensions, matrices, targets, [f"g{h // 2}" for h in range(8)], quiet=True)
    head.meta = design.meta
    head.save(tmp_path)
    served = apply_head(SUMMARY, load_head(tmp_path), warm)
    for dim in SUMMARY.dimensions:
        _, expected = head.predict(dim.name, matrices[dim.name])
        assert [s.dimensions[dim.name].expected for s in served] == [round(float(v), 6) for v in expected]
    assert len(scores) == 8
