"""Left padding and position ids, written once for the judge (``backend.model.judge``) and training
(``worker.train``): both must lay out a batch the same way, or the adapter is trained on one layout and
served on another."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def left_pad(rows: Sequence[Sequence[int]], pad: int, start: int = 0) -> tuple[Any, Any, Any]:
    """``rows`` right-aligned in one ``(len(rows), longest)`` tensor: ``(ids, mask, positions)``.

    ``mask`` is 1 on real tokens; ``positions`` numbers each row's real tokens from ``start`` (the length of a
    prefix already in the KV cache), padding gets ``start``. Padding is on the left so that every row's last
    token, where the next label is read or predicted, sits in the last column."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[index, width - len(row) :] = 1
    positions = start + (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions
