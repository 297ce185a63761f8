"""Cheap lexical features of a task's target against its other inputs, for the feature head.

The LM's pooled states see the target and its context, but a relation between the two (how much of the
summary's wording the dialogue supports, how much of the dialogue the summary covers, how long it is against
its source, whether it repeats itself) reaches them only indirectly. These few numbers state it directly, read
from the text alone (no model, microseconds per task), so a head fitted on a few dozen annotations can use a
handful of strong inputs instead of a thousand weak ones.

Pure module: no torch, no numpy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from backend.core.rubric import Rubric

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_SENTENCE = re.compile(r"[.!?]+(?:\s|$)")

#: the names of ``lexical_features``' values, in order
LEXICAL_NAMES = (
    "target words (log)",
    "context words (log)",
    "target/context length (log ratio)",
    "target words found in the context",
    "target word pairs found in the context",
    "context words covered by the target",
    "repeated word pairs in the target",
    "distinct words in the target",
    "target sentences (log)",
    "mean target word length",
)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; an inner apostrophe kept)."""
    return [w.lower() for w in _WORD.findall(text)]


def _share(items: list, pool: set) -> float:
    return sum(1 for item in items if item in pool) / len(items) if items else 0.0


def lexical_features(rubric: Rubric, inputs: Mapping[str, str]) -> list[float]:
    """``LEXICAL_NAMES``' values for one task: its target input against the rubric's other inputs joined. A
    rubric with a single input has no context: the relation features are then 0."""
    target_text = inputs.get(rubric.target.name, "") or ""
    context_text = "\n".join(inputs.get(i.name, "") or "" for i in rubric.inputs if i.name != rubric.target.name)
    target, context = words(target_text), words(context_text)
    pairs = list(zip(target[:-1], target[1:], strict=True))
    context_words = set(context)
    context_pairs = set(zip(context[:-1], context[1:], strict=True))
    content = {w for w in context_words if len(w) > 3}
    return [
        math.log1p(len(target)),
        math.log1p(len(context)),
        math.log1p(len(target)) - math.log1p(len(context)),
        _share(target, context_words),
        _share(pairs, context_pairs),
        len(content & set(target)) / len(content) if content else 0.0,
        1.0 - len(set(pairs)) / len(pairs) if pairs else 0.0,
        len(set(target)) / len(target) if target else 0.0,
        math.log1p(max(1, len(_SENTENCE.findall(target_text.strip() + " "))) if target else 0),
        sum(len(w) for w in target) / len(target) if target else 0.0,
    ]
