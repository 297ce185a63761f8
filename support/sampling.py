"""Subsampling for the benchmarks: class-tempered subsamples of a classification data set (the quality
benchmark's training sizes), and a few annotations per task drawn from many (the learning curve of a team that
annotates each task once)."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence

from backend.core.rubric import Rubric
from worker.dataset import record_consensus
from worker.source import Record

log = logging.getLogger(__name__)


def class_of(rubric: Rubric, record: Record) -> str:
    """The consensus label of a single-dimension classification record ("" when unlabelled)."""
    return record_consensus(rubric, record).get(rubric.dimensions[0].name, "")


def tempered_sample(
    rubric: Rubric, records: Sequence[Record], size: int, power: float, rng: random.Random
) -> list[Record]:
    """``size`` records whose classes get quotas proportional to count ** ``power`` (a class with fewer
    records than its quota gives all of them; the rest is shared among the others)."""
    by_class: dict[str, list[Record]] = {}
    for record in records:
        by_class.setdefault(class_of(rubric, record), []).append(record)
    quotas: dict[str, int] = {}
    left, open_classes = size, dict(by_class)
    while open_classes:
        weights = {c: len(rs) ** power for c, rs in open_classes.items()}
        total = sum(weights.values())
        full = [c for c, rs in open_classes.items() if len(rs) <= left * weights[c] / total]
        if not full:
            shares = {c: left * w / total for c, w in weights.items()}
            quotas.update({c: int(s) for c, s in shares.items()})
            for c in sorted(shares, key=lambda c: shares[c] - int(shares[c]), reverse=True)[
                : left - sum(int(s) for s in shares.values())
            ]:
                quotas[c] += 1  # largest remainders, so the quotas add up to ``size``
            break
        for c in full:
            quotas[c] = len(open_classes.pop(c))
            left -= quotas[c]
    sample = [r for c in sorted(quotas) for r in rng.sample(by_class[c], quotas[c])]
    rng.shuffle(sample)
    log.info("class quotas (count ** %.2f): %s", power, dict(sorted(quotas.items())))
    return sample


def keep_annotations(records: Sequence[Record], per_task: int, seed: int) -> tuple[list[Record], dict[str, list[str]]]:
    """Each record with ``per_task`` of its annotations drawn at random (all of them where it has no more),
    in their original order, and the draw: task id -> the annotators kept.

    A task's draw depends only on ``seed`` and its task id (``random.Random(f"{seed}:{task_id}")``), not on the
    other records or their order: the same seed keeps the same annotations of a task in any subset."""
    if per_task < 1:
        raise ValueError(f"annotations per task: {per_task}, expected at least 1")
    kept_records, draw = [], {}
    for record in records:
        kept = record.annotations
        if len(kept) > per_task:
            chosen = sorted(random.Random(f"{seed}:{record.task_id}").sample(range(len(kept)), per_task))
            kept = tuple(kept[i] for i in chosen)
        kept_records.append(dataclasses.replace(record, annotations=kept))
        draw[record.task_id] = [a.annotator for a in kept]
    return kept_records, draw
