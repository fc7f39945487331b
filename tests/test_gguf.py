"""GGUF parents on small GGUF files written here the way llama.cpp's converter writes them.

The files are written with gguf-py's ``GGUFWriter`` from a transformers model, with
``convert_hf_to_gguf.py``'s Llama Q/K row permutation (``LlamaModel.permute``), so loading them back
must undo it: the parent's logits equal the source model's.  The real SmolLM2 GGUF is in
``test_smollm2.py``.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from puzzlekit.cli import main  # noqa: E402
from puzzlekit.model import load_parent  # noqa: E402
from puzzlekit.model.gguf import (  # noqa: E402
    GGUFError,
    ensure_gguf_parent,
    find_gguf,
    gguf_config_dict,
    read_gguf_info,
    supported_quant_types,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second thread only waits on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp ``convert_hf_to_gguf.py`` ``LlamaModel.permute`` (rows of Q / K for its RoPE layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _byte_vocab() -> tuple[list[str], list[str]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    return [b2u[b] for b in range(256)] + ["he", "<|endoftext|>"], ["h e"]


def write_gguf(path, model=None, *, arch="llama", quant=None, tokenizer=True, extra=None, name="tiny"):
    """Write ``model`` (a transformers Llama / Qwen2) as a GGUF file like llama.cpp does; ``quant``
    maps GGUF tensor-name suffixes to a quantization type (``{"ffn_up.weight": "Q8_0"}``)."""
    from gguf.quants import quantize

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        vocab, merges = _byte_vocab()
        assert len(vocab) == cfg.vocab_size
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(vocab)
        w.add_token_types([1] * (len(vocab) - 1) + [3])
        w.add_token_merges(merges)
        w.add_bos_token_id(len(vocab) - 1)
        w.add_eos_token_id(len(vocab) - 1)
        w.add_chat_template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for k, t in model.state_dict().items():
        a = t.detach().float().numpy()
        if k == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif k == "model.norm.weight":
            g = "output_norm.weight"
        elif k == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            g = "output.weight"
        else:
            parts = k.split(".")
            g = f"blk.{parts[2]}.{names['.'.join(parts[3:-1])]}.{parts[-1]}"
        if arch == "llama" and ".attn_q." in g:
            a = _permute(a, cfg.num_attention_heads)
        elif arch == "llama" and ".attn_k." in g:
            a = _permute(a, cfg.num_key_value_heads)
        qt = next((q for suf, q in (quant or {}).items() if g.endswith(suf)), None)
        if qt is not None:
            qtype = getattr(gguf.GGMLQuantizationType, qt)
            w.add_tensor(g, quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(g, a)
    for g, a in (extra or {}).items():
        w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_hf(arch="llama", tied=True, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=258, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied, rms_norm_eps=1e-5,
              rope_theta=10000.0)
    m = LlamaForCausalLM(LlamaConfig(**kw)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**kw))
    with torch.no_grad():  # norms away from 1, so a mixed-up norm shows
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m.eval()


@pytest.mark.parametrize("arch,tied", [("llama", True), ("llama", False), ("qwen2", True)])
def test_gguf_parent_equals_its_source_model(tmp_path, arch, tied):
    src = tiny_hf(arch, tied)
    f = write_gguf(tmp_path / "m.gguf", src, arch=arch, tokenizer=False)
    parent = load_parent(f, gguf_cache=tmp_path / "cache")
    assert parent.config.tie_word_embeddings == tied
    ids = torch.randint(0, 258, (2, 24))
    with torch.no_grad():
        ref, got = src(ids).logits, parent(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    d = json.loads((tmp_path / "cache" / "config.json").read_text())
    assert d["model_type"] == arch and d["num_key_value_heads"] == 2


def test_quantized_tensors_are_gguf_py_dequantized(tmp_path):
    from gguf.quants import dequantize, quantize

    src = tiny_hf()
    f = write_gguf(tmp_path / "q.gguf", src, quant={"ffn_up.weight": "Q8_0", "attn_k.weight": "Q4_1"},
                   tokenizer=False)
    info = read_gguf_info(f)
    assert info.tensor_types == {"F32": 16, "Q8_0": 2, "Q4_1": 2}
    parent = load_parent(f, gguf_cache=tmp_path / "c")
    up = src.model.layers[1].mlp.up_proj.weight.detach().numpy()
    want = dequantize(quantize(up, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(parent.model.layers[1].mlp.up_proj.weight.detach().numpy(), want)
    k = src.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    q4 = dequantize(quantize(_permute(k, 2), gguf.GGMLQuantizationType.Q4_1), gguf.GGMLQuantizationType.Q4_1)
    got = parent.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    np.testing.assert_array_equal(_permute(got, 2), q4)  # un-permuted after dequantization
    assert 0 < np.abs(got - k).max() < 0.1  # Q4_1 error, not a layout error


def test_cache_is_reused_checked_and_rebuilt(tmp_path, caplog):
    f = write_gguf(tmp_path / "m.gguf", tiny_hf(), tokenizer=False)
    cache = tmp_path / "cache"
    ensure_gguf_parent(f, cache, tokenizer=False)
    st = (cache / "model.safetensors").stat().st_mtime_ns
    assert ensure_gguf_parent(f, cache, tokenizer=False) == cache
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same content: the hash decides
    ensure_gguf_parent(f, cache, tokenizer=False)
    assert (cache / "model.safetensors").stat().st_mtime_ns == st
    rec = json.loads((cache / "gguf_source.json").read_text())
    assert rec["mtime_ns"] == f.stat().st_mtime_ns and len(rec["sha256"]) == 64
    other = tiny_hf(seed=1)
    write_gguf(f, other, tokenizer=False)  # new content at the same path: rebuilt
    p = load_parent(f, gguf_cache=cache)
    ids = torch.randint(0, 258, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(p(ids).logits, other(ids).logits, atol=1e-5, rtol=1e-5)
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".cache.")] == [".cache.lock"]  # no temporaries
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "x.txt").write_text("mine")
    with pytest.raises(GGUFError, match="not a puzzlekit GGUF cache"):
        ensure_gguf_parent(f, stranger)


def test_unsupported_files_get_errors_naming_what_is_supported(tmp_path):
    src = tiny_hf()
    bad_arch = tmp_path / "a"
    bad_arch.mkdir()
    w = gguf.GGUFWriter(str(bad_arch / "g.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match=r"'gpt2' is not supported.*llama, qwen2"):
        load_parent(bad_arch, gguf_cache=tmp_path / "c1")  # a folder holding the file
    f64 = write_gguf(tmp_path / "f64.gguf", src, tokenizer=False, extra={"blk.0.extra.weight": np.zeros(4, np.float64)})
    with pytest.raises(GGUFError, match=r"F64 cannot be dequantized.*supported: F32, F16.*Q4_1"):
        load_parent(f64, gguf_cache=tmp_path / "c2")
    rope = write_gguf(tmp_path / "rope.gguf", src, tokenizer=False, extra={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(GGUFError, match="rope_freqs"):
        load_parent(rope)
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 40)
        load_parent(tmp_path / "junk.gguf", gguf_cache=tmp_path / "c3")
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"")
    (two / "b.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="2 GGUF files"):
        find_gguf(two)
    assert "Q4_1" in supported_quant_types() and "F64" not in supported_quant_types()


def test_cli_commands_take_a_gguf_parent(tmp_path, capsys, monkeypatch):
    """build-library / score cache the dequantized parent in RUN/parent; assemble / inspect / fuse take
    the file too; the tokenizer (with its chat template) comes from the GGUF."""
    monkeypatch.setenv("PUZZLEKIT_CACHE", str(tmp_path / "usercache"))
    f = write_gguf(tmp_path / "tiny.gguf", tiny_hf())
    assert gguf_config_dict(f)["num_hidden_layers"] == 2
    text = tmp_path / "text.txt"
    text.write_text("hello there, the hen said; the hedge hears her.\n" * 120)
    run = tmp_path / "run"
    common = ["--parent", str(f), "--no-progress", "--json"]
    assert main(["build-library", *common, "--data", str(text), "--run", str(run), "--tokens", "128",
                 "--batch-size", "2", "--seq-len", "32", "--ffn-fractions", "1,0.5"]) == 0
    assert (run / "parent" / "gguf_source.json").is_file() and (run / "parent" / "tokenizer.json").is_file()
    assert main(["score", "--run", str(run), *common, "--eval-sequences", "2", "--decoupled"]) == 0
    lib = json.loads((run / "library.json").read_text())
    assert all("kl_div" in c["metrics"] for c in lib["candidates"])
    assert any(c["metrics"].get("composed") for c in lib["candidates"])
    capsys.readouterr()
    assert main(["inspect", str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_layers"] == 2
    child = tmp_path / "child.json"
    cfg = json.loads((run / "parent" / "config.json").read_text())
    (tmp_path / "cfgdir").mkdir()
    nas = load_parent(run / "parent").config.to_dict()
    nas["block_configs"][1] = {"attention": {"no_op": True}, "ffn": {"intermediate_size": 48}}
    child.write_text(json.dumps(nas))
    assert main(["assemble", str(f), "--config", str(child), "--out", str(tmp_path / "out"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_layers"] == cfg["num_hidden_layers"] and (tmp_path / "out" / "tokenizer.json").is_file()
    assert list((tmp_path / "usercache" / "gguf").glob("tiny-*/gguf_source.json"))
    from puzzlekit.data import load_tokenizer

    tok = load_tokenizer(f)
    assert tok.chat_template and tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi"
    rc = main(["assemble", str(tmp_path / "missing.gguf"), "--config", str(child), "--out", str(tmp_path / "o2")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
