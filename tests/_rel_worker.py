"""Subprocess entries for the kill-and-resume reliability tests (not a test module).

``python tests/_rel_worker.py gkd OUT``: a tiny GKD run (pruned Llama child toward its parent), a
checkpoint every step, then the final child written to ``OUT/final.safetensors`` (atomically).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def gkd(out: str) -> None:
    from _distill_helpers import pruned_child, tiny_parent, token_rows
    from safetensors.torch import save_file

    from puzzlekit.distill import DistillConfig, distill
    from puzzlekit.io import atomic_path

    parent = tiny_parent()
    child = pruned_child(parent, reinit_ffn=True)
    train = token_rows(64, 12, seed=5)
    cfg = DistillConfig(max_steps=24, batch_size=4, learning_rate=1e-3, warmup_steps=2, output_dir=out,
                        save_every=1, eval_every=0, keep_checkpoints=2)
    distill(child, parent, train, cfg, eval_tokens=token_rows(8, 12, seed=6))
    with atomic_path(Path(out) / "final.safetensors", suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in child.state_dict().items()}, str(tmp))


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"gkd": gkd}[sys.argv[1]](*sys.argv[2:])
