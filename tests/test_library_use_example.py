"""examples/library_use: the external trainer's script (issue 21), run end to end on a tiny parent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "library_use" / "train_and_compress.py"


def test_the_library_use_script_runs_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import puzzlekit.solvers as solvers

    monkeypatch.setattr(solvers, "_REGISTRY", dict(solvers._REGISTRY))  # the script registers a backend
    monkeypatch.setenv("PUZZLEKIT_PROGRESS", "lines")
    spec = importlib.util.spec_from_file_location("library_use_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "out"
    s = mod.main(["--out", str(out), "--parent-steps", "20", "--seq-len", "32", "--bld-tokens", "256",
                  "--gkd-steps", "2"])
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert s["child_runtime_ms"] <= s["budget_ms"] * (1 + 1e-9) and s["predicted_speedup"] >= 1.5 * (1 - 1e-9)
    assert s["non_block_runtime_ms"] > 0 and s["child_params"] < s["parent_params"]
    assert len(s["top3"]) == 3 and s["top3"] == sorted(s["top3"]) and s["pareto_points"] >= 3
    assert s["gkd_steps"] == 2 and s["kl_before_gkd"] > 0
    assert s["reloaded_type"] == "PuzzleForCausalLM" and s["reloaded_logits_equal"]
    assert s["custom_backend"] == {"solver": "brute-force", "objective": s["kl_sum"], "same_as_default": True}
    for f in ("parent/config.json", "run/library.json", "child/config.json", "gkd/checkpoints/latest.json"):
        assert (out / f).exists(), f
