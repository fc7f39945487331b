"""The pipeline's whole-model speed-up measurement (``measured_speedup``): interleaved rounds, and a
surprising result confirmed by more rounds before the child's re-search or a baseline's knob acts on it.
Real tiny models timed on this CPU; no wall-clock assertions (only how many rounds were taken)."""

from __future__ import annotations

import statistics

import pytest

import puzzlekit as pk

torch = pytest.importorskip("torch")

SPEC = pk.ParentSpec(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     intermediate_size=128, vocab_size=128, num_hidden_layers=3)
SCEN = pk.Scenario("local-cpu", "fp32", batch=1, prefill=4, decode=2)


@pytest.fixture(scope="module")
def models():
    parent = pk.PuzzleForCausalLM.from_architecture(pk.Architecture(SPEC, (SPEC.parent_block(),) * 3)).eval()
    none = pk.BlockConfig(pk.AttentionConfig.make_no_op(), pk.FFNConfig.make_no_op())
    child = pk.PuzzleForCausalLM.from_architecture(pk.Architecture(SPEC, (SPEC.parent_block(), none, none))).eval()
    return parent, child


def test_a_surprising_speedup_is_confirmed_by_more_rounds(models):
    from puzzlekit.pipeline.stages.search import measured_speedup

    parent, child = models
    # the cost model "expected" 100x: no median of real timings comes within 8 % of it, so every extra round is taken
    m = measured_speedup(parent, child, SCEN, 1, 1, expected=100.0, extra=2)
    assert len(m["ratios"]) == 3
    assert m["speedup"] == statistics.median(m["ratios"])
    m = measured_speedup(parent, child, SCEN, 2, 1, expected=100.0, extra=3)
    assert len(m["ratios"]) == 5


def test_without_expectation_or_extra_rounds_the_count_is_as_asked(models):
    from puzzlekit.pipeline.stages.search import measured_speedup

    parent, child = models
    m = measured_speedup(parent, child, SCEN, 2, 1, expected=100.0, extra=0)
    assert len(m["ratios"]) == 2 and m["speedup"] == statistics.median(m["ratios"])
    # one round, no expectation: nothing to be surprised by (a single round has no spread)
    assert len(measured_speedup(parent, child, SCEN, 1, 1)["ratios"]) == 1
    # an expectation the measurement meets: between the asked rounds and the extra ones (the spread of a
    # shared machine's rounds may still ask for more), never beyond
    first = measured_speedup(parent, child, SCEN, 1, 1)["speedup"]
    m = measured_speedup(parent, child, SCEN, 1, 1, expected=first, extra=2)
    assert 1 <= len(m["ratios"]) <= 3 and m["speedup"] > 0
