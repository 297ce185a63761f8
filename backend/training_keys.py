"""The one list of training settings a user can set, and where: a rubric's ``training:`` block, a ``TRAIN_*``
environment variable (``Settings.train_<name>``), a ``rubric-judge train --<name>`` flag. Every value is a
field of ``worker.train.TrainConfig``, which holds the defaults (``tests/test_rubric.py`` checks the three
agree with this list)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingKey:
    name: str  # the TrainConfig field
    rubric: bool = False  # a rubric's ``training:`` block may set it (a number)
    env: bool = False  # ``TRAIN_<NAME>``; unset or its Settings default means "keep"
    flag: bool = False  # ``rubric-judge train --<name-with-dashes>``


KEYS: tuple[TrainingKey, ...] = (
    TrainingKey("epochs", rubric=True, env=True, flag=True),
    TrainingKey("learning_rate", rubric=True, env=True, flag=True),
    TrainingKey("batch_size", rubric=True, env=True, flag=True),
    TrainingKey("max_length", rubric=True, env=True, flag=True),
    TrainingKey("heldout_fraction", rubric=True, env=True, flag=True),
    TrainingKey("targets", env=True, flag=True),
    TrainingKey("precision", env=True, flag=True),
    TrainingKey("method", env=True, flag=True),
    TrainingKey("lora_r", rubric=True, flag=True),
    TrainingKey("lora_alpha", rubric=True, flag=True),
    TrainingKey("seed", rubric=True, flag=True),
    TrainingKey("lora_dropout", rubric=True),
    TrainingKey("micro_batch_size", rubric=True),
    TrainingKey("warmup_ratio", rubric=True),
    TrainingKey("weight_decay", rubric=True),
    TrainingKey("token_dropout_rate", rubric=True),
    TrainingKey("token_dropout_prob", rubric=True),
    TrainingKey("head_folds", rubric=True),
)

RUBRIC_KEYS = frozenset(k.name for k in KEYS if k.rubric)
ENV_KEYS = tuple(k.name for k in KEYS if k.env)
FLAG_KEYS = tuple(k.name for k in KEYS if k.flag)
