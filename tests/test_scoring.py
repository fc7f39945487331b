"""Replace-1-block scoring: prefix reuse equals the naive pass, parent scores zero, resume, validation."""

from __future__ import annotations

import pytest
import torch

from puzzlekit.rundir import RunDir

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from test_bld import make_data, make_parent, small_space

    from puzzlekit.bld import BLDConfig, run_bld

    run = tmp_path_factory.mktemp("run")
    parent, data = make_parent(), make_data()
    lib = run_bld(parent, data, run, small_space(parent),
                  BLDConfig(tokens=16 * 4 * 10, batch_size=4, lr=3e-3, eval_sequences=4), progress=False)
    return parent, data, lib, run


def test_prefix_reuse_matches_naive_and_parent_is_exact(built, tmp_path):
    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import METRICS, score_library

    parent, data, _, run = built
    a = score_library(parent, BlockLibrary.load(run / "library.json"), data, eval_sequences=6, progress=False,
                      save=False)
    b = score_library(parent, BlockLibrary.load(run / "library.json"), data, eval_sequences=6, progress=False,
                      save=False, prefix_reuse=False)
    spec = parent.config.parent_spec
    for ca, cb in zip(a.candidates, b.candidates):
        for m in METRICS:
            assert ca.metrics[m] == pytest.approx(cb.metrics[m], rel=1e-5, abs=1e-6)
        if ca.block == spec.parent_block():
            assert ca.metrics["kl_div"] == 0.0 and ca.metrics["top1_agree"] == 1.0
        else:
            assert 0.0 <= ca.metrics["top1_agree"] <= ca.metrics["top5_agree"] <= 1.0
    noop = [c for c in a.candidates if c.block.attention.no_op and c.block.ffn.no_op]
    assert all(c.metrics["kl_div"] > 0 for c in noop)
    # the candidates keeping the parent's attention took the shared-attention path (and matched above)
    from puzzlekit.scoring.replace1 import _same_attention, candidate_layer

    lib = a
    shared = [i for i, c in enumerate(lib.candidates)
              if _same_attention(candidate_layer(parent, lib, i), parent.model.layers[c.first])]
    assert shared and all(lib.candidates[i].block.attention == spec.parent_block().attention for i in shared)


def test_scoring_resumes_from_the_journal(built, tmp_path):
    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import score_library

    parent, data, _, run = built
    lib = BlockLibrary.load(run / "library.json")
    rd = RunDir(tmp_path)
    full = score_library(parent, lib, data, rd, eval_sequences=4, progress=False, save=False)
    n = len(list(rd.journal.records()))
    again = score_library(parent, BlockLibrary.load(run / "library.json"), data, rd, eval_sequences=4,
                          progress=False, save=False)
    assert len(list(rd.journal.records())) == n  # nothing recomputed
    assert [c.metrics for c in again.candidates] == [c.metrics for c in full.candidates]


def test_multi_replacement_validation(built):
    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import (
        random_choices,
        score_architectures,
        score_library,
        spearman,
        validate_additivity,
    )

    parent, data, _, run = built
    lib = score_library(parent, BlockLibrary.load(run / "library.json"), data, eval_sequences=4, progress=False,
                        save=False)
    # a single replacement realised as a whole child equals its replace-1-block score
    ch = random_choices(lib, 1, seed=0, max_replaced=1)[0]
    parent_block = parent.config.parent_spec.parent_block()
    swapped = [ci for ci in ch if lib.candidates[ci].block != parent_block]
    real = score_architectures(parent, lib, [ch], data, eval_sequences=4)[0]
    expect = lib.candidates[swapped[0]].metrics["kl_div"] if swapped else 0.0
    assert real["kl_div"] == pytest.approx(expect, rel=1e-4, abs=1e-7)
    v = validate_additivity(parent, lib, data, n=8, seed=1, eval_sequences=4)
    assert len(v["predicted"]) == 8 and v["spearman"] is not None and v["spearman"] > 0.5
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_metrics_match_a_direct_computation_and_stacking(built):
    """The chunked metrics equal the textbook formulas on whole tensors, and stacking candidates through
    the suffix (suffix_tokens) does not change them."""
    import torch.nn.functional as F

    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import candidate_layer, score_library

    parent, data, _, run = built
    lib = BlockLibrary.load(run / "library.json")
    kw = dict(eval_sequences=5, batch_size=3, progress=False, save=False)
    a = score_library(parent, BlockLibrary.load(run / "library.json"), data, **kw)
    b = score_library(parent, BlockLibrary.load(run / "library.json"), data, suffix_tokens=1, **kw)
    for ca, cb in zip(a.candidates, b.candidates):
        for m in ca.metrics:
            assert ca.metrics[m] == pytest.approx(cb.metrics[m], rel=1e-5, abs=1e-6)
    ids = torch.from_numpy(data.heldout[:5])
    with torch.no_grad():
        ref = parent(input_ids=ids).logits.float()
        for ci in (3, len(lib) - 5):  # a layer-0 and a layer-1 candidate
            c = lib.candidates[ci]
            m = candidate_layer(parent, lib, ci)
            inner = parent.model
            x = inner.embed_tokens(ids)
            pe = inner.rotary_emb(x, torch.arange(ids.shape[1])[None])
            for j, layer in enumerate(inner.layers):
                x = (m if j == c.first else layer)(x, pe)
            h = inner.norm(x)
            logits = parent.lm_head(h).float()
            lp, lq = F.log_softmax(ref, -1), F.log_softmax(logits, -1)
            kl = F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1).mean()
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            top1 = (logits.argmax(-1) == ref.argmax(-1)).float().mean()
            top5 = (logits.topk(5, -1).indices == ref.argmax(-1)[..., None]).any(-1).float().mean()
            got = a.candidates[ci].metrics
            assert got["kl_div"] == pytest.approx(float(kl), rel=1e-4, abs=1e-6), c.block.key
            assert got["lm_loss"] == pytest.approx(float(ce), rel=1e-5)
            assert got["top1_agree"] == pytest.approx(float(top1))
            assert got["top5_agree"] == pytest.approx(float(top5))


def test_large_vocab_path_recomputes_probabilities_per_chunk(built, monkeypatch):
    """Above KEEP_PROBS_BYTES the parent's probabilities are not stored; the numbers do not change."""
    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import replace1, score_library

    parent, data, _, run = built
    kw = dict(eval_sequences=4, progress=False, save=False)
    a = score_library(parent, BlockLibrary.load(run / "library.json"), data, **kw)
    monkeypatch.setattr(replace1, "KEEP_PROBS_BYTES", 0)
    b = score_library(parent, BlockLibrary.load(run / "library.json"), data, **kw)
    assert [c.metrics for c in a.candidates] == [c.metrics for c in b.candidates]


@pytest.mark.distributed
def test_two_processes_score_like_one(built, tmp_path):
    """Scoring sharded over 2 processes (gloo, torchrun's environment) gives exactly one process's metrics;
    both processes return the whole library and each scored some layers."""
    import os

    from _launch import free_port
    from test_bld import _fork, _wait

    from puzzlekit.library import BlockLibrary
    from puzzlekit.rundir import Journal
    from puzzlekit.scoring import score_library

    parent, data, _, run = built
    one = score_library(parent, BlockLibrary.load(run / "library.json"), data, RunDir(tmp_path / "one"),
                        eval_sequences=4, progress=False, save=False)
    port = str(free_port())
    two = tmp_path / "two"

    def rank_main() -> None:
        import json

        import torch.distributed as dist

        lib = score_library(parent, BlockLibrary.load(run / "library.json"), data, RunDir(two),
                            eval_sequences=4, progress=False, save=False)
        (two / f"rank{os.environ['RANK']}.json").write_text(json.dumps([c.metrics for c in lib.candidates]))
        dist.destroy_process_group()

    pids = [_fork(rank_main, {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in range(2)]
    assert [_wait(pid) for pid in pids] == [0, 0]
    import json

    want = [c.metrics for c in one.candidates]
    for r in range(2):
        assert json.loads((two / f"rank{r}.json").read_text()) == want
    ranks = {rec.get("rank") for rec in Journal(two / "journal.jsonl").records() if rec.get("state") == "COMPLETE"}
    assert ranks == {0, 1}


def test_scoring_over_processes_needs_a_run_directory(built, monkeypatch):
    from puzzlekit.errors import PuzzlekitError
    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import score_library

    parent, data, _, run = built
    monkeypatch.setattr("puzzlekit._dist.setup", lambda: (0, 2))
    with pytest.raises(PuzzlekitError, match="run directory"):
        score_library(parent, BlockLibrary.load(run / "library.json"), data, eval_sequences=4, progress=False)


def test_accelerator_metric_path_equals_the_cpu_path(built, monkeypatch):
    """On an accelerator the metrics avoid host syncs (full top-5 counts, sums kept on the device until the
    candidate's end); forced on the CPU, that path gives the CPU path's numbers."""
    import puzzlekit.scoring.replace1 as R
    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import METRICS, score_library

    parent, data, _, run = built
    kw = dict(eval_sequences=5, batch_size=3, progress=False, save=False)
    a = score_library(parent, BlockLibrary.load(run / "library.json"), data, **kw)
    monkeypatch.setattr(R, "_is_host", lambda device: False)
    b = score_library(parent, BlockLibrary.load(run / "library.json"), data, **kw)
    for ca, cb in zip(a.candidates, b.candidates):
        for m in METRICS:
            assert ca.metrics[m] == pytest.approx(cb.metrics[m], rel=1e-12, abs=1e-12), m


def test_bounded_reference_memory_recomputes_the_parent_logits_with_the_same_numbers(built, caplog):
    """Under ``ref_memory_gb`` the parent's log-probs are not kept but recomputed per layer and batch
    (and the plan is logged); every metric is unchanged.  A non-positive budget is refused."""
    import logging

    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import METRICS, ScoringError, score_library

    parent, data, _, run = built
    kw = dict(eval_sequences=5, batch_size=3, progress=False, save=False)
    a = score_library(parent, BlockLibrary.load(run / "library.json"), data, **kw)
    with caplog.at_level(logging.INFO, logger="puzzlekit.scoring.replace1"):
        b = score_library(parent, BlockLibrary.load(run / "library.json"), data, ref_memory_gb=1e-6, **kw)
    assert "log-probs recomputed per layer and batch" in caplog.text
    for ca, cb in zip(a.candidates, b.candidates):
        for m in METRICS:
            assert ca.metrics[m] == pytest.approx(cb.metrics[m], rel=1e-12, abs=1e-12), m
    with pytest.raises(ScoringError, match="ref_memory_gb"):
        score_library(parent, BlockLibrary.load(run / "library.json"), data, ref_memory_gb=0, **kw)


def test_scoring_persists_only_when_given_a_run_directory(built, tmp_path):
    """Issue 21 item 8: a function given a run directory persists there; given objects only, it does not."""
    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import score_library

    parent, data, _, run = built
    before = (run / "library.json").read_bytes()
    lib = score_library(parent, BlockLibrary.load(run / "library.json"), data, eval_sequences=2, progress=False)
    assert "kl_div" in lib.metric_names and (run / "library.json").read_bytes() == before
    rd = RunDir(tmp_path / "scores")
    score_library(parent, BlockLibrary.load(run / "library.json"), data, rd, eval_sequences=2, progress=False)
    assert "kl_div" in BlockLibrary.load(run / "library.json").metric_names  # the document it came from
    (run / "library.json").write_bytes(before)
