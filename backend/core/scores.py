"""What the judge answers: a label distribution per dimension of a task (``DimensionScore``, ``TaskScore``),
and the LM's own features of a task for the feature head (``TaskFeatures``). No torch: the prediction cache,
the micro-batcher and the reports read these without loading a model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.core.rubric import Dimension


@dataclass(frozen=True)
class DimensionScore:
    """The judge's answer for one dimension of one task."""

    label: str
    probs: Mapping[str, float]
    expected: float | None = None  # expected value for scale dimensions
    logprob: float | None = None  # unnormalised log P(label tokens | prompt, earlier labels) under the model

    @property
    def confidence(self) -> float:
        return self.probs[self.label]


@dataclass(frozen=True)
class TaskScore:
    """The judge's answer for one task: a score per dimension."""

    dimensions: Mapping[str, DimensionScore]

    @property
    def labels(self) -> dict[str, str]:
        return {name: d.label for name, d in self.dimensions.items()}

    @property
    def confidence(self) -> float:
        """Mean probability of the chosen labels over dimensions."""
        values = [d.confidence for d in self.dimensions.values()]
        return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class TaskFeatures:
    """The judge LM's own features of one task (``Judge.score_with_features``), for the feature head.

    ``shared``: the hidden states of the middle and the last layer averaged over the target input's tokens,
    then three statistics of the target under the LM (mean and lowest-decile token log-probability, log of
    its token count). ``dimensions[name]``: the middle- and last-layer hidden states at the position that
    predicts the dimension's label, then the judge's own label distribution there."""

    shared: Any
    dimensions: Mapping[str, Any]
    #: ``backend.core.lexical.lexical_features`` of the task (from its text, not the model; None where not
    #: computed)
    lexical: Any = None

    def vector(self, name: str, selection: str = "all", lexical: bool = False) -> Any:
        """The feature vector of dimension ``name``: ``target`` (the shared features: the target-pooled states
        and LM statistics) or ``all`` (those, then the dimension's own label-position states and
        distribution); with ``lexical``, the task's lexical features after them."""
        parts = [self.shared] if selection == "target" else [self.shared, self.dimensions[name]]
        if lexical:
            if self.lexical is None:
                raise ValueError("these features carry no lexical features (TaskFeatures.lexical)")
            parts.append(self.lexical)
        return np.concatenate(parts)


def dimension_score(dim: Dimension, probs: list[float], chosen: int, logprob: float) -> DimensionScore:
    rounded = {label: round(p, 6) for label, p in zip(dim.labels, probs, strict=True)}
    expected = None
    if dim.values is not None:
        expected = round(sum(v * p for v, p in zip(dim.values, probs, strict=True)), 6)
    return DimensionScore(label=dim.labels[chosen], probs=rounded, expected=expected, logprob=logprob)
