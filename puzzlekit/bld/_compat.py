"""Local stand-in for ``puzzlekit.model.init_child_layer`` while the model module lacks it.

Used only when ``puzzlekit.model`` has no ``init_child_layer`` (see docs/model-api.md);
implements the Puzzle App. A initialisations (FACTS.md) on a :class:`PuzzleDecoderLayer`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..blocks import BlockConfig


def init_child_layer(parent_layer: Any, block: BlockConfig, *, ffn_method: str = "contribution",
                     kv_method: str = "mean_pool", calib_inputs: torch.Tensor | None = None,
                     position_embeddings: Any = None) -> Any:
    """A child layer initialised from ``parent_layer`` (channel contribution, mean-pooled KV heads,
    ``W_down·W_up`` / ``W_o·W_v`` for linear replacements).  ``calib_inputs`` are layer inputs."""
    from ..model import make_layer

    spec = parent_layer.spec
    child = make_layer(spec, block, parent_layer.layer_idx)
    p = parent_layer
    with torch.no_grad():
        att = block.attention
        if not att.no_op:
            child.input_layernorm.weight.copy_(p.input_layernorm.weight)
            pa = p.self_attn
            if att.linear:
                hd, nh, nkv = spec.head_dim, spec.num_attention_heads, spec.num_key_value_heads
                wv = pa.v_proj.weight.view(nkv, hd, -1).repeat_interleave(nh // nkv, 0).reshape(nh * hd, -1)
                child.self_attn.linear_attn.weight.copy_(pa.o_proj.weight @ wv)
            else:
                ca = child.self_attn
                ca.q_proj.load_state_dict(pa.q_proj.state_dict())
                ca.o_proj.load_state_dict(pa.o_proj.state_dict())
                n_p, n_c, hd = pa.num_kv_heads, ca.num_kv_heads, spec.head_dim
                for name in ("k_proj", "v_proj"):
                    w = getattr(pa, name).weight.view(n_p, hd, -1)
                    if n_c <= n_p and n_p % n_c == 0:
                        g = n_p // n_c
                        w = w.view(n_c, g, hd, -1).mean(1) if kv_method == "mean_pool" else w.view(n_c, g, hd, -1)[:, 0]
                    else:
                        w = w.repeat_interleave(n_c // n_p, 0)
                    getattr(ca, name).weight.copy_(w.reshape(n_c * hd, -1))
                    b = getattr(pa, name).bias
                    if b is not None:
                        bb = b.view(n_p, hd)
                        bb = bb.view(n_c, -1, hd).mean(1) if n_c <= n_p else bb.repeat_interleave(n_c // n_p, 0)
                        getattr(ca, name).bias.copy_(bb.reshape(-1))
        ffn = block.ffn
        if not ffn.no_op:
            child.post_attention_layernorm.weight.copy_(p.post_attention_layernorm.weight)
            pm = p.mlp
            if ffn.linear:
                child.mlp.linear_mlp.weight.copy_(pm.down_proj.weight @ pm.up_proj.weight)
            else:
                k = ffn.intermediate_size
                n = pm.intermediate_size
                if k >= n:
                    idx = torch.arange(n)
                elif ffn_method == "contribution" and calib_inputs is not None:
                    x = calib_inputs
                    h = x + p.attn_delta(x, position_embeddings)
                    z = p.post_attention_layernorm(h)
                    act = torch.nn.functional.silu(pm.gate_proj(z)) * pm.up_proj(z)
                    score = act.abs().flatten(0, -2).mean(0) * pm.down_proj.weight.norm(dim=0)
                    idx = torch.sort(torch.topk(score, k).indices).values
                else:
                    idx = torch.arange(k)
                m = child.mlp
                m.gate_proj.weight[: len(idx)].copy_(pm.gate_proj.weight[idx])
                m.up_proj.weight[: len(idx)].copy_(pm.up_proj.weight[idx])
                m.down_proj.weight[:, : len(idx)].copy_(pm.down_proj.weight[:, idx])
    return child
