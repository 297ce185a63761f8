"""The one-pass read (SCORE_READ=one-pass, ``backend.model.packing``) on the tiny random Qwen3 model: each
dimension equals a plain, unbatched read of the prompt followed by that dimension's line alone; the first
dimension and a one-dimension rubric equal the sequential read; one forward call per batch; which read a head,
a LoRA adapter and the base model get."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.core.rubric import load_rubric
from backend.model.packing import attention_mask, packed_inputs, suffix_layout
from backend.model.padding import left_pad

QA_TASKS = [
    {
        "context": "The museum opens at 9am and closes at 6pm. " * n,
        "question": f"When does it open? ({n})",
        "answer": "At 9am." + " Really." * n,
    }
    for n in range(1, 8)
]


def plain_line_probs(judge, rubric, task, index):
    """Dimension ``index``'s label distribution from the prompt and that dimension's first-line prefix, one
    unbatched, uncached forward call per label prefix: the definition the one-pass read must equal."""
    tokens = judge.rubric_tokens(rubric)
    ids = judge.prompt_ids(rubric, task) + tokens.lines[index]
    scores = []
    with torch.inference_mode():
        for candidate in tokens.labels[index]:
            row = torch.tensor([ids + candidate[:-1]])
            logp = torch.log_softmax(judge.model(input_ids=row, use_cache=False).logits[0].float(), dim=-1)
            start = len(ids) - 1
            scores.append(sum(float(logp[start + t, token]) for t, token in enumerate(candidate)))
    probs = torch.softmax(torch.tensor(scores), dim=0)
    return probs.tolist()


def _read(judge, rubric, tasks, read):
    return judge._read(rubric, tasks, None, read)


@pytest.mark.parametrize("rubric_name", ["qa-quality", "summary-quality"])
def test_each_dimension_is_the_prompt_followed_by_its_own_line(tiny_judge, rubric_name):
    """Batched (padding, the cached shared prefix), every dimension of every task equals a plain forward over
    the prompt and that dimension's line alone, multi-token labels included (qa-quality's -2, -1)."""
    rubric = load_rubric(rubric_name)
    tasks = (
        QA_TASKS
        if rubric_name == "qa-quality"
        else [{"dialogue": "A: hi. B: hello there. " * n, "summary": f"They greet {n} times."} for n in range(1, 6)]
    )
    scores, _ = _read(tiny_judge, rubric, tasks, "one-pass")
    for task, score in zip(tasks, scores, strict=True):
        for index, dim in enumerate(rubric.dimensions):
            plain = plain_line_probs(tiny_judge, rubric, task, index)
            packed = [score.dimensions[dim.name].probs[label] for label in dim.labels]
            assert np.allclose(packed, plain, atol=2e-5), (dim.name, packed, plain)


def test_the_first_dimension_and_the_features_of_the_prompt_equal_the_sequential_read(tiny_judge):
    rubric = load_rubric("qa-quality")
    seq_scores, seq_features = _read(tiny_judge, rubric, QA_TASKS, "sequential")
    one_scores, one_features = _read(tiny_judge, rubric, QA_TASKS, "one-pass")
    first = rubric.dimensions[0].name
    for a, b, fa, fb in zip(seq_scores, one_scores, seq_features, one_features, strict=True):
        assert a.dimensions[first].label == b.dimensions[first].label
        for label, p in a.dimensions[first].probs.items():
            assert math.isclose(p, b.dimensions[first].probs[label], abs_tol=1e-5)
        assert np.allclose(fa.shared, fb.shared, atol=1e-4)
        assert np.allclose(fa.dimensions[first], fb.dimensions[first], atol=1e-4)
    pairs = zip(seq_scores, one_scores, strict=True)
    later = [(a.dimensions[d].probs, b.dimensions[d].probs) for a, b in pairs for d in rubric.dimension_names[1:]]
    assert any(pa != pb for pa, pb in later), "later dimensions read without the earlier labels should differ"


def test_a_one_dimension_rubric_reads_the_same_either_way(tiny_judge):
    rubric = load_rubric("emotion-ekman")
    tasks = [{"text": f"text {i} " * i} for i in range(1, 8)]
    seq_scores, seq_features = _read(tiny_judge, rubric, tasks, "sequential")
    one_scores, one_features = _read(tiny_judge, rubric, tasks, "one-pass")
    for a, b, fa, fb in zip(seq_scores, one_scores, seq_features, one_features, strict=True):
        assert a.labels == b.labels
        for label, p in a.dimensions["emotion"].probs.items():
            assert math.isclose(p, b.dimensions["emotion"].probs[label], abs_tol=1e-5)
        assert np.allclose(fa.shared, fb.shared, atol=1e-4)
        assert np.allclose(fa.dimensions["emotion"], fb.dimensions["emotion"], atol=1e-4)


def test_one_forward_call_per_batch(tiny_judge, monkeypatch):
    rubric = load_rubric("qa-quality")
    calls = {"one-pass": 0, "sequential": 0}
    plain = tiny_judge._forward
    read = {"now": ""}

    def counted(*args, **kwargs):
        calls[read["now"]] += 1
        return plain(*args, **kwargs)

    monkeypatch.setattr(tiny_judge, "_forward", counted)
    batches = len(tiny_judge.plan_batches([len(tiny_judge.prompt_ids(rubric, t)) for t in QA_TASKS]))
    for mode in calls:
        read["now"] = mode
        tiny_judge._score(rubric, QA_TASKS, None, None, mode)
    assert calls["one-pass"] == batches
    assert calls["sequential"] > 6 * batches  # a prompt call and a call per dimension at least


def test_the_eager_attention_mask_reads_as_sdpa(tiny_model_dir, tmp_path):
    from backend.model.judge import Judge
    from backend.settings import Settings

    settings = Settings.from_env({}, base_model=str(tiny_model_dir), model_dir=tmp_path, predict_batch_size=4)
    judge = Judge.from_settings(settings)
    rubric = load_rubric("qa-quality")
    sdpa = judge._score(rubric, QA_TASKS, None, None, "one-pass")[0]
    judge.model.set_attn_implementation("eager")
    assert judge.model.config._attn_implementation == "eager"
    eager = judge._score(rubric, QA_TASKS, None, None, "one-pass")[0]
    for a, b in zip(sdpa, eager, strict=True):
        assert a.labels == b.labels
        for name in rubric.dimension_names:
            for label, p in a.dimensions[name].probs.items():
                assert math.isclose(p, b.dimensions[name].probs[label], abs_tol=1e-4)


def test_which_read_each_version_gets(tiny_judge):
    qa, emotion = load_rubric("qa-quality"), load_rubric("emotion-ekman")
    assert tiny_judge.settings.score_read == "one-pass"
    assert tiny_judge.read_mode(qa) == "one-pass"
    tiny_judge._adapters["lora"] = "/nowhere"  # a LoRA adapter, by name only: read_mode reads no weights
    tiny_judge._heads["old-head"] = (SimpleNamespace(meta={}), "/nowhere")
    tiny_judge._heads["new-head"] = (SimpleNamespace(meta={"read": "one-pass"}), "/nowhere")
    try:
        assert tiny_judge.read_mode(qa, "lora") == "sequential"  # its training supervised the sequence
        assert tiny_judge.read_mode(emotion, "lora") == "one-pass"  # one dimension: the same either way
        assert tiny_judge.read_mode(qa, "old-head") == "sequential"  # saved before SCORE_READ: as it was fitted
        assert tiny_judge.read_mode(qa, "new-head") == "one-pass"
    finally:
        del tiny_judge._adapters["lora"], tiny_judge._heads["old-head"], tiny_judge._heads["new-head"]
    one, seq = tiny_judge.feature_key(qa, QA_TASKS[0]), tiny_judge.feature_key(qa, QA_TASKS[0], "sequential")
    assert one != seq and one == tiny_judge.feature_key(qa, QA_TASKS[0], "one-pass")


def test_the_suffix_keeps_dimensions_and_branches_apart():
    # two dimensions: prefixes [1, 2] and [3]; labels " 0"=[5], " -1"=[6, 7], " -2"=[6, 8], "x"=[9, 10, 11]
    layout = suffix_layout([[1, 2], [3]], [[[5], [6, 7], [6, 8]], [[9, 10, 11], [12]]])
    assert layout.tokens == [1, 2, 6, 3, 9, 10]
    assert layout.depth == [0, 1, 2, 0, 1, 2]
    assert layout.prefix_end == [1, 3]
    assert [(b.start, b.tokens, b.members) for b in layout.branches[0]] == [(2, (6,), (1, 2))]
    assert [(b.start, b.tokens, b.members) for b in layout.branches[1]] == [(4, (9, 10), (0,))]
    assert layout.logits_at == [1, 3, 2, 4, 5]
    expected = np.array(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 1, 1, 1],
        ],
        dtype=bool,
    )
    assert (layout.sees == expected).all()


def test_the_mask_hides_padding_and_other_blocks_and_the_sliding_window_counts_positions():
    layout = suffix_layout([[1], [2]], [[[5]], [[6]]])
    ids, row_mask, positions = left_pad([[7, 8, 9], [9]], 0, start=4)
    packed, pos, keys = packed_inputs(layout, ids, row_mask, positions, cached=4)
    assert packed[1].tolist() == [0, 0, 9, 1, 2]
    assert pos.tolist() == [[4, 5, 6, 7, 7], [4, 4, 4, 5, 5]]
    # row 1: its one prompt token sees the cached prefix and itself; padding sees the prefix and itself only
    assert keys[1, 2].tolist() == [True] * 4 + [False, False, True, False, False]
    assert keys[1, 0].tolist() == [True] * 4 + [True, False, False, False, False]
    # the second dimension's token sees the prefix, the row's real prompt and itself, not the first dimension
    assert keys[1, 4].tolist() == [True] * 4 + [False, False, True, False, True]
    model = SimpleNamespace(
        config=SimpleNamespace(_attn_implementation="sdpa", layer_types=["sliding_attention"], sliding_window=3),
        parameters=lambda: iter([torch.zeros(1)]),
    )
    masks = attention_mask(model, keys, pos, cached=4)
    assert masks["full_attention"].shape == (2, 1, 5, 9)
    # row 0's first dimension token (position 7) sees positions 5 and 6 only within a window of 3
    assert masks["sliding_attention"][0, 0, 3].tolist() == [False] * 5 + [True, True, True, False]
    eager = attention_mask(
        SimpleNamespace(config=SimpleNamespace(_attn_implementation="eager"), parameters=model.parameters),
        keys,
        pos,
        cached=4,
    )
    assert eager.dtype == torch.float32 and eager[1, 0, 4, 5] == torch.finfo(torch.float32).min
    assert eager[1, 0, 4, 6] == 0
