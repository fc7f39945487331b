"""The fusion pass on real PuzzleForCausalLM models: exactness, checks, save/reload, CLI, quality."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_llama_config  # noqa: E402

from puzzlekit import Architecture, AttentionConfig, BlockConfig, ConfigError, FFNConfig, ParentSpec  # noqa: E402
from puzzlekit.fusion.dependency import dependency_matrix  # noqa: E402
from puzzlekit.fusion.fuse import enable_triton_swiglu, find_fusable, fuse_ffns  # noqa: E402
from puzzlekit.fusion.plan import FusionPlan  # noqa: E402
from puzzlekit.model import PuzzleForCausalLM  # noqa: E402

torch.set_num_threads(2)
G, N = AttentionConfig.gqa(2), AttentionConfig.make_no_op()


def _arch(spec: str, sizes=(64, 96, 32), **over) -> Architecture:
    cfg = dict(num_hidden_layers=len(spec), hidden_size=32, intermediate_size=96, vocab_size=48)
    cfg.update(over)
    parent = ParentSpec.from_hf_config(tiny_llama_config(**cfg))
    return Architecture(parent, tuple(BlockConfig(G if c == "A" else N, FFNConfig.swiglu(sizes[i % len(sizes)]))
                                      for i, c in enumerate(spec)))


def _model(spec="AFFAFA", seed=0, **over):
    torch.manual_seed(seed)
    m = PuzzleForCausalLM.from_architecture(_arch(spec, **over)).eval()
    with torch.no_grad():  # non-trivial norm weights, so folding them is exercised
        for layer in m.model.layers:
            if layer.post_attention_layernorm is not None:
                layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    return m


def test_fused_ffn_equals_sum_of_ffns_on_shared_input():
    m = _model()
    torch.set_grad_enabled(False)
    x = torch.randn(3, 7, 32)
    before = [layer.ffn_delta(x) for layer in m.model.layers[:3]]
    fused, changes = fuse_ffns(m, FusionPlan([[0, 1, 2]]))
    assert fused is not m and len(changes) == 1
    ch = changes[0]
    assert ch.target_layer == 2 and ch.intermediate_size == 64 + 96 + 32 and ch.rel_error <= 1e-5
    wide = fused.model.layers[2]
    got = wide.ffn_delta(x)
    ref = sum(before)
    assert float((got - ref).norm() / ref.norm()) <= 1e-5
    # the norm weights went into the gate/up columns
    assert torch.all(wide.post_attention_layernorm.weight == 1)
    # layer 0 keeps its attention, loses its FFN; the original model is untouched
    assert fused.model.layers[0].self_attn is not None and fused.model.layers[0].mlp is None
    assert m.model.layers[0].mlp is not None
    assert fused.architecture.blocks[2] == BlockConfig(N, FFNConfig.swiglu(192))
    torch.set_grad_enabled(True)


def test_fused_model_computes_the_parallel_form_of_the_run():
    """The fused model equals the unfused one where each FFN of the run reads the run's input."""
    m = _model("AFFA")
    ids = torch.randint(0, 48, (2, 9))
    fused, _ = fuse_ffns(m, [[0, 1, 2]])
    layers = m.model.layers

    with torch.no_grad():
        x = m.model.embed_tokens(ids)
        pe = m.model.rotary_emb(x, torch.arange(9)[None])
        h = x + layers[0].attn_delta(x, pe)
        h = h + sum(layers[i].ffn_delta(h) for i in range(3))
        h = layers[3](h, pe)
        want = m.lm_head(m.model.norm(h))
        got = fused(input_ids=ids).logits
        seq = m(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, seq, atol=1e-6)  # fusion does change semantics


def test_inplace_and_empty_plan():
    m = _model()
    same, changes = fuse_ffns(m, FusionPlan([]))
    assert same is m and changes == []
    out = fuse_ffns(m, FusionPlan([[3, 4]]), inplace=True)
    assert out.model is m and out.changed and m.architecture.blocks[3].ffn.no_op


def test_preconditions_refuse_bad_groups():
    m = _model()
    with pytest.raises(ConfigError, match="attention between"):
        fuse_ffns(m, [[2, 3]])
    m.model.layers[1].post_attention_layernorm.variance_epsilon = 1e-3
    with pytest.raises(ConfigError, match="eps"):
        fuse_ffns(m, [[0, 1, 2]])
    a = _arch("AFFA")
    blocks = list(a.blocks)
    blocks[1] = BlockConfig(N, FFNConfig.make_linear())
    m2 = PuzzleForCausalLM.from_architecture(a.with_blocks(blocks))
    with pytest.raises(ConfigError, match="linear FFN"):
        fuse_ffns(m2, [[0, 1]])



def test_postcondition_catches_a_broken_fusion(monkeypatch):
    from puzzlekit.fusion import fuse as fz

    m = _model()
    real = torch.cat

    def bad_cat(ts, dim=0):  # corrupt the stacked weights: the check must notice
        out = real(ts, dim)
        return out * 1.01 if out.dim() == 2 else out

    monkeypatch.setattr(fz.torch, "cat", bad_cat)
    with pytest.raises(ConfigError, match="postcondition"):
        fuse_ffns(m, [[0, 1, 2]])


def test_bf16_fusion_within_its_tolerance():
    m = _model().to(torch.bfloat16)
    _, changes = fuse_ffns(m, [[0, 1, 2]])
    assert changes[0].rel_error <= changes[0].tolerance <= 2e-2


def test_save_reload_nemotron_nas(tmp_path):
    m = _model(sizes=(256, 256, 512), hidden_size=32)
    fused, _ = fuse_ffns(m, [[0, 1, 2]])
    fused.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "nemotron-nas"
    assert cfg["block_configs"][2]["ffn"]["ffn_mult"] == pytest.approx(1024 * 1.5 / 32)
    assert cfg["block_configs"][0]["ffn"]["no_op"] is True
    back = PuzzleForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 48, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, fused(input_ids=ids).logits)
    assert Architecture.from_config(tmp_path / "config.json").blocks == fused.architecture.blocks
    assert enable_triton_swiglu(back, min_intermediate_size=1000) == 1


def test_dependency_matrix_sees_independent_ffns():
    m = _model("AFFFA")
    with torch.no_grad():  # FFN 2 writes nothing: FFN 3 cannot depend on it
        m.model.layers[2].mlp.down_proj.weight.zero_()
    ids = torch.randint(0, 48, (4, 12))
    dep = dependency_matrix(m, ids)
    (r,) = dep.runs
    assert r.layers == (0, 1, 2, 3) and r.num_tokens == 48
    assert r.matrix[2, 3] == pytest.approx(0.0, abs=1e-6)
    assert r.matrix[0, 1] > 1e-4 and np.all(np.tril(r.matrix) == 0)
    plan = find_fusable(m, ids, threshold=1e-6)
    assert plan.groups == [(2, 3)] and "dependency" in plan.meta


def test_cli_plan_and_fuse_a_model_folder(tmp_path, capsys):
    from puzzlekit.cli import main

    m = _model("AFFFAFF")
    src = tmp_path / "model"
    m.save_pretrained(src)
    ids = torch.randint(0, 48, (4, 16)).numpy()
    np.save(tmp_path / "calib.npy", ids)
    assert main(["fuse", str(src), "--plan-only", "--json", "--data", str(tmp_path / "calib.npy"),
                 "--target-steps", "4", "--hardware", "h100-sxm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["layers"] for r in out["dependency"]["runs"]] == [[0, 1, 2, 3], [4, 5, 6]]
    assert out["plan"]["meta"]["steps_after"] == 4 and out["predicted"]["speedup"] >= 1.0
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"groups": [[1, 2, 3], [4, 5]]}))
    assert main(["fuse", str(src), "--plan", str(plan_path), "-o", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "fusion_report.json").read_text())
    assert [c["target_layer"] for c in report["changes"]] == [3, 5]
    back = PuzzleForCausalLM.from_pretrained(tmp_path / "out")
    assert back.architecture.blocks[3].ffn.intermediate_size == 96 + 32 + 64
    assert main(["fuse", str(src), "--plan", str(plan_path), "-o", str(tmp_path / "out")]) == 2  # not empty


def test_cli_super49b_lists_runs(capsys):
    from puzzlekit.cli import main

    assert main(["fuse", "super-49b", "--plan-only", "--json", "--tp", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    spans = [(r["first"], r["last"]) for r in out["ffn_runs"]]
    assert (41, 51) in spans and (52, 70) in spans
    p = out["predicted"]
    assert p["allreduces_per_pass"][1] < p["allreduces_per_pass"][0] and p["speedup"] > 1.0


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained for a few seconds on a Markov language, with two FFN runs."""
    from puzzlekit.fusion.quality import markov_data, train_toy_model

    arch = _arch("AFFFFAFFFF", sizes=(64,), hidden_size=32, vocab_size=32)
    data = markov_data(256, 24, 32, seed=0, order=1, branching=2)
    model = train_toy_model(arch, data, steps=30, batch_size=16, lr=1e-2)
    return model, data, markov_data(32, 24, 32, seed=1, order=1, branching=2)


def test_trained_model_learned_something(trained):
    model, _, heldout = trained
    with torch.no_grad():
        loss = model(input_ids=heldout, labels=heldout).loss.item()
    assert loss < np.log(2) + 0.3  # best possible: ln 2; uniform: ln 32 = 3.47


def test_dependency_plan_beats_random_plans(trained):
    from puzzlekit.fusion.quality import compare_with_random, plan_kl

    model, data, heldout = trained
    (row,) = compare_with_random(model, data[:16], heldout, [3], draws=4)
    assert row["steps_saved"] == 3
    assert row["kl_dependency"] < row["kl_random_mean"]
    assert plan_kl(model, FusionPlan([]), heldout) == 0.0


def test_cli_text_data_and_auto_plan(tmp_path, capsys):
    """--data as text, tokenised with the model folder's tokenizer; --plan auto with a threshold."""
    from puzzlekit.cli import main
    from puzzlekit.demo.teacher import train_tokenizer

    text = " ".join(f"the cat {w} sat on the mat {w}" for w in ("red", "blue", "green", "old", "new")) * 20
    src = tmp_path / "model"
    m = _model("AFFFA", vocab_size=320)
    m.save_pretrained(src)
    train_tokenizer([text], 300, src)
    (tmp_path / "corpus.txt").write_text(text)
    rc = main(["fuse", str(src), "--data", str(tmp_path / "corpus.txt"), "--seq-len", "16", "--plan", "auto",
               "--threshold", "1.0", "-o", str(tmp_path / "out")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "run 0-3 (4 FFNs)" in out and "saved to" in out
    report = json.loads((tmp_path / "out" / "fusion_report.json").read_text())
    assert report["plan"]["groups"] == [[0, 1, 2, 3]] and report["changes"][0]["rel_error"] <= 1e-5
    assert (tmp_path / "out" / "tokenizer.json").exists()
    assert main(["fuse", str(src), "--plan-only", "--threshold", "0.1"]) == 2  # needs --data on a model
