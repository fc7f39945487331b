"""Child initialisation from the parent layer (Puzzle, App. A).

Attention (GQA with ``n_kv`` KV heads, from a parent GQA layer with ``N_kv``): the query and
output projections are kept; child KV head ``j`` serves query heads ``Q_j`` and is built from
the parent KV heads those queries used:

* ``mean_pool``: the average of those heads' K and V projections (weighted by query count);
* ``first``: the parent head of the first query of the group;
* ``random``: the parent head of a randomly chosen query of the group (seeded).

With ``n_kv ≥ N_kv`` every child head maps to exactly one parent head: the copy is exact.
Linear attention: ``W = W_o · W_v`` (V heads repeated per query group): exact for a token that
attends only to itself.

FFN (SwiGLU of width ``I'`` from the parent's ``I``): keep ``I'`` channels, chosen by

* ``contribution``: largest ``C_i = mean_tokens |X_i| · ||W_down[:, i]||_2`` with ``X_i`` the
  i-th intermediate activation ``silu(gate_i·x)·(up_i·x)`` on calibration data;
* ``truncate``: the first ``I'``; ``random``: a random subset (seeded).

``I' ≥ I`` keeps every parent channel and adds channels whose ``W_down`` columns are zero (exact).
Linear FFN: ``W = W_down · W_up`` (gate ignored).  Norm weights are copied.  A child sub-block
that cannot be derived from the parent's (e.g. GQA from a linear parent) is initialised randomly.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..blocks import BlockConfig
from ..errors import ConfigError
from .modeling import (
    LinearAttention,
    LinearMLP,
    PuzzleAttention,
    PuzzleDecoderLayer,
    SwiGLU,
    _rope_config,
    make_layer,
)

__all__ = ["init_child_layer", "ffn_channel_scores", "FFN_METHODS", "KV_METHODS", "normalized_mse"]

log = logging.getLogger(__name__)

FFN_METHODS = ("contribution", "truncate", "random")
KV_METHODS = ("mean_pool", "first", "random")


def normalized_mse(child: torch.Tensor, parent: torch.Tensor) -> float:
    """BLD's loss: ``MSE(child, parent) / MSE(0, parent)``."""
    parent = parent.float()
    return float(((child.float() - parent) ** 2).mean() / (parent**2).mean().clamp_min(1e-30))


@torch.no_grad()
def ffn_channel_scores(mlp: SwiGLU, ffn_inputs: torch.Tensor) -> torch.Tensor:
    """``C_i = mean_tokens |X_i| · ||W_down[:, i]||_2`` for every intermediate channel.

    ``ffn_inputs``: the FFN's inputs after its norm, shape ``(..., H)``.
    """
    x = ffn_inputs.reshape(-1, ffn_inputs.shape[-1]).to(mlp.gate_proj.weight.dtype)
    act = torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)        # (tokens, I)
    return act.abs().float().mean(0) * mlp.down_proj.weight.float().norm(dim=0)


def _copy_linear(dst: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    dst.weight.data.copy_(weight)
    if dst.bias is not None:
        if bias is None:
            dst.bias.data.zero_()
        else:
            dst.bias.data.copy_(bias)


def _kv_sources(nh: int, parent_kv: int, child_kv: int) -> list[list[int]]:
    """For each child KV head, the parent KV head of each query head it serves."""
    gp, gc = nh // parent_kv, nh // child_kv
    return [[q // gp for q in range(j * gc, (j + 1) * gc)] for j in range(child_kv)]


def _init_gqa(dst: PuzzleAttention, src: PuzzleAttention, method: str, gen: torch.Generator) -> None:
    d = src.head_dim
    _copy_linear(dst.q_proj, src.q_proj.weight, src.q_proj.bias)
    _copy_linear(dst.o_proj, src.o_proj.weight, src.o_proj.bias)
    for name in ("k_proj", "v_proj"):
        sp, dp = getattr(src, name), getattr(dst, name)
        w = sp.weight.view(src.num_kv_heads, d, -1)
        b = sp.bias.view(src.num_kv_heads, d) if sp.bias is not None else None
        ws, bs = [], []
        for heads in _kv_sources(src.num_heads, src.num_kv_heads, dst.num_kv_heads):
            if method == "mean_pool":
                idx = torch.tensor(heads)
                ws.append(w[idx].float().mean(0))
                bs.append(b[idx].float().mean(0) if b is not None else None)
            else:
                h = heads[0] if method == "first" else heads[int(torch.randint(len(heads), (1,), generator=gen))]
                ws.append(w[h].float())
                bs.append(b[h].float() if b is not None else None)
        _copy_linear(dp, torch.cat(ws, 0), torch.cat(bs, 0) if b is not None else None)


def _linear_attention_weight(src: PuzzleAttention) -> torch.Tensor:
    """``W_o · W_v`` with each KV head's V rows repeated for the query heads that share it."""
    d, g = src.head_dim, src.num_heads // src.num_kv_heads
    wv = src.v_proj.weight.float().view(src.num_kv_heads, d, -1).repeat_interleave(g, 0).reshape(src.num_heads * d, -1)
    return src.o_proj.weight.float() @ wv


def _init_swiglu(dst: SwiGLU, src: SwiGLU, method: str, ffn_inputs: torch.Tensor | None,
                 gen: torch.Generator) -> None:
    I_p, I_c = src.intermediate_size, dst.intermediate_size
    if I_c >= I_p:  # wider: every parent channel, the extra ones start silent (exact)
        idx = torch.arange(I_p)
        dst.down_proj.weight.data.zero_()
    elif method == "contribution":
        if ffn_inputs is None:
            raise ConfigError("init_child_layer: ffn_method='contribution' needs calib_inputs (hidden states "
                              "entering the parent layer, shape (batch, seq, hidden)); pass them or use 'truncate'")
        idx = ffn_channel_scores(src, ffn_inputs).topk(I_c).indices.sort().values
    elif method == "truncate":
        idx = torch.arange(I_c)
    else:
        idx = torch.randperm(I_p, generator=gen)[:I_c].sort().values
    idx = idx.to(src.gate_proj.weight.device)
    n = len(idx)
    for name in ("gate_proj", "up_proj"):
        sp, dp = getattr(src, name), getattr(dst, name)
        dp.weight.data[:n].copy_(sp.weight[idx])
        if dp.bias is not None:
            dp.bias.data[:n].copy_(sp.bias[idx])
    dst.down_proj.weight.data[:, :n].copy_(src.down_proj.weight[:, idx])
    if dst.down_proj.bias is not None:
        dst.down_proj.bias.data.copy_(src.down_proj.bias)


@torch.no_grad()
def init_child_layer(parent_layer: PuzzleDecoderLayer, block: BlockConfig, *, ffn_method: str = "contribution",
                     kv_method: str = "mean_pool", calib_inputs: torch.Tensor | None = None,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                     layer_idx: int | None = None, seed: int = 0) -> PuzzleDecoderLayer:
    """A child layer of ``block`` initialised from ``parent_layer`` (same dtype and device).

    ``calib_inputs``: hidden states entering the parent layer ``(batch, seq, hidden)``; needed by
    ``ffn_method="contribution"`` (the FFN's inputs are computed through the parent's attention,
    with ``position_embeddings`` or positions ``0..seq-1``).
    """
    if ffn_method not in FFN_METHODS:
        raise ConfigError(f"init_child_layer: ffn_method must be one of {FFN_METHODS}, got {ffn_method!r}")
    if kv_method not in KV_METHODS:
        raise ConfigError(f"init_child_layer: kv_method must be one of {KV_METHODS}, got {kv_method!r}")
    if not isinstance(block, BlockConfig):
        raise ConfigError(f"init_child_layer: block must be a BlockConfig, got {type(block).__name__}")
    spec = parent_layer.spec
    p = next(parent_layer.parameters(), None)
    dtype = p.dtype if p is not None else None
    device = p.device if p is not None else None
    gen = torch.Generator().manual_seed(seed)
    child = make_layer(spec, block, parent_layer.layer_idx if layer_idx is None else layer_idx,
                       dtype=dtype, device=device)
    pa, ca = parent_layer.self_attn, child.self_attn
    # ---- attention -----------------------------------------------------------------------
    if ca is not None:
        if pa is not None:
            child.input_layernorm.weight.copy_(parent_layer.input_layernorm.weight)
        if isinstance(ca, PuzzleAttention) and isinstance(pa, PuzzleAttention):
            _init_gqa(ca, pa, kv_method, gen)
        elif isinstance(ca, LinearAttention) and isinstance(pa, PuzzleAttention):
            ca.linear_attn.weight.copy_(_linear_attention_weight(pa))
        elif isinstance(ca, LinearAttention) and isinstance(pa, LinearAttention):
            ca.linear_attn.weight.copy_(pa.linear_attn.weight)
        else:
            log.warning("layer %d: %s attention cannot be derived from the parent's %s one; random init",
                        child.layer_idx, block.attention.kind, parent_layer.block.attention.kind)
    # ---- FFN -----------------------------------------------------------------------------
    pm, cm = parent_layer.mlp, child.mlp
    if cm is not None:
        if pm is not None:
            child.post_attention_layernorm.weight.copy_(parent_layer.post_attention_layernorm.weight)
        if isinstance(cm, SwiGLU) and isinstance(pm, SwiGLU):
            ffn_in = None
            if ffn_method == "contribution" and calib_inputs is not None:
                ffn_in = parent_layer.post_attention_layernorm(_ffn_input(parent_layer, calib_inputs, position_embeddings))
            _init_swiglu(cm, pm, ffn_method, ffn_in, gen)
        elif isinstance(cm, LinearMLP) and isinstance(pm, SwiGLU):
            cm.linear_mlp.weight.copy_(pm.down_proj.weight.float() @ pm.up_proj.weight.float())
        elif isinstance(cm, LinearMLP) and isinstance(pm, LinearMLP):
            cm.linear_mlp.weight.copy_(pm.linear_mlp.weight)
        else:
            log.warning("layer %d: %s FFN cannot be derived from the parent's %s one; random init",
                        child.layer_idx, block.ffn.kind, parent_layer.block.ffn.kind)
    return child


def _ffn_input(layer: PuzzleDecoderLayer, x: torch.Tensor, pe: Any) -> torch.Tensor:
    """The residual stream entering the FFN sub-block: ``x + attn_delta(x)``."""
    p = next(layer.parameters())
    x = x.to(device=p.device, dtype=p.dtype)
    if x.dim() == 2:
        x = x[None]
    if pe is None and isinstance(layer.self_attn, PuzzleAttention):
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rope = LlamaRotaryEmbedding(_rope_config(layer.spec)).to(p.device)
        pe = rope(x, torch.arange(x.shape[1], device=p.device)[None])
    return x + layer.attn_delta(x, pe)
