"""The serving-engine table: checks, engine-aware search, Nemotron-NAS checkpoints engines load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _engines_helpers import ALL_KINDS, A, F, demo_tokenizer, tiny_arch, tiny_model
from conftest import SUPER_49B, ULTRA_253B

import puzzlekit as pk
from puzzlekit import BlockConfig, BlockLibrary, InfeasibleError
from puzzlekit.engines import (
    ENGINES,
    EngineError,
    architecture_issues,
    get_engine,
    markdown_table,
    require_servable,
)

ROOT = Path(__file__).resolve().parents[1]


def test_table_is_complete_and_cites_engine_code():
    for e in ENGINES.values():
        assert set(e.attention) == {"gqa", "linear", "no_op"} and set(e.ffn) == {"swiglu", "linear", "no_op"}
        for r in [*e.attention.values(), *e.ffn.values(), e.width_rule, e.tokenizer]:
            assert r.why and r.source and r.verdict in ("served", "refused", "untested")
            assert "FACTS" not in r.source
    assert "| vLLM | served | refused |" in markdown_table()
    assert get_engine("llama.cpp").name == "llamacpp" and get_engine("TRTLLM").name == "tensorrt-llm"
    with pytest.raises(pk.ConfigError, match="did you mean 'vllm'"):
        get_engine("vlm")


@pytest.mark.parametrize("engine", ["vllm", "sglang", "tensorrt-llm", "llamacpp", "transformers"])
@pytest.mark.parametrize("path", [SUPER_49B, ULTRA_253B], ids=["super-49b", "ultra-253b"])
def test_published_configs_are_served(engine, path):
    require_servable(pk.Architecture.from_config(path), engine)


@pytest.mark.parametrize("name", ["super-49b", "ultra-253b"])
def test_cli_published_configs_pass_the_vllm_check(name, capsys):
    from puzzlekit.cli import main

    assert main(["export", name, "--engine", "vllm", "--check-only"]) == 0
    assert "vLLM serves all" in capsys.readouterr().out
    assert main(["export", name, "--engine", "vllm", "-o", "x"]) == 2  # a config alone cannot be written


def test_linear_subblocks_and_non_256_widths_are_refused_with_layer_subblock_engine():
    arch = tiny_arch([BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.make_linear(), F.swiglu(512)),
                      BlockConfig(A.gqa(1), F.make_linear()), BlockConfig(A.gqa(2), F.swiglu(100))])
    with pytest.raises(EngineError) as ei:
        require_servable(arch, "vllm")
    msg = str(ei.value)
    assert "vLLM" in msg and "layer 1 attention linear" in msg and "layer 2 ffn linear" in msg
    assert "layer 3" not in msg  # vLLM reads intermediate_size: any width
    with pytest.raises(EngineError) as ei:
        require_servable(arch, "tensorrt-llm")
    msg = str(ei.value)
    assert "TensorRT-LLM" in msg and "layer 3 ffn ffn:100" in msg and "multiple of 256" in msg
    assert "layer 1" not in msg  # TensorRT-LLM has linear sub-blocks
    sg = {(i.layer, i.part) for i in architecture_issues(arch, "sglang")}
    assert sg == {(1, "attention"), (2, "ffn"), (3, "ffn")}
    assert {(i.layer, i.part) for i in architecture_issues(arch, "llamacpp")} == {(2, "ffn")}
    assert architecture_issues(arch, "transformers") == []


def test_parent_rules_and_model_rule():
    arch = tiny_arch([BlockConfig(A.gqa(2), F.swiglu(512))], attention_bias=True, mlp_bias=True)
    assert {i.subblock for i in architecture_issues(arch, "tensorrt-llm")} == {"attention bias", "mlp bias"}
    assert {i.subblock for i in architecture_issues(arch, "sglang")} == {"mlp bias"}
    assert architecture_issues(arch, "vllm") == []
    no_attn = tiny_arch([BlockConfig(A.make_no_op(), F.swiglu(512))] * 2)
    assert [i.part for i in architecture_issues(no_attn, "vllm")] == ["model"]


# ---- search ---------------------------------------------------------------------------------------


def _library(layers: int = 4) -> BlockLibrary:
    """Every kind on every layer; the objective prefers linear sub-blocks and odd widths, so an
    engine restriction changes the answer."""
    spec = tiny_arch([ALL_KINDS[0]] * layers).parent
    lib = BlockLibrary(layers, spec)
    atts = [A.gqa(2), A.gqa(1), A.make_linear(), A.make_no_op()]
    ffns = [F.swiglu(512), F.swiglu(256), F.swiglu(100), F.make_linear(), F.make_no_op()]
    for layer in range(layers):
        for a in atts:
            for f in ffns:
                b = BlockConfig(a, f)
                kl = {"gqa": 0.1, "linear": 0.01, "no_op": 0.5}[a.kind] + (
                    0.001 if f.intermediate_size == 100 else {"swiglu": 0.1, "linear": 0.01, "no_op": 0.5}[f.kind])
                cost = pk.block_params(spec, b)
                lib.add(layer, b, {"kl_div": kl + 1e-4 * layer, "cost": cost})
    return lib


def test_search_restricts_candidates_to_the_engine():
    from puzzlekit.search import ParamsLimit

    lib = _library()
    cons = [ParamsLimit(max_params=0.7 * pk.count(tiny_arch([ALL_KINDS[0]] * 4)).num_params)]
    free = pk.search(lib, "kl_div", constraints=cons)
    assert any(b.attention.linear or b.ffn.linear for b in lib.architecture(free.candidates).blocks)
    for engine in ("vllm", "sglang", "tensorrt-llm", "llamacpp"):
        sol = pk.search(lib, "kl_div", constraints=cons, engine=engine)
        arch = lib.architecture(sol.candidates)
        assert architecture_issues(arch, engine) == [], engine
        assert sol.objective >= free.objective - 1e-12
    trt = lib.architecture(pk.search(lib, "kl_div", constraints=cons, engine="tensorrt-llm").candidates)
    assert any(b.attention.linear or b.ffn.linear for b in trt.blocks)  # TensorRT-LLM keeps linear sub-blocks
    vl = pk.search(lib, "kl_div", constraints=cons, engine="vllm")
    assert vl.costs["vllm_gqa_layers"] >= 1
    assert any(b.ffn.intermediate_size == 100 for b in lib.architecture(vl.candidates).blocks)  # vLLM: any width
    div = pk.search_diverse(lib, "kl_div", constraints=cons, engine="sglang", num_solutions=2, min_diversity=1)
    assert all(architecture_issues(lib.architecture(s.candidates), "sglang") == [] for s in div)


def test_infeasibility_names_the_engine():
    spec = tiny_arch([ALL_KINDS[0]] * 2).parent
    lib = BlockLibrary(2, spec)
    lib.add(0, BlockConfig(A.gqa(2), F.swiglu(512)), {"kl_div": 0.0})
    lib.add(1, BlockConfig(A.make_linear(), F.swiglu(512)), {"kl_div": 0.0})
    with pytest.raises(InfeasibleError, match=r"engine vllm: no candidate of layer 1 is served by vLLM"):
        pk.search(lib, "kl_div", engine="vllm")
    from puzzlekit.search import ParamsLimit

    with pytest.raises(InfeasibleError, match="candidates restricted to what SGLang serves"):
        pk.search(_library(2), "kl_div", constraints=[ParamsLimit(max_params=10.0)], engine="sglang")


def test_cli_search_engine(tmp_path):
    from puzzlekit.cli import main

    lib = _library()
    path = tmp_path / "lib.json"
    lib.save(path)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["search", str(path), "--objective", "kl_div", "--engine", "vllm", "--json"]) == 0
    sol = json.loads(buf.getvalue())
    arch = lib.architecture([c["candidate"] for c in sol["choices"]])
    assert architecture_issues(arch, "vllm") == []
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["search", str(path), "--objective", "kl_div", "--engine", "vlm"]) == 2
    assert "unknown engine 'vlm'" in err.getvalue()


# ---- Nemotron-NAS checkpoints ------------------------------------------------------------------------

# What each engine's loader reads, replayed in a fresh interpreter on the config transformers builds with
# trust_remote_code=True (the way vLLM, SGLang and TensorRT-LLM resolve it).
_PROBE = r'''
import dataclasses, json, sys
from transformers import AutoConfig
from safetensors import safe_open
def mult(m, h):
    n = int(2 * m * h / 3)
    return n if n % 256 == 0 else n + 256 - n % 256
def probe(folder, engine):
    c = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(c).__module__.endswith("configuration_decilm"), type(c)
    H, nh = c.hidden_size, c.num_attention_heads
    layers, names = [], {"model.embed_tokens.weight", "model.norm.weight"}
    if not c.tie_word_embeddings:
        names.add("lm_head.weight")
    for i, b in enumerate(c.block_configs):
        p = f"model.layers.{i}."
        if engine == "tensorrt-llm":  # convert.py: dataclasses.asdict, then dict keys
            d = dataclasses.asdict(b)
            a, f = d["attention"], d["ffn"]
            att = "no_op" if a["no_op"] else "linear" if a["replace_with_linear"] else nh // a["n_heads_in_group"]
            ffn = "no_op" if f["no_op"] else "linear" if f["replace_with_linear"] else mult(f["ffn_mult"], H)
        else:  # vllm / sglang: attributes
            att = "no_op" if b.attention.no_op else nh // b.attention.n_heads_in_group
            if b.ffn.no_op:
                ffn = "no_op"
            elif engine == "vllm" and not hasattr(b.ffn, "ffn_mult"):
                ffn = b.ffn.intermediate_size
            else:
                ffn = mult(b.ffn.ffn_mult, H)
        layers.append([att, ffn])
        if att == "linear":
            names |= {p + "input_layernorm.weight", p + "self_attn.linear_attn.weight"}
        elif att != "no_op":
            names |= {p + "input_layernorm.weight"} | {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        if ffn == "linear":
            names |= {p + "post_attention_layernorm.weight", p + "mlp.linear_mlp.weight"}
        elif ffn != "no_op":
            names |= {p + "post_attention_layernorm.weight"} | {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
    with safe_open(folder + "/model.safetensors", "pt") as fh:
        keys = set(fh.keys())
    top = {k: getattr(c, k) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
                                      "rms_norm_eps", "hidden_act", "max_position_embeddings", "tie_word_embeddings",
                                      "rope_theta", "intermediate_size", "num_key_value_heads", "attention_bias",
                                      "mlp_bias")}
    return {"layers": layers, "names_equal": keys == names, "missing": sorted(names - keys),
            "extra": sorted(keys - names), "top": top}
args = sys.argv[1:]
print(json.dumps([probe(args[k], args[k + 1]) for k in range(0, len(args), 2)]))
'''


def _probe(*pairs: tuple[Path, str]) -> list[dict]:
    argv = [str(x) for pair in pairs for x in pair]
    r = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                       cwd=str(pairs[0][0].parent), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _expected(arch) -> list:
    out = []
    for b in arch.blocks:
        a, f = b.attention, b.ffn
        out.append([a.kind if a.kind != "gqa" else a.num_kv_heads, f.kind if f.kind != "swiglu" else f.intermediate_size])
    return out


def test_exported_checkpoint_loads_as_the_engines_load_it(tmp_path):
    from puzzlekit.export import export_model

    tok = tmp_path / "tok"
    demo_tokenizer(tok)
    # TensorRT-LLM serves every kind at multiples of 256: the whole table's weight names
    mt = tiny_model([b for b in ALL_KINDS if b.ffn.intermediate_size != 100])
    trt = export_model(mt, tmp_path / "trt", engine="tensorrt-llm", tokenizer_dir=tok)
    cfg = json.loads((trt / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "configuration_decilm.DeciLMConfig"}
    assert (trt / "configuration_decilm.py").is_file() and (trt / "tokenizer.json").is_file()
    for bc in cfg["block_configs"]:
        f = bc["ffn"]
        assert "intermediate_size" not in f and ("ffn_mult" in f)
        assert (f["ffn_mult"] is None) == (f["no_op"] or f["replace_with_linear"])
    # vLLM: no linear sub-blocks, any width (a width that is not a multiple of 256 has no ffn_mult key)
    vb = [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.make_no_op(), F.swiglu(100)),
          BlockConfig(A.gqa(1), F.make_no_op()), BlockConfig(A.gqa(4), F.swiglu(768))]
    mv = tiny_model(vb)
    vl = export_model(mv, tmp_path / "vllm", engine="vllm", tokenizer_dir=tok)
    cfg = json.loads((vl / "config.json").read_text())
    assert cfg["block_configs"][1]["ffn"] == {"intermediate_size": 100, "no_op": False, "replace_with_linear": False,
                                              "sparsify": None}
    # SGLang reads ffn_mult only: the same child without the 100-wide FFN
    ms = tiny_model([vb[0], BlockConfig(A.make_no_op(), F.swiglu(256)), vb[2], vb[3]])
    sg = export_model(ms, tmp_path / "sgl", engine="sglang", tokenizer_dir=tok)
    res = _probe((trt, "tensorrt-llm"), (vl, "vllm"), (sg, "sglang"))
    for r, m in zip(res, (mt, mv, ms)):
        assert r["layers"] == _expected(m.architecture) and r["names_equal"], r
    assert res[0]["top"]["rope_theta"] == 10000.0 and res[0]["top"]["intermediate_size"] is None


def test_export_refuses_before_writing(tmp_path):
    from puzzlekit.cli import main
    from puzzlekit.model import save_model

    tok = tmp_path / "tok"
    demo_tokenizer(tok)
    child = tmp_path / "child"
    save_model(tiny_model(ALL_KINDS), child, tokenizer_from=tok)
    import contextlib
    import io

    for engine, fmt, needle in [("vllm", None, "layer 2 ffn linear: vLLM does not serve it"),
                                ("tensorrt-llm", None, "layer 3 ffn ffn:100: TensorRT-LLM does not serve it"),
                                ("sglang", None, "layer 3 attention linear: SGLang does not serve it"),
                                ("llamacpp", None, "layer 2 ffn linear: llama.cpp does not serve it"),
                                ("llamacpp", "nemotron-nas", "llama.cpp reads GGUF")]:
        out = tmp_path / f"out-{engine}"
        err = io.StringIO()
        args = ["export", str(child), "--engine", engine, "-o", str(out) + (".gguf" if engine == "llamacpp" else "")]
        with contextlib.redirect_stderr(err):
            assert main(args + (["--format", fmt] if fmt else [])) == 2, engine
        assert needle in err.getvalue(), err.getvalue()
        assert "nothing was written" in err.getvalue() or fmt
        assert not list(tmp_path.glob(f"out-{engine}*")), "something was written"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["export", str(child), "--engine", "transformers", "-o", str(tmp_path / "hf")]) == 0
    assert "all served" in buf.getvalue() and (tmp_path / "hf" / "configuration_decilm.py").is_file()
    notok = tmp_path / "notok"
    save_model(tiny_model(ALL_KINDS[:1]), notok)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["export", str(notok), "--engine", "vllm", "-o", str(tmp_path / "x")]) == 2
    assert "no Hugging Face tokenizer" in err.getvalue() and not (tmp_path / "x").exists()


def test_assemble_engine_option_refuses_before_writing(tmp_path):
    import contextlib
    import io

    from puzzlekit.cli import main
    from puzzlekit.model import save_model

    parent = tmp_path / "parent"
    save_model(tiny_model([ALL_KINDS[0]] * 3), parent)
    child_cfg = tmp_path / "child.json"
    child_cfg.write_text(json.dumps(tiny_arch([BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.make_linear(),
                                               F.swiglu(256)), BlockConfig(A.gqa(1), F.swiglu(512))]).to_nemotron_nas()))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["assemble", str(parent), "--config", str(child_cfg), "--out", str(tmp_path / "c"), "--engine", "vllm"])
    assert rc == 2 and "layer 1 attention linear: vLLM does not serve it" in err.getvalue()
    assert not (tmp_path / "c").exists()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["assemble", str(parent), "--config", str(child_cfg), "--out", str(tmp_path / "c"),
                     "--engine", "tensorrt-llm"]) == 0
    assert (tmp_path / "c" / "configuration_decilm.py").is_file()


def test_exported_module_is_never_run_by_puzzlekit(tmp_path, reliability):
    """Our own loaders read config.json as data: a configuration_decilm.py that would run code is never imported."""
    import contextlib
    import io

    from puzzlekit.cli import main
    from puzzlekit.model import load_parent, save_model

    folder = tmp_path / "child"
    save_model(tiny_model(ALL_KINDS), folder)
    marker = tmp_path / "pwned"
    (folder / "configuration_decilm.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    from transformers import AutoConfig

    m = load_parent(folder)
    assert m.architecture.blocks == tuple(ALL_KINDS)
    assert type(AutoConfig.from_pretrained(folder)).__name__ == "PuzzleConfig"
    pk.Architecture.from_config(folder)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["inspect", str(folder)])
        main(["export", str(folder), "--engine", "transformers", "--check-only", "--tokenizer", str(folder)])
    assert not marker.exists(), "configuration_decilm.py was executed"
    reliability("security", "exported configuration_decilm.py replaced by code: never imported by puzzlekit "
                            "(load_parent, AutoConfig, inspect, export)", 5)
