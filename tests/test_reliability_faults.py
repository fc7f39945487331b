"""Faults: long stages SIGKILLed at random points and restarted, full disks and read-only run directories.

The kill tests (``slow``) run each stage as its real command in a subprocess, kill it with SIGKILL
at >= 5 random points, run the same command again, and check that the result equals an
uninterrupted run with the same seed and that no half-written file is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from _rel_kill import (  # noqa: E402
    check_no_half_files,
    checkpoint_step,
    journal_lines,
    kill_and_resume,
    python,
    run_to_end,
)
from conftest import sh  # noqa: E402

import puzzlekit as pk  # noqa: E402
from puzzlekit.errors import PuzzlekitError  # noqa: E402

KILLS = 5


def _tokens(seq_len: int = 16, n: int = 40, vocab: int = 64):
    from puzzlekit.data import TokenData

    rng = np.random.default_rng(0)
    start = rng.integers(0, vocab, size=(n, 1))
    rows = ((start + np.arange(seq_len)[None] * rng.integers(1, 4, size=(n, 1))) % vocab).astype(np.int64)
    return TokenData(rows[:-8], rows[-8:], seq_len)


def _tiny_llama_dir(d: Path, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved as a Hugging Face folder (safetensors)."""
    return _tiny_llama_dir(tmp_path_factory.mktemp("parent"), 2)


@pytest.fixture(scope="module")
def deep_parent_dir(tmp_path_factory) -> Path:
    """An 8-layer tiny Llama: scoring journals a layer's candidates together (they are stacked through
    the suffix), so its saved progress has one step per layer; 8 layers give the >= 5 kills room."""
    return _tiny_llama_dir(tmp_path_factory.mktemp("parent8"), 8)


def _bld_cmd(parent: Path, run: Path) -> list[str]:
    return [python(), "-m", "puzzlekit", "build-library", "--parent", str(parent), "--data", "unused", "--run",
            str(run), "--tokens", "2048", "--batch-size", "4", "--seq-len", "16", "--lr", "2e-3",
            "--ffn-fractions", "0.5", "--no-progress", "--json"]


def _new_run(run: Path) -> Path:
    run.mkdir(parents=True)
    _tokens().save(run / "tokens.npz")
    return run


def _digest(run: Path) -> str:
    """The library document's bytes and every block file's tensors and metadata.

    (Not the block files' bytes: safetensors writes its metadata map in a per-process random
    order, so two identical saves from two processes can differ byte-wise.)"""
    from safetensors import safe_open

    h = hashlib.sha256()
    h.update((run / "library.json").read_bytes())
    for p in sorted((run / "blocks").rglob("*.safetensors")):
        h.update(str(p.relative_to(run)).encode())
        with safe_open(str(p), framework="pt") as f:
            h.update(json.dumps(f.metadata(), sort_keys=True).encode())
            for k in sorted(f.keys()):
                h.update(k.encode())
                h.update(f.get_tensor(k).numpy().tobytes())
    return h.hexdigest()


def _after(progress, n0: int):
    """Progress events counted from ``n0`` (the scoring stage appends to BLD's journal)."""
    return lambda: max(0, progress() - n0)


# ---- kill and resume -------------------------------------------------------------------------

@pytest.mark.slow
def test_bld_killed_at_random_points_resumes_to_the_same_library(parent_dir, tmp_path, reliability):
    ref = _new_run(tmp_path / "ref")
    work = run_to_end(_bld_cmd(parent_dir, ref), journal_lines(ref / "journal.jsonl"))
    run = _new_run(tmp_path / "killed")
    info = kill_and_resume(_bld_cmd(parent_dir, run), journal_lines(run / "journal.jsonl"), work, kills=KILLS, seed=101)
    assert len(info["kill_points"]) >= KILLS, info
    assert _digest(run) == _digest(ref)
    counts = check_no_half_files(run)
    assert counts["safetensors"] >= 1 and counts["json"] >= 1
    reliability("faults", f"BLD (`puzzlekit build-library`) SIGKILLed at {KILLS} random points, re-run: library and "
                          "block weights bit-identical to an uninterrupted run, no half-written file", KILLS)


@pytest.mark.slow
def test_scoring_killed_at_random_points_resumes_to_the_same_scores(deep_parent_dir, tmp_path, reliability):
    parent_dir = deep_parent_dir
    built = _new_run(tmp_path / "built")
    run_to_end(_bld_cmd(parent_dir, built), journal_lines(built / "journal.jsonl"))

    def cmd(run: Path) -> list[str]:
        return [python(), "-m", "puzzlekit", "score", "--run", str(run), "--parent", str(parent_dir),
                "--eval-sequences", "8", "--batch-size", "2", "--no-progress", "--json"]

    ref, run = tmp_path / "ref", tmp_path / "killed"
    shutil.copytree(built, ref)
    shutil.copytree(built, run)
    n0 = journal_lines(run / "journal.jsonl")()
    work = run_to_end(cmd(ref), _after(journal_lines(ref / "journal.jsonl"), n0))
    info = kill_and_resume(cmd(run), _after(journal_lines(run / "journal.jsonl"), n0), work, kills=KILLS, seed=202)
    assert len(info["kill_points"]) >= KILLS, info
    a, b = pk.BlockLibrary.load(ref / "library.json"), pk.BlockLibrary.load(run / "library.json")
    assert "kl_div" in a.metric_names
    assert [c.metrics for c in a.candidates] == [c.metrics for c in b.candidates]
    check_no_half_files(run)
    reliability("faults", f"replace-1-block scoring (`puzzlekit score`) SIGKILLed at {KILLS} random points, re-run: "
                          "every score equal to an uninterrupted run, no half-written file", KILLS)


@pytest.mark.slow
def test_gkd_killed_at_random_points_resumes_to_the_same_weights(tmp_path, reliability):
    from _rel_kill import HERE
    from safetensors.torch import load_file

    def cmd(out: Path) -> list[str]:
        return [python(), str(HERE / "_rel_worker.py"), "gkd", str(out)]

    ref, run = tmp_path / "ref", tmp_path / "killed"
    work = run_to_end(cmd(ref), checkpoint_step(ref / "checkpoints" / "latest.json"))
    info = kill_and_resume(cmd(run), checkpoint_step(run / "checkpoints" / "latest.json"), work, kills=KILLS, seed=303)
    assert len(info["kill_points"]) >= KILLS, info
    a, b = load_file(str(ref / "final.safetensors")), load_file(str(run / "final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = json.loads((ref / "checkpoints" / "step_00000024" / "state.json").read_text())
    sb = json.loads((run / "checkpoints" / "step_00000024" / "state.json").read_text())
    assert [h["loss"] for h in sa["history"]] == [h["loss"] for h in sb["history"]]
    counts = check_no_half_files(run)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert counts["safetensors"] >= 2
    reliability("faults", f"GKD (distill, checkpoint every step) SIGKILLed at {KILLS} random points, re-run: final "
                          "weights and loss history bit-identical, no half-written checkpoint", KILLS)


# ---- the demo ---------------------------------------------------------------------------------

DEMO_STAGES = ("parent", "tokens", "bld", "score", "profile", "search", "child", "fuse", "baselines", "heal")
#: stages whose results depend on timings measured on this machine (profiling and speed matching)
DEMO_TIMED = ("profile", "search", "child", "fuse", "baselines", "heal")


def _demo_events(run: Path) -> dict[str, int]:
    """Durable progress of a demo run, per stage: the stage's completion in the manifest, plus its
    journal records (BLD units, scoring), finished baselines, healing checkpoints and finished
    healings. Every count only grows across kills and resumes."""
    ev = dict.fromkeys(DEMO_STAGES, 0)
    try:
        stages = json.loads((run / "manifest.json").read_text()).get("stages", {})
    except (OSError, ValueError):
        stages = {}
    for name in DEMO_STAGES:
        ev[name] += stages.get(f"pipeline/{name}", {}).get("state") == "COMPLETE"
    try:
        lines = (run / "journal.jsonl").read_bytes().split(b"\n")[:-1]
    except OSError:
        lines = []
    finished = set()  # (kind, item) finished: a resumed unit is journaled RUNNING again, so count each once
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:  # a line torn by a kill
            continue
        if r.get("state") == "COMPLETE" and r.get("kind") in ("bld-unit", "score"):
            finished.add((r["kind"], r.get("item")))
    for kind, _ in finished:
        ev["bld" if kind == "bld-unit" else "score"] += 1
    for doc, stage, key in (("baseline_parts.json", "baselines", "baselines"), ("heal_parts.json", "heal", "models")):
        try:
            ev[stage] += len(json.loads((run / "stages" / doc).read_text())[key])
        except (OSError, ValueError, KeyError):
            pass
    for latest in (run / "heal").glob("*/*/checkpoints/latest.json"):
        try:
            ev["heal"] += int(json.loads(latest.read_text())["step"])
        except (OSError, ValueError, KeyError):
            pass
    return ev


def _demo_progress(run: Path):
    return lambda: sum(_demo_events(run).values())


def _demo_stage(run: Path):
    """The stage a demo run is in (the first one not complete)."""
    def where() -> str:
        try:
            stages = json.loads((run / "manifest.json").read_text()).get("stages", {})
        except (OSError, ValueError):
            stages = {}
        return next((s for s in DEMO_STAGES if stages.get(f"pipeline/{s}", {}).get("state") != "COMPLETE"), "report")
    return where


def _demo_points(ref: Path, rng, n: int) -> tuple[list[tuple[int, float]], list[str]]:
    """``n`` kill points in ``n`` distinct stages drawn at random (each stage's first event index
    plus a random one of its events, and a random delay within one of its events' mean duration in
    the uninterrupted run ``ref``)."""
    ev = _demo_events(ref)
    secs = {s: json.loads((ref / "stages" / f"{s}.json").read_text())["seconds"] for s in DEMO_STAGES}
    start, first = 0, {}
    for s in DEMO_STAGES:
        first[s] = start
        start += ev[s]
    eligible = [s for s in DEMO_STAGES if s not in ("parent", "tokens", "search", "fuse")]  # each well under 1 s
    chosen = sorted(rng.sample(eligible, n), key=DEMO_STAGES.index)
    pts = []
    for s in chosen:
        k = rng.randrange(ev[s])  # events of the stage saved before the kill
        pts.append((first[s] + k, rng.uniform(0.0, secs[s] / ev[s])))
    return pts, chosen


def _demo_deterministic(run: Path) -> dict:
    """What a demo run computes independently of timings: teacher weights and tokenizer, token data,
    the BLD library (blocks, metrics, scores) and block tensors, the deterministic stage records."""
    from safetensors import safe_open

    def tensors(p: Path) -> str:
        h = hashlib.sha256()
        with safe_open(str(p), framework="pt") as f:
            h.update(json.dumps(f.metadata(), sort_keys=True).encode())
            for k in sorted(f.keys()):
                h.update(k.encode() + f.get_tensor(k).numpy().tobytes())
        return h.hexdigest()

    (teacher,) = [p for p in (run / "teacher").iterdir() if p.is_dir()]
    rec = json.loads((teacher / "teacher.json").read_text())
    out = {
        "teacher_weights": tensors(teacher / "model.safetensors"),
        "tokenizer": (teacher / "tokenizer.json").read_bytes(),
        "teacher_record": {k: rec[k] for k in ("settings", "steps_done", "train_tokens", "train_loss", "val_loss",
                                                "num_params", "data")},
    }
    with np.load(run / "tokens.npz", allow_pickle=False) as z:
        out["tokens"] = {k: z[k].tobytes() for k in z.files}
    lib = json.loads((run / "library.json").read_text())
    out["candidates"] = lib["candidates"]
    out["blocks"] = {str(p.relative_to(run)): tensors(p) for p in sorted((run / "blocks").rglob("*.safetensors"))}
    for s in ("tokens", "bld", "score"):
        out[f"stage_{s}"] = {k: v for k, v in json.loads((run / "stages" / f"{s}.json").read_text()).items()
                             if k not in ("seconds", "load_avg")}  # timings of this run
    return out


@pytest.mark.slow
def test_demo_killed_at_random_points_resumes_to_the_same_results(tmp_path, reliability):
    import random

    # recorded up front: a failure shows as a failed row (see the notes in docs/RELIABILITY.md)
    reliability("faults", f"demo (`puzzlekit demo --preset tiny`, the pipeline runner) SIGKILLed at {KILLS + 1} "
                          "random points (one in the teacher's training, one in each of 5 stages drawn at random "
                          "from BLD, scoring, profiling, child, baselines, healing), re-run: teacher weights, tokens, BLD blocks, "
                          "library metrics and scores equal to an uninterrupted run; timed stages complete, "
                          "documents parse, no half-written file", KILLS + 1)
    text = tmp_path / "text"  # local text (a frozen copy of the docs): nothing downloaded
    shutil.copytree(Path(__file__).resolve().parents[1] / "docs", text, ignore=shutil.ignore_patterns("*.png"))

    def cmd(out: Path) -> list[str]:
        return [python(), "-m", "puzzlekit", "demo", "--preset", "tiny", "--data", str(text), "--out", str(out),
                "--cache", str(tmp_path / "cache"), "--no-progress", "--json"]

    ref, run = tmp_path / "ref", tmp_path / "killed"
    work = run_to_end(cmd(ref), _demo_progress(ref))
    rng = random.Random(int(os.environ.get("PUZZLEKIT_KILL_SEED", "404")))
    points, stages = _demo_points(ref, rng, KILLS)
    # one kill in the parent stage (the teacher saves nothing until done), well before the first event of the
    # uninterrupted run: the same work takes 2x longer or shorter when other jobs share the cores
    lead_in = rng.uniform(0.4, 0.65) * work[2]
    info = kill_and_resume(cmd(run), _demo_progress(run), work, points=points, lead_in_kill=lead_in,
                           where=_demo_stage(run))
    assert len(info["kill_points"]) >= KILLS + 1, (info, stages)
    print("demo kills", stages, info)
    landed = [k[2] for k in info["kill_points"]]
    assert landed[0] == "parent" and info["kill_points"][0][0] == 0, info  # in the teacher's training
    assert len(set(landed)) >= 4, info  # spread over the pipeline
    # deterministic parts: equal to the uninterrupted run
    a, b = _demo_deterministic(ref), _demo_deterministic(run)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k
    # timing-dependent parts: every stage complete, documents parse, nothing half-written
    manifest = json.loads((run / "manifest.json").read_text())
    for s in DEMO_STAGES:
        assert manifest["stages"][f"pipeline/{s}"]["state"] == "COMPLETE", s
    rep = json.loads((run / "report.json").read_text())
    assert [x["name"] for x in rep["baselines"]] == ["uniform-ffn", "drop-attention", "greedy", "random"]
    assert rep["child"]["measured_speedup"] > 0 and rep["child"]["kl_to_teacher"] >= 0
    ref_rep = json.loads((ref / "report.json").read_text())
    assert rep["teacher"]["train_val_loss"] == a["teacher_record"]["val_loss"]
    assert rep["teacher"]["val_loss"] == ref_rep["teacher"]["val_loss"]  # the teacher on the held-out rows
    assert set(json.loads((run / "stages" / "heal_parts.json").read_text())["models"]) == \
        {"child", "uniform-ffn", "drop-attention", "greedy", "random"}
    for name in ("pareto", "architecture", "speed"):
        assert (run / rep["plots"][name]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| **Puzzle child** |" in (run / "report.md").read_text()
    counts = check_no_half_files(run)
    assert counts["safetensors"] >= 1 and counts["json"] >= 1
    assert not [p for p in run.rglob(".*")], "hidden temporary files left behind"


# ---- journal ---------------------------------------------------------------------------------

def test_torn_journal_line_does_not_swallow_the_next_record(tmp_path, reliability):
    from puzzlekit.rundir import Journal, State

    j = Journal(tmp_path / "journal.jsonl")
    j.set_state("unit", "a", State.COMPLETE)
    with open(j.path, "a") as f:  # a kill in the middle of an append
        f.write('{"item": "b", "kind": "unit", "sta')
    j.set_state("unit", "c", State.COMPLETE)
    assert set(j.states("unit")) == {"a", "c"}
    reliability("faults", "journal line torn by a kill, then appended to: the next record is kept", 1)


def test_temp_file_of_a_writer_killed_mid_write_is_removed_by_the_next_write(tmp_path, reliability):
    """A SIGKILL inside ``atomic_path`` (e.g. BLD killed while saving a unit's safetensors) leaves
    its temporary file; the resumed run's write of the same file removes it, and leaves a live
    writer's temporary alone."""
    import signal
    import sys

    from puzzlekit.io import atomic_path, atomic_write_json

    target = tmp_path / "unit.safetensors"
    code = ("import sys, time\nfrom puzzlekit.io import atomic_path\n"
            "with atomic_path(sys.argv[1], suffix='.safetensors') as t:\n"
            "    t.write_bytes(b'half'); print('in', flush=True); time.sleep(60)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == b"in"
    procs[0].send_signal(signal.SIGKILL)  # killed mid-write
    procs[0].wait()
    temps = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))  # noqa: E731
    assert len(temps()) == 2
    with atomic_path(target, suffix=".safetensors") as t:  # the resumed run writes the same file
        t.write_bytes(b"whole")
    left = temps()
    assert len(left) == 1 and f"-{procs[1].pid}." in left[0], left  # only the live writer's
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    atomic_write_json(tmp_path / "unit.safetensors", {"x": 1})
    assert temps() == [] and (tmp_path / "unit.safetensors").read_text().startswith("{")
    reliability("faults", "writer SIGKILLed inside an atomic write: its temporary file is removed by the next write "
                          "of that file (a live writer's is kept)", 2)


# ---- full disk and read-only run directory during BLD / scoring ------------------------------

def _bld_in_process(parent, run: Path):
    from puzzlekit.bld import BLDConfig, default_search_space, run_bld
    from puzzlekit.data import TokenData

    spec = parent.config.parent_spec
    cfg = BLDConfig(tokens=16 * 4 * 6, batch_size=4, lr=2e-3, checkpoint_every=2)
    return run_bld(parent, TokenData.load(run / "tokens.npz"), run,
                   default_search_space(spec, ffn_fractions=(0.5,)), cfg, progress=False)


@pytest.fixture
def small_disk(tmpfs_factory):
    return tmpfs_factory("96k")


def test_bld_on_a_full_disk_fails_clearly_and_resumes_after_space_is_freed(parent_dir, small_disk, tmp_path,
                                                                           reliability):
    from puzzlekit.model import load_parent
    from puzzlekit.rundir import Journal

    parent = load_parent(parent_dir)
    ref = _new_run(tmp_path / "ref")
    _bld_in_process(parent, ref)
    run = small_disk / "run"
    _new_run(run)
    with pytest.raises(PuzzlekitError, match=r"(space|disk)") as ei:
        _bld_in_process(parent, run)
    assert str(run) in str(ei.value) or "run" in str(ei.value)
    done_before = {k for k, r in Journal(run / "journal.jsonl").states("bld_unit").items()
                   if r.get("state") == "COMPLETE"} if (run / "journal.jsonl").exists() else set()
    files_before = {p.name: p.read_bytes() for p in (run / "blocks").rglob("*.safetensors")} \
        if (run / "blocks").exists() else {}
    assert sh("mount", "-o", "remount,size=8m", str(small_disk))
    for name, data in files_before.items():  # nothing finished was lost or rewritten
        assert next((run / "blocks").rglob(name)).read_bytes() == data
    _bld_in_process(parent, run)
    assert _digest(run) == _digest(ref)
    check_no_half_files(run)
    reliability("faults", f"full disk during BLD (96 KiB tmpfs): {type(ei.value).__name__} naming the problem; after "
                          f"freeing space the same call resumes ({len(done_before)} finished units kept) to the "
                          "uninterrupted result", 1)


@pytest.fixture
def immutable(tmp_path):
    made = []

    def make(p: Path) -> bool:
        ok = sh("chattr", "+i", str(p))
        if ok:
            made.append(p)
        return ok

    yield make
    for p in made:
        sh("chattr", "-i", str(p))


def test_scoring_in_a_read_only_run_directory_fails_clearly_and_keeps_the_library(parent_dir, tmp_path, immutable,
                                                                                  reliability):
    from puzzlekit.cli import main

    run = _new_run(tmp_path / "run")
    from puzzlekit.model import load_parent

    _bld_in_process(load_parent(parent_dir), run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if not (immutable(run) and immutable(run / "journal.jsonl")):
        pytest.skip("chattr +i is not supported here")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["score", "--run", str(run), "--parent", str(parent_dir), "--eval-sequences", "4", "--no-progress"])
    msg = err.getvalue()
    assert rc == 2, msg
    assert msg.count("\n") == 1 and "Traceback" not in msg and str(run) in msg, msg
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing lost or half-written
    sh("chattr", "-i", str(run / "journal.jsonl"))
    sh("chattr", "-i", str(run))
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["score", "--run", str(run), "--parent", str(parent_dir), "--eval-sequences", "4",
                     "--no-progress"]) == 0
    assert "kl_div" in pk.BlockLibrary.load(run / "library.json").metric_names
    reliability("faults", "read-only run directory during scoring (chattr +i): exit 2, one line naming the folder, "
                          "library and journal untouched; scores once writable", 1)


def test_bld_in_a_read_only_run_directory_fails_clearly(parent_dir, tmp_path, immutable, reliability):
    from puzzlekit.cli import main

    run = _new_run(tmp_path / "run")
    if not immutable(run):
        pytest.skip("chattr +i is not supported here")
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(_bld_cmd(parent_dir, run)[3:])
    msg = err.getvalue()
    assert rc == 2 and msg.count("\n") == 1 and str(run) in msg, msg
    assert sorted(p.name for p in run.iterdir()) == ["tokens.npz"]
    reliability("faults", "read-only run directory for BLD (chattr +i): exit 2, one line naming the folder", 1)
