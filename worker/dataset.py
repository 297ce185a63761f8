"""Records -> training examples: split by task (never by example), augment the training part only.

Targets: one example per (task, annotator) (``each``), one per task with the consensus labels
(``consensus``), or one per task whose loss at each label is the cross-entropy against the annotators'
label distribution (``distribution``: the expected loss of ``each`` at a third of its cost with three
annotators, and the distribution that expected-score decoding reads).

Augmentation (training only, seeded): a paraphrased instruction from the rubric, a permuted order of the
input fields, a shuffled label list (classification) and token dropout on the task's input tokens with a
real replacement token. Targets are the exact token sequence the judge scores (``backend.core.prompts``).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.core.prompts import DEFAULT_VARIANT, PromptVariant, dimension_prefix, encode_prompt, fit_inputs, label_text
from backend.core.rubric import Dimension, Rubric
from worker.source import Record

log = logging.getLogger(__name__)
IGNORE = -100
TARGET_MODES = ("each", "consensus", "distribution")


@dataclass(frozen=True)
class AugmentConfig:
    paraphrase: bool = True
    permute_inputs: bool = True
    shuffle_labels: bool = True
    token_dropout_rate: float = 0.03  # share of input tokens replaced, when dropout fires
    token_dropout_prob: float = 0.5  # probability that dropout fires for an example

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(False, False, False, 0.0, 0.0)


def split_records(
    records: Sequence[Record], heldout_fraction: float, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Deterministic split by ``Record.split_key`` (the task, or its group): a key's tasks stay together.

    Keys are ordered by a seeded hash, so the split does not depend on the order of the input.
    """
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"held-out fraction {heldout_fraction} must be in [0, 1)")
    keys = sorted({r.split_key for r in records}, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n_heldout = round(len(keys) * heldout_fraction)
    if heldout_fraction > 0 and len(keys) >= 2:
        n_heldout = min(max(n_heldout, 1), len(keys) - 1)
    heldout_keys = set(keys[:n_heldout])
    train = [r for r in records if r.split_key not in heldout_keys]
    heldout = [r for r in records if r.split_key in heldout_keys]
    return train, heldout


def consensus_label(dim: Dimension, labels: Sequence[str]) -> str | None:
    """The label most annotators gave (scales: the label nearest the mean; ties to the lower label)."""
    if not labels:
        return None
    if dim.values is not None:
        mean = sum(int(label) for label in labels) / len(labels)
        return str(min(dim.values, key=lambda v: (abs(v - mean), v)))
    counts = Counter(labels)
    best = max(counts.values())
    return next(label for label in dim.labels if counts.get(label) == best)


def record_consensus(rubric: Rubric, record: Record) -> dict[str, str]:
    out = {}
    for dim in rubric.dimensions:
        label = consensus_label(dim, [a.labels[dim.name] for a in record.annotations if dim.name in a.labels])
        if label is not None:
            out[dim.name] = label
    return out


@dataclass(frozen=True)
class Target:
    """What one example teaches: a label per dimension, and which dimensions are supervised."""

    record: Record
    labels: Mapping[str, str]
    supervised: frozenset[str]
    #: per supervised dimension, the share of the annotators who gave each label (``distribution`` targets)
    distribution: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def label_distribution(rubric: Rubric, record: Record) -> dict[str, dict[str, float]]:
    """Per labelled dimension: label -> share of the task's annotators who gave it."""
    out: dict[str, dict[str, float]] = {}
    for dim in rubric.dimensions:
        counts = Counter(a.labels[dim.name] for a in record.annotations if dim.name in a.labels)
        total = sum(counts.values())
        if total:
            out[dim.name] = {label: counts[label] / total for label in dim.labels if counts[label]}
    return out


def targets_for(rubric: Rubric, records: Sequence[Record], mode: str = "each") -> list[Target]:
    """``each``: one target per (task, annotator); an annotator's unscored dimension is filled with the
    consensus for teacher forcing but not supervised. ``consensus``: one target per task.
    ``distribution``: one target per task, the consensus for teacher forcing and the annotators' label
    distribution as the target of each supervised label."""
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown target mode {mode!r}: use one of {', '.join(TARGET_MODES)}")
    out: list[Target] = []
    for record in records:
        agreed = record_consensus(rubric, record)
        if not agreed:
            continue
        fill = {d.name: agreed.get(d.name, d.labels[len(d.labels) // 2]) for d in rubric.dimensions}
        if mode == "consensus":
            out.append(Target(record, fill, frozenset(agreed)))
            continue
        if mode == "distribution":
            out.append(Target(record, fill, frozenset(agreed), label_distribution(rubric, record)))
            continue
        for annotation in record.annotations:
            labels = {**fill, **annotation.labels}
            out.append(Target(record, labels, frozenset(annotation.labels)))
    return out


def sample_variant(rubric: Rubric, rng: random.Random, config: AugmentConfig) -> PromptVariant:
    """A random prompt variant for one training example."""
    instruction = None
    if config.paraphrase and rubric.paraphrases:
        choice = rng.randrange(len(rubric.paraphrases) + 1)
        instruction = None if choice == 0 else rubric.paraphrases[choice - 1]
    order = None
    if config.permute_inputs and len(rubric.inputs) > 1 and rng.random() < 0.5:
        names = list(rubric.input_names)
        rng.shuffle(names)
        order = tuple(names)
    label_order = None
    if config.shuffle_labels and rubric.kind == "classification":
        label_order = {}
        for dim in rubric.dimensions:
            labels = list(dim.labels)
            rng.shuffle(labels)
            label_order[dim.name] = tuple(labels)
    return PromptVariant(instruction=instruction, input_order=order, label_order=label_order)


def replacement_token(tokenizer: Any) -> int | None:
    """A real token to put in place of dropped ones: unk, else pad (when distinct from eos); None = delete."""
    for candidate in (tokenizer.unk_token_id, tokenizer.pad_token_id):
        if candidate is not None and candidate != tokenizer.eos_token_id:
            return int(candidate)
    return None


@dataclass(frozen=True)
class SoftLabel:
    """A label position trained against a distribution: ``weights[k]`` on token ``token_ids[k]``."""

    position: int  # index in ``Example.input_ids`` of the token that tells the labels apart
    token_ids: tuple[int, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on the supervised label tokens
    shared_len: int = 0  # leading tokens that are the rubric's shared prompt part (the same for every task)
    soft: tuple[SoftLabel, ...] = ()  # label positions whose target is a distribution, not labels[position]

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def encode_example(
    rubric: Rubric,
    target: Target,
    tokenizer: Any,
    max_length: int,
    rng: random.Random | None = None,
    augment: AugmentConfig | None = None,
    variant: PromptVariant | None = None,
) -> Example:
    """Prompt tokens + target tokens, segment by segment exactly as the judge reads them; loss only on
    the label tokens of supervised dimensions. Dropout touches only the task part of the prompt.
    ``variant``: the prompt variant to use (default: drawn from ``rng`` when augmenting, else the plain one)."""
    if variant is None:
        augmenting = rng is not None and augment is not None
        variant = sample_variant(rubric, rng, augment) if augmenting else DEFAULT_VARIANT
    completion: list[int] = []
    mask: list[int] = []
    soft: list[SoftLabel] = []  # positions relative to the completion until the prompt is known
    for index, dim in enumerate(rubric.dimensions):
        prefix = tokenizer(dimension_prefix(rubric, index), add_special_tokens=False)["input_ids"]
        label = tokenizer(label_text(target.labels[dim.name]), add_special_tokens=False)["input_ids"]
        supervised = dim.name in target.supervised
        shares = target.distribution.get(dim.name)
        if supervised and shares and len(shares) > 1:
            split = distinguishing_token(tokenizer, dim)
            if split is not None:
                offset, ids = split
                soft.append(
                    SoftLabel(
                        len(completion) + len(prefix) + offset,
                        tuple(ids[label] for label in shares),
                        tuple(shares.values()),
                    )
                )
        completion += list(prefix) + list(label)
        mask += [IGNORE] * len(prefix) + (list(label) if supervised else [IGNORE] * len(label))
    budget = max(16, max_length - len(completion))
    inputs = fit_inputs(rubric, target.record.inputs, tokenizer, budget, variant)
    shared, task = encode_prompt(rubric, inputs, tokenizer, variant)
    if (
        rng is not None
        and augment is not None
        and augment.token_dropout_rate > 0
        and rng.random() < augment.token_dropout_prob
    ):
        task = _dropout(task, rng, augment.token_dropout_rate, replacement_token(tokenizer))
    prompt = shared + task
    return Example(
        input_ids=prompt + completion,
        labels=[IGNORE] * len(prompt) + mask,
        shared_len=len(shared),
        soft=tuple(SoftLabel(len(prompt) + s.position, s.token_ids, s.weights) for s in soft),
    )


def distinguishing_token(tokenizer: Any, dim: Dimension) -> tuple[int, dict[str, int]] | None:
    """Where ``dim``'s labels differ when tokenized (after a common prefix of equal length, one final
    token each, all distinct): that token's offset in the label and each label's token id. None when the
    labels are not told apart by a single token; such a dimension is trained on its consensus label."""
    encoded = {label: list(tokenizer(label_text(label), add_special_tokens=False)["input_ids"]) for label in dim.labels}
    lengths = {len(ids) for ids in encoded.values()}
    if len(lengths) != 1 or 0 in lengths:
        return None
    heads = {tuple(ids[:-1]) for ids in encoded.values()}
    tails = {label: ids[-1] for label, ids in encoded.items()}
    if len(heads) != 1 or len(set(tails.values())) != len(tails):
        return None
    return lengths.pop() - 1, tails


def _dropout(ids: list[int], rng: random.Random, rate: float, replacement: int | None) -> list[int]:
    out = []
    for token in ids:
        if rng.random() < rate:
            if replacement is not None:
                out.append(replacement)
        else:
            out.append(token)
    return out


def describe(train: Sequence[Record], heldout: Sequence[Record], targets: Sequence[Target]) -> dict[str, int]:
    """Counts for logs and reports."""
    annotators = {a.annotator for r in [*train, *heldout] for a in r.annotations}
    return {
        "tasks": len(train) + len(heldout),
        "train_tasks": len(train),
        "heldout_tasks": len(heldout),
        "annotations": sum(len(r.annotations) for r in [*train, *heldout]),
        "annotators": len(annotators),
        "train_examples": len(targets),
        "multi_annotator_heldout_tasks": sum(1 for r in heldout if len(r.annotations) >= 2),
    }
