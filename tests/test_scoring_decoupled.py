"""Decoupled scoring: only the pairs keeping one parent sub-block are scored; the others add their parts."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def test_decoupled_scoring_scores_the_parts_and_adds_them(tmp_path):
    from test_bld import make_data, make_parent, small_space

    from puzzlekit.bld import BLDConfig, run_bld
    from puzzlekit.library import BlockLibrary
    from puzzlekit.rundir import RunDir, State
    from puzzlekit.scoring import METRICS, score_library

    parent, data = make_parent(), make_data()
    run = tmp_path / "run"
    run_bld(parent, data, run, small_space(parent), BLDConfig(tokens=16 * 4 * 4, batch_size=4, eval_sequences=4),
            progress=False)
    full = score_library(parent, BlockLibrary.load(run / "library.json"), data, eval_sequences=6, progress=False,
                         save=False)
    rd = RunDir(tmp_path / "dec")
    dec = score_library(parent, BlockLibrary.load(run / "library.json"), data, rd, eval_sequences=6,
                        progress=False, save=False, decoupled=True)
    pb = parent.config.parent_spec.parent_block()
    composed = [i for i, c in enumerate(dec.candidates) if c.metrics.get("composed")]
    parts = [i for i, c in enumerate(dec.candidates) if not c.metrics.get("composed")]
    assert composed and all(dec.candidates[i].block.attention != pb.attention
                            and dec.candidates[i].block.ffn != pb.ffn for i in composed)
    scored = {k for k, r in rd.journal.states("score").items() if r.get("state") == State.COMPLETE.value}
    assert len(scored) == len(parts)  # the composed pairs took no pass
    for i in parts:  # the parts are scored exactly as in the full run
        for m in METRICS:
            assert dec.candidates[i].metrics[m] == pytest.approx(full.candidates[i].metrics[m], rel=1e-6, abs=1e-9)
    index = {(c.first, c.block): i for i, c in enumerate(dec.candidates)}
    for i in composed:
        c = dec.candidates[i]
        ia = index[(c.first, type(c.block)(c.block.attention, pb.ffn))]
        iff = index[(c.first, type(c.block)(pb.attention, c.block.ffn))]
        want = dec.candidates[ia].metrics["kl_div"] + dec.candidates[iff].metrics["kl_div"]
        assert c.metrics["kl_div"] == pytest.approx(want)
        assert 0 <= c.metrics["top1_agree"] <= 1
    # a re-run resumes from the journal and composes the same numbers
    again = score_library(parent, BlockLibrary.load(run / "library.json"), data, rd, eval_sequences=6,
                          progress=False, save=False, decoupled=True)
    assert [c.metrics for c in again.candidates] == [c.metrics for c in dec.candidates]
