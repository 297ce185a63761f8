"""Which dimensions a version pre-fills in Label Studio, decided from its held-out evidence.

A constant or a wrong pre-annotation does harm: annotators anchor on it. So ``/predict`` pre-fills a dimension
only where the active version has shown agreement with the humans on held-out tasks: by default, where its
alpha against the human consensus beats the alpha of the majority label (a constant, which tells no task from
another) on the same tasks. The rule is a setting, ``PREFILL_MIN_ALPHA``:

* ``majority`` (default): alpha > the majority label's alpha on the same held-out tasks;
* a number, e.g. ``0.2``: alpha >= that number;
* ``off``: every dimension is pre-filled.

A version without held-out evidence (``v0`` before any training run) pre-fills every dimension unless
``PREFILL_UNEVALUATED=false``. Pure module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.metrics import dimension_alpha, finite

PREFILL_RULES = ("majority", "off")


@dataclass(frozen=True)
class PrefillDecision:
    """Whether a dimension is pre-filled, and why (shown by ``/versions`` and the report)."""

    prefilled: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"prefilled": self.prefilled, "reason": self.reason}


def parse_rule(raw: str) -> str | float:
    """``majority``, ``off`` or a number; ``ValueError`` otherwise."""
    value = raw.strip().lower()
    if value in PREFILL_RULES:
        return value
    number = float(value)
    if not math.isfinite(number) or not -1 <= number <= 1:
        raise ValueError(f"{raw!r} is not in [-1, 1]")
    return number


def decide(
    dimensions: Sequence[str], evaluation: Mapping[str, Any] | None, rule: str | float, unevaluated: bool
) -> dict[str, PrefillDecision]:
    """One decision per dimension from a version's held-out ``evaluation`` (``worker.evaluate`` metrics with
    ``alpha_majority`` per dimension), or ``None`` when the version has none."""
    out: dict[str, PrefillDecision] = {}
    per_dim = (evaluation or {}).get("dimensions") or {}
    n = (evaluation or {}).get("n_tasks")
    for name in dimensions:
        entry = per_dim.get(name)
        if rule == "off":
            out[name] = PrefillDecision(True, "PREFILL_MIN_ALPHA=off: every dimension is pre-filled")
            continue
        if entry is None:
            what = "pre-filled (PREFILL_UNEVALUATED=true)" if unevaluated else "left empty (PREFILL_UNEVALUATED=false)"
            out[name] = PrefillDecision(unevaluated, f"no held-out evidence yet; {what}")
            continue
        alpha = dimension_alpha(entry)
        if alpha is None:
            out[name] = PrefillDecision(False, f"alpha undefined on the {n} held-out tasks")
            continue
        if rule == "majority" and "alpha_majority" not in entry:  # evaluated before the reference was stored
            ok = alpha > 0
            out[name] = PrefillDecision(
                ok,
                f"alpha {alpha:.3f} {'>' if ok else '<='} 0 on {n} held-out tasks "
                "(no majority-label reference stored for this version)",
            )
        elif rule == "majority":
            reference = finite(entry.get("alpha_majority"))
            if reference is None or alpha > reference:
                ref = "undefined" if reference is None else f"{reference:.3f}"
                out[name] = PrefillDecision(True, f"alpha {alpha:.3f} > majority label's {ref} on {n} held-out tasks")
            else:
                out[name] = PrefillDecision(
                    False, f"alpha {alpha:.3f} <= majority label's {reference:.3f} on {n} held-out tasks"
                )
        else:
            threshold = float(rule)
            ok = alpha >= threshold
            out[name] = PrefillDecision(
                ok, f"alpha {alpha:.3f} {'>=' if ok else '<'} PREFILL_MIN_ALPHA={threshold:g} on {n} held-out tasks"
            )
    return out
