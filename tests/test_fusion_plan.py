"""FFN runs on the residual graph, and fusion plans (no torch needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SUPER_49B, ULTRA_253B, tiny_llama_config

from puzzlekit import Architecture, AttentionConfig, BlockConfig, ConfigError, FFNConfig, ParentSpec
from puzzlekit.fusion.dependency import DependencyReport, RunDependency
from puzzlekit.fusion.graph import find_ffn_runs, residual_graph
from puzzlekit.fusion.plan import FusionPlan, fused_architecture, make_plan

G, N = AttentionConfig.gqa(2), AttentionConfig.make_no_op()


def _arch(spec: str) -> Architecture:
    """One char per layer: 'A' attention+FFN, 'F' no-op attention+FFN, 'L' no-op attn + linear FFN,
    'a' attention+no-op FFN, '0' empty layer."""
    parent = ParentSpec.from_hf_config(tiny_llama_config(num_hidden_layers=len(spec)))
    table = {"A": (G, FFNConfig.swiglu(128)), "F": (N, FFNConfig.swiglu(64)), "L": (N, FFNConfig.make_linear()),
             "a": (G, FFNConfig.make_no_op()), "0": (N, FFNConfig.make_no_op())}
    return Architecture(parent, tuple(BlockConfig(*table[c]) for c in spec))


@pytest.mark.parametrize("spec", ["AFFAFF", "AAAA", "FFFF", "AF0FaFF", "AFLFFA", "a0F0F", "A", "AF"])
def test_graph_runs_agree_with_architecture(spec):
    arch = _arch(spec)
    for m in (1, 2, 3):
        assert [r.span for r in find_ffn_runs(arch, m)] == arch.ffn_runs(m)


def test_graph_runs_on_published_configs():
    for path in (SUPER_49B, ULTRA_253B):
        arch = Architecture.from_config(path)
        g = residual_graph(arch)
        assert g.number_of_nodes() == 2 * arch.num_layers + 2
        assert [r.span for r in find_ffn_runs(g)] == arch.ffn_runs()
    super49 = find_ffn_runs(Architecture.from_config(SUPER_49B))
    # the published Super-49B config (NVIDIA, bundled): attention removed in layers 42-51 and 53-70 (the runs
    # the FFN Fusion paper, arXiv 2503.18908, fuses); the FFN of the layer before joins each run
    assert (41, 51) in [r.span for r in super49] and (52, 70) in [r.span for r in super49]
    long = next(r for r in super49 if r.span == (52, 70))
    assert len(long) == 19 and all(k == "swiglu" for k in long.kinds)


def test_linear_ffn_splits_fusable_segments():
    arch = _arch("AFLFFA")
    (run,) = find_ffn_runs(arch)
    assert run.layers == (0, 1, 2, 3, 4)
    assert run.fusable_segments() == [(0, 1), (3, 4)]
    plan = make_plan(arch)
    assert plan.groups == [(0, 1), (3, 4)]


def test_whole_run_plan_and_fused_architecture():
    arch = _arch("AFFFAFF")
    plan = make_plan(arch)
    assert plan.groups == [(0, 1, 2, 3), (4, 5, 6)]
    assert plan.meta["steps_before"] == 7 and plan.meta["steps_after"] == 2
    fa = fused_architecture(arch, plan)
    assert fa.num_layers == arch.num_layers
    # the wide FFN sits in the group's last layer; the first layer keeps its attention
    assert fa.blocks[0] == BlockConfig(G, FFNConfig.make_no_op())
    assert fa.blocks[3] == BlockConfig(N, FFNConfig.swiglu(128 + 3 * 64))
    assert fa.blocks[6].ffn.intermediate_size == 128 + 2 * 64
    assert [fa.blocks[i].ffn.no_op for i in (1, 2, 4, 5)] == [True] * 4


def test_leave_last_and_target_steps():
    arch = _arch("AFFFFFA")
    plan = make_plan(arch, leave_last=True)
    assert plan.groups == [(0, 1, 2, 3, 4)]
    plan = make_plan(arch, target_steps=3)
    assert plan.meta["steps_after"] == 3
    assert sum(len(g) for g in plan.groups) - len(plan.groups) == 6 - 3
    # without scores, ties go to the smaller merged group: groups stay even
    assert sorted(len(g) for g in plan.groups) == [2, 2, 2]
    unreachable = make_plan(arch, target_steps=1, max_group=3)
    assert unreachable.meta["target_reached"] is False


def test_threshold_follows_the_dependency_matrix():
    arch = _arch("AFFFFA")
    # FFN 2 depends strongly on FFN 1: fusing them is unsafe; 3 and 4 are independent of all
    m = np.zeros((5, 5))
    m[0, 1:] = [0.02, 0.03, 0.01, 0.01]
    m[1, 2:] = [0.40, 0.02, 0.02]
    m[2, 3:] = [0.01, 0.01]
    m[3, 4] = 0.01
    dep = DependencyReport([RunDependency((0, 1, 2, 3, 4), m, 100)])
    plan = make_plan(arch, dep, threshold=0.05)
    assert plan.groups == [(0, 1), (2, 3, 4)]
    assert plan.scores == pytest.approx([0.02, 0.01])
    assert make_plan(arch, dep, threshold=0.0).groups == []
    everything = make_plan(arch, dep, threshold=1.0)
    assert everything.groups == [(0, 1, 2, 3, 4)] and everything.scores == [pytest.approx(0.40)]
    # target: the cheapest merges first, the risky pair last
    assert make_plan(arch, dep, target_steps=2).groups == [(0, 1), (2, 3, 4)]
    s = dep.runs[0].summary()
    assert s["max"] == pytest.approx(0.40) and s["influence"][1] == pytest.approx(0.44 / 3)


def test_plan_roundtrip_print_edit(tmp_path):
    arch = _arch("AFFFAFF")
    plan = make_plan(arch, leave_last=True)
    text = str(plan)
    assert "layers 0-2" in text and "leave_last=True" in text
    p = tmp_path / "plan.json"
    plan.save(p)
    again = FusionPlan.load(p)
    assert again.groups == plan.groups and again.meta == json.loads(json.dumps(plan.meta))
    # edit by hand: a bare list of groups is a plan too
    p.write_text(json.dumps([[1, 2, 3]]))
    edited = FusionPlan.load(p)
    edited.validate(arch)
    assert fused_architecture(arch, edited).blocks[3].ffn.intermediate_size == 3 * 64


@pytest.mark.parametrize("groups, msg", [
    ([[3, 4]], "attention between"),            # crosses the attention of layer 4
    ([[1]], "two or more"),
    ([[2, 1]], "increasing"),
    ([[1, 2], [2, 3]], "fuses once"),
    ([[5, 9]], "does not exist"),
    ([[0, 2]], "consecutive"),
])
def test_bad_plans_are_refused(groups, msg):
    arch = _arch("AFFFAFF")
    with pytest.raises(ConfigError, match=msg):
        FusionPlan(groups).validate(arch)


def test_bad_plan_arguments():
    arch = _arch("AFFA")
    with pytest.raises(ConfigError, match="not both"):
        make_plan(arch, threshold=0.1, target_steps=2)
    with pytest.raises(ConfigError, match="threshold"):
        make_plan(arch, threshold=-1)
    with pytest.raises(ConfigError, match="groups"):
        FusionPlan.from_dict({"plan": []}, source="x.json")


def test_fused_super49b_config_roundtrips_nemotron_nas(tmp_path):
    arch = Architecture.from_config(SUPER_49B)
    plan = make_plan(arch, leave_last=True)
    fa = fused_architecture(arch, plan)
    fa.save_config(tmp_path / "config.json")
    back = Architecture.from_config(tmp_path / "config.json")
    assert back.blocks == fa.blocks
    raw = json.loads((tmp_path / "config.json").read_text())
    # layers 41..50 fused into layer 50: a large ffn_mult, as in Ultra-253B
    assert raw["block_configs"][50]["ffn"]["ffn_mult"] > 20


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:

    @settings(max_examples=150, deadline=None)
    @given(spec=st.text(alphabet="AAFFF0aL", min_size=1, max_size=24), target=st.integers(1, 24),
           leave_last=st.booleans())
    def test_plans_are_valid_and_preserve_ffn_width(spec, target, leave_last):
        arch = _arch(spec)
        assert [r.span for r in find_ffn_runs(arch)] == arch.ffn_runs()
        plan = make_plan(arch, target_steps=target, leave_last=leave_last)
        plan.validate(arch)
        fa = fused_architecture(arch, plan)
        width = sum(b.ffn.intermediate_size or 0 for b in arch.blocks)
        assert sum(b.ffn.intermediate_size or 0 for b in fa.blocks) == width
        active = sum(not b.ffn.no_op for b in arch.blocks)
        assert sum(not b.ffn.no_op for b in fa.blocks) == active - plan.steps_saved
        assert plan.meta["steps_after"] == plan.meta["steps_before"] - plan.steps_saved
        if plan.meta.get("target_reached", True):
            assert plan.meta["steps_after"] <= target
        # attention is never touched, and every wide FFN sits behind a no-op attention
        assert [b.attention for b in fa.blocks] == [b.attention for b in arch.blocks]
        for g in plan.groups:
            assert fa.blocks[g[-1]].attention.no_op


def test_cli_text_output(capsys):
    from puzzlekit.cli import main

    assert main(["fuse", "super-49b", "--plan-only", "--leave-last", "--target-steps", "12"]) == 0
    out = capsys.readouterr().out
    assert "layers 52-70: 19 FFNs" in out and "predicted on h100-sxm" in out and "steps_after=12" in out
    assert main(["fuse", "super-49b", "--plan-only", "--data", "x.txt"]) == 2
