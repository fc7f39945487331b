import json
import warnings

import pytest
from conftest import SUPER_49B, ULTRA_253B, tiny_llama_config
from hypothesis import given, settings
from hypothesis import strategies as st

import puzzlekit as pk
from puzzlekit import AttentionConfig, BlockConfig, ConfigError, FFNConfig
from puzzlekit.nas import NonMultipleWarning, ffn_mult_to_intermediate_size, intermediate_size_to_ffn_mult

BLOCK_FIELDS = ("attention", "ffn")


def test_ffn_mult_rounding_matches_serving_engines():
    assert ffn_mult_to_intermediate_size(5.25, 8192) == 28672  # Llama-70B
    assert ffn_mult_to_intermediate_size(1.95, 16384) == 21504  # 21299 rounded up to a multiple of 256
    assert intermediate_size_to_ffn_mult(28672, 8192) == 5.25
    assert intermediate_size_to_ffn_mult(100, 64) is None


@given(st.integers(1, 2000).map(lambda k: 256 * k), st.sampled_from([512, 1024, 4096, 8192, 16384, 5120]))
def test_ffn_mult_inverse_is_exact(size, hidden):
    m = intermediate_size_to_ffn_mult(size, hidden)
    assert m is not None and ffn_mult_to_intermediate_size(m, hidden) == size


@pytest.mark.parametrize("path", [SUPER_49B, ULTRA_253B])
def test_published_configs_round_trip(path):
    raw = json.loads(path.read_text())
    a = pk.Architecture.from_config(path)
    assert a.num_layers == len(raw["block_configs"])
    out = a.to_nemotron_nas()
    b = pk.Architecture.from_config(out)
    assert [(x.attention, x.ffn) for x in a.blocks] == [(x.attention, x.ffn) for x in b.blocks]
    # unknown top-level fields are preserved
    for k in ("auto_map", "bos_token_id", "eos_token_id", "torch_dtype", "_name_or_path", "pretraining_tp"):
        assert out[k] == raw[k]
    # the block fields are the same after read -> write -> read
    for bc_raw, bc_out in zip(raw["block_configs"], out["block_configs"]):
        assert bc_out["attention"]["no_op"] == bc_raw["attention"]["no_op"]
        assert bc_out["attention"]["n_heads_in_group"] == bc_raw["attention"]["n_heads_in_group"]
        assert bc_out["ffn"]["no_op"] == bc_raw["ffn"]["no_op"]
        if bc_raw["ffn"]["ffn_mult"] is not None:
            h = raw["hidden_size"]
            assert ffn_mult_to_intermediate_size(bc_out["ffn"]["ffn_mult"], h) == ffn_mult_to_intermediate_size(
                bc_raw["ffn"]["ffn_mult"], h
            )


def test_published_counts():
    s = pk.count(pk.Architecture.from_config(SUPER_49B))
    u = pk.count(pk.Architecture.from_config(ULTRA_253B))
    assert s.num_params == 49_867_145_216
    assert u.num_params == 253_401_268_224
    sup = pk.Architecture.from_config(SUPER_49B)
    assert sup.attention_free_runs() == [(6, 7), (11, 11), (42, 51), (53, 70)]
    assert sum(b.attention.kind == "gqa" for b in sup.blocks) == 49
    ultra = pk.Architecture.from_config(ULTRA_253B)
    big = sorted({b.ffn.intermediate_size for b in ultra.blocks if b.ffn.intermediate_size})[-4:]
    assert all(s > 300_000 for s in big)  # the four fused FFNs


def test_plain_llama_is_homogeneous_and_exports_with_intermediate_size():
    cfg = tiny_llama_config(intermediate_size=100)
    a = pk.Architecture.from_config(cfg)
    assert a.num_layers == 4 and len(set(a.blocks)) == 1
    assert a.blocks[0] == BlockConfig(AttentionConfig.gqa(2), FFNConfig.swiglu(100))
    with pytest.warns(NonMultipleWarning, match=r"layers \[0, 1, 2, 3\]"):
        out = a.to_nemotron_nas()
    assert out["block_configs"][0]["ffn"]["intermediate_size"] == 100
    assert "ffn_mult" not in out["block_configs"][0]["ffn"]  # no null beside it: vLLM would read the null
    assert pk.Architecture.from_config(out).blocks == a.blocks


def test_qwen2_and_mistral_specs():
    q = pk.ParentSpec.from_hf_config(tiny_llama_config(model_type="qwen2", tie_word_embeddings=True))
    assert q.qkv_bias and not q.o_bias and q.tie_word_embeddings
    m = pk.ParentSpec.from_hf_config(tiny_llama_config(model_type="mistral", head_dim=32))
    assert m.head_dim == 32 and m.model_type == "mistral"


@pytest.mark.parametrize(
    "over, msg",
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"hidden_size": -1}, "hidden_size"),
        ({"num_key_value_heads": 3}, "must divide"),
        ({"hidden_act": "gelu"}, "silu"),
    ],
)
def test_bad_parent_configs(over, msg):
    with pytest.raises(ConfigError, match=msg):
        pk.ParentSpec.from_hf_config(tiny_llama_config(**over))


def test_bad_nas_blocks():
    cfg = json.loads(SUPER_49B.read_text())
    cfg["block_configs"][3]["attention"]["n_heads_in_group"] = 7
    with pytest.raises(ConfigError, match=r"block_configs\[3\].attention.n_heads_in_group"):
        pk.Architecture.from_config(cfg)
    cfg = json.loads(SUPER_49B.read_text())
    cfg["block_configs"][5]["attention"]["window_length"] = 4096
    with pytest.raises(ConfigError, match="not supported"):
        pk.Architecture.from_config(cfg)


def test_kv_heads_must_divide():
    spec = pk.ParentSpec.from_hf_config(tiny_llama_config())
    with pytest.raises(ConfigError, match="allowed: \\[1, 2, 4\\]"):
        pk.Architecture(spec, (BlockConfig(AttentionConfig.gqa(3), FFNConfig.make_no_op()),))


spec = pk.ParentSpec.from_hf_config(tiny_llama_config(hidden_size=512, num_attention_heads=8, num_key_value_heads=8))
arch_blocks = st.lists(
    st.builds(
        BlockConfig,
        st.one_of(st.sampled_from([1, 2, 4, 8]).map(AttentionConfig.gqa), st.just(AttentionConfig.make_linear()),
                  st.just(AttentionConfig.make_no_op())),
        st.one_of(st.integers(1, 40).map(lambda k: FFNConfig.swiglu(256 * k)), st.integers(1, 3000).map(FFNConfig.swiglu),
                  st.just(FFNConfig.make_linear()), st.just(FFNConfig.make_no_op())),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150)
@given(arch_blocks)
def test_nemotron_nas_round_trip_property(blocks):
    a = pk.Architecture(spec, tuple(blocks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonMultipleWarning)
        d = a.to_nemotron_nas()
    b = pk.Architecture.from_config(json.loads(json.dumps(d)))
    assert b.blocks == a.blocks
    assert pk.model_params(b) == pk.model_params(a)


def test_ffn_runs_and_attention_free_runs():
    g, n = AttentionConfig.gqa(2), AttentionConfig.make_no_op()
    f, z = FFNConfig.swiglu(64), FFNConfig.make_no_op()
    p = pk.ParentSpec.from_hf_config(tiny_llama_config())
    a = pk.Architecture(p, [BlockConfig(g, f), BlockConfig(n, f), BlockConfig(n, z), BlockConfig(n, f),
                            BlockConfig(g, f), BlockConfig(g, f), BlockConfig(n, f)])
    assert a.attention_free_runs() == [(1, 3), (6, 6)]
    assert a.ffn_runs() == [(0, 3), (5, 6)]


def test_scenario_validation():
    s = pk.Scenario("h100-sxm", "fp8", batch=256, prefill=1000, decode=200)
    assert s.name == "h100-sxm/fp8/b256/p1000/d200/tp1"
    assert pk.Scenario.from_dict(s.to_dict()) == s
    with pytest.raises(ConfigError, match="dtype"):
        pk.Scenario("h100-sxm", "int3")
    with pytest.raises(ConfigError, match="did you mean 'batch'"):
        pk.Scenario.from_dict({"hardware": "x", "batc": 3})


def test_transformers5_rope_parameters_are_read():
    cfg = tiny_llama_config()
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    spec = pk.ParentSpec.from_hf_config(cfg)
    assert spec.rope_theta == 500000.0 and spec.rope_scaling["rope_type"] == "llama3"
    assert "rope_theta" not in spec.rope_scaling
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonMultipleWarning)
        out = pk.Architecture.from_config(cfg).to_nemotron_nas()
    assert out["rope_scaling"]["factor"] == 8.0
    plain = pk.ParentSpec.from_hf_config(tiny_llama_config(rope_parameters={"rope_type": "default", "rope_theta": 1e4}))
    assert plain.rope_scaling is None
