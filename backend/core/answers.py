"""What the serving routes answer, as typed dicts: the JSON shapes ``Service`` hands to ``backend.web`` and the
offline ``predict`` command (the JSON itself is unchanged: a ``TypedDict`` is a plain dict at run time)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class SetupAnswer(TypedDict):
    """``/setup``: the version Label Studio records and the rubric chosen."""

    model_version: str
    rubric: str


class Prediction(TypedDict):
    """One Label Studio prediction: the ``choices`` results of the pre-filled dimensions, their mean
    probability, the version that made it."""

    result: list[dict[str, Any]]
    score: float
    model_version: str


class PredictTiming(TypedDict):
    """``/predict``'s ``timing``: how many tasks were scored and deferred within the budget."""

    tasks: int
    scored: int
    deferred: int
    budget_s: float | None
    background_job: NotRequired[str | None]
    seconds: NotRequired[float]


class PredictAnswer(TypedDict):
    """``/predict``: one item per task, in order (a ``Prediction``, or ``[]`` for a deferred task)."""

    results: list[Prediction | list[Any]]
    timing: PredictTiming
