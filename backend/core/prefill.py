"""Which dimensions a version pre-fills in Label Studio, decided from its evidence and its uncertainty.

A constant or a wrong pre-annotation does harm: annotators anchor on it. So ``/predict`` pre-fills a dimension
only where the active version has *shown* agreement with the humans. The evidence of a version is stored per
dimension in its ``metrics.json`` (``entry["evidence"]``, ``backend.core.evidence.Evidence``): alpha against the
human consensus on tasks the version did not learn from (out-of-fold predictions over every annotated task for
a feature head, the held-out tasks for a LoRA adapter) with a 95% interval from a bootstrap that resamples
groups of related tasks. The rule is ``PrefillPolicy.rule`` (``PREFILL_MIN_ALPHA``):

* ``interval`` (default): the interval's lower bound is above ``PREFILL_FLOOR`` (0), on at least
  ``EVIDENCE_MIN_TASKS`` tasks in ``EVIDENCE_MIN_GROUPS`` groups, and the version's labels on them are not
  nearly constant (nor is the dimension's head one that found no signal);
* ``majority``: alpha above the majority label's alpha on the same tasks (a point estimate; kept as an option);
* a number, e.g. ``0.2``: alpha at least that (a point estimate);
* ``off``: every dimension is pre-filled.

A version without any evidence (``v0`` before the project's first training run) pre-fills nothing unless
``PREFILL_UNEVALUATED=true``; its reason says how many annotated tasks the gate needs.

``PrefillPolicy.family_proven`` is the same gate on each dimension's *family* interval
(``entry["evidence_family"]``: the one-sided ``FAMILY_LEVEL`` / dimensions bound, Holm's first step): promotion
needs at least one dimension there, so a version without signal is promoted at most ``FAMILY_LEVEL`` (5%) of
the time, however many dimensions it has. Pure module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.core.evidence import Evidence
from backend.core.metrics import dimension_alpha, finite


@dataclass(frozen=True)
class PrefillDecision:
    """Whether a dimension is pre-filled, and why (shown by ``/versions`` and the report)."""

    prefilled: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"prefilled": self.prefilled, "reason": self.reason}


@dataclass(frozen=True)
class PrefillPolicy:
    """How much evidence a dimension needs before ``/predict`` pre-fills it (every field is a setting)."""

    rule: str | float = "interval"
    floor: float = 0.0
    min_tasks: int = 10
    min_groups: int = 5
    unevaluated: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> PrefillPolicy:
        return cls(
            rule=settings.prefill_rule,
            floor=float(settings.prefill_floor),
            min_tasks=int(settings.evidence_min_tasks),
            min_groups=int(settings.evidence_min_groups),
            unevaluated=bool(settings.prefill_unevaluated),
        )

    def enough(self, evidence: Evidence) -> bool:
        return evidence.tasks >= self.min_tasks and evidence.groups >= self.min_groups

    def shortfall(self, evidence: Evidence) -> str:
        """``needs at least 10 tasks in 5 groups, has 4 in 2: about 6 more annotated tasks``."""
        more_tasks = max(0, self.min_tasks - evidence.tasks)
        per_group = evidence.tasks / evidence.groups if evidence.groups else 1.0
        more_groups = math.ceil(max(0, self.min_groups - evidence.groups) * per_group)
        return (
            f"needs at least {self.min_tasks} tasks in {self.min_groups} groups, has {evidence.tasks} in "
            f"{evidence.groups}: about {max(more_tasks, more_groups)} more annotated task(s) of new groups"
        )

    def unevaluated_decision(self) -> PrefillDecision:
        """A version with no evidence: pre-filled only with ``PREFILL_UNEVALUATED=true``; otherwise the reason
        says what the gate needs (annotated tasks in groups, then a training run that measures the version)."""
        if self.unevaluated:
            return PrefillDecision(True, "no evidence yet; pre-filled (PREFILL_UNEVALUATED=true)")
        needed = self.shortfall(Evidence(None, None, None, 0, 0))
        return PrefillDecision(
            False,
            f"no evidence yet; left empty until a training run measures it: {needed}, "
            "then Start Training (or TRAIN_MIN_NEW_ANNOTATIONS submissions)",
        )

    def decide(self, dimensions: Sequence[str], evaluation: Mapping[str, Any] | None) -> dict[str, PrefillDecision]:
        """One decision per dimension from a version's evaluation (``worker.evaluate`` metrics), or ``None``
        when the version has none."""
        per_dim = (evaluation or {}).get("dimensions") or {}
        n = (evaluation or {}).get("n_tasks")
        out: dict[str, PrefillDecision] = {}
        for name in dimensions:
            entry = per_dim.get(name)
            if self.rule == "off":
                out[name] = PrefillDecision(True, "PREFILL_MIN_ALPHA=off: every dimension is pre-filled")
            elif entry is None:
                out[name] = self.unevaluated_decision()
            elif self.rule == "interval":
                out[name] = self._by_interval(entry)
            else:
                out[name] = self._by_point(entry, n)
        return out

    def family_proven(self, dimensions: Sequence[str], evaluation: Mapping[str, Any] | None) -> list[str]:
        """The dimensions that pass the interval gate on their family interval (``evidence_family``: the lower
        bound at one-sided ``FAMILY_LEVEL`` divided by the number of dimensions): a candidate is promoted only
        when at least one does (Holm across dimensions: its first step decides whether any hypothesis falls)."""
        per_dim = (evaluation or {}).get("dimensions") or {}
        return [
            name
            for name in dimensions
            if per_dim.get(name) is not None and self._by_interval(per_dim[name], "evidence_family").prefilled
        ]

    def _by_interval(self, entry: Mapping[str, Any], key: str = "evidence") -> PrefillDecision:
        evidence = Evidence.from_dict(entry.get(key))
        if evidence is None:
            return PrefillDecision(
                False,
                "no alpha interval stored for this version (trained before intervals were recorded); "
                "left empty: retrain with Start Training",
            )
        described = evidence.describe()
        if entry.get("head_constant"):
            return PrefillDecision(False, "the feature head found no signal for it (it predicts the humans' mean)")
        if entry.get("nearly_constant"):
            return PrefillDecision(False, f"its labels are nearly constant on the evidence tasks; {described}")
        if not self.enough(evidence):
            return PrefillDecision(False, f"too little evidence: {self.shortfall(evidence)}; {described}")
        if evidence.low is None:
            return PrefillDecision(False, f"no interval: {described}")
        if evidence.low > self.floor:
            return PrefillDecision(True, f"{described}: lower bound {evidence.low:.3f} > PREFILL_FLOOR={self.floor:g}")
        return PrefillDecision(False, f"{described}: lower bound {evidence.low:.3f} <= PREFILL_FLOOR={self.floor:g}")

    def _by_point(self, entry: Mapping[str, Any], n: Any) -> PrefillDecision:
        alpha = dimension_alpha(entry)
        if alpha is None:
            return PrefillDecision(False, f"alpha undefined on the {n} evidence tasks")
        if self.rule == "majority":
            reference = finite(entry.get("alpha_majority"))
            if reference is None or alpha > reference:
                ref = "undefined" if reference is None else f"{reference:.3f}"
                return PrefillDecision(
                    True, f"alpha {alpha:.3f} > majority label's {ref} on {n} tasks (point estimates)"
                )
            return PrefillDecision(
                False, f"alpha {alpha:.3f} <= majority label's {reference:.3f} on {n} tasks (point estimates)"
            )
        threshold = float(self.rule)
        ok = alpha >= threshold
        return PrefillDecision(
            ok, f"alpha {alpha:.3f} {'>=' if ok else '<'} PREFILL_MIN_ALPHA={threshold:g} on {n} tasks (point estimate)"
        )
