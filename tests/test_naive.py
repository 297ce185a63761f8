"""The naive free-generation baseline of the speed benchmark: its parser, and one run on the tiny model."""

from __future__ import annotations

from backend.core.rubric import load_rubric
from support.ls_bodies import QA_DATA
from support.naive import naive_score, parse_reply


def test_parse_reply_reads_lines_and_flags_invalid_values():
    qa = load_rubric("qa-quality")
    text = (
        "conciseness: 2\n**Interpretability**: 1\n- completeness: -1.\nclarity = 0\naccuracy: 7\n"
        "Some chatter about relevance without a score"
    )
    labels = parse_reply(qa, text)
    assert labels == {
        "conciseness": "2",
        "interpretability": "1",
        "completeness": "-1",
        "clarity": "0",
        "accuracy": None,
        "relevance": None,
    }
    emotion = load_rubric("emotion-ekman")
    assert parse_reply(emotion, "emotion: Joy") == {"emotion": "joy"}
    assert parse_reply(emotion, "emotion: happiness") == {"emotion": None}


def test_naive_score_runs_one_generate_per_task(tiny_judge):
    qa = load_rubric("qa-quality")
    results = naive_score(tiny_judge.model, tiny_judge.tokenizer, qa, QA_DATA[:2], max_new_tokens_per_dimension=2)
    assert len(results) == 2
    for result in results:
        assert list(result.labels) == list(qa.dimension_names)
        assert result.parse_failed == any(v is None for v in result.labels.values())
        assert all(v is None or v in qa.dimension(k).labels for k, v in result.labels.items())
        assert result.seconds > 0
