"""A naive baseline for the speed benchmark: free generation plus a regex, one ``model.generate`` per task.

This is what the judge deliberately does not do. The prompt is the judge's own (``render_prompt``: the
instruction, the criteria and the "Reply with exactly these lines" block); the model then generates
greedily, ``max_new_tokens_per_dimension`` tokens per dimension, and each ``<dimension>: <value>`` line is
parsed with a regex and normalised to one of the dimension's labels. A dimension whose line is missing or
whose value is not a valid label is ``None``, and the task is flagged ``parse_failed``.

    from support.naive import load_naive, naive_score
    model, tokenizer = load_naive(settings)
    results = naive_score(model, tokenizer, rubric, inputs)   # list[NaiveResult]
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.core.prompts import fit_inputs, render_prompt
from backend.core.rubric import Rubric
from backend.settings import Settings


@dataclass(frozen=True)
class NaiveResult:
    labels: dict[str, str | None]  # dimension -> label, None when it could not be parsed
    parse_failed: bool  # any dimension missing or invalid
    text: str  # the generated reply
    seconds: float


def parse_reply(rubric: Rubric, text: str) -> dict[str, str | None]:
    """Each dimension's label from ``name: value`` lines (first match wins; case-insensitive name)."""
    labels: dict[str, str | None] = {}
    for dim in rubric.dimensions:
        match = re.search(
            rf"^[\s*\-]*{re.escape(dim.name)}\**\s*[:=]\s*\**\s*([^\s,;*]+)", text, flags=re.IGNORECASE | re.MULTILINE
        )
        raw = match.group(1).rstrip(".") if match else None
        labels[dim.name] = dim.normalise(raw) if raw is not None else None
    return labels


def load_naive(settings: Settings) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``settings.base_model``, loaded as the judge loads it."""
    from backend.model.model_loader import load_base_model

    model, tokenizer, _ = load_base_model(settings)
    return model, tokenizer


def naive_score(
    model: Any,
    tokenizer: Any,
    rubric: Rubric,
    inputs: Sequence[Mapping[str, str]],
    *,
    max_new_tokens_per_dimension: int = 8,
    max_input_tokens: int = 2048,
) -> list[NaiveResult]:
    """One greedy ``generate`` per task (no batching, no cache reuse across tasks), parsed with a regex."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results = []
    for item in inputs:
        started = time.monotonic()
        fitted = fit_inputs(rubric, item, tokenizer, max_input_tokens)
        prompt = render_prompt(rubric, fitted, tokenizer)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens_per_dimension * len(rubric.dimensions),
                pad_token_id=pad,
            )
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        labels = parse_reply(rubric, text)
        results.append(NaiveResult(labels, any(v is None for v in labels.values()), text, time.monotonic() - started))
    return results
