"""GKD under FSDP2 on CPU with gloo: 2 processes against one, sharded checkpoints resumed with another
process count, SIGKILL at random points then resume (bit-identical weights)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _distill_helpers import pruned_child, tiny_parent, token_rows  # noqa: E402
from _launch import torchrun  # noqa: E402

from puzzlekit.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("_distill_fsdp_worker.py")


def _cmd(nproc: int, **opts) -> list[str]:
    launch = torchrun(nproc) if nproc > 1 else [sys.executable]
    return [*launch, str(WORKER), json.dumps(opts)]


def _env(cuda: bool = False) -> dict[str, str]:
    from _rel_kill import env

    return env() if cuda else {**env(), "CUDA_VISIBLE_DEVICES": ""}


def _launch(out: Path, nproc: int, cuda: bool = False, **opts) -> list[dict]:
    p = subprocess.run(_cmd(nproc, out=str(out), **opts), capture_output=True, text=True, env=_env(cuda),
                       timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def _weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / f"weights_step{step}.safetensors"))


def _plain_run(steps: int = 6, cpt: bool = False):
    """The same training as one ordinary process (no FSDP), global batch 8 (``cpt``: LM loss, no parent)."""
    from _distill_fsdp_worker import models, train_rows

    from puzzlekit.distill import DistillConfig, GKDWeights, distill

    torch.set_num_threads(1)
    parent, child = models()
    res = distill(child, None if cpt else parent, train_rows(),
                  DistillConfig(max_steps=steps, batch_size=8, learning_rate=2e-3, weight_decay=0.0, eval_every=3,
                                mixed_precision="no", log_every=0,
                                **({"weights": GKDWeights(cosine=0, kl=0, lm=1)} if cpt else {})),
                  eval_tokens=token_rows(6, 12, seed=5))
    return child, res


def test_fsdp_two_processes_shard_match_one_process_and_resume_on_one(tmp_path):
    from transformers import AutoModelForCausalLM

    import puzzlekit.model  # noqa: F401  (registers the Nemotron-NAS Auto classes)
    from puzzlekit.distill import latest_checkpoint
    from puzzlekit.distill.checkpoint import check_fits

    tiny_parent().save_pretrained(tmp_path / "parent")  # a Llama folder: each process loads only its shards
    two = _launch(tmp_path, 2, stop_after=3, parent_dir=str(tmp_path / "parent"))  # 2 x 4 rows, stopped at 3 ...
    for r in two:
        assert r["world"] == 2 and r["sharded_type"].startswith("FSDP") and (r["start"], r["end"]) == (0, 3)
        assert 0.45 <= r["local_child"] / r["total_child"] <= 0.55, r  # each holds about half of the child
        assert 0.45 <= r["local_parent"] / r["total_parent"] <= 0.55, r  # ... and of the frozen parent
    assert sum(r["local_child"] for r in two) == two[0]["total_child"]
    ck = latest_checkpoint(tmp_path / "run")
    shards = sorted((ck / "dcp").glob("*.distcp"))
    assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"] and not (ck / "model.safetensors").exists()
    total = sum(p.stat().st_size for p in shards)
    assert all(p.stat().st_size < 0.7 * total for p in shards)  # each process wrote its own share
    # ... resumed by ONE process x 8 rows, with activation checkpointing; the child saved as a NAS folder
    one = _launch(tmp_path, 1, ac=True, parent_dir=str(tmp_path / "parent"), save_dir=str(tmp_path / "child"))
    assert one[0]["world"] == 1 and (one[0]["start"], one[0]["end"]) == (3, 6)

    child, ref = _plain_run()  # one ordinary process, 6 steps of 8 rows
    got = one[0]["history"]
    assert [h["step"] for h in got] == list(range(1, 7))
    for h, w in zip(got, ref.history):
        for k in ("loss", "kl", "cosine", "grad_norm", "lr"):
            assert h[k] == pytest.approx(w[k], rel=1e-5, abs=1e-7), (h, w)
    assert [e["step"] for e in one[0]["evals"]] == [0, 3, 6]
    for e, w in zip(one[0]["evals"], ref.evals):
        assert e["kl"] == pytest.approx(w["kl"], rel=1e-5)
    final = _weights(tmp_path, 6)
    sd = child.state_dict()
    assert final.keys() == sd.keys()
    for k, v in sd.items():
        assert torch.allclose(final[k], v, atol=2e-6, rtol=1e-5), (k, (final[k] - v).abs().max())
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "child")  # an ordinary Nemotron-NAS folder
    assert saved.config.model_type == "nemotron-nas"
    assert all(torch.equal(saved.state_dict()[k], v) for k, v in final.items())
    # the checkpoint folder now belongs to this child: another child pointed at it is told so
    other = pruned_child(tiny_parent(), keep=24)
    with pytest.raises(ConfigError, match="another model's run"):
        check_fits(latest_checkpoint(tmp_path / "run"), {k: v.shape for k, v in other.state_dict().items()},
                   tmp_path / "run")


def test_continued_pretraining_under_fsdp_on_two_processes_matches_one_process(tmp_path):
    """CPT (LM loss, no parent) sharded over 2 processes, killed at step 3 and resumed by 2: the same LM-loss
    curve and final weights as one ordinary process."""
    two = _launch(tmp_path, 2, cpt=True, stop_after=3)
    assert all(0.45 <= r["local_child"] / r["total_child"] <= 0.55 and r["total_parent"] == 0 for r in two), two
    two = _launch(tmp_path, 2, cpt=True)
    assert (two[0]["start"], two[0]["end"]) == (3, 6)
    child, ref = _plain_run(cpt=True)
    assert [h["step"] for h in two[0]["history"]] == list(range(1, 7))  # the history resumes with the run
    for h, w in zip(two[0]["history"], ref.history):
        for k in ("loss", "lm", "grad_norm"):
            assert h[k] == pytest.approx(w[k], rel=1e-5, abs=1e-7), (h, w)
    final = _weights(tmp_path, 6)
    for k, v in child.state_dict().items():
        assert torch.allclose(final[k], v, atol=2e-6, rtol=1e-5), (k, (final[k] - v).abs().max())


# ---- slow: the other direction, and SIGKILL at random points ------------------------------------

@pytest.mark.slow
def test_fsdp_checkpoint_of_one_process_resumes_on_two_with_the_same_weights(tmp_path):
    ref = tmp_path / "ref"
    _launch(ref, 2)  # uninterrupted, 2 processes
    run = tmp_path / "run"
    _launch(run, 1, stop_after=3)  # one process x 8 rows, 3 steps ...
    at3 = _weights(run, 3)
    two = _launch(run, 2, stop_after=3)  # ... loaded by 2 processes: nothing to train, gathered back as written
    assert two[0]["start"] == two[0]["end"] == 3
    assert all(torch.equal(at3[k], v) for k, v in _weights(run, 3).items())  # bit-identical after re-sharding
    _launch(run, 2)  # ... and continued to the end on 2 processes
    a, b = _weights(ref, 6), _weights(run, 6)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-6, rtol=1e-5), (k, (a[k] - b[k]).abs().max())


def _kill_group_and_resume(cmd: list[str], progress, work, *, kills: int, seed: int, log: Path) -> list:
    """SIGKILL the whole process group (launcher and workers) at ``kills`` random points of its work
    (after it saved at least one new checkpoint), then run it to the end."""
    from _rel_kill import random_points

    done = []
    for at, delay in random_points(work, kills, seed):
        p0 = progress()
        with open(log, "ab") as err:
            p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        t0 = time.monotonic()
        while progress() < max(at, p0 + 1) and p.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.002)
        deadline = time.monotonic() + delay
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if p.poll() is not None:
            assert p.returncode == 0, log.read_text()[-3000:]
            break
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        time.sleep(0.2)  # the workers die with the group
        done.append((progress(), round(delay, 3)))
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return done


@pytest.mark.slow
def test_fsdp_killed_at_random_points_resumes_to_bit_identical_weights(tmp_path):
    from _rel_kill import check_no_half_files, checkpoint_step, run_to_end

    opts = {"steps": 16, "save_every": 1, "eval_every": 0, "warmup": 2}
    ref, run = tmp_path / "ref", tmp_path / "run"
    work = run_to_end(_cmd(2, out=str(ref), **opts), checkpoint_step(ref / "run" / "checkpoints" / "latest.json"))
    kills = _kill_group_and_resume(_cmd(2, out=str(run), **opts),
                                   checkpoint_step(run / "run" / "checkpoints" / "latest.json"), work, kills=5,
                                   seed=404, log=tmp_path / "killed.log")
    assert len(kills) >= 5, kills
    a, b = _weights(ref, 16), _weights(run, 16)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())
    ha = json.loads((ref / "rank0.json").read_text())["history"]
    hb = json.loads((run / "rank0.json").read_text())["history"]
    assert [h["loss"] for h in hb] == [h["loss"] for h in ha[-len(hb):]]
    st = json.loads((run / "run" / "checkpoints" / "step_00000016" / "state.json").read_text())
    assert [h["loss"] for h in st["history"]] == [h["loss"] for h in ha]
    check_no_half_files(run)
    assert not list((run / "run" / "checkpoints").glob(".*"))


@pytest.mark.slow
def test_cluster_recipe_on_two_processes(tmp_path):
    """examples/gkd/cluster.py as the README launches it: folders in, shards loaded, NAS folder out."""
    from transformers import AutoModelForCausalLM

    from puzzlekit.data import TokenData
    from puzzlekit.model import load_parent, save_model

    parent = tiny_parent()
    parent.save_pretrained(tmp_path / "parent")
    save_model(load_parent(pruned_child(parent, keep=8, reinit_ffn=True)), tmp_path / "child")
    rows = token_rows(40, 12, seed=7).numpy()
    TokenData(rows[:32], rows[32:], 12).save(tmp_path / "tokens.npz")
    script = Path(__file__).resolve().parents[1] / "examples" / "gkd" / "cluster.py"
    cmd = [*torchrun(2), str(script), "--parent", str(tmp_path / "parent"), "--child", str(tmp_path / "child"), "--tokens",
           str(tmp_path / "tokens.npz"), "--out", str(tmp_path / "out"), "--steps", "4", "--batch-size", "2",
           "--grad-accum", "2", "--lr", "2e-3", "--warmup", "0", "--eval-every", "2", "--save-every", "2",
           "--cpt-steps", "1", "--activation-checkpointing"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["processes"] == 2 and [e["step"] for e in m["gkd_evals"]] == [0, 2, 4]
    assert m["gkd_evals"][-1]["kl"] < m["gkd_evals"][0]["kl"]
    healed = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "child")
    assert healed.config.model_type == "nemotron-nas" and healed.config.num_hidden_layers == 2
    assert (tmp_path / "out" / "gkd" / "checkpoints" / "step_00000004" / "dcp" / ".metadata.json").exists()


@pytest.mark.gpu
def test_fsdp_on_cuda_in_bf16_resumes_bit_identically(tmp_path):
    """The CUDA path (benchmarks/device_check.sh): FSDP2 with bf16 MixedPrecisionPolicy (mixed_precision
    'auto') and activation checkpointing; a run stopped and resumed equals an uninterrupted one bit for
    bit (deterministic algorithms), and the KL falls."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    opts = {"mp": "auto", "ac": True, "deterministic": True}
    ref = _launch(tmp_path / "ref", 1, cuda=True, **opts)[0]
    assert ref["device"].startswith("cuda") and ref["compute_dtype"] == "torch.bfloat16"
    assert ref["evals"][-1]["kl"] < ref["evals"][0]["kl"]
    _launch(tmp_path / "run", 1, cuda=True, stop_after=3, **opts)
    _launch(tmp_path / "run", 1, cuda=True, **opts)
    a, b = _weights(tmp_path / "ref", 6), _weights(tmp_path / "run", 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in a.values())  # fp32 master weights
