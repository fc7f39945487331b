"""Worker for tests/test_distill_fsdp.py: GKD under FSDP2, as N processes (torchrun, gloo on CPU) or one.

    python -m torch.distributed.run --nproc_per_node 2 tests/_distill_fsdp_worker.py '{"out": "...", ...}'
    python tests/_distill_fsdp_worker.py '{"out": "..."}'          # one process (a one-rank group)

Options (JSON): out, steps (6), batch (rows per process; default 8 // processes), stop_after, save_every
(3), ac (activation checkpointing), keep (2), parent_dir (load the parent from this folder with
``load_sharded``: each process reads only its shards), save_dir (write the gathered child there as a
Nemotron-NAS folder), mp (mixed_precision, default "no"), cpt (continued pre-training: LM loss, no
parent), deterministic (torch deterministic algorithms,
for bit-identical CUDA runs).  Writes ``rank{r}.json`` (what this process holds of child and parent, the run's
logs) and, on rank 0, the child gathered with ``full_model`` to ``weights_step{end}.safetensors``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _distill_helpers import pruned_child, tiny_parent, token_rows  # noqa: E402

from puzzlekit.distill import DistillConfig, GKDWeights, distill, full_model, load_sharded  # noqa: E402
from puzzlekit.distill.fsdp import local_parameter_count  # noqa: E402
from puzzlekit.io import atomic_path  # noqa: E402


def models() -> tuple:
    """Parent and child as PuzzleForCausalLM (the child: every FFN cut to 8 channels, re-drawn)."""
    from puzzlekit.model import load_parent

    parent = tiny_parent()
    return load_parent(parent), load_parent(pruned_child(parent, keep=8, reinit_ffn=True)).train()


def train_rows() -> torch.Tensor:
    return token_rows(32, 12, seed=4)


def main() -> None:
    torch.set_num_threads(1)
    o = json.loads(sys.argv[1])
    if o.get("deterministic"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    out = Path(o["out"])
    out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    parent, child = models()
    if o.get("parent_dir"):
        parent = load_sharded(o["parent_dir"], frozen=True)
    if o.get("cpt"):
        parent = None
    cfg = DistillConfig(max_steps=o.get("steps", 6), batch_size=o.get("batch", 8 // world), learning_rate=2e-3,
                        weight_decay=0.0, warmup_steps=o.get("warmup", 0), eval_every=o.get("eval_every", 3),
                        mixed_precision=o.get("mp", "no"), log_every=0, output_dir=str(out / "run"),
                        save_every=o.get("save_every", 3), keep_checkpoints=o.get("keep", 2), fsdp=True,
                        activation_checkpointing=bool(o.get("ac", False)),
                        **({"weights": GKDWeights(cosine=0, kl=0, lm=1)} if o.get("cpt") else {}))
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    # deterministic: the math attention kernel (the fused kernels' backward may accumulate atomically)
    with sdpa_kernel(SDPBackend.MATH) if o.get("deterministic") else contextlib.nullcontext():
        res = distill(child, parent, train_rows(), cfg, eval_tokens=token_rows(6, 12, seed=5),
                      stop_after=o.get("stop_after"))
    import torch.distributed as dist

    rank = dist.get_rank()
    lc, tc = local_parameter_count(child)
    lp, tp = local_parameter_count(parent) if parent is not None else (0, 0)
    seen = []  # the dtype a layer computes in (FSDP's MixedPrecisionPolicy casts the gathered weights)
    h = child.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
    with torch.no_grad():
        child(input_ids=train_rows()[:2].to(next(child.parameters()).device), use_cache=False)
    h.remove()
    full = full_model(child)
    if rank == 0:
        from safetensors.torch import save_file

        with atomic_path(out / f"weights_step{res.end_step}.safetensors", suffix=".safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp))
        if o.get("save_dir"):
            from puzzlekit.model import save_model

            save_model(full, o["save_dir"])
    info = {"world": dist.get_world_size(), "local_child": lc, "total_child": tc, "local_parent": lp,
            "total_parent": tp, "start": res.start_step, "end": res.end_step, "history": res.history,
            "evals": res.evals, "sharded_type": type(child).__name__, "compute_dtype": seen[0],
            "device": str(next(child.parameters()).device)}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    dist.barrier()
    dist.destroy_process_group()  # gloo can abort at interpreter shutdown otherwise


if __name__ == "__main__":
    main()
    # the work is done and written; skip the interpreter's teardown, where gloo's threads can still abort the
    # process ("terminate called without an active exception": rank 1 of the CPT test aborted so once in CI)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
