"""Child initialisation: each named method measured against the parent block on calibration data."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_llama_config  # noqa: E402

from puzzlekit import Architecture, AttentionConfig, BlockConfig, FFNConfig  # noqa: E402
from puzzlekit.errors import ConfigError  # noqa: E402
from puzzlekit.model import PuzzleForCausalLM, init_child_layer, normalized_mse  # noqa: E402

torch.set_num_threads(1)
A, F = AttentionConfig, FFNConfig


def _parent(heavy_tailed: bool = True, correlated_kv: bool = True, **over) -> PuzzleForCausalLM:
    """A tiny parent whose weights have the structure trained models show: FFN channels of very
    unequal importance, and KV heads of a group that resemble each other."""
    torch.manual_seed(0)
    d = tiny_llama_config(num_hidden_layers=2, num_key_value_heads=4, num_attention_heads=8, **over)
    m = PuzzleForCausalLM.from_architecture(Architecture.from_config(d)).eval()
    with torch.no_grad():
        for layer in m.model.layers:
            if heavy_tailed:
                scale = torch.exp(1.5 * torch.randn(layer.mlp.intermediate_size))
                layer.mlp.down_proj.weight.mul_(scale)
            if correlated_kv:
                att = layer.self_attn
                for proj in (att.k_proj, att.v_proj):
                    w = proj.weight.view(att.num_kv_heads, att.head_dim, -1)
                    base = w[0].clone()
                    w.copy_(base + 0.3 * w)  # every head = shared part + its own part
                layer.self_attn.q_proj.weight.mul_(3.0)
    return m


def _calib(n: int = 4, t: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, 64, generator=g)


def _pe(m, x):
    return m.model.rotary_emb(x, torch.arange(x.shape[1])[None])


def _ffn_nmse(parent_layer, child, x):
    with torch.no_grad():
        return normalized_mse(child.ffn_delta(x), parent_layer.ffn_delta(x))


def _attn_nmse(m, parent_layer, child, x):
    pe = _pe(m, x)
    with torch.no_grad():
        return normalized_mse(child.attn_delta(x, pe), parent_layer.attn_delta(x, pe))


def test_ffn_contribution_beats_truncation_and_random():
    m = _parent()
    layer = m.model.layers[0]
    block = BlockConfig(A.gqa(4), F.swiglu(64))  # 25 % of the parent's 256 channels
    calib, held_out = _calib(seed=1), _calib(seed=2)
    errs = {meth: _ffn_nmse(layer, init_child_layer(layer, block, ffn_method=meth, calib_inputs=calib), held_out)
            for meth in ("contribution", "truncate", "random")}
    assert errs["contribution"] < errs["truncate"]
    assert errs["contribution"] < errs["random"]
    assert errs["contribution"] < 0.5 * min(errs["truncate"], errs["random"]), errs


def test_kv_mean_pool_beats_first_and_random():
    m = _parent()
    layer = m.model.layers[1]
    block = BlockConfig(A.gqa(1), F.swiglu(256))
    x = _calib(seed=3)
    errs = {meth: _attn_nmse(m, layer, init_child_layer(layer, block, kv_method=meth, ffn_method="truncate"), x)
            for meth in ("mean_pool", "first", "random")}
    assert errs["mean_pool"] < errs["first"] and errs["mean_pool"] < errs["random"], errs


def test_exact_cases():
    """Same width / same heads copy the parent; more KV heads or a wider FFN stay exact."""
    m = _parent()
    layer = m.model.layers[0]
    x = _calib(n=2, seed=4)
    pe = _pe(m, x)
    for block in (BlockConfig(A.gqa(4), F.swiglu(256)), BlockConfig(A.gqa(8), F.swiglu(300))):
        child = init_child_layer(layer, block, ffn_method="truncate")
        with torch.no_grad():
            assert (child(x, pe) - layer(x, pe)).abs().max().item() < 1e-5


def test_linear_attention_is_wo_wv():
    """``W_o·W_v`` is exact for a token attending only to itself (a sequence of one)."""
    m = _parent()
    layer = m.model.layers[0]
    child = init_child_layer(layer, BlockConfig(A.make_linear(), F.swiglu(256)), ffn_method="truncate")
    x = _calib(n=3, t=1, seed=5)
    with torch.no_grad():
        want = layer.attn_delta(x, _pe(m, x))
        assert (child.attn_delta(x) - want).abs().max().item() < 1e-5
        x = _calib(n=2, t=8, seed=6)  # over a sequence it is an approximation
        assert normalized_mse(child.attn_delta(x), layer.attn_delta(x, _pe(m, x))) > 1e-4


def test_linear_ffn_is_wdown_wup():
    m = _parent()
    layer = m.model.layers[0]
    child = init_child_layer(layer, BlockConfig(A.gqa(4), F.make_linear()), ffn_method="truncate")
    mlp = layer.mlp
    assert torch.allclose(child.mlp.linear_mlp.weight, mlp.down_proj.weight @ mlp.up_proj.weight, atol=1e-6)
    x = _calib(n=1, seed=7)
    with torch.no_grad():
        h = layer.post_attention_layernorm(x)
        assert torch.allclose(child.ffn_delta(x), mlp.down_proj(mlp.up_proj(h)), atol=1e-5)


def test_no_op_and_errors():
    m = _parent()
    layer = m.model.layers[0]
    child = init_child_layer(layer, BlockConfig(A.make_no_op(), F.make_no_op()))
    assert not list(child.parameters())
    with pytest.raises(ConfigError, match="calib_inputs"):
        init_child_layer(layer, BlockConfig(A.gqa(4), F.swiglu(64)))
    with pytest.raises(ConfigError, match="ffn_method"):
        init_child_layer(layer, BlockConfig(A.gqa(4), F.swiglu(64)), ffn_method="magnitude")
    with pytest.raises(ConfigError, match="kv_method"):
        init_child_layer(layer, BlockConfig(A.gqa(4), F.swiglu(64)), kv_method="max")


def test_init_keeps_dtype_and_random_is_seeded():
    m = _parent().to(torch.float64)
    layer = m.model.layers[0]
    b = BlockConfig(A.gqa(2), F.swiglu(64))
    c1 = init_child_layer(layer, b, ffn_method="random", kv_method="random", seed=3)
    c2 = init_child_layer(layer, b, ffn_method="random", kv_method="random", seed=3)
    assert c1.mlp.up_proj.weight.dtype == torch.float64
    assert all(torch.equal(p, q) for p, q in zip(c1.parameters(), c2.parameters()))
