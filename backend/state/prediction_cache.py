"""Per-task prediction cache in Redis: the same task data under the same model version costs nothing twice.

Key: ``rubric-judge:<base>:pred:<sha256>`` of the model version (base model, project, adapter number), the
rubric's name and content, ``MAX_INPUT_TOKENS`` (it decides truncation), ``MODEL_PRECISION`` and the task's
input texts. Value: the ``TaskScore`` as JSON (label, probabilities, expected value, log-probability per
dimension), kept for ``PREDICTION_CACHE_TTL`` seconds. A new version is a new key, so promoting or training
never serves stale scores. Redis failures never fail a request: the cache logs once and the judge scores as if
it were empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from backend.core.rubric import Rubric
from backend.core.scores import DimensionScore, TaskScore
from backend.state.redis_conn import redis_key

log = logging.getLogger(__name__)


def rubric_fingerprint(rubric: Rubric) -> str:
    """A hash of everything in a rubric that shapes the prompt or the labels (not where its file lives)."""
    text = repr((rubric.name, rubric.kind, rubric.inputs, rubric.dimensions, rubric.instruction, rubric.system_prompt))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def score_to_json(score: TaskScore) -> str:
    return json.dumps(
        {
            name: {"label": d.label, "probs": dict(d.probs), "expected": d.expected, "logprob": d.logprob}
            for name, d in score.dimensions.items()
        }
    )


def score_from_json(raw: str | bytes) -> TaskScore:
    data = json.loads(raw)
    return TaskScore(
        dimensions={
            name: DimensionScore(label=d["label"], probs=d["probs"], expected=d["expected"], logprob=d["logprob"])
            for name, d in data.items()
        }
    )


class PredictionCache:
    """Get and put ``TaskScore``s by (model version, rubric, inputs); every Redis error degrades to a miss."""

    def __init__(
        self,
        redis: Any,
        base_name: str,
        ttl_s: int,
        max_input_tokens: int,
        precision: str = "auto",
        read: str = "one-pass",
    ) -> None:
        self.redis = redis
        self.precision = precision  # MODEL_PRECISION: bf16 and fp32 can pick different labels on near-ties
        self.read = read  # SCORE_READ: the base model's labels differ between the reads
        self.prefix = redis_key(base_name, "pred") + ":"
        self.ttl_s = ttl_s
        self.max_input_tokens = max_input_tokens
        self._warned = False

    def key(self, model_version: str, rubric: Rubric, inputs: Mapping[str, str]) -> str:
        payload = json.dumps(
            [
                model_version,
                rubric.name,
                rubric_fingerprint(rubric),
                self.max_input_tokens,
                self.precision,
                self.read,
                [inputs[name] for name in rubric.input_names],
            ],
            ensure_ascii=False,
        )
        return self.prefix + hashlib.sha256(payload.encode()).hexdigest()

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._warned:
            log.warning(
                "prediction cache unavailable (%s on %s: %s); scoring without it", type(exc).__name__, what, exc
            )
            self._warned = True

    def get_many(self, keys: Sequence[str]) -> list[TaskScore | None]:
        """Cached scores for ``keys`` (``None`` for misses, and for all of them when Redis fails)."""
        if not keys:
            return []
        try:
            raw = self.redis.mget(list(keys))
        except Exception as exc:  # any Redis/network error: a miss
            self._failed("read", exc)
            return [None] * len(keys)
        out: list[TaskScore | None] = []
        for value in raw:
            try:
                out.append(score_from_json(value) if value is not None else None)
            except (ValueError, KeyError, TypeError):
                out.append(None)
        return out

    def put_many(self, items: Sequence[tuple[str, TaskScore]]) -> None:
        if not items:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, score in items:
                pipe.set(key, score_to_json(score), ex=self.ttl_s)
            pipe.execute()
            self._warned = False
        except Exception as exc:
            self._failed("write", exc)
