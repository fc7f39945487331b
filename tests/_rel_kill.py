"""Helpers for the kill-and-resume reliability tests (not a test module).

``kill_and_resume`` starts a command, SIGKILLs it at random points (at least
``kills`` times, each at a random time inside the window where the stage is
working), then runs it to completion; ``check_no_half_files`` checks what is
left on disk: no temporary files, every JSON document parses, every
safetensors file loads, every ``.npz`` loads without pickle.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def env() -> dict[str, str]:
    """The child processes' environment: one thread each, tests/ importable."""
    return dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")


def journal_lines(path: Path):
    """Progress of a journaled stage: the number of records in its journal."""
    def progress() -> int:
        try:
            return path.read_bytes().count(b"\n")
        except OSError:
            return 0
    return progress


def checkpoint_step(latest: Path):
    """Progress of a checkpointed training loop: the step its ``latest.json`` names."""
    def progress() -> int:
        try:
            return int(json.loads(latest.read_text())["step"])
        except (OSError, ValueError, KeyError):
            return 0
    return progress


def run_to_end(cmd: list[str], progress, timeout: float = 600) -> tuple[float, int, float]:
    """Run ``cmd`` uninterrupted; returns (seconds it worked after its first progress event,
    number of progress events, seconds from launch to its first progress event).  Raises with
    stderr on failure."""
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    t_first = None
    while p.poll() is None and time.monotonic() - t0 < timeout:
        if t_first is None and progress() > 0:
            t_first = time.monotonic()
        time.sleep(0.01)
    _, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n{err.decode()[-3000:]}")
    t_end = time.monotonic()
    return t_end - (t_first or t0), progress(), (t_first or t_end) - t0


def random_points(work: tuple, kills: int, seed: int) -> list[tuple[int, float]]:
    """``kills`` kill points ``(event index, delay)``: an index uniform in the first 60 % of the
    uninterrupted run's events, plus a random delay of up to one event's mean duration."""
    seconds, events = work[0], work[1]
    rng = random.Random(seed)
    per_event = seconds / max(1, events)
    return sorted((rng.randrange(0, max(1, int(0.6 * events))), rng.uniform(0.0, per_event)) for _ in range(kills))


def kill_and_resume(cmd: list[str], progress, work: tuple, *, kills: int = 5, seed: int = 0,
                    timeout: float = 600, points: list[tuple[int, float]] | None = None,
                    lead_in_kill: float | None = None, where=None) -> dict:
    """SIGKILL ``cmd`` at ``kills`` random points of its work, then let it finish.

    ``progress``: a callable counting the stage's durable progress events (journal
    records, checkpoint step); ``work``: what :func:`run_to_end` returned for an
    uninterrupted run.  A kill point ``(at, delay)`` (default :func:`random_points`) is
    tied to saved progress: the run is killed ``delay`` seconds after the progress count
    reaches ``at`` *and* this run has saved at least one new event itself (so a kill never
    lands in the start-up of a run whose point an earlier run already passed: each kill
    interrupts real work after a resume).  ``lead_in_kill``: first, one more run killed
    that many seconds after launch, before its first event (for a stage that saves nothing
    for a while, e.g. the demo's teacher).  Returns the kill points as
    ``(progress at the kill, delay)`` and the number of runs.
    """
    if points is None:
        points = random_points(work, kills, seed)
    plan: list[tuple[int | None, float]] = ([(None, lead_in_kill)] if lead_in_kill is not None else []) + list(points)
    done: list[tuple[int, float, object]] = []
    attempts = 0
    for at, extra in plan:
        attempts += 1
        p0 = progress()
        p = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        if at is not None:
            goal = max(at, p0 + 1)
            while progress() < goal and p.poll() is None and time.monotonic() - t0 < timeout:
                time.sleep(0.002)
        deadline = time.monotonic() + extra
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if p.poll() is not None:  # finished before the kill: nothing left to kill
            err = p.stderr.read().decode()
            p.stderr.close()
            if p.returncode != 0:
                raise AssertionError(f"{cmd} exited {p.returncode} after a kill:\n{err[-3000:]}")
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stderr.close()
        done.append((progress(), round(extra, 3), where() if where is not None else None))
    p = subprocess.run(cmd, env=env(), capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{cmd} failed after {len(done)} kills:\n{p.stderr.decode()[-3000:]}")
    return {"kill_points": done, "attempts": attempts}


def check_no_half_files(root: Path) -> dict[str, int]:
    """Assert that nothing under ``root`` is half-written; returns counts of what was checked."""
    from safetensors import safe_open

    counts = {"json": 0, "jsonl": 0, "safetensors": 0, "npz": 0, "torn_journal_lines": 0}
    tmp = [p for p in root.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".tmp." in p.name]
    assert not tmp, f"temporary files left behind: {tmp}"
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
            counts["json"] += 1
        elif p.suffix == ".jsonl":
            lines = p.read_text().split("\n")
            assert lines[-1] == "", f"{p}: the journal does not end with a newline"
            for line in lines[:-1]:
                try:
                    json.loads(line)
                except json.JSONDecodeError:  # a record torn by a kill: skipped on replay, by design
                    counts["torn_journal_lines"] += 1
            counts["jsonl"] += 1
        elif p.suffix == ".safetensors":
            with safe_open(str(p), framework="pt") as f:
                for k in f.keys():
                    f.get_tensor(k)
            counts["safetensors"] += 1
        elif p.suffix == ".npz":
            import numpy as np

            with np.load(p, allow_pickle=False) as z:
                for k in z.files:
                    z[k]
            counts["npz"] += 1
    return counts


def python() -> str:
    return sys.executable
