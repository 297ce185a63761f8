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


def test_shared_prefix_training_gives_the_same_loss_and_gradients(tiny_model_dir):
    """A micro-batch whose rows share the rubric prompt runs that prefix once (``prefix_ids``) and repeats its
    KV cache; the loss and every LoRA gradient equal those of the full rows."""
    import random

    from backend.judge import load_base_model
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
    tasks = [({"context": f"Fact {i}: " + "the ferry leaves at noon. " * (i + 1), "question": "When?",
               "answer": "At noon." * (i + 1)}, {"accuracy": str(i - 1), "completeness": "2"}) for i in range(3)]
    examples = []
    for inputs, labels in tasks:
        full = {d.name: labels.get(d.name, d.labels[0]) for d in rubric.dimensions}
        record = Record(str(len(examples)), inputs, (Annotation("a", full),))
        examples.append(encode_example(rubric, Target(record, full, frozenset(full)), tokenizer, 4096,
                                       rng, AugmentConfig(), variant=variant))
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
    from backend.prompts import PromptVariant

    a = encode_example(rubric, Target(record, labels, frozenset(labels)), tiny_judge.tokenizer, 4096)
    b = encode_example(rubric, Target(record, labels, frozenset(labels)), tiny_judge.tokenizer, 4096,
                       variant=PromptVariant(instruction=rubric.paraphrases[0]))
    batch = _collate([a, b], tiny_judge.pad_id, share_prefix=True)
    assert "prefix_ids" not in batch  # a paraphrased instruction: the rows' prompts differ, nothing is shared
    assert batch["computed"] == batch["tokens"]
