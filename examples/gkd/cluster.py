"""GKD (then optionally continued pre-training) of a child folder against a parent folder under FSDP2,
for a cluster: launch one process per GPU with torchrun (see README.md beside this file).

    torchrun --standalone --nproc_per_node 8 examples/gkd/cluster.py \\
        --parent /models/Llama-3.3-70B-Instruct --child runs/super/child --tokens runs/super/tokens.npz \\
        --out runs/super/heal --steps 2000 --batch-size 1 --grad-accum 8 --activation-checkpointing

Reads top to bottom: join the process group → load the parent (frozen, bf16) and the child (fp32
master weights) straight into their shards (each process reads only its slices of the safetensors)
→ GKD (cosine + KL), sharded checkpoints every ``--save-every`` steps (re-run the same command after a
crash: it resumes, with any number of processes as long as the global batch is the same) → optional
continued pre-training (LM loss) → the child gathered once and written as a Nemotron-NAS folder
(``OUT/child``) with ``metrics.json``.  ``--out`` must be on a filesystem every node sees.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch


def main(a: argparse.Namespace) -> dict:
    import torch.distributed as dist

    from puzzlekit.data import TokenData
    from puzzlekit.distill import DistillConfig, GKDWeights, distill, evaluate_kl, full_model, load_sharded
    from puzzlekit.distill.fsdp import ensure_process_group, local_parameter_count
    from puzzlekit.io import atomic_write_json
    from puzzlekit.model import save_model

    t0 = time.perf_counter()
    ensure_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(a.out)
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()

    # --- models, straight into their shards; the parent frozen (bf16 on GPUs), the child trained in fp32
    ac = a.activation_checkpointing
    parent = load_sharded(a.parent, frozen=True, dtype=torch.bfloat16 if bf16 else None)
    child = load_sharded(a.child, activation_checkpointing=ac)
    tokens = TokenData.load(a.tokens)
    train, held = tokens.torch("train"), tokens.torch("heldout")[:a.eval_rows]
    local, total = local_parameter_count(child)
    logging.info("rank %d/%d holds %d of the child's %d parameters", rank, world, local, total)

    # --- GKD: cosine of matched hidden states + KL(parent || child), sharded checkpoints
    cfg = DistillConfig(max_steps=a.steps, batch_size=a.batch_size, grad_accum_steps=a.grad_accum,
                        learning_rate=a.lr, warmup_steps=a.warmup, weights=GKDWeights(1.0, 1.0, 0.0),
                        eval_every=a.eval_every, eval_batch_size=a.batch_size, save_every=a.save_every,
                        output_dir=str(out / "gkd"), seed=a.seed, fsdp=True, activation_checkpointing=ac,
                        log_every=a.log_every)
    gkd = distill(child, parent, train, cfg, eval_tokens=held if len(held) else None)

    # --- continued pre-training: LM loss only, no parent, the same loop
    cpt = None
    if a.cpt_steps > 0:
        cpt_cfg = dataclasses.replace(cfg, max_steps=a.cpt_steps, learning_rate=a.cpt_lr, eval_every=0,
                                      weights=GKDWeights(cosine=0, kl=0, lm=1), output_dir=str(out / "cpt"),
                                      seed=a.seed + 1)
        cpt = distill(child, None, train, cpt_cfg)
    after = evaluate_kl(child, parent, held, batch_size=a.batch_size) if len(held) else None

    # --- the child gathered once, written as an ordinary Nemotron-NAS folder
    full = full_model(child)
    metrics = {"processes": world, "gkd_evals": gkd.evals, "gkd_last": gkd.history[-1] if gkd.history else None,
               "cpt_last": cpt.history[-1] if cpt and cpt.history else None, "after": after,
               "wall_s": time.perf_counter() - t0}
    if rank == 0:
        if not (out / "child").exists():
            save_model(full, out / "child", tokenizer_from=a.child)
        atomic_write_json(out / "metrics.json", metrics)
    dist.barrier()
    return metrics


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent", required=True, help="parent model folder (Llama / Qwen2 / Mistral / Nemotron-NAS)")
    ap.add_argument("--child", required=True, help="child model folder (Nemotron-NAS, e.g. from puzzlekit assemble)")
    ap.add_argument("--tokens", required=True, help="token rows (.npz written by puzzlekit's TokenData.save)")
    ap.add_argument("--out", required=True, help="run folder on a filesystem every node sees")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=1, help="rows per GPU and micro-step")
    ap.add_argument("--grad-accum", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-rows", type=int, default=256)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--cpt-steps", type=int, default=0)
    ap.add_argument("--cpt-lr", type=float, default=3e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--activation-checkpointing", action="store_true")
    return ap.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    m = main(parse())
    print(json.dumps({k: m[k] for k in ("processes", "after", "wall_s")}))
