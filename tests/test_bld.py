"""BLD: units, loss, training quality, modes, resumption after SIGKILL, and 2-process sharding."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from puzzlekit.blocks import AttentionConfig, FFNConfig
from puzzlekit.data import TokenData
from puzzlekit.errors import PuzzlekitError

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_parent(seed: int = 0):
    """A tiny random Llama, as a PuzzleForCausalLM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from puzzlekit.model import load_parent

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return load_parent(LlamaForCausalLM(cfg).eval())


def make_data(n: int = 48, seq_len: int = 16, vocab: int = 96, seed: int = 0) -> TokenData:
    """Token rows with some structure (a noisy counting sequence), made in code."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, vocab, size=(n, 1))
    rows = (start + np.arange(seq_len)[None] * rng.integers(1, 4, size=(n, 1))) % vocab
    noise = rng.random((n, seq_len)) < 0.1
    rows = np.where(noise, rng.integers(0, vocab, size=(n, seq_len)), rows).astype(np.int64)
    return TokenData(rows[:-8], rows[-8:], seq_len)


def small_space(parent):
    from puzzlekit.bld import SearchSpace

    return SearchSpace((AttentionConfig.gqa(2), AttentionConfig.gqa(1), AttentionConfig.make_linear(),
                        AttentionConfig.make_no_op()),
                       (FFNConfig.swiglu(64), FFNConfig.swiglu(32), FFNConfig.swiglu(16), FFNConfig.make_no_op()))


def _digest(run: Path) -> str:
    h = hashlib.sha256()
    h.update((run / "library.json").read_bytes())
    for p in sorted((run / "blocks").rglob("*.safetensors")):
        h.update(str(p.relative_to(run)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_default_space_and_units():
    from puzzlekit.bld import default_search_space, plan_units

    parent = make_parent()
    spec = parent.config.parent_spec
    sp = default_search_space(spec)
    assert [a.short() for a in sp.attention] == ["gqa:2", "gqa:1", "linear", "no_op"]
    assert sp.ffn[0].intermediate_size == 64 and sp.ffn[-1].no_op
    dec = plan_units(sp, spec.parent_block(), "decoupled", [0, 1])
    cou = plan_units(sp, spec.parent_block(), "coupled", [0, 1])
    assert len(dec) == 2 * (len(sp.attention) + len(sp.ffn))
    assert len(cou) == 2 * len(sp.attention) * len(sp.ffn)
    assert len({u.id for u in dec}) == len(dec) and len({u.filename for u in cou}) == len(cou)


def test_groups_follow_the_memory_budget():
    from puzzlekit.bld import BLDConfig, default_search_space, plan_groups, plan_units

    spec = make_parent().config.parent_spec
    units = plan_units(default_search_space(spec), spec.parent_block(), "decoupled", [0, 1])
    assert plan_groups(units, spec, BLDConfig(), 16) == [[0, 1]]
    assert plan_groups(units, spec, BLDConfig(max_memory_gb=1e-6), 16) == [[0], [1]]


def test_bld_decoupled_trains_and_registers(tmp_path):
    from safetensors.torch import load_file

    from puzzlekit.bld import BLDConfig, run_bld, unit_results
    from puzzlekit.library import BlockLibrary
    from puzzlekit.model import make_layer

    parent, data = make_parent(), make_data()
    space = small_space(parent)
    cfg = BLDConfig(tokens=16 * 4 * 30, batch_size=4, lr=3e-3, eval_sequences=4)
    lib = run_bld(parent, data, tmp_path, space, cfg, progress=False)
    assert len(lib) == 2 * len(space.attention) * len(space.ffn)
    assert BlockLibrary.load(tmp_path / "library.json").to_dict() == lib.to_dict()
    res = unit_results(tmp_path)
    trained = [k for k in res if "gqa:2" not in k and "ffn:64" not in k and "no_op" not in k]
    assert trained
    for k in trained:  # every pruned / linear unit improved on its initialisation
        assert res[k]["bld_nmse"] < res[k]["bld_nmse_init"], (k, res[k])
    for k, m in res.items():
        if "gqa:2" in k or "ffn:64" in k:  # the parent's own sub-blocks are exact
            assert m["bld_nmse"] == 0.0
    spec = parent.config.parent_spec
    for c in lib.candidates:  # every weights file loads into its block
        if c.weights:
            layer = make_layer(spec, c.block, c.first)
            layer.load_state_dict(load_file(str(tmp_path / c.weights)), strict=True)
        else:
            assert c.block.attention.no_op and c.block.ffn.no_op
    # a second call with the same settings is a no-op that returns the same library
    mtime = (tmp_path / "library.json").stat().st_mtime_ns
    assert run_bld(parent, data, tmp_path, space, cfg, progress=False).to_dict() == lib.to_dict()
    assert (tmp_path / "library.json").stat().st_mtime_ns == mtime
    with pytest.raises(PuzzlekitError, match="other settings"):
        run_bld(parent, data, tmp_path, space, BLDConfig(tokens=999, batch_size=4, eval_sequences=4), progress=False)


@pytest.mark.parametrize("mode", ["coupled", "hybrid"])
def test_bld_coupled_and_hybrid(tmp_path, mode):
    from puzzlekit.bld import BLDConfig, SearchSpace, run_bld

    parent, data = make_parent(), make_data()
    space = SearchSpace((AttentionConfig.gqa(2), AttentionConfig.gqa(1), AttentionConfig.make_no_op()),
                        (FFNConfig.swiglu(64), FFNConfig.swiglu(16), FFNConfig.make_no_op()))
    cfg = BLDConfig(mode=mode, tokens=16 * 4 * 8, batch_size=4, lr=1e-3, eval_sequences=4, hybrid_keep=2)
    lib = run_bld(parent, data, tmp_path, space, cfg, progress=False)
    per_layer = 9 if mode == "coupled" else 4
    assert len(lib) == 2 * per_layer
    pruned = [c for c in lib.candidates if c.block != parent.config.parent_spec.parent_block()
              and not (c.block.attention.no_op and c.block.ffn.no_op)]
    gain = [c.metrics["bld_nmse_init"] - c.metrics["bld_nmse"] for c in pruned]
    assert np.mean(gain) > 0 and sum(g > 0 for g in gain) >= 0.5 * len(gain), gain
    if mode == "hybrid":  # the kept pairs are the best decoupled attention / FFN variants
        assert all(not c.block.attention.no_op for c in lib.candidates)


def _run_worker(run: Path, mode: str = "decoupled", **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(HERE / "_bld_worker.py"), str(run), mode], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    p = _run_worker(ref)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    t_full = None
    run = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for _attempt in range(6):
        p = _run_worker(run, mode="decoupled")
        t0 = time.monotonic()
        # wait until the process has started training (the journal exists), then kill at a random point
        while not (run / "journal.jsonl").exists() and p.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.2 if t_full is None else t_full))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        if kills >= 3:
            break
    p = _run_worker(run)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    assert kills >= 2
    assert _digest(run) == _digest(ref)


@pytest.mark.distributed
def test_two_processes_give_the_same_library_as_one(tmp_path):
    one = tmp_path / "one"
    p = _run_worker(one, mode="hybrid")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    two = tmp_path / "two"
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29500 + os.getpid() % 1000), str(HERE / "_bld_worker.py"),
                           str(two), "hybrid"], env=env, capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    ranks = {r.get("rank") for r in __import__("puzzlekit.rundir", fromlist=["Journal"]).Journal(
        two / "journal.jsonl").records() if r.get("state") == "COMPLETE"}
    assert ranks == {0, 1}
    assert _digest(one) == _digest(two)
