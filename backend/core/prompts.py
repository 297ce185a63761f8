"""Judge prompts and targets, rendered by the same functions for training and for scoring.

The completion the judge reads (and training supervises) is one line per dimension, in rubric order::

    conciseness: 2
    interpretability: 1
    ...

It is always handled as segments: for dimension ``i`` a fixed *prefix* (``"conciseness:"``, with a newline
before every dimension but the first) followed by the *label text* (``" 2"``). Both the judge and the trainer
tokenize segment by segment, so training learns exactly the token sequence inference scores.

Pure module: the tokenizer is any object with ``apply_chat_template``/``chat_template`` and ``__call__``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.core.rubric import Dimension, Rubric

log = logging.getLogger(__name__)

TRUNCATION_MARK = " [...]"


@dataclass(frozen=True)
class PromptVariant:
    """What augmentation may change in a prompt. The default variant is what inference uses."""

    instruction: str | None = None
    input_order: tuple[str, ...] | None = None
    label_order: Mapping[str, tuple[str, ...]] | None = None


DEFAULT_VARIANT = PromptVariant()


def dimension_prefix(rubric: Rubric, index: int, first_line: bool = False) -> str:
    """The text that precedes dimension ``index``'s label in the completion; with ``first_line``, as the
    completion's first line (``SCORE_READ=one-pass`` reads every dimension so, right after the prompt)."""
    name = rubric.dimensions[index].name
    return f"{name}:" if index == 0 or first_line else f"\n{name}:"


def label_text(label: str) -> str:
    """The text of a label as it follows its prefix."""
    return f" {label}"


def target_text(rubric: Rubric, labels: Mapping[str, str]) -> str:
    """The full completion for ``labels`` (every dimension must be present)."""
    return "".join(
        dimension_prefix(rubric, i) + label_text(labels[dim.name]) for i, dim in enumerate(rubric.dimensions)
    )


def _describe_dimension(dim: Dimension, label_order: Sequence[str] | None) -> str:
    if dim.is_scale:
        anchors = "; ".join(f"{label} = {dim.anchors[label]}" for label in dim.labels if label in dim.anchors)
        low, high = dim.labels[0], dim.labels[-1]
        scale = f"integer from {low} to {high}"
        return f"- {dim.name}: {dim.question} ({scale}{'; ' + anchors if anchors else ''})"
    labels = list(label_order or dim.labels)
    described = ", ".join(f"{label} ({dim.anchors[label]})" if label in dim.anchors else label for label in labels)
    return f"- {dim.name}: {dim.question} One of: {described}"


def user_message(rubric: Rubric, inputs: Mapping[str, str], variant: PromptVariant = DEFAULT_VARIANT) -> str:
    """The instruction, the criteria and the task inputs as one user message."""
    instruction = variant.instruction or rubric.instruction
    label_order = variant.label_order or {}
    criteria = "\n".join(_describe_dimension(d, label_order.get(d.name)) for d in rubric.dimensions)
    order = variant.input_order or rubric.input_names
    by_name = {item.name: item for item in rubric.inputs}
    blocks = [f'{by_name[name].label}:\n"""\n{inputs[name]}\n"""' for name in order]
    example = "\n".join(f"{d.name}: <{'score' if d.is_scale else 'label'}>" for d in rubric.dimensions)
    return (
        f"{instruction}\n\nCriteria:\n{criteria}\n\n"
        + "\n\n".join(blocks)
        + f"\n\nReply with exactly these lines, in this order:\n{example}"
    )


def render_prompt(
    rubric: Rubric, inputs: Mapping[str, str], tokenizer: Any, variant: PromptVariant = DEFAULT_VARIANT
) -> str:
    """The prompt text up to where the first dimension's prefix starts.

    Uses the tokenizer's chat template when it has one (Qwen3's thinking block is switched off);
    otherwise a plain ``system / user / Answer:`` layout.
    """
    message = user_message(rubric, inputs, variant)
    if getattr(tokenizer, "chat_template", None):
        messages = []
        if rubric.system_prompt:
            messages.append({"role": "system", "content": rubric.system_prompt})
        messages.append({"role": "user", "content": message})
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
    system = f"{rubric.system_prompt}\n\n" if rubric.system_prompt else ""
    return f"{system}{message}\n\nScores:\n"


def split_prompt(
    rubric: Rubric, inputs: Mapping[str, str], tokenizer: Any, variant: PromptVariant = DEFAULT_VARIANT
) -> tuple[str, str]:
    """The prompt as ``(shared, task)``: ``shared`` is identical for every task of the rubric and variant
    (system prompt, instruction, criteria), ``task`` holds the inputs. ``shared + task`` is the prompt."""
    full = render_prompt(rubric, inputs, tokenizer, variant)
    sentinel = {name: f"\x00{name}\x00" for name in rubric.input_names}
    probe = render_prompt(rubric, sentinel, tokenizer, variant)
    shared = probe[: probe.find("\x00")]
    cut = shared.rfind("\n") + 1  # end the shared part on a line boundary
    shared = shared[:cut]
    if not shared or not full.startswith(shared):
        return "", full
    return shared, full[len(shared) :]


def encode_prompt(
    rubric: Rubric, inputs: Mapping[str, str], tokenizer: Any, variant: PromptVariant = DEFAULT_VARIANT
) -> tuple[list[int], list[int]]:
    """Token ids of ``split_prompt``'s two parts, tokenized separately (training and scoring both use this,
    so the shared part can be cached)."""
    shared, task = split_prompt(rubric, inputs, tokenizer, variant)
    encode = lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []  # noqa: E731
    return encode(shared), encode(task)


def target_token_span(
    rubric: Rubric, inputs: Mapping[str, str], tokenizer: Any, variant: PromptVariant = DEFAULT_VARIANT
) -> tuple[int, int]:
    """Token positions ``[start, end)`` of the target input (answer, summary) inside the *task* part of
    ``encode_prompt`` (exact up to a merge at either edge). The judge pools its features over these."""
    _, task = split_prompt(rubric, inputs, tokenizer, variant)
    target = rubric.target.name
    sentinel = "\x00target\x00"
    _, probe = split_prompt(rubric, {**inputs, target: sentinel}, tokenizer, variant)
    start_char = probe.find(sentinel)
    if start_char < 0 or not task.startswith(probe[:start_char]):
        return 0, _token_count(tokenizer, task)
    end_char = start_char + len(inputs[target])
    start = _token_count(tokenizer, task[:start_char]) if start_char else 0
    end = _token_count(tokenizer, task[:end_char])
    return start, max(end, start + 1)


def _token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_inputs(
    rubric: Rubric,
    inputs: Mapping[str, str],
    tokenizer: Any,
    max_tokens: int,
    variant: PromptVariant = DEFAULT_VARIANT,
) -> dict[str, str]:
    """Trim inputs so the prompt fits ``max_tokens``.

    The rule: the target input (answer, summary) is kept whole; the other inputs are cut from their end,
    in rubric order (the context first), each cut marked with ``" [...]"``. Only if the prompt still does
    not fit is the target cut, from its end, as a last resort (logged).
    """
    fitted = dict(inputs)
    order = [i.name for i in rubric.inputs if not i.target] + [rubric.target.name]
    for name in order:  # each input is cut at most once, in order, until the prompt fits
        excess = _token_count(tokenizer, render_prompt(rubric, fitted, tokenizer, variant)) - max_tokens
        if excess <= 0:
            return fitted
        ids = tokenizer(fitted[name], add_special_tokens=False)["input_ids"]
        if len(ids) <= 8:  # too short to be worth cutting
            continue
        if name == rubric.target.name:
            log.warning("prompt still %d tokens over the limit: trimming the %s input as well", excess, name)
        keep = max(0, len(ids) - excess - 8)
        fitted[name] = (tokenizer.decode(ids[:keep]) if keep else "") + TRUNCATION_MARK
    excess = _token_count(tokenizer, render_prompt(rubric, fitted, tokenizer, variant)) - max_tokens
    if excess > 0:
        log.warning(
            "prompt is %d tokens over MAX_INPUT_TOKENS even with every input trimmed (the rubric text "
            "alone is too long)",
            excess,
        )
    return fitted
