"""The one-pass read's layout (``SCORE_READ=one-pass``): every dimension of a batch scored in the forward call
that reads the prompt.

After each row's prompt comes one *suffix*, the same for every row: for each dimension its prefix as the
completion's first line (``"coherence:"``) and, after it, one branch per multi-token label prefix (the label
trie level that ``" -2"`` and ``" -1"`` share). A 4D attention mask keeps the blocks apart: a dimension's
tokens see the prompt and their own block only, a branch sees its dimension's prefix and itself, so each
dimension is read as if it were the first line of the answer, independently of the others. Position ids
restart after the prompt for every block, as a separate sequence would number them. Logits are computed only
where a label token is read (``logits_at``).

torch is imported inside, as everywhere in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Branch:
    """One multi-token label prefix of a dimension: its tokens' suffix indices and the candidates it leads to."""

    start: int
    tokens: tuple[int, ...]
    members: tuple[int, ...]


@dataclass(frozen=True)
class SuffixLayout:
    """The suffix packed after every prompt of a one-pass batch."""

    tokens: list[int]
    #: per suffix token: its position after the prompt (0 = the first token after it)
    depth: list[int]
    #: ``sees[i, j]``: suffix token i attends to suffix token j
    sees: Any
    #: per dimension: the suffix index of its prefix's last token (where its first label token is read)
    prefix_end: list[int]
    #: per dimension: its branches
    branches: list[list[Branch]]

    @property
    def logits_at(self) -> list[int]:
        """Suffix indices whose logits the read needs: each prefix's end, then every branch token, in order."""
        at = list(self.prefix_end)
        for branches in self.branches:
            for branch in branches:
                at.extend(range(branch.start, branch.start + len(branch.tokens)))
        return at


def suffix_layout(prefixes: Sequence[Sequence[int]], labels: Sequence[Sequence[Sequence[int]]]) -> SuffixLayout:
    """The suffix of dimensions with these prefix tokens and label candidates (token sequences)."""
    tokens: list[int] = []
    depth: list[int] = []
    block: list[tuple[int, int]] = []  # per token: (dimension, branch: -1 for the prefix)
    prefix_end: list[int] = []
    all_branches: list[list[Branch]] = []
    for dim, (prefix, candidates) in enumerate(zip(prefixes, labels, strict=True)):
        tokens.extend(prefix)
        depth.extend(range(len(prefix)))
        block.extend((dim, -1) for _ in prefix)
        prefix_end.append(len(tokens) - 1)
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, candidate in enumerate(candidates):
            if len(candidate) > 1:
                groups.setdefault(tuple(candidate[:-1]), []).append(k)
        branches = []
        for number, (head, members) in enumerate(groups.items()):
            branches.append(Branch(start=len(tokens), tokens=head, members=tuple(members)))
            tokens.extend(head)
            depth.extend(range(len(prefix), len(prefix) + len(head)))
            block.extend((dim, number) for _ in head)
        all_branches.append(branches)
    size = len(tokens)
    sees = np.zeros((size, size), dtype=bool)
    for i in range(size):
        dim_i, branch_i = block[i]
        for j in range(i + 1):
            dim_j, branch_j = block[j]
            sees[i, j] = dim_i == dim_j and branch_j in (-1, branch_i)
    return SuffixLayout(tokens=tokens, depth=depth, sees=sees, prefix_end=prefix_end, branches=all_branches)


def packed_inputs(layout: SuffixLayout, ids: Any, row_mask: Any, positions: Any, cached: int) -> tuple[Any, Any, Any]:
    """``(ids, positions, keys)`` of a one-pass batch: the left-padded prompts (``ids``, ``row_mask``,
    ``positions`` as ``left_pad`` gives them after ``cached`` positions in the KV cache) followed by the suffix.
    ``keys`` is the boolean ``(rows, queries, cached + queries)`` visibility: the cached prefix and each row's
    real prompt tokens causally, the suffix by ``layout.sees``; a padding position sees itself only."""
    import torch

    rows, width = ids.shape
    size = len(layout.tokens)
    suffix = torch.tensor(layout.tokens, dtype=torch.long).expand(rows, size)
    after = row_mask.sum(dim=1, keepdim=True) + cached  # each row's first position after its prompt
    suffix_pos = after + torch.tensor(layout.depth, dtype=torch.long)[None, :]
    real = row_mask.bool()
    queries = width + size
    keys = torch.zeros((rows, queries, cached + queries), dtype=torch.bool)
    keys[:, :, :cached] = True
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    keys[:, :width, cached : cached + width] = causal[None] & real[:, None, :]
    keys[:, width:, cached : cached + width] = real[:, None, :]
    keys[:, width:, cached + width :] = torch.as_tensor(layout.sees)[None]
    diagonal = torch.arange(queries)
    keys[:, diagonal, cached + diagonal] = True
    return torch.cat([ids, suffix], dim=1), torch.cat([positions, suffix_pos], dim=1), keys


def attention_mask(model: Any, keys: Any, positions: Any, cached: int) -> Any:
    """The model's 4D attention mask for the visibility ``keys`` (``packed_inputs``): boolean for SDPA,
    additive in the model's dtype for eager attention; for a model with sliding-window layers (Gemma 3), one
    mask per layer type, the sliding one also hiding keys more than ``sliding_window`` positions back.
    ``positions`` are the queries' position ids; the cached prefix holds positions ``0..cached-1``."""
    import torch

    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper
    config = model.config
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    key_pos = torch.cat([torch.arange(cached).expand(positions.shape[0], cached), positions], dim=1)

    def shaped(visible: Any) -> Any:
        visible = visible[:, None]
        if implementation == "sdpa":
            return visible
        dtype = next(model.parameters()).dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
        return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)

    layer_types = set(getattr(config, "layer_types", None) or [])
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" not in layer_types or not window:
        return shaped(keys)
    near = positions[:, :, None] - key_pos[:, None, :] < window
    return {"full_attention": shaped(keys), "sliding_attention": shaped(keys & near)}


def supports_packing(model: Any) -> bool:
    """Whether the model takes a custom 4D attention mask (SDPA or eager attention; not FlashAttention)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner.config, "_attn_implementation", "eager") in ("sdpa", "eager")
