"""The LN-Super / LN-Ultra presets run every stage for real on a tiny stand-in parent (CPU).

``examples/ln_super/config_tiny.yaml`` (preset ``ln-super-tiny``): a Llama with Llama-3.3-70B's layout scaled
down, trained for a few steps on generated text; ``puzzlekit run`` builds and scores the block library,
profiles it, searches, assembles, heals (GKD) and SFTs the child.  Checked: the artefacts of every stage,
the figures the recipe gave before the single stage runner (``tests/data/pipeline_reference.json``), that a
re-run is a no-op, and that a stage run out of order (or not in the pipeline, or too big for a CPU) fails
with a clear error.  Ultra's whole chain (fusion, CPT, GRPO) is the slow test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from puzzlekit.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests" / "data" / "pipeline_reference.json").read_text())
#: The reference figures were recorded on the CPU (a GPU runs the tiny parent in bf16: other numbers).
ON_CPU = not torch.cuda.is_available()


def _config(name: str) -> Path:
    return ROOT / "examples" / name / "config_tiny.yaml"


def _run(name: str, out: Path, stage: str = "all", **over) -> dict:
    from puzzlekit import pipeline

    torch.set_num_threads(1)
    return pipeline.run(_config(name), stage, overrides={"output_dir": str(out), **over}, progress=False)


@pytest.fixture(scope="module")
def super_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ln_super_tiny")
    return out, _run("ln_super", out)


def test_super_all_runs_every_stage(super_run):
    out, res = super_run
    assert list(res) == ["parent", "tokens", "bld", "score", "profile", "search", "child", "heal", "sft", "report"]
    assert not any(r["reused"] for r in res.values())
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    for s in res:
        assert manifest[f"pipeline/{s}"]["state"] == "COMPLETE", s
    # the manifest records each stage's settings and the identity of the one before it
    assert manifest["pipeline/heal"]["config"]["settings"]["heal"]["tokens"] == 16384
    assert manifest["pipeline/heal"]["config"]["upstream"] == manifest["pipeline/child"]["config"]["id"]
    assert (out / "report.json").exists() and "heal" in (out / "report.md").read_text()


# Figures out of float32 training are compared within HW_REL: another CPU's kernels reduce in another order
# (up to 9e-4 apart, relative, after BLD and 2.3e-3 after GKD + CPT on an AMD EPYC against the reference machine);
# choices, sizes and steps are compared exactly.
HW_REL = 5e-3


@pytest.mark.skipif(not ON_CPU, reason="the reference figures are CPU (fp32) figures")
def test_super_reproduces_the_recipe_before_the_runner(super_run):
    """Same library scores, search, child and GKD figures as ``examples/ln_super/recipe.py`` gave (6ca55dc)."""
    from puzzlekit.library import BlockLibrary

    out, res = super_run
    ref = REFERENCE["ln_super_tiny"]
    lib = BlockLibrary.load(out / "library.json")
    assert [c.metrics["kl_div"] for c in lib.candidates] == pytest.approx(ref["kl_div"], rel=HW_REL, abs=1e-7)
    s = json.loads((out / "search.json").read_text())
    assert s["candidates"] == ref["search"]["candidates"]
    assert s["objective"] == pytest.approx(ref["search"]["objective"], rel=HW_REL)
    assert res["child"]["kl"] == pytest.approx(ref["child"]["kl"], rel=HW_REL)
    assert res["child"]["params"] == ref["child"]["params"]
    h = res["heal"]["models"]["child"]
    assert h["before"] == pytest.approx(ref["heal"]["kl_before"], rel=HW_REL)
    assert h["after"] == pytest.approx(ref["heal"]["kl_after"], rel=HW_REL)
    assert h["steps"] == ref["heal"]["steps"] and h["tokens"] == ref["heal"]["tokens"]
    assert res["heal"]["parent_lm_loss"] == pytest.approx(ref["heal"]["parent_lm_loss"], rel=1e-5)
    assert res["sft"]["after"]["on"]["think_tag_rate"] == ref["sft"]["after"]["on"]["think_tag_rate"]
    assert [st["steps"] for st in res["sft"]["stages"]] == [st["steps"] for st in ref["sft"]["stages"]]


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
    assert s["speedup"] >= 1.28 - 1e-6  # search.throughput_speedup in config_tiny.yaml
    assert s["blocks"] != ["attn=gqa:2|ffn=ffn:448"] * 4  # the parent does not fit the memory limit


def test_super_child_loads_generates_and_heals(super_run):
    from puzzlekit.data import TokenData, load_tokenizer
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
    # GKD: the recorded KL falls, and re-measuring the saved model gives the recorded number
    g = res["heal"]["models"]["child"]
    assert g["kl_after"] < 0.5 * g["kl_before"]
    assert abs(g["kl_before"] - res["child"]["kl"]["kl"]) < 1e-5
    parent = load_parent(out / "parent").eval()
    healed = load_parent(out / "heal" / "child" / "model").eval()
    held = TokenData.load(out / "tokens.npz").torch("heldout")[:16]
    kl = evaluate_kl(healed, parent, held)["kl"]
    assert kl == pytest.approx(g["kl_after"], rel=1e-3, abs=1e-6)
    sft = res["sft"]
    assert [h["stage"] for h in sft["stages"]] == ["reasoning", "non_reasoning"] and sft["skipped_stages"] == ["chat"]
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    assert sft["after"]["on"]["think_tag_rate"] > sft["after"]["off"]["think_tag_rate"]


def test_super_rerun_is_a_no_op(super_run):
    out, _ = super_run
    before = (out / "heal" / "child" / "model" / "model.safetensors").stat().st_mtime_ns
    res = _run("ln_super", out)
    assert all(r["reused"] for n, r in res.items() if n != "report")
    assert (out / "heal" / "child" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_changed_setting_reruns_only_later_stages(super_run, tmp_path):
    """A copy of the finished run with a larger GKD budget and SFT data from a file (chat included):
    parent..child are reused, heal and sft run again; the chat stage now has data."""
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
    again = _run("ln_super", run, **{"heal.tokens": 8192, "sft.data": str(data)})
    assert [s for s, r in again.items() if r["reused"]] == ["parent", "tokens", "bld", "score", "profile", "search",
                                                             "child"]
    h = again["heal"]["models"]["child"]
    assert h["steps"] == 16 and h["kl_before"] == pytest.approx(res["heal"]["models"]["child"]["kl_before"])
    assert [x["stage"] for x in again["sft"]["stages"]] == ["reasoning", "non_reasoning", "chat"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completion": "y"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: missing source"):
        _run("ln_super", run, "sft", **{"heal.tokens": 8192, "sft.data": str(bad)})


def test_stage_out_of_order_fails_clearly(tmp_path, super_run, capsys):
    with pytest.raises(ConfigError, match=r"run --stage bld first"):
        _run("ln_super", tmp_path / "fresh", "score")
    with pytest.raises(ConfigError, match=r"stage 'fuse' is not in this pipeline"):
        _run("ln_super", tmp_path / "fresh", "fuse")
    # the shell command prints one line and exits 2
    from puzzlekit.cli import main

    rc = main(["run", str(_config("ln_super")), f"output_dir={tmp_path / 'fresh'}", "--stage", "search"])
    assert rc == 2 and "run --stage profile first" in capsys.readouterr().err


def test_the_real_parent_needs_gpus(tmp_path):
    from puzzlekit import pipeline

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"70\.6B parameters; its real stages need 1 CUDA GPU"):
        pipeline.run(ROOT / "examples/ln_super/config.yaml", "parent", progress=False,
                     overrides={"output_dir": str(tmp_path), "data.text": "generated"})


def test_tiny_configs_dry_run(tmp_path):
    from puzzlekit import pipeline

    for name in ("ln_super", "ln_ultra"):
        r = pipeline.dry_run(_config(name), overrides={"output_dir": str(tmp_path / name)})
        assert r["plan"]["search"]["status"] == "OPTIMAL" and (tmp_path / name / "plan.json").exists()
        assert [s["stage"] for s in r["stages"]][:2] == ["parent", "tokens"]
        assert all(s["state"] in ("pending", "always") and s["would_run"] for s in r["stages"])


@pytest.mark.slow
def test_ultra_all_stages(tmp_path):
    from puzzlekit.model import load_parent

    out = tmp_path / "ultra"
    res = _run("ln_ultra", out)
    assert list(res) == ["parent", "tokens", "bld", "score", "profile", "search", "child", "fuse", "heal", "cpt",
                         "sft", "rl", "report"]
    s = json.loads((out / "search.json").read_text())
    assert s["speedup"] >= 1.5 - 1e-6
    f = res["fuse"]
    assert f["fused_ffns"] >= 2 and f["groups"] and f["fusion"]["adopted"]
    fused = load_parent(out / "fused")
    widths = [b.ffn.intermediate_size for b in fused.architecture.blocks if not b.ffn.no_op and not b.ffn.linear]
    assert max(widths) > 416  # a fused group is one FFN wider than the parent's
    assert 0 <= f["kl_after"]["kl"] < 1.0  # fusion is an approximation (sequential FFNs made parallel)
    h = res["heal"]["models"]["child"]
    assert h["kl_after"] < h["kl_before"]
    assert res["cpt"]["after"]["lm_loss"] < res["cpt"]["before"]["lm_loss"]
    assert res["rl"]["steps"] == 4 and (out / "rl" / "model" / "model.safetensors").is_file()
    if ON_CPU:  # the figures LN-Ultra's recipe gave before the single runner
        ref = REFERENCE["ln_ultra_tiny"]
        assert s["candidates"] == ref["search"]["candidates"]
        assert f["groups"] == ref["fuse"]["groups"]
        assert f["kl_after"] == pytest.approx(ref["fuse"]["kl_after"], rel=HW_REL)
        assert h["after"] == pytest.approx(ref["heal"]["kl_after"], rel=HW_REL)
        assert res["cpt"]["after"] == pytest.approx(ref["cpt"]["kl_after"], rel=HW_REL)
        assert res["rl"]["reward"] == pytest.approx(ref["rl"]["reward"], abs=1e-6)
    again = _run("ln_ultra", out)
    assert all(r["reused"] for n, r in again.items() if n != "report")


@pytest.mark.slow
@pytest.mark.distributed
def test_bld_and_gkd_as_two_processes_match_one(super_run, tmp_path):
    """``torchrun --nproc_per_node 2 -m puzzlekit -- run CONFIG --stage bld`` (gloo on CPU) writes the same
    block weights, byte for byte, as the one-process run; GKD as 2 processes of 4 rows (the same 8 rows per
    step) reaches the same KL; a one-process stage under torchrun is refused."""
    import hashlib
    import os
    import subprocess

    from _launch import torchrun as launch

    out, res = super_run
    run = tmp_path / "run"

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        cmd = [*launch(2), "-m", "puzzlekit", "--", "run", str(_config("ln_super")), f"output_dir={run}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    for s in ("parent", "tokens"):
        _run("ln_super", run, s)
    p = torchrun("--stage", "bld", "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]

    def digest(root: Path) -> str:
        files = sorted((root / "blocks").rglob("*.safetensors"))
        assert files
        return hashlib.sha256(b"".join(hashlib.sha256(f.read_bytes()).digest() for f in files)).hexdigest()

    assert digest(run) == digest(out)
    for s in ("score", "profile", "search", "child"):
        _run("ln_super", run, s)
    p = torchrun("heal.batch=4", "--stage", "heal", "--no-progress")  # 4 rows per process: 1 process's 8 a step
    assert p.returncode == 0, p.stderr[-3000:]
    g = json.loads((run / "stages" / "heal.json").read_text())["models"]["child"]
    one = res["heal"]["models"]["child"]
    assert g["processes"] == 2 and one["processes"] == 1 and g["steps"] == one["steps"]
    assert g["tokens"] == one["tokens"]
    assert g["kl_after"] == pytest.approx(one["kl_after"], rel=0.02)
    p = torchrun("--stage", "sft")
    assert p.returncode != 0 and "runs as one process" in p.stderr  # each rank exits 2, torchrun 1


def test_throughput_at_fit_dry_run_is_the_library_search(tmp_path):
    """``search.at_fit``: the search stage is :func:`puzzlekit.search.search_at_fit` on the same library (same
    answer, same batch), and the plan reports the batch each model runs at."""
    from puzzlekit import pipeline
    from puzzlekit.pipeline.config import load_config
    from puzzlekit.pipeline.plan import load_library
    from puzzlekit.pipeline.stages.search import fit_deployment
    from puzzlekit.search import search_at_fit

    over = {"output_dir": str(tmp_path), "search.at_fit": True, "search.throughput_speedup": 1.5,
            "search.report": "ln-super"}
    r = pipeline.dry_run(_config("ln_super"), overrides=over)["plan"]
    fit = r["at_fit"]
    assert fit["speedup"] >= 1.5 and fit["batch"] >= fit["parent_batch"]
    assert r["deployment_report"] == {"skipped": "needs NVIDIA's Llama-3.3-70B block library at search.library"}
    cfg = load_config(_config("ln_super"), overrides=over)
    lib, _ = load_library(cfg, cfg.parent_spec(), cfg.scenario)
    direct = search_at_fit(lib, "kl_div", fit_deployment(cfg, lib), parent=cfg.parent_spec(), min_speedup=1.5)
    assert direct.batch == fit["batch"] and abs(direct.objective - r["search"]["value"]) < 1e-9
    # a fixed-batch search of the same config is another problem (the tiny config's reference figures)
    with pytest.raises(ConfigError, match="search.at_fit: give search.throughput_speedup"):
        load_config(_config("ln_super"), overrides={"search.at_fit": True, "search.throughput_speedup": 0})
    with pytest.raises(ConfigError, match="search.report='x'"):
        load_config(_config("ln_super"), overrides={"search.report": "x"})


NVIDIA_LIBRARY = ROOT.parent / "shared" / "data" / "puzzle-llama-3.3-70b-block-library"


@pytest.mark.slow
@pytest.mark.skipif(not (NVIDIA_LIBRARY / "block_library.json").exists(), reason="NVIDIA's block library not here")
def test_ln_super_dry_run_states_nvidias_target(tmp_path):
    """The LN-Super preset on NVIDIA's library: throughput at the batch that fits, Super-49B's scale, and the
    deployment report (largest N, Super-49B against the front, why not 5x)."""
    from puzzlekit import pipeline

    r = pipeline.dry_run(ROOT / "examples/ln_super/config.yaml",
                         overrides={"output_dir": str(tmp_path), "search.library": str(NVIDIA_LIBRARY)})["plan"]
    fit, child = r["at_fit"], r["child"]
    assert fit["parent_batch"] == 48 and fit["batch"] == 256 and fit["speedup"] >= 2.4
    assert 45e9 < child["params"] < 52e9 and 45 <= child["attention_layers"] <= 52  # Super-49B: 49.9B, 49
    rep = r["deployment_report"]
    # the published model lies just above our exact front at its own throughput, and we reach a little more
    assert rep["super_vs_front"]["equal_throughput_at_fit"]["objective"] < rep["super49b"]["objective"]
    assert rep["largest_n"]["at_super_quality"]["speedup"] >= rep["super49b"]["speedup"]
    md = (tmp_path / "deployment_report.md").read_text()
    assert "Super-49B as published" in md and "5× needs" in md
