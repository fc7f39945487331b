"""Scoring benchmark: replace-1-block with prefix reuse vs naive full-model passes (same numbers).

    python benchmarks/scoring.py                  # demo-sized random Llama, 6 layers
    python benchmarks/scoring.py --layers 8
    python benchmarks/scoring.py --processes 2    # + 2 processes (torchrun, gloo) vs 1, same library

Parent: a random Llama with the teacher ``demo`` preset's sizes (hidden 256, FFN 768, 8 query /
4 KV heads, vocab 4096, ``--layers`` layers, default the preset's 6), 16 held-out sequences of 128
tokens.  Library: 9 candidates per layer (attention GQA-4 = parent, GQA-1, no-op × FFN 100 %, 50 %,
no-op), weights initialised from the parent (truncation), as scoring does for weightless candidates.

* reuse: ``score_library(prefix_reuse=True)``: one parent pass per batch gives every layer's
  input; the candidates of layer i run stacked through layers i+1..;
* naive: ``score_library(prefix_reuse=False)``: the whole child, per candidate.

Both share the parent's reference pass and the metric code, so the ratio is the prefix reuse (and
the attention output shared by the candidates that keep the parent's attention).
Rounds alternate the order; each round's ratio and the median are printed, with max |ΔKL|.

Before measuring it prints the ceiling of the ratio from matmul MACs (:func:`mac_ceiling`): a
candidate at layer i saves the i layers before it, but both paths pay the head (``H·V``, here 1.3
parent layers), so the ceiling grows with depth: 1.62× at 6 layers, 1.78× at 12, 1.96× for
Llama-3.3-70B's 80 layers (NVIDIA's candidate set: parent or no-op attention × 9 FFN widths).

``--processes N``: then the same scoring (prefix reuse, journaled in a run directory) in one process
against N processes under torchrun (each repeats the parent's pass and scores its share of the
layers): the scoring's own time (the slowest process's) and each whole command's, alternating
order; the metrics must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def setup(args: argparse.Namespace):
    """The parent, the held-out rows and the (weightless) library every run scores."""
    from bld import demo_sized_parent  # benchmarks/bld.py, next to this file

    from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
    from puzzlekit.library import BlockLibrary

    parent, seq = demo_sized_parent(args.layers)
    spec = parent.config.parent_spec
    rows = np.random.default_rng(0).integers(0, spec.vocab_size, size=(args.eval_sequences, seq)).astype(np.int64)
    heldout = torch.from_numpy(rows)
    lib = BlockLibrary(spec.num_hidden_layers, parent=spec)
    inter = spec.intermediate_size
    for i in range(spec.num_hidden_layers):
        for a in (AttentionConfig.gqa(spec.num_key_value_heads), AttentionConfig.gqa(1), AttentionConfig.make_no_op()):
            for f in (FFNConfig.swiglu(inter), FFNConfig.swiglu(inter // 2), FFNConfig.make_no_op()):
                lib.add(i, BlockConfig(a, f))
    return parent, heldout, lib, seq


def mac_ceiling(parent, lib, seq: int) -> tuple[float, float, float, float]:
    """Matmul MACs per token, summed over the scored candidates, of the naive and the prefix-reuse
    passes, their ratio (the ceiling of the measured speed-up) and the head's cost in parent layers.

    A layer costs its parameters' matmuls plus causal attention (``seq/2`` keys on average, scores
    and values); the head ``H·V``.  Naive: the candidate, the other ``L - 1`` parent layers and the
    head.  Reuse: the candidate (only its FFN when it keeps the parent's attention), the ``L - 1 - i``
    layers after it and the head.  Not counted, and the same in both: the metrics' passes over the
    vocabulary (``log_softmax``, one dot product, one max), which lower the measured ratio a little.
    """
    from puzzlekit.accounting import attention_params, ffn_params
    from puzzlekit.scoring.replace1 import _is_parent_layer, _same_attention, candidate_layer

    spec = parent.config.parent_spec
    H, nh, d = spec.hidden_size, spec.num_attention_heads, spec.head_dim

    def att(a) -> float:
        return 0.0 if a.no_op else attention_params(spec, a) - H + (0 if a.linear else 2 * nh * d * seq / 2)

    pblock = spec.parent_block()
    P, head, L = att(pblock.attention) + ffn_params(spec, pblock.ffn) - H, H * spec.vocab_size, spec.num_hidden_layers
    naive = reuse = 0.0
    for i, c in enumerate(lib.candidates):
        m, player = candidate_layer(parent, lib, i), parent.model.layers[c.first]
        if _is_parent_layer(m, player):
            continue  # scored without a pass in both
        own = att(c.block.attention) + max(ffn_params(spec, c.block.ffn) - H, 0)
        naive += own + (L - 1) * P + head
        shared = att(c.block.attention) if _same_attention(m, player) else 0.0
        reuse += own - shared + (L - 1 - c.first) * P + head
    return naive, reuse, naive / reuse, head / P


def processes(args: argparse.Namespace) -> None:
    """One process vs ``--processes`` under torchrun, each a fresh command scoring into a new run directory."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    base = [__file__, "--layers", str(args.layers), "--eval-sequences", str(args.eval_sequences),
            "--threads", str(args.threads), "--worker"]
    ratios: list[float] = []
    whole: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            def run(n: int, r: int = r) -> tuple[float, list]:
                out = os.path.join(tmp, f"r{r}-n{n}")
                cmd = ([sys.executable, *base, out] if n == 1 else
                       [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", *base, out])
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                with open(os.path.join(out, "metrics.json")) as f:
                    return time.perf_counter() - t0, json.load(f)

            order = (1, args.processes) if r % 2 == 0 else (args.processes, 1)
            res = {n: run(n) for n in order}
            (w1, one), (wn, many) = res[1], res[args.processes]
            if one["metrics"] != many["metrics"]:
                raise SystemExit("[scoring] metrics differ between 1 and N processes")
            ratios.append(one["seconds"] / many["seconds"])
            whole.append(w1 / wn)
            print(f"[scoring] round {r + 1}: scoring 1 process {one['seconds']:.1f}s, {args.processes} processes "
                  f"{many['seconds']:.1f}s -> {ratios[-1]:.2f}x; whole commands (start-up, model build) "
                  f"{w1:.1f}s vs {wn:.1f}s -> {whole[-1]:.2f}x (metrics identical)")
    print(f"[scoring] {args.processes} processes vs 1: scoring median {statistics.median(ratios):.2f}x "
          f"({', '.join(f'{x:.2f}' for x in ratios)}), whole commands {statistics.median(whole):.2f}x "
          f"({', '.join(f'{x:.2f}' for x in whole)})")


def worker(args: argparse.Namespace) -> None:
    """Score into ``args.worker`` (a run directory); rank 0 writes the metrics for the comparison."""
    import json
    import os

    from puzzlekit.rundir import RunDir
    from puzzlekit.scoring import score_library

    parent, heldout, lib, _ = setup(args)
    t0 = time.perf_counter()
    out = score_library(parent, lib, heldout, RunDir(args.worker), eval_sequences=args.eval_sequences,
                        progress=False, save=False)
    secs = time.perf_counter() - t0  # every process waits for the others at the end: the slowest one's time
    if os.environ.get("RANK", "0") == "0":
        with open(os.path.join(args.worker, "metrics.json"), "w") as f:
            json.dump({"seconds": secs, "metrics": [c.metrics for c in out.candidates]}, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--eval-sequences", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--processes", type=int, default=0, help="also compare N processes (torchrun) with 1")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
        return
    from puzzlekit.scoring import score_library

    parent, heldout, lib, seq = setup(args)
    spec, inter = parent.config.parent_spec, parent.config.parent_spec.intermediate_size
    print(f"[scoring] parent: random Llama, demo preset sizes (H={spec.hidden_size}, I={inter}, "
          f"{spec.num_hidden_layers} layers, vocab {spec.vocab_size}); {len(lib)} candidates, "
          f"{args.eval_sequences} x {seq} tokens, {args.threads} thread(s)")
    naive_macs, reuse_macs, ceiling, head_layers = mac_ceiling(parent, lib, seq)
    print(f"[scoring] matmul MACs per token over the candidates: naive {naive_macs / 1e6:.1f} M, prefix reuse "
          f"{reuse_macs / 1e6:.1f} M -> ceiling of the ratio {ceiling:.2f}x (the head costs {head_layers:.2f} "
          "parent layers)")
    kw = dict(eval_sequences=args.eval_sequences, progress=False, save=False)
    score_library(parent, lib, heldout[:8], **{**kw, "eval_sequences": 8})  # warm-up
    ratios, cpu_ratios, errs = [], [], []
    for r in range(args.rounds):
        def run(reuse: bool) -> tuple[float, float, list[float]]:
            t0, c0 = time.perf_counter(), time.process_time()
            out = score_library(parent, lib, heldout, prefix_reuse=reuse, **kw)
            return (time.perf_counter() - t0, time.process_time() - c0,
                    [c.metrics["kl_div"] for c in out.candidates])

        if r % 2 == 0:
            (t_reuse, c_reuse, ka), (t_naive, c_naive, kb) = run(True), run(False)
        else:
            (t_naive, c_naive, kb), (t_reuse, c_reuse, ka) = run(False), run(True)
        ratios.append(t_naive / t_reuse)
        cpu_ratios.append(c_naive / c_reuse)
        errs.append(max(abs(x - y) for x, y in zip(ka, kb)))
        print(f"[scoring] round {r + 1}: prefix reuse {t_reuse:.1f}s, naive {t_naive:.1f}s -> "
              f"{t_naive / t_reuse:.2f}x (CPU time {c_naive / c_reuse:.2f}x; max |dKL| {errs[-1]:.1e})")
    print(f"[scoring] prefix reuse vs naive full passes: median {statistics.median(ratios):.2f}x wall over "
          f"{len(ratios)} rounds ({', '.join(f'{x:.2f}' for x in ratios)}), {statistics.median(cpu_ratios):.2f}x CPU "
          f"time; max |dKL| {max(errs):.1e}; MAC ceiling {ceiling:.2f}x")
    if args.processes > 1:
        processes(args)


if __name__ == "__main__":
    main()
