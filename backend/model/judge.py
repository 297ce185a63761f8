"""The judge: a causal LM (optionally 4-bit/8-bit) with LoRA adapters, scoring rubrics by constrained decoding.

For each dimension, in rubric order, the judge appends the dimension's prefix (``"accuracy:"``), reads the
next-token distribution restricted to the dimension's allowed labels (a label may span several tokens: its
probability is the product of its tokens' probabilities), appends the argmax and moves on, reusing the KV
cache. Outputs are valid by construction; the restricted distribution gives the confidence.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.core.lexical import lexical_features
from backend.core.prompts import (
    DEFAULT_VARIANT,
    dimension_prefix,
    encode_prompt,
    fit_inputs,
    label_text,
    target_token_span,
)
from backend.core.rubric import Dimension, Rubric
from backend.core.scores import DimensionScore, TaskFeatures, TaskScore, dimension_score
from backend.model.feature_store import FORMAT, FeatureStore
from backend.model.features import FeatureCapture
from backend.model.head import HeadError, is_head, load_head
from backend.model.model_loader import ModelLoadError, load_base_model, memory_token_budget
from backend.model.packing import SuffixLayout, attention_mask, packed_inputs, suffix_layout, supports_packing
from backend.model.padding import left_pad
from backend.settings import Settings

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# scoring


@dataclass
class _RubricTokens:
    """Token ids of every dimension's prefix and labels, tokenized segment by segment; ``lines`` are the
    prefixes as the answer's first line and ``layout`` their one-pass suffix (``backend.model.packing``)."""

    prefixes: list[list[int]]
    labels: list[list[list[int]]]
    lines: list[list[int]]
    layout: SuffixLayout
    key: tuple[Any, ...] = field(default=())


@dataclass
class _Batch:
    """A batch's prompts laid out for the model: the KV cache (holding the shared prefix, or empty), the
    left-padded rows after it (``left_pad``), where each row's task part starts, the cached length."""

    cache: Any
    ids: Any
    row_mask: Any
    positions: Any
    offsets: list[int]
    cached: int


def cache_argument(model: Any) -> str:
    """The keyword under which ``model.forward`` takes a KV cache (``past_key_values``, or ``cache``)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(inner).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _crop(cache: Any, length: int) -> None:
    """Drop cached positions beyond ``length`` (works across transformers 4 and 5)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class Judge:
    """A base model with optional LoRA adapters that scores rubric dimensions of tasks.

    Thread-safe: one scoring call runs at a time per judge (one model in memory serves all threads).
    """

    def __init__(self, model: Any, tokenizer: Any, base_name: str, settings: Settings) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.settings = settings
        self.device = next(model.parameters()).device
        self._lock = threading.RLock()
        self._token_cache: dict[tuple[Any, ...], _RubricTokens] = {}
        self._adapters: dict[str, str] = {}  # adapter name -> path
        self._heads: dict[str, tuple[Any, str]] = {}  # feature-head version name -> (Head, path)
        self._prefix_caches: dict[tuple[Any, ...], Any] = {}
        self._budget: int | None = None
        #: the base model's features and scores of tasks already read (``backend.model.feature_store``), or None
        self.feature_store: Any = None
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        # transformers >= 5.x renames ``past_key_values`` to ``cache``; use whichever the model takes
        self._cache_arg = cache_argument(model)
        torch.manual_seed(0)

    @classmethod
    def from_settings(cls, settings: Settings) -> Judge:
        model, tokenizer, name = load_base_model(settings)
        judge = cls(model, tokenizer, name, settings)
        judge.open_feature_store()
        return judge

    def open_feature_store(self) -> None:
        """Use the feature store under ``MODEL_DIR/features`` (FEATURE_STORE_MB; 0 leaves it off)."""
        if self.settings.feature_store_mb > 0:
            self.feature_store = FeatureStore(
                self.settings.model_dir / "features", self.model_fingerprint(), self.settings.feature_store_mb << 20
            )

    def model_fingerprint(self) -> str:
        """What makes this base model's numbers what they are, and nothing about where its files sit: precision,
        quantization, device type, model class, its configuration without the path it was loaded from
        (``_name_or_path``), library versions, and every base weight's name, shape and first 4,096 values (LoRA
        weights left out). The same model under two MODEL_DIR paths or folder names shares one fingerprint (and
        one feature store); a retrained or replaced model gets another."""
        import torch
        import transformers

        digest = hashlib.sha256()
        config = getattr(self.model, "config", None)
        described = (
            json.dumps({k: v for k, v in config.to_dict().items() if k != "_name_or_path"}, sort_keys=True, default=str)
            if config is not None
            else ""
        )
        named = [  # under names a PEFT wrapper does not change
            (n.removeprefix("base_model.model.").replace(".base_layer", ""), t)
            for n, t in self.model.named_parameters()
            if "lora_" not in n
        ]
        parts = [
            str(named[0][1].dtype),
            self.settings.quantization,
            str(self.device.type),
            type(self.model).__name__,
            described,
            torch.__version__,
            transformers.__version__,
        ]
        digest.update("\x1f".join(parts).encode("utf-8"))
        with torch.no_grad():
            for name, tensor in named:
                digest.update(f"\x1e{name}{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
        return digest.hexdigest()[:24]

    def feature_key(self, rubric: Rubric, inputs: Mapping[str, str], read: str | None = None) -> str:
        """The store key of one task: exactly what the model reads (prompt tokens after trimming, the target's
        token span) and what the features are taken at (every dimension's prefix and label tokens, and how they
        are read: ``read``, by default the base model's ``read_mode``; a sequential read's key is the one stored
        before SCORE_READ existed)."""
        read = read or self.read_mode(rubric)
        fitted = fit_inputs(rubric, inputs, self.tokenizer, self.settings.max_input_tokens)
        shared, task = encode_prompt(rubric, fitted, self.tokenizer, DEFAULT_VARIANT)
        tokens = self.rubric_tokens(rubric)
        span = list(target_token_span(rubric, fitted, self.tokenizer))
        prefixes: Any = tokens.prefixes if read == "sequential" else [read, tokens.lines]
        described = json.dumps([FORMAT, shared, task, span, prefixes, tokens.labels])
        return hashlib.sha256(described.encode("utf-8")).hexdigest()

    # --- adapters --------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        """Attach the version in ``path`` under ``name`` (no-op if already attached from that path): a LoRA
        adapter, or a feature head (``backend.model.head``) that scores on the base model's features."""
        with self._lock:
            if self._adapters.get(name) == str(path) or self._heads.get(name, (None, ""))[1] == str(path):
                return

            if is_head(path):
                head = load_head(path)
                fitted = head.meta.get("precision")
                here = str(next(self.model.parameters()).dtype)
                if fitted and fitted != here:
                    log.warning(
                        "feature head %s was fitted on %s features and is served on %s: set "
                        "MODEL_PRECISION as the worker had it",
                        name,
                        fitted,
                        here,
                    )
                if name in self._adapters:  # the name held a LoRA adapter before
                    self.model.delete_adapter(name)
                    del self._adapters[name]
                self._heads[name] = (head, str(path))
                log.info("loaded feature head %s from %s", name, path)
                return
            self._heads.pop(name, None)
            from peft import PeftModel

            if not (path / "adapter_config.json").is_file():
                raise ModelLoadError(f"{path} is not a LoRA adapter folder (no adapter_config.json)")
            started = time.monotonic()
            if name in self._adapters:
                self.model.delete_adapter(name)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
            self.model.eval()
            self._adapters[name] = str(path)
            log.info("loaded adapter %s from %s in %.2f s", name, path, time.monotonic() - started)

    def adopt_adapter(self, name: str, path: Path) -> None:
        """Register an adapter that is already attached to ``self.model`` under ``name`` (e.g. just trained)."""
        with self._lock:
            self._adapters[name] = str(path)
            self._prefix_caches.clear()

    def adopt_head(self, name: str, head: Any, path: Path) -> None:
        """Register a feature head fitted in this process (e.g. just trained) under ``name``."""
        with self._lock:
            self._heads[name] = (head, str(path))

    def head(self, name: str) -> Any:
        """The feature head attached under ``name`` (``KeyError`` when none is)."""
        return self._heads[name][0]

    def has_adapter(self, name: str) -> bool:
        return name in self._adapters or name in self._heads

    # --- tokens ----------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def rubric_tokens(self, rubric: Rubric) -> _RubricTokens:
        key = (rubric.name, rubric.dimension_names, tuple(d.labels for d in rubric.dimensions))
        cached = self._token_cache.get(key)
        if cached is None:
            prefixes = [self._encode(dimension_prefix(rubric, i)) for i in range(len(rubric.dimensions))]
            labels = [[self._encode(label_text(label)) for label in d.labels] for d in rubric.dimensions]
            for dim, ids in zip(rubric.dimensions, labels, strict=True):
                if len({tuple(x) for x in ids}) != len(ids) or any(not x for x in ids):
                    raise ValueError(f"labels of dimension {dim.name!r} do not tokenize to distinct sequences")
            lines = [self._encode(dimension_prefix(rubric, i, first_line=True)) for i in range(len(prefixes))]
            layout = suffix_layout(lines, labels)
            cached = _RubricTokens(prefixes=prefixes, labels=labels, lines=lines, layout=layout, key=key)
            self._token_cache[key] = cached
        return cached

    def prompt_parts(self, rubric: Rubric, inputs: Mapping[str, str]) -> tuple[list[int], list[int]]:
        """``(shared, task)`` prompt tokens of one task, trimmed to ``MAX_INPUT_TOKENS`` by the documented rule."""
        fitted = fit_inputs(rubric, inputs, self.tokenizer, self.settings.max_input_tokens)
        return encode_prompt(rubric, fitted, self.tokenizer, DEFAULT_VARIANT)

    def prompt_ids(self, rubric: Rubric, inputs: Mapping[str, str]) -> list[int]:
        """The full prompt tokens of one task (shared part + task part)."""
        shared, task = self.prompt_parts(rubric, inputs)
        return shared + task

    def _prefix_cache(self, shared: list[int], adapter: str | None) -> Any:
        """A fresh copy of the KV cache of the shared prompt part (computed once per prefix and adapter)."""
        import torch
        from transformers import DynamicCache

        key = (tuple(shared), adapter, self._adapters.get(adapter or ""))
        cached = self._prefix_caches.get(key)
        if cached is None:
            cached = DynamicCache()
            ids = torch.tensor([shared], dtype=torch.long)
            with torch.inference_mode():
                self._forward(
                    ids.to(self.device),
                    torch.ones_like(ids).to(self.device),
                    torch.arange(len(shared))[None, :].to(self.device),
                    cached,
                )
            while len(self._prefix_caches) >= 8:
                self._prefix_caches.pop(next(iter(self._prefix_caches)))
            self._prefix_caches[key] = cached
        return copy.deepcopy(cached)

    # --- scoring ---------------------------------------------------------------------------------

    def score(self, rubric: Rubric, tasks: Sequence[Mapping[str, str]], adapter: str | None = None) -> list[TaskScore]:
        """Score every dimension of every task (inputs by rubric input name), in order.

        ``adapter`` names an attached LoRA adapter or feature head; ``None`` scores with the base model, through
        the feature store when one is open (a task read once is served from it, and its features are there for
        every head version and retraining). With
        ``LENGTH_BATCHING`` the tasks are scored in batches of similar prompt length; the answer keeps the
        order of ``tasks`` either way.
        """
        if not tasks:
            return []
        read = self.read_mode(rubric, adapter)
        if adapter is not None and adapter in self._heads:
            _, features = self.score_with_features(rubric, tasks, read=read)
            return apply_head(rubric, self.head(adapter), features)
        if adapter is None and self.feature_store is not None:  # read once: stored for every later version
            return self._read(rubric, tasks, adapter, read)[0]
        return self._score(rubric, tasks, adapter, None, read)[0]

    def read_mode(self, rubric: Rubric, adapter: str | None = None) -> str:
        """How ``adapter`` (None: the base model) reads ``rubric``: a feature head as its features were read for
        its training (``sequential`` for heads saved before SCORE_READ existed), a LoRA adapter of a rubric with
        several dimensions sequentially (its training supervised the sequential completion), the base model by
        SCORE_READ; ``sequential`` wherever the model takes no custom attention mask (FlashAttention)."""
        if adapter is not None and adapter in self._heads:
            read = str(self.head(adapter).meta.get("read", "sequential"))
        elif adapter is not None and len(rubric.dimensions) > 1:
            read = "sequential"
        else:
            read = self.settings.score_read
        return read if read == "sequential" or supports_packing(self.model) else "sequential"

    def score_with_features(
        self,
        rubric: Rubric,
        tasks: Sequence[Mapping[str, str]],
        adapter: str | None = None,
        read: str | None = None,
    ) -> tuple[list[TaskScore], list[TaskFeatures]]:
        """``score`` plus the LM's features of every task (``TaskFeatures``), from the same forward passes;
        the scores equal ``score``'s (``tests/test_head.py``). With the base model and a feature store, tasks
        already read come from the store and only the others run through the model, each distinct task once (then
        are stored). ``read``: ``one-pass`` or ``sequential`` (default: ``read_mode``)."""
        scores, features = self._read(rubric, tasks, adapter, read or self.read_mode(rubric, adapter))
        return scores, with_lexical(rubric, tasks, features)

    def _read(
        self, rubric: Rubric, tasks: Sequence[Mapping[str, str]], adapter: str | None, read: str
    ) -> tuple[list[TaskScore], list[TaskFeatures]]:
        """``score_with_features`` without the lexical features: what the model computes (or the store holds)."""
        if not tasks:
            return [], []
        store = self.feature_store if adapter is None else None
        if store is None:
            scores, features = self._score(rubric, tasks, adapter, [None] * len(tasks), read)
            return scores, [f for f in features if f is not None]
        keys = [self.feature_key(rubric, t, read) for t in tasks]
        found = [store.get(k) for k in keys]
        # a task that occurs twice is read once: the same numbers now as from the store later
        first: dict[str, int] = {}
        for i, hit in enumerate(found):
            if hit is None:
                first.setdefault(keys[i], i)
        missing = list(first.values())
        if missing:
            scores, features = self._score(rubric, [tasks[i] for i in missing], None, [None] * len(missing), read)
            fresh = {}
            for i, score, feature in zip(missing, scores, features, strict=True):
                assert feature is not None
                store.put(keys[i], score, feature)
                fresh[keys[i]] = (score, feature)
            found = [hit if hit is not None else fresh[key] for hit, key in zip(found, keys, strict=True)]
        pairs = [hit for hit in found if hit is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _score(
        self,
        rubric: Rubric,
        tasks: Sequence[Mapping[str, str]],
        adapter: str | None,
        features: list[TaskFeatures | None] | None,
        read: str,
    ) -> tuple[list[TaskScore], list[TaskFeatures | None]]:
        fitted = [fit_inputs(rubric, t, self.tokenizer, self.settings.max_input_tokens) for t in tasks]
        prompts = [encode_prompt(rubric, f, self.tokenizer, DEFAULT_VARIANT) for f in fitted]
        spans = [target_token_span(rubric, f, self.tokenizer) for f in fitted] if features is not None else None
        results: list[TaskScore | None] = [None] * len(prompts)
        packed = read == "one-pass"
        suffix = len(self.rubric_tokens(rubric).layout.tokens) if packed else 0
        batch_step = self._score_packed if packed else self._score_batch
        with self._lock, self._adapter_context(adapter), self._capture(features is not None) as capture:
            for members in self.plan_batches([len(s) + len(t) + suffix for s, t in prompts]):
                chunk = [prompts[i] for i in members]
                sink: list[TaskFeatures | None] = [None] * len(members)
                if capture is not None and spans is not None:
                    capture.spans = [spans[i] for i in members]
                scored = batch_step(rubric, chunk, adapter, capture, sink)
                for row, (index, score) in enumerate(zip(members, scored, strict=True)):
                    results[index] = score
                    if features is not None:
                        features[index] = sink[row]
        return [r for r in results if r is not None], features or []

    def _capture(self, enabled: bool) -> Any:
        return FeatureCapture(self.model) if enabled else contextlib.nullcontext()

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group task indices into batches: at most ``PREDICT_BATCH_SIZE`` rows and at most
        ``batch_token_budget()`` padded tokens (rows x longest row) each, a single row always allowed.

        With ``LENGTH_BATCHING`` the indices are taken shortest prompt first (stable for ties), so a batch
        holds prompts of similar length and little padding; otherwise in the order given."""
        order = list(range(len(lengths)))
        if self.settings.length_batching:
            order.sort(key=lambda i: lengths[i])
        size, budget = self.settings.predict_batch_size, self.batch_token_budget()
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for index in order:
            wider = max(longest, lengths[index])
            if current and (len(current) >= size or (len(current) + 1) * wider > budget):
                batches.append(current)
                current, wider = [], lengths[index]
            current.append(index)
            longest = wider
        if current:
            batches.append(current)
        return batches

    def batch_token_budget(self) -> int:
        """``PREDICT_MAX_BATCH_TOKENS``, or when it is 0 an estimate from the memory available now
        (see ``memory_token_budget``), computed once per judge."""
        if self.settings.predict_max_batch_tokens:
            return self.settings.predict_max_batch_tokens
        if self._budget is None:
            self._budget = memory_token_budget(self.model, self.device)
            log.info("batch token budget %d (PREDICT_MAX_BATCH_TOKENS=0: derived from available memory)", self._budget)
        return self._budget

    def _adapter_context(self, adapter: str | None) -> Any:
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            if adapter is not None:
                raise ModelLoadError(f"adapter {adapter!r} is not loaded")
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        if adapter not in self._adapters:
            raise ModelLoadError(f"adapter {adapter!r} is not loaded")
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, keep: Any = 1) -> Any:
        """One cached forward pass; only the last ``keep`` positions' logits are computed (0 = all; a tensor:
        those positions)."""
        kwargs = {self._cache_arg: cache}
        return self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=keep, **kwargs
        )

    def _score_batch(
        self,
        rubric: Rubric,
        prompts: list[tuple[list[int], list[int]]],
        adapter: str | None = None,
        capture: FeatureCapture | None = None,
        sink: list[TaskFeatures | None] | None = None,
    ) -> list[TaskScore]:
        """Score one batch sequentially (SCORE_READ=sequential): the prompt, then one forward call per dimension
        (its prefix after the label chosen for the one before) and per multi-token label prefix."""
        import torch

        tokens = self.rubric_tokens(rubric)
        device = self.device
        size = len(prompts)
        batch = self._batch(prompts, adapter)
        ids, cache = batch.ids, batch.cache
        mask = torch.cat([torch.ones((size, batch.cached), dtype=torch.long), batch.row_mask], dim=1)
        next_pos = mask.sum(dim=1)  # next position id per row
        pending: list[list[int]] = [[] for _ in range(size)]  # chosen label tokens not yet fed
        per_task: list[dict[str, DimensionScore]] = [{} for _ in range(size)]

        with torch.inference_mode():
            if capture is not None:  # where each row's task part starts in the padded batch
                capture.start_batch(batch.offsets)
            # prompt + first prefix are fed together below; start with the prompt alone
            self._forward(ids.to(device), mask.to(device), batch.positions.to(device), cache)
            shared_rows = capture.pooled(ids) if capture is not None else []
            dim_rows: list[list[Any]] = [[] for _ in range(size)]
            for index, dim in enumerate(rubric.dimensions):
                prefix = tokens.prefixes[index]
                longest = max(len(p) for p in pending)
                chunk = torch.full((size, longest + len(prefix)), self.pad_id, dtype=torch.long)
                chunk_mask = torch.zeros_like(chunk)
                for row, label_ids in enumerate(pending):
                    if label_ids:
                        chunk[row, : len(label_ids)] = torch.tensor(label_ids)
                        chunk_mask[row, : len(label_ids)] = 1
                chunk[:, longest:] = torch.tensor(prefix)
                chunk_mask[:, longest:] = 1
                chunk_pos = next_pos[:, None] + (chunk_mask.cumsum(dim=1) - 1).clamp(min=0)
                next_pos = next_pos + chunk_mask.sum(dim=1)
                mask = torch.cat([mask, chunk_mask], dim=1)
                out = self._forward(chunk.to(device), mask.to(device), chunk_pos.to(device), cache)
                first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
                states = capture.label_states() if capture is not None else None
                scores = self._candidate_scores(tokens.labels[index], first, mask, next_pos, cache)
                choice = _record_dimension(dim, scores, capture, states, dim_rows, per_task)
                pending = [tokens.labels[index][int(chosen)] for chosen in choice]
        _sink_features(rubric, sink if capture is not None else None, shared_rows, dim_rows)
        return [TaskScore(dimensions=d) for d in per_task]

    def _batch(self, prompts: list[tuple[list[int], list[int]]], adapter: str | None) -> _Batch:
        """Rows are ``[shared prefix][holes][task part]``: the prefix's KV is reused from the prefix cache when
        every row shares it; the task parts are left-padded (the padding masked out)."""
        from transformers import DynamicCache

        shared = prompts[0][0]
        if self.settings.prefix_cache and shared and all(p[0] == shared for p in prompts):
            cache = self._prefix_cache(shared, adapter)
            cache.batch_repeat_interleave(len(prompts))
            rows, cached = [p[1] for p in prompts], len(shared)
        else:
            cache, rows, cached = DynamicCache(), [p[0] + p[1] for p in prompts], 0
        ids, row_mask, positions = left_pad(rows, self.pad_id, cached)
        width = ids.shape[1]
        # where each row's task part starts in the padded batch
        offsets = [width - len(r) + (len(prompts[i][0]) if not cached else 0) for i, r in enumerate(rows)]
        return _Batch(cache, ids, row_mask, positions, offsets, cached)

    def _score_packed(
        self,
        rubric: Rubric,
        prompts: list[tuple[list[int], list[int]]],
        adapter: str | None = None,
        capture: FeatureCapture | None = None,
        sink: list[TaskFeatures | None] | None = None,
    ) -> list[TaskScore]:
        """Score one batch in one forward call (SCORE_READ=one-pass): every dimension's prefix and label
        branches packed after the prompts (``backend.model.packing``), each read as the answer's first line."""
        import torch

        tokens = self.rubric_tokens(rubric)
        layout, device, size = tokens.layout, self.device, len(prompts)
        batch = self._batch(prompts, adapter)
        width = batch.ids.shape[1]
        ids, positions, keys = packed_inputs(layout, batch.ids, batch.row_mask, batch.positions, batch.cached)
        mask = attention_mask(self.model, keys, positions, batch.cached)
        mask = {k: m.to(device) for k, m in mask.items()} if isinstance(mask, dict) else mask.to(device)
        column = {at: c for c, at in enumerate(layout.logits_at)}
        keep = torch.tensor([width + at for at in layout.logits_at], dtype=torch.long)
        with torch.inference_mode():
            if capture is not None:
                capture.start_batch(batch.offsets)
            out = self._forward(ids.to(device), mask, positions.to(device), batch.cache, keep=keep.to(device))
            logp = torch.log_softmax(out.logits.float(), dim=-1).cpu()
            shared_rows = capture.pooled(batch.ids) if capture is not None else []
            dim_rows: list[list[Any]] = [[] for _ in range(size)]
            per_task: list[dict[str, DimensionScore]] = [{} for _ in range(size)]
            for index, dim in enumerate(rubric.dimensions):
                candidates = tokens.labels[index]
                first = logp[:, column[layout.prefix_end[index]]]
                scores = torch.stack([first[:, c[0]] for c in candidates], dim=1)
                for branch in layout.branches[index]:
                    for k in branch.members:
                        for t in range(1, len(candidates[k])):
                            scores[:, k] += logp[:, column[branch.start + t - 1], candidates[k][t]]
                states = capture.label_states(width + layout.prefix_end[index]) if capture is not None else None
                _record_dimension(dim, scores, capture, states, dim_rows, per_task)
        _sink_features(rubric, sink if capture is not None else None, shared_rows, dim_rows)
        return [TaskScore(dimensions=d) for d in per_task]

    def _candidate_scores(self, candidates: list[list[int]], first: Any, mask: Any, next_pos: Any, cache: Any) -> Any:
        """Log-probabilities (rows x candidates) of each candidate label sequence."""
        import torch

        size = first.shape[0]
        scores = torch.stack([first[:, c[0]] for c in candidates], dim=1)
        length = cache.get_seq_length()
        # one forward per distinct label prefix (a trie level): " 0", " 1", " 2" share the prefix " "
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, candidate in enumerate(candidates):
            if len(candidate) > 1:
                groups.setdefault(tuple(candidate[:-1]), []).append(k)
        for prefix, members in groups.items():
            tail = torch.tensor([list(prefix)] * size, dtype=torch.long)
            tail_mask = torch.cat([mask, torch.ones_like(tail)], dim=1)
            tail_pos = next_pos[:, None] + torch.arange(len(prefix))[None, :]
            out = self._forward(
                tail.to(self.device), tail_mask.to(self.device), tail_pos.to(self.device), cache, keep=0
            )
            logp = torch.log_softmax(out.logits.float(), dim=-1).cpu()
            for k in members:
                candidate = candidates[k]
                for t in range(1, len(candidate)):
                    scores[:, k] += logp[:, t - 1, candidate[t]]
            _crop(cache, length)
        return scores


def _record_dimension(
    dim: Dimension,
    scores: Any,
    capture: FeatureCapture | None,
    states: Any,
    dim_rows: list[list[Any]],
    per_task: list[dict[str, DimensionScore]],
) -> Any:
    """One dimension of a batch from its candidates' log-probabilities (rows x candidates), for either read: the
    softmax over the candidates, each row's ``DimensionScore`` into ``per_task`` and, with a capture, the
    label-position features (``states``, taken where the label is read) into ``dim_rows``. Returns the chosen
    candidate per row."""
    import torch

    probs = torch.softmax(scores, dim=-1)
    choice = torch.argmax(probs, dim=-1)
    if capture is not None:
        for row, vector in enumerate(capture.label_position(states, probs)):
            dim_rows[row].append(vector)
    for row, chosen in enumerate(choice.tolist()):
        per_task[row][dim.name] = dimension_score(dim, probs[row].tolist(), chosen, float(scores[row, chosen]))
    return choice


def _sink_features(
    rubric: Rubric, sink: list[TaskFeatures | None] | None, shared_rows: list[Any], dim_rows: list[list[Any]]
) -> None:
    """Each row's ``TaskFeatures`` into ``sink`` (nothing when None): the pooled prompt states and, per
    dimension, the label-position vector."""
    if sink is None:
        return
    for row in range(len(sink)):
        sink[row] = TaskFeatures(
            shared=shared_rows[row],
            dimensions={dim.name: dim_rows[row][i] for i, dim in enumerate(rubric.dimensions)},
        )


def with_lexical(
    rubric: Rubric, tasks: Sequence[Mapping[str, str]], features: Sequence[TaskFeatures]
) -> list[TaskFeatures]:
    """``features`` (one per task) with each task's ``backend.core.lexical`` features attached: read from the
    text each time (microseconds), never stored, so the feature store holds only what the model computed."""
    return [
        dataclasses.replace(f, lexical=np.asarray(lexical_features(rubric, t), dtype=np.float64))
        for f, t in zip(features, tasks, strict=True)
    ]


def apply_head(rubric: Rubric, head: Any, features: Sequence[TaskFeatures]) -> list[TaskScore]:
    """The feature head's calibrated label distributions as ``TaskScore``s (label = most probable)."""
    per_dim = {}
    for dim in rubric.dimensions:
        fitted = head.dimensions.get(dim.name)
        if fitted is None or fitted.labels != list(dim.labels):
            raise HeadError(
                f"the feature head does not fit rubric {rubric.name!r}: dimension {dim.name!r} is "
                f"{'missing' if fitted is None else 'labelled ' + ', '.join(fitted.labels)}"
            )
        selection, lexical = head.meta.get("features", "all"), bool(head.meta.get("lexical", False))
        x = np.stack([f.vector(dim.name, selection, lexical) for f in features])
        per_dim[dim.name] = head.predict(dim.name, x)
    out = []
    for row in range(len(features)):
        dims = {}
        for dim in rubric.dimensions:
            probs, expected = per_dim[dim.name]
            p = [float(v) for v in probs[row]]
            chosen = int(np.argmax(p))
            rounded = {label: round(v, 6) for label, v in zip(dim.labels, p, strict=True)}
            dims[dim.name] = DimensionScore(
                label=dim.labels[chosen],
                probs=rounded,
                expected=None if expected is None else round(float(expected[row]), 6),
            )
        out.append(TaskScore(dimensions=dims))
    return out
