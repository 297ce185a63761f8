"""LoRA / QLoRA training with completion-only loss. A loop a reader can hold in their head.

Every hyperparameter lives in ``TrainConfig``: defaults from the paper (r=16, alpha=32, all attention and
MLP projections), overridden by the rubric's ``training:`` block, then by the environment/CLI.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from backend.core.rubric import Rubric
from backend.model.judge import cache_argument
from backend.model.padding import left_pad
from worker.dataset import (
    IGNORE,
    TARGET_MODES,
    AugmentConfig,
    Example,
    Target,
    distinguishing_token,
    encode_example,
    sample_variant,
)

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Progress = Callable[[dict[str, Any]], None]


METHODS = ("auto", "head", "lora")


@dataclass(frozen=True)
class TrainConfig:
    #: ``head``: the feature head on the base model's own features (``backend.model.head``, seconds after one
    #: scoring pass); ``lora``: a LoRA adapter; ``auto``: ``head`` for rating rubrics (where LoRA learned only
    #: the label prior, benchmarks/RESULTS.md), ``lora`` for classification rubrics.
    method: str = "auto"
    head_folds: int = 5  # cross-validation folds of the feature head (ridge strength and calibration)
    #: the feature head's inputs: ``target`` (hidden states pooled over the target input and its LM statistics;
    #: the best on DialSummEval dev), ``all`` (also each dimension's label-position states and the judge's own
    #: label distribution; the better on GoEmotions-Ekman's selection rows) or ``auto``: ``target`` for rating
    #: rubrics, ``all`` for classification rubrics
    head_features: str = "auto"
    #: the feature head also reads ``backend.core.lexical``'s features of the target against the other inputs
    #: (and may choose them alone with the LM statistics, a subset of their own); on by default: DialSummEval dev
    #: curves c4-dev-* (benchmarks/RESULTS.md), better at 40 to 320 tasks, equal at 980
    head_lexical: bool = True
    #: a rating dimension's head may learn from the rubric's other rating dimensions too
    #: (``backend.model.head.SHARE_BLENDS``, chosen per dimension by cross-validation); off by default: no gain
    #: on the DialSummEval dev curves, a loss in the queue's order with one annotator
    head_share: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    epochs: int = 3
    learning_rate: float = 2e-4
    batch_size: int = 8
    micro_batch_size: int = 4  # examples per forward pass; gradients accumulate up to batch_size
    share_prefix: bool = True  # one forward/backward of the shared prompt part per micro-batch (exact)
    max_length: int = 2048
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    heldout_fraction: float = 0.2
    token_dropout_rate: float = 0.03
    token_dropout_prob: float = 0.5
    augment: bool = True
    targets: str = "each"
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; LoRA weights and optimizer stay fp32)
    seed: int = 3407

    @classmethod
    def build(cls, rubric: Rubric, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """Defaults, then ``rubric.training``, then ``overrides`` (None values ignored); validated."""
        names = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for source in (rubric.training, overrides or {}):
            for key, value in source.items():
                if value is None:
                    continue
                if key not in names:
                    raise ValueError(f"unknown training setting {key!r}")
                values[key] = value
        config = replace(cls(), **values)
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            (self.lora_r >= 1, "lora_r must be >= 1"),
            (self.lora_alpha > 0, "lora_alpha must be > 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (0 < self.learning_rate < 1, "learning_rate must be in (0, 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.micro_batch_size >= 1, "micro_batch_size must be >= 1"),
            (self.max_length >= 64, "max_length must be >= 64"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (0 <= self.heldout_fraction < 1, "heldout_fraction must be in [0, 1)"),
            (0 <= self.token_dropout_rate < 1, "token_dropout_rate must be in [0, 1)"),
            (0 <= self.token_dropout_prob <= 1, "token_dropout_prob must be in [0, 1]"),
            (self.targets in TARGET_MODES, f"targets must be one of {', '.join(TARGET_MODES)}"),
            (self.precision in ("auto", "fp32", "bf16"), "precision must be 'auto', 'fp32' or 'bf16'"),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.head_folds >= 2, "head_folds must be >= 2"),
            (self.head_features in ("auto", "target", "all"), "head_features must be 'auto', 'target' or 'all'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"training setting: {message}")

    @property
    def augmentation(self) -> AugmentConfig:
        if not self.augment:
            return AugmentConfig.off()
        return AugmentConfig(token_dropout_rate=self.token_dropout_rate, token_dropout_prob=self.token_dropout_prob)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def head_features_for(self, rubric: Rubric) -> str:
        """The feature head's inputs for this rubric: ``auto`` resolved by the rubric's kind."""
        if self.head_features != "auto":
            return self.head_features
        return "target" if rubric.kind == "scores" else "all"

    def method_for(self, rubric: Rubric) -> str:
        """The method this run uses: ``auto`` resolved by the rubric's kind."""
        if self.method != "auto":
            return self.method
        return "head" if rubric.kind == "scores" else "lora"


def attach_lora(model: Any, config: TrainConfig, quantized: bool) -> Any:
    """Wrap ``model`` with a fresh trainable LoRA adapter on every attention and MLP projection it has."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in present]
    if not targets:
        raise ValueError(f"the base model has none of the LoRA target modules {LORA_TARGETS}")
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def bf16_supported(device: Any) -> bool:
    """Whether bf16 matmuls are fast on ``device``: a CUDA GPU that supports them, or a CPU with AVX512-BF16
    or AMX (oneDNN's bf16 kernels; on other CPUs bf16 is emulated and slower than fp32)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(config: TrainConfig, device: Any) -> Any:
    """The autocast dtype for training (None: plain fp32). ``auto`` picks bf16 where it is fast."""
    import torch

    if config.precision == "fp32" or (config.precision == "auto" and not bf16_supported(device)):
        return None
    return torch.bfloat16


def _shared_prefix(batch: Sequence[Example]) -> int:
    """Length of the prompt part every row of ``batch`` shares token for token (0: none, or one row)."""
    if len(batch) < 2:
        return 0
    length = min(e.shared_len for e in batch)
    first = batch[0].input_ids[:length]
    for example in batch:
        if example.input_ids[:length] != first or any(x != IGNORE for x in example.labels[:length]):
            return 0
    return length


def _collate(batch: Sequence[Example], pad_id: int, share_prefix: bool = False) -> dict[str, Any]:
    """Left-padded batch (as at inference), so every row's completion sits at the end.

    With ``share_prefix`` and a prompt part common to all rows, that part is cut off and returned once as
    ``prefix_ids`` (1 x P): ``_batch_loss`` runs it once and feeds its KV cache to every row, as the judge's
    prefix cache does at inference. The loss and gradients are those of the full rows (tested)."""
    import torch

    shared = _shared_prefix(batch) if share_prefix else 0
    ids, mask, positions = left_pad([e.input_ids[shared:] for e in batch], pad_id, shared)
    labels = left_pad([e.labels[shared:] for e in batch], IGNORE)[0]
    width = ids.shape[1]
    # logits are needed only from the first supervised position on (minus one for the shift)
    supervised = (labels != IGNORE).any(dim=0).nonzero()
    keep = width - int(supervised[0]) + 1 if len(supervised) else 1
    out = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "position_ids": positions,
        "keep": min(keep, width),
        "tokens": sum(len(e.input_ids) for e in batch),
        "computed": shared + int(mask.sum()),
        "slots": shared + int(mask.numel()),
    }
    soft = [(row, width - len(e.input_ids) + s.position, s) for row, e in enumerate(batch) for s in e.soft]
    if soft:  # (row, column in the padded batch) of each distribution target, its token ids and weights
        k = max(len(s.token_ids) for _, _, s in soft)
        out["soft_rows"] = torch.tensor([row for row, _, _ in soft], dtype=torch.long)
        out["soft_cols"] = torch.tensor([col for _, col, _ in soft], dtype=torch.long)
        out["soft_ids"] = torch.tensor([list(s.token_ids) + [0] * (k - len(s.token_ids)) for _, _, s in soft])
        out["soft_weights"] = torch.tensor([list(s.weights) + [0.0] * (k - len(s.weights)) for _, _, s in soft])
    if shared:
        out["prefix_ids"] = torch.tensor([batch[0].input_ids[:shared]], dtype=torch.long)
        out["attention_mask"] = torch.cat([torch.ones((len(batch), shared), dtype=torch.long), mask], dim=1)
    return out


def _batch_loss(model: Any, batch: dict[str, Any], device: Any, dtype: Any = None) -> tuple[Any, int]:
    """Summed cross-entropy over the supervised tokens only, and their count. Logits are computed only for
    the completion (``logits_to_keep``): the vocabulary projection of the prompt is never materialised.
    ``dtype``: autocast dtype (bf16) or None for fp32. A ``prefix_ids`` batch runs the shared prefix once
    and repeats its KV cache (autograd flows through the repeat) for every row. At ``soft_*`` positions the
    target is a label distribution: the cross-entropy against it replaces that of the single label."""
    import torch

    keep = batch["keep"]
    extra: dict[str, Any] = {}
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
        if "prefix_ids" in batch:
            from transformers import DynamicCache

            cache = DynamicCache()
            name = cache_argument(model)
            model(input_ids=batch["prefix_ids"].to(device), use_cache=True, logits_to_keep=1, **{name: cache})
            cache.batch_repeat_interleave(batch["input_ids"].shape[0])
            extra = {name: cache, "use_cache": True}
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            position_ids=batch["position_ids"].to(device),
            logits_to_keep=keep,
            **extra,
        )
    logits = out.logits[:, :-1, :].float()
    targets = batch["labels"][:, -keep + 1 :].to(device) if keep > 1 else batch["labels"][:, :0].to(device)
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    loss_sum = losses.sum()
    if "soft_rows" in batch:
        rows = batch["soft_rows"].to(device)
        cols = batch["soft_cols"].to(device) - (batch["input_ids"].shape[1] - keep + 1)  # logit j predicts col
        log_probs = torch.log_softmax(logits[rows, cols], dim=-1).gather(1, batch["soft_ids"].to(device))
        soft = -(batch["soft_weights"].to(device) * log_probs).sum(dim=1)
        loss_sum = loss_sum - losses[rows, cols].sum() + soft.sum()
    return loss_sum, int((targets != IGNORE).sum())


def _micro_batches(examples: Sequence[Example], size: int) -> list[list[Example]]:
    """Split one optimizer batch into micro-batches of similar length (less padding)."""
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


@dataclass
class TrainResult:
    model: Any
    history: list[dict[str, Any]]
    steps: int
    seconds: float
    train_examples: int
    tokens: int  # tokens of the training examples, each with its whole prompt
    padding_share: float  # share of padding among the positions computed
    computed_tokens: int = 0  # tokens actually run through the model (a shared prefix once per micro-batch)
    precision: str = "fp32"


def train_lora(
    model: Any,
    tokenizer: Any,
    rubric: Rubric,
    train_targets: Sequence[Target],
    val_targets: Sequence[Target],
    config: TrainConfig,
    quantized: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``train_targets`` (augmented afresh each epoch) and record train and
    validation loss (validation: un-augmented, deterministic prompts)."""
    import torch

    if not train_targets:
        raise ValueError("no training examples: the project needs finished annotations on more tasks")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = attach_lora(model, config, quantized)
    device = next(model.parameters()).device
    dtype = autocast_dtype(config, device)
    log.info("training precision: %s", "bf16 autocast" if dtype is not None else "fp32")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    val_examples = [encode_example(rubric, t, tokenizer, config.max_length) for t in val_targets]
    if any(t.distribution for t in train_targets):
        hard = [d.name for d in rubric.dimensions if distinguishing_token(tokenizer, d) is None]
        if hard:
            log.warning(
                "distribution targets: the labels of %s differ in more than one token with this tokenizer; "
                "those dimensions are trained on their consensus label",
                ", ".join(hard),
            )

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_targets) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(total * config.warmup_ratio)) if config.warmup_ratio > 0 else 0

    def lr_at(step: int) -> float:  # linear warmup, then linear decay to 0
        if warmup and step < warmup:
            return config.learning_rate * (step + 1) / warmup
        return config.learning_rate * max(0.0, (total - step) / max(1, total - warmup))

    history: list[dict[str, Any]] = []
    started = time.monotonic()
    step = 0
    tokens = computed = padded = 0
    for epoch in range(config.epochs):
        model.train()
        order = list(train_targets)
        rng.shuffle(order)
        augment = config.augmentation if config.augment else None
        for start in range(0, len(order), config.batch_size):
            # one prompt variant per batch (token dropout stays per example): the batch shares its prompt
            # prefix, which is then computed once per micro-batch
            variant = sample_variant(rubric, rng, augment) if augment else None
            batch_examples = [
                encode_example(
                    rubric, t, tokenizer, config.max_length, rng if augment else None, augment, variant=variant
                )
                for t in order[start : start + config.batch_size]
            ]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            micro = [
                _collate(m, pad_id, config.share_prefix)
                for m in _micro_batches(batch_examples, config.micro_batch_size)
            ]
            supervised = 0
            for part in micro:
                supervised += int((part["labels"] != IGNORE).sum())
                tokens += part["tokens"]
                computed += part["computed"]
                padded += part["slots"]  # positions run through the model, padding included
            total_loss = 0.0
            for part in micro:
                loss_sum, _ = _batch_loss(model, part, device, dtype)
                (loss_sum / max(1, supervised)).backward()  # mean over the whole batch's label tokens
                total_loss += float(loss_sum.detach())
            loss = total_loss / max(1, supervised)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            step += 1
            elapsed = time.monotonic() - started
            eta = elapsed / step * (total - step)
            entry = {
                "step": step,
                "epoch": epoch + (start + len(batch_examples)) / len(order),
                "train_loss": round(loss, 5),
                "lr": lr_at(step - 1),
            }
            history.append(entry)
            log.info(
                "train step %d/%d epoch %.2f loss %.4f eta %.0fs", step, total, entry["epoch"], entry["train_loss"], eta
            )
            if progress:
                progress(
                    {
                        "step": step,
                        "total_steps": total,
                        "loss": entry["train_loss"],
                        "eta_s": round(eta, 1),
                        "epoch": round(entry["epoch"], 3),
                    }
                )
        if val_examples:
            val = evaluate_loss(model, val_examples, pad_id, config.micro_batch_size, dtype, config.share_prefix)
            history.append({"step": step, "epoch": epoch + 1, "val_loss": round(val, 5)})
            log.info("epoch %d validation loss %.4f", epoch + 1, val)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        steps=step,
        seconds=time.monotonic() - started,
        train_examples=len(train_targets),
        tokens=tokens,
        computed_tokens=computed,
        padding_share=round(1 - computed / padded, 4) if padded else 0.0,
        precision="bf16" if dtype is not None else "fp32",
    )


def evaluate_loss(
    model: Any, examples: Sequence[Example], pad_id: int, batch_size: int, dtype: Any = None, share_prefix: bool = True
) -> float:
    """Mean loss per supervised token over ``examples``."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    count = 0
    with torch.no_grad():
        for part in _micro_batches(examples, batch_size):
            loss_sum, n = _batch_loss(model, _collate(part, pad_id, share_prefix), device, dtype)
            total += float(loss_sum)
            count += n
    return total / max(1, count)
