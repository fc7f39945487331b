"""The GKD loop under DDP: 2 CPU processes with gloo give the same child as one process with the
same global batch, and a 2-process run resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _distill_helpers import pruned_child, tiny_parent, token_rows  # noqa: E402
from _launch import torchrun  # noqa: E402

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("_distill_ddp_worker.py")


def _torchrun(out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [*torchrun(2), str(WORKER), str(out), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


def test_ddp_two_processes_resume_and_match_one_process(tmp_path):
    from safetensors.torch import load_file

    from puzzlekit.distill import DistillConfig, distill

    r1 = _torchrun(tmp_path, "3")  # a session killed after step 3 ...
    assert r1["world"] == 2 and r1["type"] == "MULTI_CPU" and (r1["start"], r1["end"]) == (0, 3)
    r = _torchrun(tmp_path)  # ... resumed from its checkpoint
    assert (r["start"], r["end"]) == (3, 6) and [e["step"] for e in r["evals"]] == [0, 3, 6]
    assert r["evals"][-1]["kl"] < r["evals"][0]["kl"]
    torch.set_num_threads(1)
    parent = tiny_parent()
    child = pruned_child(parent, keep=8, reinit_ffn=True)
    # one process, batch 8 = 2 processes x batch 4: the same rows, the same averaged gradient
    distill(child, parent, token_rows(32, 12, seed=4),
            DistillConfig(max_steps=6, batch_size=8, learning_rate=2e-3, weight_decay=0.0, mixed_precision="no",
                          log_every=0))
    ddp = load_file(str(tmp_path / "ddp.safetensors"))
    for k, v in child.state_dict().items():
        assert torch.allclose(v, ddp[k], atol=2e-5), k
