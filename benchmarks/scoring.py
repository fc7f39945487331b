"""Scoring benchmark: replace-1-block with prefix reuse vs naive full-model passes (same numbers).

    python benchmarks/scoring.py                  # demo-sized random Llama, 6 layers
    python benchmarks/scoring.py --layers 8

Parent: a random Llama with the teacher ``demo`` preset's sizes (hidden 256, FFN 768, 8 query /
4 KV heads, vocab 4096, ``--layers`` layers, default the preset's 6), 16 held-out sequences of 128
tokens.  Library: 9 candidates per layer (attention GQA-4 = parent, GQA-1, no-op × FFN 100 %, 50 %,
no-op), weights initialised from the parent (truncation), as scoring does for weightless candidates.

* reuse: ``score_library(prefix_reuse=True)``: one parent pass per batch gives every layer's
  input; the candidates of layer i run stacked through layers i+1..;
* naive: ``score_library(prefix_reuse=False)``: the whole child, per candidate.

Both share the parent's reference pass and the metric code, so the ratio is the prefix reuse.
Rounds alternate the order; each round's ratio and the median are printed, with max |ΔKL|.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--eval-sequences", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from bld import demo_sized_parent  # benchmarks/bld.py, next to this file

    from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
    from puzzlekit.library import BlockLibrary
    from puzzlekit.scoring import score_library

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
    print(f"[scoring] parent: random Llama, demo preset sizes (H={spec.hidden_size}, I={inter}, "
          f"{spec.num_hidden_layers} layers, vocab {spec.vocab_size}); {len(lib)} candidates, "
          f"{args.eval_sequences} x {seq} tokens, {args.threads} thread(s)")
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
          f"time; max |dKL| {max(errs):.1e}")


if __name__ == "__main__":
    main()
