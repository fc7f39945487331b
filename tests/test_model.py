"""PuzzleForCausalLM: parity with transformers' own models, KV cache, generate, checkpoints, NAS configs."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import SUPER_49B, ULTRA_253B, tiny_llama_config  # noqa: E402

from puzzlekit import Architecture, AttentionConfig, BlockConfig, FFNConfig, model_params  # noqa: E402
from puzzlekit.errors import ConfigError  # noqa: E402
from puzzlekit.model import (  # noqa: E402
    PuzzleConfig,
    PuzzleForCausalLM,
    load_parent,
    make_layer,
    num_params,
)

torch.set_num_threads(1)

A, F = AttentionConfig, FFNConfig

#: every block kind: GQA with several KV counts, linear and no-op attention; SwiGLU (narrow,
#: parent, wide), linear and no-op FFN
MIXED = [
    BlockConfig(A.make_no_op(), F.swiglu(256)),
    BlockConfig(A.gqa(1), F.make_linear()),
    BlockConfig(A.make_linear(), F.swiglu(100)),
    BlockConfig(A.gqa(4), F.make_no_op()),
    BlockConfig(A.make_no_op(), F.make_no_op()),
    BlockConfig(A.gqa(2), F.swiglu(768)),
]


def mixed_model(**over) -> PuzzleForCausalLM:
    torch.manual_seed(0)
    arch = Architecture.from_config(tiny_llama_config(num_hidden_layers=len(MIXED), **over)).with_blocks(MIXED)
    return PuzzleForCausalLM.from_architecture(arch).eval()


def _hf_pair(kind: str):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    d = tiny_llama_config()
    d.pop("model_type")
    d.pop("architectures")
    if kind == "llama":
        d.update(rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16})
        return LlamaForCausalLM(LlamaConfig(**d))
    if kind == "qwen2":
        d.update(tie_word_embeddings=True)
        return Qwen2ForCausalLM(Qwen2Config(**d))
    d.update(sliding_window=6)
    return MistralForCausalLM(MistralConfig(**d))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_parent_equals_transformers(kind, tmp_path):
    torch.manual_seed(0)
    hf = _hf_pair(kind).eval()
    x = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        ref = hf(x).logits
        got = load_parent(hf)(x).logits
    assert (ref - got).abs().max().item() <= 1e-5
    # the same parent from a local folder (safetensors, sharded), through the meta device
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    pm = load_parent(tmp_path)
    assert not any(p.is_meta for p in pm.parameters())
    with torch.no_grad():
        assert (ref - pm(x).logits).abs().max().item() <= 1e-5
    if kind == "qwen2":
        assert pm.lm_head.weight is pm.model.embed_tokens.weight
        assert pm.config.parent_spec.qkv_bias and not pm.config.parent_spec.o_bias
        pm.save_pretrained(tmp_path / "nas")  # q/k/v-only bias survives as 'qkv_bias' (vLLM reads it)
        assert json.loads((tmp_path / "nas" / "config.json").read_text())["qkv_bias"] is True
        with torch.no_grad():
            assert torch.equal(load_parent(tmp_path / "nas")(x).logits, pm(x).logits)


def test_every_block_kind_runs_and_counts():
    m = mixed_model()
    kinds = {(b.attention.kind, b.ffn.kind) for b in MIXED}
    assert {a for a, _ in kinds} == {"gqa", "linear", "no_op"}
    assert {f for _, f in kinds} == {"swiglu", "linear", "no_op"}
    assert num_params(m) == model_params(m.architecture)
    layer = m.model.layers[0]
    assert layer.self_attn is None and layer.input_layernorm is None
    assert m.model.layers[3].mlp is None and m.model.layers[3].post_attention_layernorm is None
    names = set(m.state_dict())
    assert "model.layers.2.self_attn.linear_attn.weight" in names
    assert "model.layers.1.mlp.linear_mlp.weight" in names
    assert not any(n.startswith("model.layers.4.") for n in names)
    with torch.no_grad():
        out = m(torch.randint(0, 128, (1, 5)))
    assert out.logits.shape == (1, 5, 128) and torch.isfinite(out.logits).all()


def test_layer_deltas_compose_to_forward():
    m = mixed_model()
    x = torch.randn(2, 7, 64)
    pe = m.model.rotary_emb(x, torch.arange(7)[None])
    for layer in m.model.layers:
        with torch.no_grad():
            h = x + layer.attn_delta(x, pe)
            want = h + layer.ffn_delta(h)
            assert torch.equal(layer(x, pe), want)


def test_kv_cache_decoding_equals_full_recomputation():
    from transformers import DynamicCache

    m = mixed_model()
    x = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        full = m(x).logits
        cache = DynamicCache()
        out = m(x[:, :5], past_key_values=cache, use_cache=True)
        steps = [out.logits]
        out = m(x[:, 5:8], past_key_values=cache, use_cache=True)  # a chunk with a cache: explicit mask
        steps.append(out.logits)
        for t in range(8, 12):
            out = m(x[:, t:t + 1], past_key_values=out.cache, use_cache=True)
            steps.append(out.logits)
    assert (full - torch.cat(steps, 1)).abs().max().item() < 1e-5
    n_gqa = sum(b.attention.kind == "gqa" for b in MIXED)
    assert len(cache.layers) == n_gqa  # one cache entry per GQA layer, none for the others
    assert cache.get_seq_length() == 12


def test_left_padding_matches_unpadded():
    m = mixed_model()
    x = torch.randint(1, 128, (1, 6))
    pad = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = m(x).logits
        got = m(pad, attention_mask=mask, position_ids=pos).logits[:, 3:]
    assert (ref - got).abs().max().item() < 1e-5


def test_generate_greedy_matches_recomputation():
    m = mixed_model()
    m.generation_config.pad_token_id = 0
    x = torch.randint(0, 128, (2, 4))
    g = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False)
    seq = x
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, m(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(g, seq)


def test_save_reload_identical_and_nas_config(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    m = mixed_model()
    x = torch.randint(0, 128, (2, 9))
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "nemotron-nas" and cfg["architectures"] == ["DeciLMForCausalLM"]
    assert cfg["intermediate_size"] is None and cfg["num_key_value_heads"] is None
    # engines resolve the config through auto_map; our own class is written beside it (never run by puzzlekit)
    assert cfg["auto_map"] == {"AutoConfig": "configuration_decilm.DeciLMConfig"}
    assert (tmp_path / "configuration_decilm.py").is_file()
    assert Architecture.from_config(cfg).blocks == tuple(MIXED)
    bc = cfg["block_configs"]
    assert bc[0]["attention"]["no_op"] and bc[2]["attention"]["replace_with_linear"]
    assert bc[1]["ffn"]["replace_with_linear"] and bc[1]["attention"]["n_heads_in_group"] == 4
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(m.state_dict())
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(back) is PuzzleForCausalLM
    with torch.no_grad():
        assert torch.equal(back(x).logits, m(x).logits)
        assert torch.equal(load_parent(tmp_path)(x).logits, m(x).logits)


def test_published_nas_folder_loads_without_remote_code(tmp_path):
    """A Nemotron-NAS folder with ``auto_map`` (remote code) loads through the Auto classes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    m = mixed_model()
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_decilm.DeciLMConfig",
                       "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), PuzzleConfig)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    x = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        assert torch.equal(back(x).logits, m(x).logits)


@pytest.mark.parametrize("path", [SUPER_49B, ULTRA_253B], ids=["super-49b", "ultra-253b"])
def test_published_configs_on_meta_device(path):
    raw = json.loads(path.read_text())
    config = PuzzleConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        m = PuzzleForCausalLM(config)
    arch = Architecture.from_config(path)
    assert num_params(m) == model_params(arch)
    assert m.architecture.blocks == arch.blocks
    assert config.rope_parameters["rope_type"] == "llama3"


def test_make_layer_and_bad_input():
    spec = Architecture.from_config(tiny_llama_config()).parent
    layer = make_layer(spec, BlockConfig(A.gqa(2), F.swiglu(32)), 3, dtype=torch.float64)
    assert layer.self_attn.k_proj.weight.dtype == torch.float64
    assert layer.block.ffn.intermediate_size == 32
    with pytest.raises(ConfigError, match="position_embeddings"):
        layer.attn_delta(torch.randn(1, 2, 64, dtype=torch.float64))
    with pytest.raises(ConfigError, match="n_heads_in_group"):
        PuzzleConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1,
                     block_configs=[{"attention": {"n_heads_in_group": 3}, "ffn": {"ffn_mult": 1.0}}])


_MEM_SCRIPT = """
import resource, sys, torch
torch.set_num_threads(1)
from puzzlekit.model import load_parent
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = load_parent(sys.argv[1])
with torch.no_grad():
    total = sum(float(p.sum()) for p in m.parameters())  # touch every weight
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = sum(p.numel() * p.element_size() for p in m.parameters())
print((peak - base) * 1024 / size)
"""


def test_sharded_load_does_not_materialise_twice(tmp_path):
    """Peak resident memory of loading a sharded folder stays near one copy of the weights."""
    import subprocess
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=8000)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path, max_shard_size="5MB")
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, check=True)
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert ratio < 1.5, f"peak RSS grew by {ratio:.2f}x the weights"


def test_hidden_states_convention():
    m = mixed_model()
    x = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        out = m(x, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == len(MIXED) + 1
    assert torch.equal(hs[0], m.model.embed_tokens(x))
    assert torch.equal(m.lm_head(hs[-1]), out.logits)


@pytest.mark.gpu
def test_cuda_bf16_parity_and_generate():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    hf = _hf_pair("llama").to("cuda", torch.bfloat16).eval()
    pm = load_parent(hf)
    x = torch.randint(0, 128, (2, 32), device="cuda")
    with torch.no_grad():
        ref, got = hf(x).logits.float(), pm(x).logits.float()
    assert (ref - got).abs().max().item() < 5e-2
    m = mixed_model().to("cuda", torch.bfloat16)
    m.generation_config.pad_token_id = 0
    g = m.generate(x[:, :4], attention_mask=torch.ones_like(x[:, :4]), max_new_tokens=8, do_sample=False)
    assert g.shape == (2, 12)


def test_labels_loss_and_bf16():
    m = mixed_model()
    x = torch.randint(0, 128, (2, 8))
    out = m(x, labels=x)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 128), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, want, atol=1e-6)
    out.loss.backward()
    assert m.model.layers[2].self_attn.linear_attn.weight.grad is not None
    mb = mixed_model().to(torch.bfloat16)
    with torch.no_grad():
        lb = mb(x).logits.float()
    assert (lb - out.logits.detach()).abs().max().item() < 0.1
