"""Tests for backend.core.prompts with a small whitespace tokenizer (no model, no download)."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from backend.core.prompts import (
    DEFAULT_VARIANT,
    TRUNCATION_MARK,
    PromptVariant,
    dimension_prefix,
    fit_inputs,
    label_text,
    render_prompt,
    target_text,
    user_message,
)
from backend.core.rubric import Rubric

RUBRIC_DIR = Path(__file__).resolve().parent.parent / "rubric_configs"


class FakeTokenizer:
    """Whitespace tokenizer with a ChatML-like template; records apply_chat_template calls."""

    def __init__(self, chat: bool = True) -> None:
        self.chat_template = "chatml" if chat else None
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def _id(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab[word] = len(self.words)
            self.words.append(word)
        return self.vocab[word]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        assert add_special_tokens is False
        return {"input_ids": [self._id(w) for w in text.split()]}

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        tokenize: bool = False,
        add_generation_prompt: bool = True,
        enable_thinking: bool = False,
    ) -> str:
        self.calls.append(
            {
                "messages": messages,
                "tokenize": tokenize,
                "add_generation_prompt": add_generation_prompt,
                "enable_thinking": enable_thinking,
            }
        )
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        if not enable_thinking:
            text += "<think>\n\n</think>\n\n"
        return text

    def count(self, text: str) -> int:
        return len(self(text)["input_ids"])


QA_INPUTS = {
    "context": "The Eiffel Tower is in Paris. It was finished in 1889.",
    "question": "When was the Eiffel Tower finished?",
    "answer": "It was finished in 1889.",
}
QA_LABELS = {
    "conciseness": "2",
    "interpretability": "1",
    "completeness": "0",
    "clarity": "-1",
    "accuracy": "-2",
    "relevance": "2",
}


# --------------------------------------------------------------------------------------------------
# targets


def test_target_text_exact(qa: Rubric) -> None:
    assert target_text(qa, QA_LABELS) == (
        "conciseness: 2\ninterpretability: 1\ncompleteness: 0\nclarity: -1\naccuracy: -2\nrelevance: 2"
    )


def test_target_text_classification(rubrics: dict[str, Rubric]) -> None:
    assert target_text(rubrics["emotion-ekman"], {"emotion": "sadness"}) == "emotion: sadness"


def test_target_text_follows_rubric_order_not_dict_order(qa: Rubric) -> None:
    shuffled = dict(reversed(list(QA_LABELS.items())))
    assert target_text(qa, shuffled) == target_text(qa, QA_LABELS)


def test_target_text_needs_every_dimension(qa: Rubric) -> None:
    partial = {k: v for k, v in QA_LABELS.items() if k != "accuracy"}
    with pytest.raises(KeyError, match="accuracy"):
        target_text(qa, partial)


@pytest.mark.parametrize("name", ["qa-quality", "summary-quality", "emotion-ekman"])
def test_prefixes(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    assert dimension_prefix(rubric, 0) == f"{rubric.dimensions[0].name}:"
    assert "\n" not in dimension_prefix(rubric, 0)
    for index in range(1, len(rubric.dimensions)):
        prefix = dimension_prefix(rubric, index)
        assert prefix == f"\n{rubric.dimensions[index].name}:"
        assert prefix.count("\n") == 1


@pytest.mark.parametrize("name", ["qa-quality", "summary-quality", "emotion-ekman"])
def test_segments_concatenate_to_target(rubrics: dict[str, Rubric], name: str) -> None:
    rubric = rubrics[name]
    for offset in range(2):
        labels = {d.name: d.labels[(i + offset) % len(d.labels)] for i, d in enumerate(rubric.dimensions)}
        joined = "".join(
            dimension_prefix(rubric, i) + label_text(labels[d.name]) for i, d in enumerate(rubric.dimensions)
        )
        assert joined == target_text(rubric, labels)
        assert len(joined.splitlines()) == len(rubric.dimensions)


def test_label_text_has_one_leading_space() -> None:
    assert label_text("-2") == " -2"
    assert label_text("joy") == " joy"


# --------------------------------------------------------------------------------------------------
# user message and variants


def _block(rubric: Rubric, name: str, inputs: dict[str, str]) -> str:
    label = next(i.label for i in rubric.inputs if i.name == name)
    return f'{label}:\n"""\n{inputs[name]}\n"""'


def test_user_message_contents(qa: Rubric) -> None:
    message = user_message(qa, QA_INPUTS)
    assert message.startswith(qa.instruction)
    for text in QA_INPUTS.values():
        assert text in message
    for dim in qa.dimensions:
        assert f"- {dim.name}: {dim.question}" in message
        for label, anchor in dim.anchors.items():
            assert f"{label} = {anchor}" in message
    assert "integer from -2 to 2" in message
    # inputs in rubric order, each in its own block
    positions = [message.index(_block(qa, name, QA_INPUTS)) for name in qa.input_names]
    assert positions == sorted(positions)
    # the reply format lists the dimensions in rubric order, last in the message
    tail = message.rsplit("\n\n", 1)[1].splitlines()
    assert tail[1:] == [f"{d.name}: <score>" for d in qa.dimensions]


def test_user_message_classification_lists_every_label(rubrics: dict[str, Rubric]) -> None:
    rubric = rubrics["emotion-ekman"]
    message = user_message(rubric, {"text": "I can't believe I won!"})
    dim = rubric.dimensions[0]
    for label in dim.labels:
        assert f"{label} ({dim.anchors[label]})" in message
    assert message.endswith("emotion: <label>")
    assert "I can't believe I won!" in message


def test_variant_instruction_changes_only_the_instruction(qa: Rubric) -> None:
    other = qa.paraphrases[0]
    default = user_message(qa, QA_INPUTS)
    varied = user_message(qa, QA_INPUTS, PromptVariant(instruction=other))
    assert varied != default
    assert varied == default.replace(qa.instruction, other, 1)
    assert qa.instruction not in varied


def test_variant_input_order_changes_only_the_block_order(qa: Rubric) -> None:
    order = ("answer", "context", "question")
    default = user_message(qa, QA_INPUTS)
    varied = user_message(qa, QA_INPUTS, PromptVariant(input_order=order))
    assert varied != default
    default_blocks = "\n\n".join(_block(qa, n, QA_INPUTS) for n in qa.input_names)
    varied_blocks = "\n\n".join(_block(qa, n, QA_INPUTS) for n in order)
    assert default_blocks in default
    assert varied == default.replace(default_blocks, varied_blocks)
    assert Counter(varied.splitlines()) == Counter(default.splitlines())


def test_variant_label_order_changes_only_the_label_list(rubrics: dict[str, Rubric]) -> None:
    rubric = rubrics["emotion-ekman"]
    inputs = {"text": "Ugh, the bus is late again."}
    dim = rubric.dimensions[0]
    order = tuple(reversed(dim.labels))
    default = user_message(rubric, inputs).splitlines()
    varied = user_message(rubric, inputs, PromptVariant(label_order={"emotion": order})).splitlines()
    changed = [i for i, (a, b) in enumerate(zip(default, varied, strict=True)) if a != b]
    assert len(changed) == 1
    line = varied[changed[0]]
    assert line.startswith("- emotion: ")
    positions = [line.index(f"{label} (") for label in order]
    assert positions == sorted(positions)
    default_positions = [default[changed[0]].index(f"{label} (") for label in dim.labels]
    assert default_positions == sorted(default_positions)


def test_default_variant_is_the_plain_message(qa: Rubric) -> None:
    assert user_message(qa, QA_INPUTS, DEFAULT_VARIANT) == user_message(qa, QA_INPUTS)
    assert user_message(qa, QA_INPUTS, PromptVariant()) == user_message(qa, QA_INPUTS)


# --------------------------------------------------------------------------------------------------
# render_prompt


def test_render_prompt_uses_the_chat_template(qa: Rubric) -> None:
    tokenizer = FakeTokenizer(chat=True)
    prompt = render_prompt(qa, QA_INPUTS, tokenizer)
    assert len(tokenizer.calls) == 1
    call = tokenizer.calls[0]
    assert call["tokenize"] is False
    assert call["add_generation_prompt"] is True
    assert call["enable_thinking"] is False
    assert call["messages"] == [
        {"role": "system", "content": qa.system_prompt},
        {"role": "user", "content": user_message(qa, QA_INPUTS)},
    ]
    assert prompt.startswith(f"<|im_start|>system\n{qa.system_prompt}<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # the only "Answer:" is the answer block's label, not the plain layout's cue
    assert prompt.count("Answer:\n") == prompt.count('Answer:\n"""') == 1


def test_render_prompt_chat_without_system_prompt(qa: Rubric) -> None:
    rubric = dataclasses.replace(qa, system_prompt="")
    tokenizer = FakeTokenizer(chat=True)
    render_prompt(rubric, QA_INPUTS, tokenizer)
    assert [m["role"] for m in tokenizer.calls[0]["messages"]] == ["user"]


def test_render_prompt_plain_layout_without_template(qa: Rubric) -> None:
    tokenizer = FakeTokenizer(chat=False)
    prompt = render_prompt(qa, QA_INPUTS, tokenizer)
    assert tokenizer.calls == []
    assert prompt == f"{qa.system_prompt}\n\n{user_message(qa, QA_INPUTS)}\n\nScores:\n"


def test_render_prompt_passes_the_variant(qa: Rubric) -> None:
    tokenizer = FakeTokenizer(chat=False)
    variant = PromptVariant(instruction=qa.paraphrases[1])
    prompt = render_prompt(qa, QA_INPUTS, tokenizer, variant)
    assert qa.paraphrases[1] in prompt and qa.instruction not in prompt


# --------------------------------------------------------------------------------------------------
# fit_inputs


def _long_inputs() -> dict[str, str]:
    return {
        "context": " ".join(f"ctx{i}" for i in range(600)),
        "question": "What does the context say about ctx42?",
        "answer": " ".join(f"ans{i}" for i in range(40)),
    }


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "plain"])
def test_fit_inputs_cuts_the_context_and_keeps_the_answer(qa: Rubric, chat: bool) -> None:
    tokenizer = FakeTokenizer(chat=chat)
    inputs = _long_inputs()
    full = tokenizer.count(render_prompt(qa, inputs, tokenizer))
    budget = full - 300
    fitted = fit_inputs(qa, inputs, tokenizer, budget)
    assert fitted["answer"] == inputs["answer"]
    assert fitted["question"] == inputs["question"]
    assert fitted["context"].endswith(TRUNCATION_MARK)
    kept = fitted["context"][: -len(TRUNCATION_MARK)]
    assert kept and inputs["context"].startswith(kept)
    assert len(kept.split()) < 300
    assert tokenizer.count(render_prompt(qa, fitted, tokenizer)) <= budget
    assert inputs["context"].endswith("ctx599"), "the caller's dict is not modified"


def test_fit_inputs_under_budget_is_unchanged(qa: Rubric) -> None:
    tokenizer = FakeTokenizer()
    inputs = _long_inputs()
    full = tokenizer.count(render_prompt(qa, inputs, tokenizer))
    assert fit_inputs(qa, inputs, tokenizer, full) == inputs
    assert fit_inputs(qa, inputs, tokenizer, full + 1000) == inputs


def test_fit_inputs_cuts_the_question_before_the_answer(qa: Rubric) -> None:
    tokenizer = FakeTokenizer()
    inputs = {"context": "short", "question": " ".join(f"q{i}" for i in range(200)), "answer": "a b c d e"}
    budget = tokenizer.count(render_prompt(qa, inputs, tokenizer)) - 100
    fitted = fit_inputs(qa, inputs, tokenizer, budget)
    assert fitted["context"] == "short"
    assert fitted["answer"] == "a b c d e"
    assert fitted["question"].endswith(TRUNCATION_MARK)
    assert tokenizer.count(render_prompt(qa, fitted, tokenizer)) <= budget


def test_fit_inputs_trims_the_target_only_as_a_last_resort(qa: Rubric, caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = FakeTokenizer()
    inputs = {"context": "short", "question": "why?", "answer": " ".join(f"ans{i}" for i in range(300))}
    budget = tokenizer.count(render_prompt(qa, inputs, tokenizer)) - 100
    with caplog.at_level(logging.WARNING, logger="backend.core.prompts"):
        fitted = fit_inputs(qa, inputs, tokenizer, budget)
    assert fitted["context"] == "short" and fitted["question"] == "why?"
    assert fitted["answer"].endswith(TRUNCATION_MARK)
    assert inputs["answer"].startswith(fitted["answer"][: -len(TRUNCATION_MARK)])
    assert tokenizer.count(render_prompt(qa, fitted, tokenizer)) <= budget
    assert "answer" in caplog.text


def test_fit_inputs_summary_keeps_the_summary(rubrics: dict[str, Rubric]) -> None:
    rubric = rubrics["summary-quality"]
    tokenizer = FakeTokenizer()
    inputs = {"dialogue": "\n".join(f"A: line {i}" for i in range(300)), "summary": "They talk about lines."}
    budget = tokenizer.count(render_prompt(rubric, inputs, tokenizer)) - 200
    fitted = fit_inputs(rubric, inputs, tokenizer, budget)
    assert fitted["summary"] == inputs["summary"]
    assert fitted["dialogue"].endswith(TRUNCATION_MARK)
    assert tokenizer.count(render_prompt(rubric, fitted, tokenizer)) <= budget
