"""The LN-Super / LN-Ultra recipes run every stage for real on a tiny stand-in parent (CPU).

``examples/ln_super/config_tiny.yaml``: a Llama with Llama-3.3-70B's layout scaled down, trained for a
few steps on generated text; ``--stage all`` builds and scores the block library, profiles it, searches,
assembles, heals (GKD) and SFTs the child.  Checked: the artefacts of every stage, that a re-run is a
no-op, and that a stage run out of order (or switched off, or too big for a CPU) fails with a clear error.
Ultra's whole chain (fusion, CPT, GRPO) is the slow test.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from puzzlekit.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _recipe(name: str):
    key = f"{name}_recipe_under_test"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "examples" / name / "recipe.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def _run(name: str, out: Path, *args: str) -> dict:
    torch.set_num_threads(1)
    return _recipe(name).main(["--config", str(ROOT / "examples" / name / "config_tiny.yaml"), *args,
                               f"output_dir={out}"])


@pytest.fixture(scope="module")
def super_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ln_super_tiny")
    return out, _run("ln_super", out, "--stage", "all")


def test_super_all_runs_every_enabled_stage(super_run):
    out, res = super_run
    assert list(res) == ["bld", "score", "profile", "search", "assemble", "gkd", "sft"]
    assert not any(r["reused"] for r in res.values())
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    for s in res:
        assert manifest[f"ln/{s}"]["state"] == "COMPLETE", s


def test_super_library_is_trained_and_scored(super_run):
    from puzzlekit.library import BlockLibrary

    out, res = super_run
    lib = BlockLibrary.load(out / "library.json")
    assert len(lib) == res["bld"]["candidates"] and lib.num_layers == 4
    trained = [c for c in lib.candidates if c.weights]
    assert len(trained) == res["bld"]["trained"] > 0
    for c in trained:
        for f in c.weight_files:
            assert (out / f).is_file() and f.endswith(".safetensors")
    kl = [c.metrics["kl_div"] for c in lib.candidates]
    assert all(k >= 0 for k in kl) and max(kl) > 0.1  # removing a whole block costs something
    parent_block = lib.parent.parent_block()
    assert all(c.metrics["kl_div"] < 1e-4 for c in lib.candidates if c.block == parent_block)
    scen = lib.resolve_scenario(None)
    assert scen.startswith("h100-sxm/fp8/b256") and "runtime_ms" in lib.cost_names_for(scen)


def test_super_search_meets_the_throughput_and_memory_targets(super_run):
    out, res = super_run
    s = json.loads((out / "search.json").read_text())
    assert s["status"] == "OPTIMAL" and len(s["blocks"]) == 4
    assert s["speedup"] >= 1.28 - 1e-6  # throughput_speedup in config_tiny.yaml
    assert s["blocks"] != ["attn=gqa:2|ffn=ffn:448"] * 4  # the parent does not fit the memory limit


def test_super_child_loads_generates_and_heals(super_run):
    from puzzlekit.data import load_tokenizer
    from puzzlekit.distill import evaluate_kl
    from puzzlekit.model import load_parent

    out, res = super_run
    child = load_parent(out / "child").eval()
    assert [b.key for b in child.architecture.blocks] == json.loads((out / "search.json").read_text())["blocks"]
    tok = load_tokenizer(out / "child")
    enc = tok(["<|system|>detailed thinking on\n<|user|>12+34\n<|assistant|>"], return_tensors="pt",
              add_special_tokens=False)
    with torch.no_grad():
        ids = child.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert ids.shape[1] > enc["input_ids"].shape[1]
    # GKD: the recorded KL falls, and re-measuring the saved checkpoint gives the recorded number
    g = res["gkd"]
    assert g["kl_after"]["kl"] < 0.5 * g["kl_before"]["kl"]
    assert abs(g["kl_before"]["kl"] - res["assemble"]["kl"]["kl"]) < 1e-5
    from puzzlekit.data import TokenData

    parent = load_parent(out / "parent").eval()
    healed = load_parent(out / "gkd" / "model").eval()
    held = TokenData.load(out / "tokens.npz").torch("heldout")[:16]
    kl = evaluate_kl(healed, parent, held)["kl"]
    assert kl == pytest.approx(g["kl_after"]["kl"], rel=1e-3, abs=1e-6)
    sft = res["sft"]
    assert [h["stage"] for h in sft["stages"]] == ["reasoning", "non_reasoning"] and sft["skipped_stages"] == ["chat"]
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    assert sft["after"]["on"]["think_tag_rate"] > sft["after"]["off"]["think_tag_rate"]


def test_super_rerun_is_a_no_op(super_run):
    out, _ = super_run
    before = (out / "gkd" / "model" / "model.safetensors").stat().st_mtime_ns
    res = _run("ln_super", out, "--stage", "all")
    assert all(r["reused"] for r in res.values())
    assert (out / "gkd" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_changed_setting_reruns_only_later_stages(super_run, tmp_path):
    """A copy of the finished run with a larger GKD budget and SFT data from a file (chat included):
    bld..assemble are reused, gkd and sft run again; the chat stage now has data."""
    import shutil

    from puzzlekit.post import arithmetic_pairs, make_problems, to_prompt_completion

    out, res = super_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    rows = []
    for s in arithmetic_pairs(make_problems(40, seed=5)):
        pc = to_prompt_completion(s)
        rows.append({"prompt": pc["prompt"], "completion": pc["completion"],
                     "source": "reasoning" if s["thinking"] else "non_reasoning"})
    for q, a in (("hello", "hi!"), ("who are you?", "a tiny model."), ("thanks", "you are welcome.")):
        rows.append({"prompt": [{"role": "system", "content": "detailed thinking off"}, {"role": "user", "content": q}],
                     "completion": a, "source": "chat"})
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    again = _run("ln_super", run, "--stage", "all", "gkd_tokens=8192", f"sft_data={data}")
    assert [s for s, r in again.items() if r["reused"]] == ["bld", "score", "profile", "search", "assemble"]
    assert again["gkd"]["steps"] == 16 and again["gkd"]["kl_before"]["kl"] == pytest.approx(res["gkd"]["kl_before"]["kl"])
    assert [h["stage"] for h in again["sft"]["stages"]] == ["reasoning", "non_reasoning", "chat"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completion": "y"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: missing source"):
        _run("ln_super", run, "--stage", "sft", "gkd_tokens=8192", f"sft_data={bad}")


def test_stage_out_of_order_fails_clearly(tmp_path, super_run):
    with pytest.raises(ConfigError, match=r"run --stage bld first"):
        _run("ln_super", tmp_path / "fresh", "--stage", "score")
    with pytest.raises(ConfigError, match=r"fuse_ffns is false"):
        _run("ln_super", tmp_path / "fresh", "--stage", "fuse")
    # the shell command prints one line and exits 2
    mod = _recipe("ln_super")
    rc = mod.cli(["--config", str(ROOT / "examples/ln_super/config_tiny.yaml"), "--stage", "search",
                  f"output_dir={tmp_path / 'fresh'}"])
    assert rc == 2


def test_the_real_parent_needs_gpus(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"70\.6B parameters; its real stages need 1 CUDA GPU"):
        _recipe("ln_super").main(["--config", str(ROOT / "examples/ln_super/config.yaml"), "--stage", "bld",
                                  f"output_dir={tmp_path}", "data=generated"])


def test_tiny_configs_dry_run(tmp_path):
    for name in ("ln_super", "ln_ultra"):
        r = _run(name, tmp_path / name, "--dry-run")
        assert r["search"]["status"] == "OPTIMAL" and (tmp_path / name / "plan.json").exists()


@pytest.mark.slow
def test_ultra_all_stages(tmp_path):
    from puzzlekit.model import load_parent

    out = tmp_path / "ultra"
    res = _run("ln_ultra", out, "--stage", "all")
    assert list(res) == ["bld", "score", "profile", "search", "assemble", "fuse", "gkd", "cpt", "sft", "rl"]
    s = json.loads((out / "search.json").read_text())
    assert s["speedup"] >= 1.5 - 1e-6
    f = res["fuse"]
    assert f["fused_ffns"] >= 2 and f["groups"]
    fused = load_parent(out / "fused")
    widths = [b.ffn.intermediate_size for b in fused.architecture.blocks if not b.ffn.no_op and not b.ffn.linear]
    assert max(widths) > 416  # a fused group is one FFN wider than the parent's
    assert 0 <= f["kl_after"]["kl"] < 1.0  # fusion is an approximation (sequential FFNs made parallel)
    assert res["gkd"]["kl_after"]["kl"] < res["gkd"]["kl_before"]["kl"]
    assert res["cpt"]["kl_after"]["lm_loss"] < res["cpt"]["kl_before"]["lm_loss"]
    assert res["rl"]["steps"] == 4 and (out / "rl" / "model" / "model.safetensors").is_file()
    again = _run("ln_ultra", out, "--stage", "all")
    assert all(r["reused"] for r in again.values())


@pytest.mark.slow
@pytest.mark.distributed
def test_bld_and_gkd_as_two_processes_match_one(super_run, tmp_path):
    """``torchrun --nproc_per_node 2 recipe.py --stage bld`` (gloo on CPU) writes the same block weights,
    byte for byte, as the one-process run; GKD as 2 processes of 4 rows (the same 8 rows per step) reaches
    the same KL; a one-process stage
    under torchrun is refused."""
    import hashlib
    import os
    import socket
    import subprocess

    out, res = super_run
    run = tmp_path / "run"

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               str(ROOT / "examples/ln_super/recipe.py"), "--config", str(ROOT / "examples/ln_super/config_tiny.yaml"),
               *args, f"output_dir={run}"]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    p = torchrun("--stage", "bld")
    assert p.returncode == 0, p.stderr[-3000:]

    def digest(root: Path) -> str:
        files = sorted((root / "blocks").rglob("*.safetensors"))
        assert files
        return hashlib.sha256(b"".join(hashlib.sha256(f.read_bytes()).digest() for f in files)).hexdigest()

    assert digest(run) == digest(out)
    for s in ("score", "profile", "search", "assemble"):
        _run("ln_super", run, "--stage", s)
    p = torchrun("--stage", "gkd", "gkd_batch=4")  # 4 rows per process: the 1-process run's 8 rows per step
    assert p.returncode == 0, p.stderr[-3000:]
    g = json.loads((run / "stages" / "gkd.json").read_text())
    assert g["processes"] == 2 and res["gkd"]["processes"] == 1 and g["steps"] == res["gkd"]["steps"]
    assert g["tokens"] == res["gkd"]["tokens"]
    assert g["kl_after"]["kl"] == pytest.approx(res["gkd"]["kl_after"]["kl"], rel=0.02)
    p = torchrun("--stage", "sft")
    assert p.returncode != 0 and "runs as one process" in p.stderr  # each rank exits 2, torchrun 1
