"""The feature capture of the judge's scoring pass (``Judge.score_with_features``): forward hooks on the middle
layer and the final norm, and the pooling of their outputs into the feature head's inputs (target-span means,
LM statistics of the target, label-position states). torch is imported inside, as everywhere in the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backend.model.model_loader import ModelLoadError


class FeatureCapture:
    """Forward hooks on the middle decoder layer and the final norm that keep their last outputs, and the
    pooling of them into ``TaskFeatures`` (target-span means, LM statistics, label-position states)."""

    def __init__(self, model: Any) -> None:
        import torch

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        layers, parent = None, None
        for name, module in inner.named_modules():
            if name.endswith("layers") and isinstance(module, torch.nn.ModuleList) and len(module):
                layers = module
                parent = inner.get_submodule(name.rsplit(".", 1)[0]) if "." in name else inner
                break
        norm = getattr(parent, "norm", None) if parent is not None else None
        head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        if layers is None or norm is None or head is None:
            raise ModelLoadError(
                "feature heads need a decoder model with a 'layers' list, a final 'norm' and an output embedding"
            )
        self.modules = {"mid": layers[len(layers) // 2], "last": norm}
        self.lm_head = head
        self.outputs: dict[str, Any] = {}
        self.handles: list[Any] = []
        self.spans: list[tuple[int, int]] = []
        self._offsets: list[int] = []
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __enter__(self) -> FeatureCapture:
        def hook(key: str) -> Any:
            def keep_output(module: Any, args: Any, output: Any) -> None:
                self.outputs[key] = output[0] if isinstance(output, tuple) else output

            return keep_output

        self.handles = [m.register_forward_hook(hook(k)) for k, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.outputs.clear()

    def start_batch(self, offsets: Sequence[int]) -> None:
        """Before the prompt forward: the target spans' positions in the padded rows."""
        self._offsets = list(offsets)
        self._starts = [offset + start for offset, (start, _) in zip(offsets, self.spans, strict=True)]
        self._ends = [offset + end for offset, (_, end) in zip(offsets, self.spans, strict=True)]

    def pooled(self, ids: Any) -> list[Any]:
        """Per row: target-span means of the middle and last layer, then the LM statistics of the target
        (its tokens' log-probabilities from the final-norm states through the output embedding, row by row,
        so no vocabulary-sized tensor spans the batch)."""
        import torch

        width = ids.shape[1]
        mid_states, last_states = self.outputs["mid"], self.outputs["last"]
        rows = []
        for row, (start, end) in enumerate(zip(self._starts, self._ends, strict=True)):
            end = min(end, width)
            start = max(0, min(start, end - 1))
            mid = mid_states[row, start:end].float().mean(0).cpu().numpy()
            last = last_states[row, start:end].float().mean(0).cpu().numpy()
            # a token's log-probability needs the state before it, within this forward call and never a
            # padding position's: a target that opens the task part loses its first token's
            scored = max(start, self._offsets[row] + 1)
            if scored < end:
                logits = self.lm_head(last_states[row, scored - 1 : end - 1]).float()
                token_logp = (
                    torch.log_softmax(logits, dim=-1)
                    .gather(1, ids[row, scored:end].to(logits.device)[:, None])[:, 0]
                    .cpu()
                    .numpy()
                )
                stats = [token_logp.mean(), np.quantile(token_logp, 0.1), np.log(end - scored)]
            else:
                stats = [0.0, 0.0, 0.0]
            rows.append(np.concatenate([mid, last, np.array(stats)]).astype(np.float32))
        return rows

    def label_states(self, at: int = -1) -> tuple[Any, Any]:
        """After a dimension prefix's forward: the middle- and last-layer states at its last position (the one
        that predicts the label), the last of the forward call or, in a one-pass read, position ``at``."""
        return self.outputs["mid"][:, at].float().cpu(), self.outputs["last"][:, at].float().cpu()

    @staticmethod
    def label_position(states: Any, probs: Any) -> list[Any]:
        """Per row: the label-position states, then the judge's label distribution."""
        mid, last = states
        return [
            np.concatenate([mid[row].numpy(), last[row].numpy(), probs[row].numpy()]).astype(np.float32)
            for row in range(probs.shape[0])
        ]
