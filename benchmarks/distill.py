"""GKD memory and speed: one ordinary process against N FSDP2 processes (torchrun), side by side.

    python benchmarks/distill.py                       # 1 process vs 2 FSDP processes (CPU: gloo)
    python benchmarks/distill.py --layers 16 --json    # deeper models; JSON of every process's figures
    python benchmarks/distill.py --fsdp-one            # + FSDP with one process (its overhead alone)
    python benchmarks/distill.py --processes 1 --mixed-precision auto   # one GPU: plain vs FSDP, bf16

Models (random, seeded): a Llama parent (hidden 512, 8 query / 2 KV heads, FFN 1536, vocab 4096,
``--layers`` layers) saved as a safetensors folder, and its child with every FFN cut to half, saved
as a Nemotron-NAS folder.  GKD (cosine + KL), global batch ``--batch`` rows of ``--seq`` tokens,
``--steps`` optimiser steps after one warm-up step.

* 1 process: ``distill`` as it runs without FSDP; both models loaded whole (``load_parent``).
* N processes: ``distill(fsdp=True)``, both models built with ``load_sharded`` (each process reads
  its slices of the safetensors), each process ``batch / N`` rows.

Measured per process:

* peak parameter memory: the bytes of parameter storage allocated -- child and parent, sharded
  shards plus the layers FSDP has gathered at that moment -- sampled before and after every
  module's forward and before its backward (a gradient hook on its output), i.e. whenever FSDP's
  gathered set can change; the storages' own sizes are read (``untyped_storage().nbytes()``; a
  released gathered layer has size 0);
* gradients and AdamW state: the bytes of their storages after the optimiser step;
* peak RSS (``ru_maxrss``), and how far it rose above the RSS before the models were built (the
  interpreter and its libraries, ~460 MiB); allocations of 64 KiB and more are mmap'ed and returned
  when freed (``MALLOC_MMAP_THRESHOLD_``), so RSS follows live memory instead of glibc's cache; on
  CUDA also ``torch.cuda.max_memory_allocated``;
* step time: the median wall time between optimiser steps (after the warm-up step).

The ratio column is N processes / 1 process, measured in the same run.  ``--rounds R`` repeats the
runs, alternating their order, and prints each round's step-time ratio; the table shows the median
step times (the memory figures are the same every round).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()


# ---- measuring one process -------------------------------------------------------------------------

class ParamProbe:
    """Peak bytes of parameter storage of ``models`` (see the module docstring)."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        from torch.distributed.tensor import DTensor

        self.models, self.peak = models, 0
        # sharded parameters' own storage: allocated for the whole run (hidden while a unit is gathered)
        self.sharded = sum(p.to_local().untyped_storage().nbytes() for m in models for p in m.parameters()
                           if isinstance(p, DTensor))
        for m in models:
            for mod in m.modules():
                if next(mod.parameters(recurse=False), None) is not None:
                    mod.register_forward_pre_hook(lambda *_: self.sample())
                    mod.register_forward_hook(self._after)

    def _after(self, mod: torch.nn.Module, args: object, out: object) -> None:
        self.sample()
        t = out if isinstance(out, torch.Tensor) else None
        if t is not None and t.requires_grad:
            t.register_hook(lambda g: self.sample())

    def current(self) -> int:
        from torch.distributed.tensor import DTensor

        seen, gathered = set(), 0
        for m in self.models:
            for p in m.parameters():
                if isinstance(p, DTensor):
                    continue
                st = p.untyped_storage()
                if st.data_ptr() not in seen and st.nbytes():
                    seen.add(st.data_ptr())
                    gathered += st.nbytes()
        return self.sharded + gathered

    def sample(self) -> None:
        self.peak = max(self.peak, self.current())


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    from torch.distributed.tensor import DTensor

    seen, n = set(), 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            n += st.nbytes()
    return n


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(a: argparse.Namespace) -> None:
    """One measured process (``--worker plain|fsdp``)."""
    torch.set_num_threads(a.threads)
    for mod in ("accelerate", "torch.distributed.fsdp", "torch.distributed.checkpoint.state_dict"):
        importlib.import_module(mod)  # both modes import them: the baseline RSS includes them
    from puzzlekit.distill import DistillConfig, distill, load_sharded
    from puzzlekit.model import load_parent

    rss0 = _rss_now()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    fsdp = a.worker == "fsdp"
    if fsdp:
        parent = load_sharded(a.dir / "parent", frozen=True)
        child = load_sharded(a.dir / "child")
    else:
        parent, child = load_parent(a.dir / "parent"), load_parent(a.dir / "child").train()
    rss_models = _rss_now()
    probe = ParamProbe([child, parent])
    times: list[float] = []
    grads_opt: dict[str, int] = {}

    def after_step(opt: torch.optim.Optimizer, *_: object) -> None:
        times.append(time.perf_counter())
        probe.sample()
        grads_opt["grads"] = _storage_bytes([p.grad for g in opt.param_groups for p in g["params"]
                                              if p.grad is not None])
        grads_opt["optimizer"] = _storage_bytes([v for s in opt.state.values() for v in s.values()
                                                  if isinstance(v, torch.Tensor) and v.dim() > 0])

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(after_step)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, parent.config.vocab_size, (a.batch * (a.steps + 1), a.seq), generator=g)
    cfg = DistillConfig(max_steps=a.steps + 1, batch_size=a.batch // world, learning_rate=1e-4,
                        mixed_precision=a.mixed_precision, log_every=0, fsdp=fsdp)
    distill(child, parent, rows, cfg)
    rec = {"rank": rank, "world": world, "mode": a.worker, "peak_param_bytes": probe.peak,
           "grad_bytes": grads_opt["grads"], "optimizer_bytes": grads_opt["optimizer"],
           "rss_before_models": rss0, "rss_after_models": rss_models, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "step_s": statistics.median(b - a_ for a_, b in zip(times[:-1], times[1:])), "steps_timed": len(times) - 1}
    if torch.cuda.is_available():
        rec["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    rec["rss_growth"] = rec["peak_rss"] - rss0
    (a.dir / f"{a.worker}_{world}_{rank}.json").write_text(json.dumps(rec))
    if fsdp:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


# ---- orchestrating ---------------------------------------------------------------------------------

def make_models(d: Path, layers: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from puzzlekit.model import load_parent, save_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    parent = LlamaForCausalLM(cfg)
    parent.save_pretrained(d / "parent")
    half = LlamaForCausalLM(LlamaConfig(**{**cfg.to_dict(), "intermediate_size": 768}))
    sd = {k: (v[:768] if k.endswith(("gate_proj.weight", "up_proj.weight")) else
              v[:, :768] if k.endswith("down_proj.weight") else v) for k, v in parent.state_dict().items()}
    half.load_state_dict(sd)
    save_model(load_parent(half), d / "child")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"parent_params": n(parent), "child_params": n(half)}


def run(mode: str, nproc: int, a: argparse.Namespace) -> list[dict]:
    args = [str(HERE), "--worker", mode, "--dir", str(a.dir), "--layers", str(a.layers), "--batch", str(a.batch),
            "--seq", str(a.seq), "--steps", str(a.steps), "--threads", str(a.threads), "--mixed-precision",
            a.mixed_precision]
    # --standalone: torchrun's rendezvous binds a free port itself
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
              if mode == "fsdp" else [sys.executable])
    # allocations >= 64 KiB are mmap'ed and returned to the system when freed, so RSS follows live memory
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MALLOC_MMAP_THRESHOLD_": "65536",
           "MALLOC_TRIM_THRESHOLD_": "0"}
    p = subprocess.run([*launch, *args], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{mode} x{nproc} failed:\n{p.stderr[-4000:]}")
    return [json.loads((a.dir / f"{mode}_{nproc}_{r}.json").read_text()) for r in range(nproc)]


def _median_step(rounds: list) -> dict:
    """The first round's figures with the median over rounds of the step time."""
    out = dict(rounds[0])
    out["step_s"] = statistics.median(r["step_s"] for r in rounds)
    return out


def table(one: dict, many: list[dict], extra: list[dict] | None) -> str:
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    n = many[0]["world"]
    worst = {k: max(r[k] for r in many) for k in many[0] if isinstance(many[0][k], (int, float))}
    rows = [("peak parameter memory", "peak_param_bytes", mib), ("gradients", "grad_bytes", mib),
            ("AdamW state", "optimizer_bytes", mib), ("peak RSS", "peak_rss", mib),
            ("peak RSS above the RSS before the models", "rss_growth", mib),
            ("step time", "step_s", lambda s: f"{s:.3f} s")]
    if "cuda_max_allocated" in one:
        rows.append(("CUDA max allocated", "cuda_max_allocated", mib))
    cols = ["1 process", f"FSDP {n} processes (max over ranks)", f"ratio {n}/1"]
    if extra:
        cols.insert(1, "FSDP 1 process")
    out = ["| per process | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, k, f in rows:
        cells = [f(one[k])] + ([f(extra[0][k])] if extra else []) + [f(worst[k]), f"{worst[k] / one[k]:.3f}"]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8, help="global batch (rows per step)")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed optimiser steps (after one warm-up step)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--fsdp-one", action="store_true", help="also FSDP with one process")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the runs, alternating their order")
    ap.add_argument("--mixed-precision", default="no", choices=("no", "auto", "bf16"),
                    help="DistillConfig.mixed_precision (auto: bf16 on a bf16-capable GPU)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", choices=("plain", "fsdp"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    if a.batch % a.processes:
        raise SystemExit(f"--batch {a.batch} must be a multiple of --processes {a.processes}")
    if torch.cuda.is_available() and a.processes > torch.cuda.device_count():
        raise SystemExit(f"--processes {a.processes}: one GPU per process, and {torch.cuda.device_count()} are visible")
    with tempfile.TemporaryDirectory(prefix="bench_distill_") as d:
        a.dir = Path(d)
        sizes = make_models(a.dir, a.layers)
        got: dict[str, list] = {"one": [], "extra": [], "many": []}
        for r in range(a.rounds):
            jobs = [("one", "plain", 1), ("many", "fsdp", a.processes)]
            if a.fsdp_one and a.processes > 1:
                jobs.insert(1, ("extra", "fsdp", 1))
            for key, mode, n in (jobs if r % 2 == 0 else jobs[::-1]):
                got[key].append(run(mode, n, a))
        one = _median_step([g[0] for g in got["one"]])
        extra = [_median_step([g[0] for g in got["extra"]])] if got["extra"] else None
        many = [_median_step([g[i] for g in got["many"]]) for i in range(a.processes)]
        per_round = [max(r["step_s"] for r in m) / o[0]["step_s"] for o, m in zip(got["one"], got["many"])]
    print(f"parent {sizes['parent_params'] / 1e6:.1f}M parameters, child {sizes['child_params'] / 1e6:.1f}M "
          f"(fp32); {a.layers} layers; global batch {a.batch} x {a.seq} tokens; median of {a.steps} steps; "
          f"{a.threads} thread(s) per process; mixed precision {a.mixed_precision}; "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(table(one, many, extra))
    print(f"step time ratio {a.processes}/1 per round: " + ", ".join(f"{x:.3f}" for x in per_round))
    if a.json:
        print(json.dumps({"sizes": sizes, "one": one, "fsdp_one": extra, "fsdp": many, "rounds": got,
                          "step_ratio_per_round": per_round}, indent=1))


if __name__ == "__main__":
    main()
