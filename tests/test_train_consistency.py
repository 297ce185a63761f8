"""Training supervises exactly what the judge reads: the training loss of a target equals the judge's
-log P(label) summed over dimensions, when the target is the judge's own choice (teacher forcing = argmax)."""

from __future__ import annotations

import pytest
import torch

from backend.core.rubric import load_rubric
from worker.dataset import IGNORE, Target, encode_example
from worker.source import Annotation, Record
from worker.train import _batch_loss, _collate


def test_training_loss_matches_judge_probabilities(tiny_judge):
    rubric = load_rubric("qa-quality")
    tasks = [
        {"context": "The museum opens at 9am.", "question": "When?", "answer": "At 9am."},
        {"context": "Water boils at 100 degrees.", "question": "Boiling point?", "answer": "Hot, " * 20},
    ]
    # a LoRA adapter of a rubric with several dimensions reads sequentially (Judge.read_mode), as trained here
    tiny_judge._adapters["p1.v1"] = "/nowhere"
    try:
        assert tiny_judge.read_mode(rubric, "p1.v1") == "sequential"
    finally:
        del tiny_judge._adapters["p1.v1"]
    scores = tiny_judge._score(rubric, tasks, None, None, "sequential")[0]
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
    assert count == sum(
        len(tiny_judge.tokenizer(" " + d.label, add_special_tokens=False)["input_ids"])
        for s in scores
        for d in s.dimensions.values()
    )
    assert float(loss_sum) == pytest.approx(-judge_logprob, rel=1e-4, abs=1e-3)


def test_shared_prefix_training_gives_the_same_loss_and_gradients(tiny_model_dir):
    """A micro-batch whose rows share the rubric prompt runs that prefix once (``prefix_ids``) and repeats its
    KV cache; the loss and every LoRA gradient equal those of the full rows."""
    import random

    from backend.model.model_loader import load_base_model
    from backend.settings import Settings
    from worker.dataset import AugmentConfig, sample_variant
    from worker.train import TrainConfig, attach_lora

    settings = Settings.from_env({}, base_model=str(tiny_model_dir))
    model, tokenizer, _ = load_base_model(settings)
    rubric = load_rubric("qa-quality")
    model = attach_lora(model, TrainConfig(lora_r=4, lora_alpha=8), quantized=False)
    for name, param in model.named_parameters():  # LoRA B starts at zero: make the adapter do something
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    rng = random.Random(5)
    variant = sample_variant(rubric, rng, AugmentConfig())
    tasks = [
        (
            {
                "context": f"Fact {i}: " + "the ferry leaves at noon. " * (i + 1),
                "question": "When?",
                "answer": "At noon." * (i + 1),
            },
            {"accuracy": str(i - 1), "completeness": "2"},
        )
        for i in range(3)
    ]
    examples = []
    for inputs, labels in tasks:
        full = {d.name: labels.get(d.name, d.labels[0]) for d in rubric.dimensions}
        record = Record(str(len(examples)), inputs, (Annotation("a", full),))
        examples.append(
            encode_example(
                rubric, Target(record, full, frozenset(full)), tokenizer, 4096, rng, AugmentConfig(), variant=variant
            )
        )
    assert all(e.shared_len > 20 for e in examples)
    device = next(model.parameters()).device

    def loss_and_grads(share: bool) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        batch = _collate(examples, tokenizer.pad_token_id or 0, share_prefix=share)
        assert ("prefix_ids" in batch) is share
        loss_sum, count = _batch_loss(model, batch, device)
        loss_sum.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return float(loss_sum.detach()), grads

    plain_loss, plain_grads = loss_and_grads(False)
    shared_loss, shared_grads = loss_and_grads(True)
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        # fp32 sums in another order: compare each gradient tensor as a whole
        assert float((shared_grads[name] - grad).norm()) <= 1e-4 * float(grad.norm()) + 1e-7, name
    # the shared prefix is computed once instead of once per row
    batch = _collate(examples, tokenizer.pad_token_id or 0, share_prefix=True)
    assert batch["computed"] == batch["tokens"] - 2 * batch["prefix_ids"].shape[1]


def test_rows_with_different_prompts_are_not_shared(tiny_judge):
    rubric = load_rubric("qa-quality")
    record = Record("1", {"context": "c", "question": "q", "answer": "a"}, ())
    labels = {d.name: d.labels[0] for d in rubric.dimensions}
    from backend.core.prompts import PromptVariant

    a = encode_example(rubric, Target(record, labels, frozenset(labels)), tiny_judge.tokenizer, 4096)
    b = encode_example(
        rubric,
        Target(record, labels, frozenset(labels)),
        tiny_judge.tokenizer,
        4096,
        variant=PromptVariant(instruction=rubric.paraphrases[0]),
    )
    batch = _collate([a, b], tiny_judge.pad_id, share_prefix=True)
    assert "prefix_ids" not in batch  # a paraphrased instruction: the rows' prompts differ, nothing is shared
    assert batch["computed"] == batch["tokens"]


def _rated_record(task_id: str, summary: str, ratings: list[dict[str, str]]) -> Record:
    inputs = {"dialogue": "Ann: Shall we meet at noon?\nBob: Yes, at the station.", "summary": summary}
    return Record(task_id, inputs, tuple(Annotation(f"a{i}", r) for i, r in enumerate(ratings)))


def test_distribution_targets_one_per_task_with_annotator_shares():
    from worker.dataset import targets_for

    rubric = load_rubric("summary-quality")
    record = _rated_record(
        "1",
        "Ann and Bob meet at noon.",
        [
            {"coherence": "4", "consistency": "5"},
            {"coherence": "2", "consistency": "5"},
            {"coherence": "4", "fluency": "3"},
        ],
    )
    (target,) = targets_for(rubric, [record], "distribution")
    assert target.distribution["coherence"] == pytest.approx({"4": 2 / 3, "2": 1 / 3})
    assert target.distribution["consistency"] == {"5": 1.0}
    assert target.distribution["fluency"] == {"3": 1.0}
    assert "relevance" not in target.distribution and "relevance" not in target.supervised
    assert target.labels["coherence"] == "3"  # teacher forcing: the consensus (nearest the mean 3.33)
    assert len(targets_for(rubric, [record], "each")) == 3
    with pytest.raises(ValueError, match="distribution"):
        targets_for(rubric, [record], "majority")


def test_distinguishing_token_needs_labels_told_apart_by_one_token(tiny_judge):
    from worker.dataset import distinguishing_token

    tokenizer = tiny_judge.tokenizer
    coherence = load_rubric("summary-quality").dimension("coherence")
    offset, ids = distinguishing_token(tokenizer, coherence)
    for label, token in ids.items():
        assert tokenizer(" " + label, add_special_tokens=False)["input_ids"][offset] == token
    assert len(set(ids.values())) == 5
    # qa-quality's labels -2..2: " -2" and " 0" differ in length with this tokenizer, so no single token
    lengths = {
        len(tokenizer(" " + lab, add_special_tokens=False)["input_ids"])
        for lab in load_rubric("qa-quality").dimensions[0].labels
    }
    assert len(lengths) > 1
    assert distinguishing_token(tokenizer, load_rubric("qa-quality").dimensions[0]) is None


def test_distribution_loss_is_the_expected_loss_over_the_annotators_labels(tiny_judge):
    """At a label whose annotators disagree, the loss is -sum_k w_k log p(label_k), p read from a plain
    forward pass of the same tokens; elsewhere it is the consensus loss. Holds with the shared prefix too."""
    from worker.dataset import targets_for

    rubric = load_rubric("summary-quality")
    tokenizer, model = tiny_judge.tokenizer, tiny_judge.model
    records = [
        _rated_record(
            "1",
            "Ann and Bob meet at noon at the station.",
            [
                {"coherence": "5", "consistency": "4", "fluency": "5", "relevance": "4"},
                {"coherence": "3", "consistency": "4", "fluency": "5", "relevance": "2"},
                {"coherence": "4", "consistency": "4", "fluency": "5", "relevance": "4"},
            ],
        ),
        _rated_record(
            "2",
            "Bob.",
            [
                {"coherence": "1", "consistency": "2", "fluency": "1", "relevance": "1"},
                {"coherence": "2", "consistency": "2", "fluency": "1", "relevance": "1"},
            ],
        ),
    ]
    soft_targets = targets_for(rubric, records, "distribution")
    hard_targets = targets_for(rubric, records, "consensus")
    soft = [encode_example(rubric, t, tokenizer, 4096) for t in soft_targets]
    hard = [encode_example(rubric, t, tokenizer, 4096) for t in hard_targets]
    assert [e.input_ids for e in soft] == [e.input_ids for e in hard]
    assert [len(e.soft) for e in soft] == [2, 1]  # coherence+relevance of task 1, coherence of task 2
    expected_gap = 0.0
    with torch.no_grad():
        for example in soft:
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0].float()
            for s in example.soft:
                log_probs = torch.log_softmax(logits[s.position - 1], dim=-1)
                assert example.labels[s.position] != IGNORE  # supervised: the consensus label token
                soft_loss = -sum(w * float(log_probs[i]) for i, w in zip(s.token_ids, s.weights, strict=True))
                expected_gap += soft_loss + float(log_probs[example.labels[s.position]])
        losses = {}
        for share in (False, True):
            for name, examples in (("soft", soft), ("hard", hard)):
                batch = _collate(examples, tiny_judge.pad_id, share_prefix=share)
                assert ("prefix_ids" in batch) is share
                loss_sum, count = _batch_loss(model, batch, tiny_judge.device)
                losses[name, share] = float(loss_sum)
    assert abs(expected_gap) > 1e-3  # the distribution changes the loss
    for share in (False, True):
        assert losses["soft", share] - losses["hard", share] == pytest.approx(expected_gap, rel=1e-4, abs=1e-4)
    assert losses["soft", True] == pytest.approx(losses["soft", False], rel=1e-5)
