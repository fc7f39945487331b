"""BLD: units, loss, training quality, modes, resumption after SIGKILL, and 2-process sharding."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _launch import free_port

from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
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


def test_training_forward_equals_the_module_forward():
    """The folded/fused training path (bld.step) computes what the layer module computes, for every unit kind."""
    from puzzlekit.bld.engine import parent_activations
    from puzzlekit.bld.step import FrozenFFN, LayerBatch, unit_output
    from puzzlekit.blocks import BlockConfig
    from puzzlekit.model import init_child_layer

    parent = make_parent()
    pe, acts = parent_activations(parent, torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(0)),
                                  [1])
    x, h, y = acts[1]
    pl = parent.model.layers[1]
    lb = LayerBatch(pl, acts[1], pe, FrozenFFN(pl))
    na, nf = AttentionConfig.make_no_op(), FFNConfig.make_no_op()
    cases = [("attn", BlockConfig(AttentionConfig.gqa(1), nf)), ("attn", BlockConfig(AttentionConfig.make_linear(), nf)),
             ("ffn", BlockConfig(na, FFNConfig.swiglu(32))), ("ffn", BlockConfig(na, FFNConfig.make_linear())),
             ("pair", BlockConfig(AttentionConfig.gqa(1), FFNConfig.swiglu(16))),
             ("pair", BlockConfig(na, FFNConfig.make_linear())), ("pair", BlockConfig(AttentionConfig.gqa(2), nf))]
    torch.manual_seed(0)
    for kind, block in cases:
        m = init_child_layer(pl, block, ffn_method="truncate")
        with torch.no_grad():  # move away from the parent so the norms and projections all matter
            for p in m.parameters():
                p.mul_(1 + 0.2 * torch.randn_like(p))
        if kind == "attn":
            o = x + m.attn_delta(x, pe)
            ref = o + pl.ffn_delta(o)
        elif kind == "ffn":
            ref = h + m.ffn_delta(h)
        else:
            ref = m(x, pe)
        out = unit_output(kind, m, lb)
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (kind, block.key, float((out - ref).abs().max()))
        loss = lb.loss(out)
        loss.backward()  # gradients reach every parameter of the unit (norm weights through the fold)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()), (kind, block.key)
    assert lb.den == y.pow(2).mean()


def test_groups_follow_the_memory_budget():
    from puzzlekit.bld import BLDConfig, default_search_space, plan_groups, plan_units

    spec = make_parent().config.parent_spec
    units = plan_units(default_search_space(spec), spec.parent_block(), "decoupled", [0, 1])
    assert plan_groups(units, spec, BLDConfig(), 16) == [[0, 1]]
    assert plan_groups(units, spec, BLDConfig(max_memory_gb=1e-6), 16) == [[0], [1]]
    # a parent placed over two devices: each holds its own layers' share, so a budget that fits one
    # layer fits both layers at once
    one = plan_groups([u for u in units if u.layer == 0], spec, BLDConfig(), 16)
    assert one == [[0]]
    from puzzlekit.bld.units import layer_memory

    per = layer_memory(units, spec, BLDConfig(), 16)
    gb = 1.2 * max(per.values()) / 2**30  # one layer's units and activations, not two
    assert sum(per.values()) > gb * 2**30
    assert plan_groups(units, spec, BLDConfig(max_memory_gb=gb), 16) == [[0], [1]]
    assert plan_groups(units, spec, BLDConfig(max_memory_gb=gb), 16, {0: "cuda:0", 1: "cuda:1"}) == [[0, 1]]


def test_bld_decoupled_trains_and_registers(tmp_path):
    from safetensors.torch import load_file

    from puzzlekit.bld import BLDConfig, run_bld, unit_results
    from puzzlekit.library import BlockLibrary
    from puzzlekit.model import load_block_weights, make_layer

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
    for idx, c in enumerate(lib.candidates):  # every candidate's files load into its block
        if c.weights:
            layer = load_block_weights(make_layer(spec, c.block, c.first), lib.weights_paths(idx))
            want = {}
            for w in c.weight_files:  # the pair's layer is exactly its sub-block files' tensors
                want.update(load_file(str(tmp_path / w)))
            assert set(want) == set(layer.state_dict())
            assert all(torch.equal(v, want[k]) for k, v in layer.state_dict().items())
        else:
            assert c.block.attention.no_op and c.block.ffn.no_op
    # each trained sub-block is stored once and shared by the layer's pairs (no per-pair copies)
    files = [w for c in lib.candidates for w in c.weight_files]
    on_disk = {str(p.relative_to(tmp_path)) for p in (tmp_path / "blocks").rglob("*.safetensors")}
    assert set(files) == on_disk
    assert len(on_disk) < len(files)
    assert all(len(c.weight_files) == 2 for c in lib.candidates
               if not c.block.attention.no_op and not c.block.ffn.no_op)
    # a second call with the same settings is a no-op that returns the same library
    mtime = (tmp_path / "library.json").stat().st_mtime_ns
    assert run_bld(parent, data, tmp_path, space, cfg, progress=False).to_dict() == lib.to_dict()
    assert (tmp_path / "library.json").stat().st_mtime_ns == mtime
    with pytest.raises(PuzzlekitError, match="other settings"):
        run_bld(parent, data, tmp_path, space, BLDConfig(tokens=999, batch_size=4, eval_sequences=4), progress=False)


def test_parent_fingerprint_covers_every_value_of_every_tensor(tmp_path, monkeypatch):
    """A parent differing only past the first 1,024 values of one tensor (the old fingerprint's reach) has
    another fingerprint, so run_bld refuses to reuse a run made from the first one; the hash streams a
    tensor in chunks and gives the same answer whatever the chunk size."""
    from puzzlekit.bld import BLDConfig, engine, run_bld

    a, b = make_parent(), make_parent()
    w = b.model.layers[1].mlp.down_proj.weight
    assert w.numel() > 1024
    with torch.no_grad():
        w.view(-1)[-1] += 1e-3
    fa, fb = engine.fingerprint_parent(a), engine.fingerprint_parent(b)
    assert fa != fb and fa == engine.fingerprint_parent(make_parent())
    monkeypatch.setattr(engine, "_FINGERPRINT_CHUNK", 96)  # odd-sized chunks across every tensor
    assert engine.fingerprint_parent(a) == fa and engine.fingerprint_parent(b) == fb
    data = make_data()
    cfg = BLDConfig(tokens=16 * 4 * 2, batch_size=4, eval_sequences=4)
    space = small_space(a)
    run_bld(a, data, tmp_path, space, cfg, progress=False)
    with pytest.raises(PuzzlekitError, match="other settings"):
        run_bld(b, data, tmp_path, space, cfg, progress=False)


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


def worker_setup(mode: str = "decoupled"):
    """Parent, data, space and settings shared by the in-process, forked and subprocess runs below."""
    from puzzlekit.bld import BLDConfig

    parent, data = make_parent(), make_data()
    cfg = BLDConfig(mode=mode, tokens=16 * 4 * 12, batch_size=4, lr=2e-3, checkpoint_every=2, eval_sequences=4,
                    hybrid_keep=2)
    return parent, data, small_space(parent), cfg


def _run_worker(run: Path, mode: str = "decoupled", **kw) -> subprocess.Popen:
    """A fresh interpreter running ``tests/_bld_worker.py`` (a real restart: no inherited memory)."""
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(HERE / "_bld_worker.py"), str(run), mode], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def _fork(fn, env: dict[str, str] | None = None) -> int:
    """Run ``fn()`` in a forked child (torch and the parent already imported: no start-up cost).
    The child exits 0 when ``fn`` returns, 1 when it raises."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.environ.update(env or {})
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 120.0) -> int:
    """Exit status of a forked child (killed and failed after ``timeout`` seconds)."""
    t0 = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"forked BLD child {pid} did not finish in {timeout} s")
        time.sleep(0.01)


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@needs_fork
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    """Killed with SIGKILL at 4 random points (forked runs), then finished by a fresh interpreter running
    the same command: the library is byte-identical to an uninterrupted run's."""
    from puzzlekit.bld import run_bld

    parent, data, space, cfg = worker_setup()
    run_bld(parent, data, tmp_path / "warm", space, cfg, progress=False)  # first-call costs out of the timing
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    assert _wait(_fork(lambda: run_bld(parent, data, ref, space, cfg, progress=False))) == 0
    t_full = time.monotonic() - t0  # an uninterrupted forked run: the kill times are fractions of it
    run = tmp_path / "killed"
    rng = random.Random(1234)
    for _scenario in range(4):  # a run that outpaces its kills (load changes) is started over
        shutil.rmtree(run, ignore_errors=True)
        kills = []
        # three early kills (setup, first steps, checkpoints), one anywhere up to the end (compose, journal)
        for hi in (0.25, 0.25, 0.25, 0.9):
            pid = _fork(lambda: run_bld(parent, data, run, space, cfg, progress=False))
            delay = rng.uniform(0.02, hi) * t_full
            time.sleep(delay)
            if os.waitpid(pid, os.WNOHANG)[0]:  # it finished before the kill: nothing left to interrupt
                break
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            kills.append(round(delay / t_full, 2))
        if len(kills) >= 3:
            break
    assert len(kills) >= 3, (kills, t_full)
    p = _run_worker(run)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    assert _digest(run) == _digest(ref), kills
    assert _digest(tmp_path / "warm") == _digest(ref)  # in-process = forked


@needs_fork
@pytest.mark.distributed
def test_two_processes_give_the_same_library_as_one(tmp_path):
    """Hybrid BLD sharded over 2 processes (gloo, torchrun's environment) = 1 process, byte for byte."""
    import torch.distributed as dist

    from puzzlekit.bld import run_bld
    from puzzlekit.rundir import Journal

    parent, data, space, cfg = worker_setup("hybrid")
    one = tmp_path / "one"
    run_bld(parent, data, one, space, cfg, progress=False)
    two = tmp_path / "two"
    port = str(free_port())

    def rank_main() -> None:
        run_bld(parent, data, two, space, cfg, progress=False)
        dist.destroy_process_group()

    pids = [_fork(rank_main, {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in range(2)]
    codes = [_wait(pid) for pid in pids]
    assert codes == [0, 0], codes
    ranks = {r.get("rank") for r in Journal(two / "journal.jsonl").records() if r.get("state") == "COMPLETE"}
    assert ranks == {0, 1}
    assert _digest(one) == _digest(two)


def test_relative_run_directory(tmp_path, monkeypatch):
    """A run directory given as a relative path works (weights are registered relative to it)."""
    from puzzlekit.bld import run_bld
    from puzzlekit.library import BlockLibrary

    parent, data, space, cfg = worker_setup()
    monkeypatch.chdir(tmp_path)
    lib = run_bld(parent, data, "rel/run", space, cfg, progress=False)
    back = BlockLibrary.load(tmp_path / "rel" / "run" / "library.json")
    assert back.to_dict() == lib.to_dict()
    assert all(p.is_file() for i in range(len(back)) for p in back.weights_paths(i))


@pytest.mark.gpu
def test_bld_and_scoring_on_cuda(tmp_path):
    """BLD and replace-1-block scoring with the parent on a CUDA device (token rows stay on the CPU and
    move per batch): the units train, and the scores agree with a CPU run's to float tolerance."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from puzzlekit.bld import run_bld, unit_results
    from puzzlekit.scoring import score_library

    torch.backends.cuda.matmul.allow_tf32 = False
    parent, data, space, cfg = worker_setup()
    cpu = score_library(parent, run_bld(parent, data, tmp_path / "cpu", space, cfg, progress=False), data,
                        tmp_path / "cpu", eval_sequences=4, progress=False)
    parent.to("cuda")
    gpu = score_library(parent, run_bld(parent, data, tmp_path / "gpu", space, cfg, progress=False), data,
                        tmp_path / "gpu", eval_sequences=4, progress=False)
    res = unit_results(tmp_path / "gpu")
    trained = [k for k in res if "gqa:2" not in k and "ffn:64" not in k and "no_op" not in k]
    assert trained and all(res[k]["bld_nmse"] < res[k]["bld_nmse_init"] for k in trained)
    for a, b in zip(cpu.candidates, gpu.candidates):
        assert b.metrics["kl_div"] == pytest.approx(a.metrics["kl_div"], rel=5e-2, abs=1e-4)


def test_benchmark_flop_model_matches_torch_flop_counter():
    """``benchmarks/bld.py`` prints a FLOP ceiling for the shared-pass speed-up from its MAC model; the
    model must match what torch counts for the parent pass and one training step of each unit (the
    counter does not see CPU SDPA, so that term is left out of the comparison)."""
    import importlib.util

    from torch.utils.flop_counter import FlopCounterMode

    from puzzlekit.bld.engine import parent_activations
    from puzzlekit.bld.step import FrozenFFN, LayerBatch, unit_output
    from puzzlekit.model import PuzzleDecoderLayer

    spec_ = importlib.util.spec_from_file_location("bld_bench", HERE.parent / "benchmarks" / "bld.py")
    bench = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(bench)
    parent, seq = bench.demo_sized_parent(1, 64)
    spec = parent.config.parent_spec
    ids = torch.randint(0, spec.vocab_size, (1, seq))
    with FlopCounterMode(display=False) as fc:
        pe, acts = parent_activations(parent, ids, [0])
    p_counted = fc.get_total_flops() / 2 / seq
    pl = parent.model.layers[0]
    lb = LayerBatch(pl, acts[0], pe, FrozenFFN(pl))
    sdpa = spec.num_attention_heads * spec.head_dim * seq  # the model's causal SDPA term per token and layer
    for mix in bench.MIXES:
        att, ffn = bench.eight_candidates(spec, mix)
        counted = 0.0
        for kind, v in [("attn", a) for a in att] + [("ffn", f) for f in ffn]:
            pb = spec.parent_block()
            block = BlockConfig(v, pb.ffn) if kind == "attn" else BlockConfig(pb.attention, v)
            with FlopCounterMode(display=False) as fc:
                unit_output(kind, PuzzleDecoderLayer(spec, block, 0), lb).pow(2).mean().backward()
            counted += fc.get_total_flops() / 2 / seq
        P, U = bench.macs_per_token(spec, att, ffn, seq)
        assert P - sdpa == pytest.approx(p_counted, rel=1e-9)
        n_sdpa = sum(1 for a in att if not a.linear)
        assert U - 3 * sdpa * n_sdpa == pytest.approx(counted, rel=0.02), mix
