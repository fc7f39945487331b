"""Measured CPU latency of a fused model against the same model unfused (prefill and decode).

The model has long runs of attention-free FFNs (the shape Puzzle leaves behind,
e.g. Super-49B layers 42-51 and 53-70); its runs are fused whole with
``fuse_ffns`` and both models run the same input.  Measurements alternate
between the two models (so load from other processes hits both alike) and the
medians' ratio is printed; run it two or three times on a busy machine.

    python benchmarks/fusion.py                    # default: hidden 512, 16 layers, 2 threads
    python benchmarks/fusion.py --hidden 1024 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from puzzlekit import Architecture, AttentionConfig, BlockConfig, FFNConfig, ParentSpec
from puzzlekit.fusion import fuse_ffns, make_plan
from puzzlekit.model import PuzzleForCausalLM


def build(hidden: int, inter: int, pattern: str, vocab: int, seed: int = 0) -> PuzzleForCausalLM:
    parent = ParentSpec(hidden_size=hidden, num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
                        head_dim=64, intermediate_size=inter, vocab_size=vocab, num_hidden_layers=len(pattern))
    gqa, noop = AttentionConfig.gqa(parent.num_key_value_heads), AttentionConfig.make_no_op()
    blocks = tuple(BlockConfig(gqa if c == "A" else noop, FFNConfig.swiglu(inter)) for c in pattern)
    torch.manual_seed(seed)
    return PuzzleForCausalLM.from_architecture(Architecture(parent, blocks)).eval()


@torch.inference_mode()
def prefill_s(model: PuzzleForCausalLM, ids: torch.Tensor) -> float:
    t = time.perf_counter()
    model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - t


@torch.inference_mode()
def decode_s(model: PuzzleForCausalLM, ids: torch.Tensor, steps: int) -> float:
    """Seconds per generated token (greedy, KV cache), after a prompt that is not timed."""
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
    t = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t) / steps


def measure(a, b, fn, reps: int) -> tuple[float, float]:
    fn(a), fn(b)  # warm-up
    ta, tb = [], []
    for i in range(reps):
        for m, acc in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            acc.append(fn(m))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1024, help="per-FFN intermediate size")
    ap.add_argument("--pattern", default="AFFFFFFFAFFFFFFF",
                    help="one char per layer: A = attention + FFN, F = FFN only (default: two runs of 8)")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=256, help="prefill tokens")
    ap.add_argument("--decode", type=int, default=32, help="decode steps per measurement")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--leave-last", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build(args.hidden, args.intermediate, args.pattern, args.vocab)
    plan = make_plan(model, leave_last=args.leave_last)
    fused, changes = fuse_ffns(model, plan)
    ids = torch.randint(0, args.vocab, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (model(input_ids=ids[:, :32]).logits - fused(input_ids=ids[:, :32]).logits).abs().max().item()

    p_u, p_f = measure(model, fused, lambda m: prefill_s(m, ids), args.reps)
    d_u, d_f = measure(model, fused, lambda m: decode_s(m, ids[:, :16], args.decode), args.reps)
    res = {
        "pattern": args.pattern, "hidden": args.hidden, "intermediate": args.intermediate, "batch": args.batch,
        "threads": args.threads, "groups": [list(g) for g in plan.groups],
        "ffn_steps": [plan.meta["steps_before"], plan.meta["steps_after"]],
        "max_rel_error": max(c.rel_error for c in changes),
        "prefill_ms": [p_u * 1e3, p_f * 1e3], "prefill_speedup": p_u / p_f,
        "decode_ms_per_token": [d_u * 1e3, d_f * 1e3], "decode_speedup": d_u / d_f,
        "max_logit_change": diff,
    }
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"model: {args.pattern} hidden {args.hidden}, FFN {args.intermediate}; fused {len(plan.groups)} run(s), "
          f"FFN steps {res['ffn_steps'][0]} -> {res['ffn_steps'][1]} (fusion rel. error {res['max_rel_error']:.1e}; "
          f"max logit change from the semantic change {diff:.3f})")
    print(f"prefill {args.batch}x{args.prompt}: unfused {p_u * 1e3:.2f} ms, fused {p_f * 1e3:.2f} ms, "
          f"speed-up {p_u / p_f:.3f}x")
    print(f"decode (batch {args.batch}): unfused {d_u * 1e3:.3f} ms/token, fused {d_f * 1e3:.3f} ms/token, "
          f"speed-up {d_u / d_f:.3f}x")


if __name__ == "__main__":
    main()
