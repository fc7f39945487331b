"""Worker for tests/test_distill_distributed.py: run under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _distill_helpers import pruned_child, tiny_parent, token_rows  # noqa: E402

from puzzlekit.distill import DistillConfig, distill  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    parent = tiny_parent()
    child = pruned_child(parent, keep=8, reinit_ffn=True)
    cfg = DistillConfig(max_steps=6, batch_size=4, learning_rate=2e-3, weight_decay=0.0, eval_every=3,
                        mixed_precision="no", log_every=0, output_dir=str(out / "run"), save_every=3)
    res = distill(child, parent, token_rows(32, 12, seed=4), cfg, eval_tokens=token_rows(6, 12, seed=5),
                  accelerator=acc, stop_after=int(sys.argv[2]) if len(sys.argv) > 2 else None)
    if acc.is_main_process:
        from safetensors.torch import save_file

        model = acc.unwrap_model(child)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "ddp.safetensors"))
        (out / "result.json").write_text(json.dumps({"world": acc.num_processes, "type": acc.distributed_type.name,
                                                    "evals": res.evals, "start": res.start_step,
                                                    "end": res.end_step}))
    # tear the gloo group down before exit: left to the interpreter's shutdown, its threads can be
    # destroyed while joinable ("terminate called without an active exception", SIGABRT)
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
