"""The BLD training forward: a unit's output from the parent's activations, with shared work hoisted.

:meth:`PuzzleDecoderLayer.forward` is what a trained block runs at inference; this module computes
the *same function* for training, arranged so that the work common to all units of a layer is done
once per batch and the backward pass does less:

* **RMS norm folded into the first projections.**  ``norm(x) @ W.T == rms(x) @ (W * w).T`` where
  ``rms(x) = x / sqrt(mean(x²) + eps)`` has no parameter.  The parameter-free ``rms(x)`` (attention
  units, pairs) and ``rms(h)`` (FFN units) are computed once per layer and batch, shared by every
  unit of the layer; the unit's norm weight ``w`` is multiplied into its own (small) weight matrix.
  Since the layer input is a constant, the backward pass then needs no input-gradient matmul through
  the first projections (q/k/v or gate/up) and no norm backward: about a fifth fewer matmul FLOPs
  for an FFN unit.  The gradient of ``w`` comes from the weight gradient (a weight-sized product).
* **q/k/v and gate/up fused** into one matmul each (per unit: the result never depends on which
  other units share the batch, so sharding and resumption stay bit-exact).
* **The parent FFN that attention units run through** is prepared once per layer group: its norm
  weight folded into one concatenated gate|up matrix (no gradient; only input gradients flow).
* **The normalized-MSE denominator** ``mean(y²)`` is computed once per layer and batch.

Numerically this equals the module forward up to float rounding (tested to 1e-5); evaluation,
checkpoints and saved weights use the ordinary module layout.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["rms", "FrozenFFN", "LayerBatch", "unit_output"]


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm`` without its weight (computed in fp32, returned in ``x``'s dtype)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _norm_eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _attn(layer: Any, xn: torch.Tensor, pe: Any) -> torch.Tensor | None:
    """The attention delta of ``layer`` from the normalized input ``xn`` (norm weight folded)."""
    att = layer.self_attn
    if att is None:
        return None
    w = layer.input_layernorm.weight
    if hasattr(att, "linear_attn"):
        return F.linear(xn, att.linear_attn.weight * w)
    nh, nkv, d = att.num_heads, att.num_kv_heads, att.head_dim
    W = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]) * w
    b = None if att.q_proj.bias is None else torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias])
    B, T, _ = xn.shape
    q, k, v = F.linear(xn, W, b).split([nh * d, nkv * d, nkv * d], -1)
    q = q.reshape(B, T, nh, d).transpose(1, 2)
    k = k.reshape(B, T, nkv, d).transpose(1, 2)
    v = v.reshape(B, T, nkv, d).transpose(1, 2)
    cos, sin = pe
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=nkv != nh)
    return att.o_proj(y.transpose(1, 2).reshape(B, T, nh * d))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _ffn(layer: Any, hn: torch.Tensor) -> torch.Tensor | None:
    """The FFN delta of ``layer`` from the normalized input ``hn`` (norm weight folded)."""
    mlp = layer.mlp
    if mlp is None:
        return None
    w = layer.post_attention_layernorm.weight
    if hasattr(mlp, "linear_mlp"):
        return F.linear(hn, mlp.linear_mlp.weight * w)
    W = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * w
    b = None if mlp.gate_proj.bias is None else torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias])
    g, u = F.linear(hn, W, b).chunk(2, dim=-1)
    return mlp.down_proj(F.silu(g) * u)


class FrozenFFN:
    """A parent layer's FFN as constants (norm folded, gate|up fused); gradients flow to its input only."""

    def __init__(self, layer: Any):
        mlp = layer.mlp
        self.none = mlp is None
        if self.none:
            return
        self.eps = _norm_eps(layer.post_attention_layernorm)
        with torch.no_grad():
            w = layer.post_attention_layernorm.weight.detach()
            self.linear = hasattr(mlp, "linear_mlp")
            if self.linear:
                self.W = (mlp.linear_mlp.weight * w).contiguous()
                return
            self.Wgu = (torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * w).contiguous()
            self.bgu = None if mlp.gate_proj.bias is None else torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias])
            self.Wd = mlp.down_proj.weight.detach()
            self.bd = None if mlp.down_proj.bias is None else mlp.down_proj.bias.detach()

    def __call__(self, o: torch.Tensor) -> torch.Tensor:
        """``o + ffn(o)``."""
        if self.none:
            return o
        on = rms(o, self.eps)
        if self.linear:
            return o + F.linear(on, self.W)
        g, u = F.linear(on, self.Wgu, self.bgu).chunk(2, dim=-1)
        return o + F.linear(F.silu(g) * u, self.Wd, self.bd)


class LayerBatch:
    """One layer's parent activations for one batch, plus what its units share (computed lazily once)."""

    def __init__(self, parent_layer: Any, acts: tuple, pe: Any, ffn: FrozenFFN):
        self.player, self.pe, self.ffn = parent_layer, pe, ffn
        self.x, self.h, self.y = acts
        self._xn: torch.Tensor | None = None
        self._hn: torch.Tensor | None = None
        self._den: torch.Tensor | None = None

    @property
    def xn(self) -> torch.Tensor:
        if self._xn is None:
            norm = self.player.input_layernorm
            self._xn = rms(self.x, _norm_eps(norm) if norm is not None else 1e-6)
        return self._xn

    @property
    def hn(self) -> torch.Tensor:
        if self._hn is None:
            norm = self.player.post_attention_layernorm
            self._hn = rms(self.h, _norm_eps(norm) if norm is not None else 1e-6)
        return self._hn

    @property
    def den(self) -> torch.Tensor:
        """``mean(y²)``: the normalized-MSE denominator, shared by every unit of the layer."""
        if self._den is None:
            self._den = self.y.pow(2).mean().clamp_min(1e-12)
        return self._den

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        """Normalized MSE of a unit's output against the parent layer's output."""
        return (out - self.y).pow(2).mean() / self.den


def unit_output(kind: str, module: Any, lb: LayerBatch) -> torch.Tensor:
    """The layer output a unit is trained to match: ``attn`` (candidate attention, parent FFN),
    ``ffn`` (parent attention output, candidate FFN) or ``pair`` (the candidate layer)."""
    if kind == "ffn":
        d = _ffn(module, lb.hn)
        return lb.h if d is None else lb.h + d
    a = _attn(module, lb.xn, lb.pe)
    o = lb.x if a is None else lb.x + a
    if kind == "attn":
        return lb.ffn(o)
    if module.mlp is None:
        return o
    f = _ffn(module, rms(o, _norm_eps(module.post_attention_layernorm)))
    return o + f
