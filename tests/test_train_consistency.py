"""Training supervises exactly what the judge reads: the training loss of a target equals the judge's
-log P(label) summed over dimensions, when the target is the judge's own choice (teacher forcing = argmax)."""

from __future__ import annotations

import pytest
import torch

from backend.rubric import load_rubric
from worker.dataset import IGNORE, Target, encode_example
from worker.source import Annotation, Record
from worker.train import _batch_loss, _collate


def test_training_loss_matches_judge_probabilities(tiny_judge):
    rubric = load_rubric("qa-quality")
    tasks = [{"context": "The museum opens at 9am.", "question": "When?", "answer": "At 9am."},
             {"context": "Water boils at 100 degrees.", "question": "Boiling point?", "answer": "Hot, " * 20}]
    scores = tiny_judge.score(rubric, tasks)
    examples = []
    for inputs, score in zip(tasks, scores, strict=True):
        record = Record("1", inputs, (Annotation("a", score.labels),))
        target = Target(record, score.labels, frozenset(rubric.dimension_names))
        examples.append(encode_example(rubric, target, tiny_judge.tokenizer, 4096))
        # the prompt part of the example is the judge's prompt, token for token
        n_prompt = next(i for i, x in enumerate(examples[-1].labels) if x != IGNORE)
        prompt = tiny_judge.prompt_ids(rubric, inputs)
        assert examples[-1].input_ids[: len(prompt)] == prompt
        assert n_prompt > len(prompt)  # the first dimension's prefix is not supervised
    batch = _collate(examples, tiny_judge.pad_id)
    with torch.no_grad():
        loss_sum, count = _batch_loss(tiny_judge.model, batch, tiny_judge.device)
    # exact: the summed training NLL equals minus the judge's log-probabilities of the same label tokens
    judge_logprob = sum(d.logprob for s in scores for d in s.dimensions.values())
    assert count == sum(len(tiny_judge.tokenizer(" " + d.label, add_special_tokens=False)["input_ids"])
                        for s in scores for d in s.dimensions.values())
    assert float(loss_sum) == pytest.approx(-judge_logprob, rel=1e-4, abs=1e-3)
