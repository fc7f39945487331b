"""Layer and sub-block importance from hidden-state similarity (the ShortGPT-style baselines).

ShortGPT (Men et al., 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
Expect", arXiv:2403.03853) scores layer ``i`` by its **Block Influence**
``BI_i = 1 - E_t[cos(x_i,t, x_{i+1},t)]``: the mean cosine similarity of the residual stream entering
and leaving the layer, over calibration tokens; the layers with the lowest BI are removed.  He et al.
(2024, "What Matters in Transformers? Not All Attention Is Needed", arXiv:2406.15786) score the
attention and MLP sub-blocks the same way (input vs. output of the sub-block's residual update) and
drop attention sub-blocks.  Here, for each layer ``i`` with input ``x``, post-attention stream
``h = x + attn(x)`` and output ``y = h + ffn(h)``::

    block[i]     = 1 - mean_t cos(x, y)
    attention[i] = 1 - mean_t cos(x, h)
    ffn[i]       = 1 - mean_t cos(h, y)

One pass of the model over the tokens (no gradients) gives all three.  A no-op sub-block scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..blocks import BlockConfig
from ..errors import ConfigError

__all__ = ["LayerImportance", "layer_importance"]

KINDS = ("block", "attention", "ffn")


@dataclass(frozen=True)
class LayerImportance:
    """Per-layer importance (``1 - mean cosine``; higher = the layer changes the stream more)."""

    block: np.ndarray
    attention: np.ndarray
    ffn: np.ndarray
    tokens: int

    def scores(self, kind: str = "block") -> np.ndarray:
        if kind not in KINDS:
            raise ConfigError(f"importance kind must be one of {KINDS}, got {kind!r}")
        return getattr(self, kind)

    def order(self, kind: str = "block", *, exclude: tuple[int, ...] = ()) -> list[int]:
        """Layer indices, least important first (ties: the later layer first), without ``exclude``."""
        s = self.scores(kind)
        return [int(i) for i in sorted(range(len(s)), key=lambda i: (s[i], -i)) if i not in exclude]

    def removed(self, spec: Any, k: int, kind: str = "block") -> Any:
        """The parent's :class:`~puzzlekit.Architecture` with its ``k`` least important layers removed
        (``kind="block"``: attention and FFN, ShortGPT) or only their attention (``"attention"``) or FFN
        (``"ffn"``) replaced by a no-op."""
        from ..architecture import Architecture
        from ..blocks import AttentionConfig, FFNConfig

        L = len(self.block)
        if spec.num_hidden_layers != L or not 0 <= k <= L:
            raise ConfigError(f"removed: k={k} must be in 0..{L} and the spec must have {L} layers")
        pb = spec.parent_block()
        drop = set(self.order(kind)[:k])
        att = AttentionConfig.make_no_op() if kind in ("block", "attention") else pb.attention
        ffn = FFNConfig.make_no_op() if kind in ("block", "ffn") else pb.ffn
        return Architecture(spec, tuple(BlockConfig(att if i in drop else pb.attention, ffn if i in drop else pb.ffn)
                                        for i in range(L)))

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.block.tolist(), "attention": self.attention.tolist(), "ffn": self.ffn.tolist(),
                "tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerImportance:
        return cls(*(np.asarray(d[k], dtype=np.float64) for k in KINDS), int(d["tokens"]))


@torch.no_grad()
def layer_importance(model: Any, tokens: torch.Tensor, *, batch_size: int = 8,
                     skip_first: int = 0) -> LayerImportance:
    """Block Influence of every layer and its attention / FFN sub-blocks on ``tokens`` (``(N, T)`` ids).

    ``model``: a :class:`~puzzlekit.model.PuzzleForCausalLM` (any placement).  ``skip_first`` leaves
    the first positions of each row out of the means (the first token's stream is often an outlier).
    """
    from ..model.placement import device_of, follow

    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ConfigError("layer_importance: tokens must be a 2-D integer tensor (rows, seq_len)")
    if not 0 <= skip_first < tokens.shape[1]:
        raise ConfigError(f"layer_importance: skip_first={skip_first} must be below the sequence length {tokens.shape[1]}")
    inner = model.model
    L = len(inner.layers)
    sums = torch.zeros(3, L, dtype=torch.float64)
    n = 0
    dev = inner.embed_tokens.weight.device
    for b in range(0, tokens.shape[0], batch_size):
        ids = tokens[b:b + batch_size].long().to(dev)
        x = inner.embed_tokens(ids)
        pe = inner.rotary_emb(x, torch.arange(ids.shape[1], device=dev)[None])
        for i, layer in enumerate(inner.layers):
            x, pe = follow(device_of(layer), x, pe)
            h = x + layer.attn_delta(x, pe)
            y = h + layer.ffn_delta(h)
            for k, (a, c) in enumerate(((x, y), (x, h), (h, y))):
                a, c = a[:, skip_first:].float(), c[:, skip_first:].float()
                # identical vectors (a no-op sub-block) have cosine exactly 1: float32 rounding gives 1 - 1e-8
                cos = torch.where((a == c).all(-1), 1.0, F.cosine_similarity(a, c, dim=-1))
                sums[k, i] += cos.double().sum().cpu()
            x = y
        n += ids.shape[0] * (ids.shape[1] - skip_first)
    if n == 0:
        raise ConfigError("layer_importance: no tokens given")
    imp = (1.0 - sums / n).clamp_min(0.0).numpy()
    return LayerImportance(imp[0], imp[1], imp[2], n)
