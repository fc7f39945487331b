"""BLD benchmark: 8 candidates per layer trained from one parent pass per batch vs 8 separate passes.

    python benchmarks/bld.py                                  # headline: NVIDIA's candidate mix, seq 1024
    python benchmarks/bld.py --mix mixed --seq-len 128 --batch-size 8   # attention-heavy mix, short context
    python benchmarks/bld.py --quality                        # + the tiny trained teacher: NMSE vs init, KL vs size

Throughput: a random Llama with the dimensions of the teacher's ``demo`` preset
(``puzzlekit/demo/teacher.py``: hidden 256, FFN 768, 6 layers, 8 query / 4 KV heads, vocab 4096;
the weights' values do not change the cost).  Every layer gets the same 8 distinct *trained*
candidates (``--mix``, see :func:`eight_candidates`), decoupled:

* ``nvidia`` (default): FFN widths 87.5, 75, 62.5, 50, 37.5, 25, 20 and 10 % fed the parent attention
  output: the six FFN widths of NVIDIA's Llama-3.3-70B block library plus two (that library's only other
  variants, the parent's own and the no-ops, cost nothing to train);
* ``mixed``: attention GQA-2, GQA-1 and linear, each trained through the frozen parent FFN (Puzzle,
  arXiv 2411.19146: the BLD loss is on the block output), and FFN 75, 50, 25, 10 % and linear.

The parent's own variants and no-ops are left out of the count: they cost nothing to train.

* shared: one ``run_bld`` over all 8 candidates of every layer (one parent pass per batch);
* separate: 8 ``run_bld`` calls, each one candidate per layer with its own parent pass per batch.

Both are the same engine on the same batches (same seed, steps, evaluation, initialisation and
saving), so the ratio measures the parent passes saved.  The headline is the training loop's
throughput (parent passes + candidate steps, timed by the engine); the whole-run ratio, which also
counts each run's fixed setup (held-out pass, initialisation, evaluation, saving), is printed too.
Rounds alternate the two orders; the ratio of each round and their median are printed, in wall
time and in this process's CPU time (1 thread: the CPU-time ratio is the one other jobs on a shared
machine disturb least).

The ratio cannot beat its FLOP ceiling ``8(P + U/8) / (P + U)`` (P: one parent layer forward per token,
U: the 8 units' training step per token; :func:`macs_per_token`), printed before the measurement:
the candidate mix and the context length set it (attention units run through the parent FFN, which
makes U large; longer sequences make P's attention larger), so the benchmark reports both.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from puzzlekit.blocks import AttentionConfig, FFNConfig


def demo_sized_parent(layers: int = 6, seq_len: int | None = None):
    """A random ``LlamaForCausalLM`` with the teacher ``demo`` preset's sizes, as a PuzzleForCausalLM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from puzzlekit.demo.teacher import TEACHER_PRESETS
    from puzzlekit.model import load_parent

    t = TEACHER_PRESETS["demo"]
    seq = seq_len or t.seq_len
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                      num_hidden_layers=layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                      max_position_embeddings=2 * seq, tie_word_embeddings=False)
    return load_parent(LlamaForCausalLM(cfg).eval()), seq


# NVIDIA's Llama-3.3-70B block library (shared/data) trains FFN variants only: widths 75, 62, 50, 25,
# 20 and 10 % of the parent (its attention variants are the parent's and the no-op, neither trained),
# and Super-49B / Ultra-253B use no other attention variant.  Eight: those six plus 87.5 % and 37.5 %.
NVIDIA_FFN_FRACTIONS = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.2, 0.1)
MIXES = ("nvidia", "mixed")


def eight_candidates(spec, mix: str = "mixed"):
    """8 distinct trained variants, none the parent's: ``(attention variants, FFN variants)``.

    ``mixed``: GQA-2, GQA-1 and linear attention (trained through the frozen parent FFN) and FFN 75 /
    50 / 25 / 10 % and linear.  ``nvidia``: the eight FFN widths of :data:`NVIDIA_FFN_FRACTIONS`."""
    inter, kv = spec.intermediate_size, spec.num_key_value_heads
    if mix == "nvidia":
        att = ()
        ffn = tuple(FFNConfig.swiglu(8 * round(inter * f / 8)) for f in NVIDIA_FFN_FRACTIONS)
    elif mix == "mixed":
        att = (AttentionConfig.gqa(kv // 2), AttentionConfig.gqa(kv // 4), AttentionConfig.make_linear())
        ffn = (FFNConfig.swiglu(inter * 3 // 4), FFNConfig.swiglu(inter // 2), FFNConfig.swiglu(inter // 4),
               FFNConfig.swiglu(8 * round(inter / 80)), FFNConfig.make_linear())
    else:
        raise SystemExit(f"--mix must be one of {', '.join(MIXES)}, got {mix!r}")
    pb = spec.parent_block()
    variants = [a for a in att if a != pb.attention] + [f for f in ffn if f != pb.ffn]
    if len(set(variants)) != 8:
        raise SystemExit(f"need 8 distinct non-parent variants, got {variants}")
    return att, ffn


def macs_per_token(spec, att, ffn, seq: int) -> tuple[float, float]:
    """Matmul MACs per token and layer: ``(parent forward P, sum over the 8 units of one training step)``.

    Parent: q/k/v/o + causal attention (``seq/2`` keys on average, scores and values) + gate/up/down.
    FFN unit of width f (input constant, norm folded into gate|up: no input gradient): forward 3·H·f,
    backward down's weight and input gradients 2·H·f and gate|up's weight gradient 2·H·f.  Attention unit:
    its own forward + backward (weight and input gradients, no input gradient of the first projection)
    plus the frozen parent FFN's forward and input gradient (6·H·I).  Linear variants: H² forward + H² weight gradient."""
    H, Iw, nh, d = spec.hidden_size, spec.intermediate_size, spec.num_attention_heads, spec.head_dim
    pkv = spec.num_key_value_heads
    sdpa = 2 * nh * d * seq / 2

    def attn_fwd(kv: int) -> float:
        return H * nh * d * 2 + 2 * H * kv * d + sdpa

    P = attn_fwd(pkv) + 3 * H * Iw
    units = 0.0
    for a in att:
        if a.linear:
            own = 2 * H * H
        else:  # forward; backward: weight grads of qkv/o, input grad of o, SDPA backward (2x)
            own = attn_fwd(a.num_kv_heads) * 2 + H * nh * d + 2 * sdpa
        units += own + 6 * H * Iw
    for f in ffn:
        units += 2 * H * H if f.kind == "linear" else 7 * H * f.intermediate_size
    return P, units


def throughput(args) -> None:
    from puzzlekit.bld import BLDConfig, SearchSpace, run_bld
    from puzzlekit.data import TokenData

    parent, seq = demo_sized_parent(args.layers, args.seq_len)
    spec = parent.config.parent_spec
    rng = np.random.default_rng(0)
    rows = rng.integers(0, spec.vocab_size, size=(args.batch_size * (args.steps + 2) + 16, seq)).astype(np.int64)
    data = TokenData(rows[:-16], rows[-16:], seq)
    att, ffn = eight_candidates(spec, args.mix)
    pb = spec.parent_block()
    cfg = BLDConfig(tokens=args.steps * args.batch_size * seq, batch_size=args.batch_size, eval_sequences=8,
                    checkpoint_every=10_000)
    P, U = macs_per_token(spec, att, ffn, seq)
    ceiling = 8 * (P + U / 8) / (P + U)
    print(f"[bld] parent: random Llama, demo preset sizes (H={spec.hidden_size}, I={spec.intermediate_size}, "
          f"{spec.num_hidden_layers} layers, {spec.num_attention_heads}/{spec.num_key_value_heads} heads, "
          f"vocab {spec.vocab_size}); seq {seq}, batch {args.batch_size}, {cfg.steps(seq)} steps, "
          f"{args.threads} thread(s)")
    print(f"[bld] mix {args.mix!r}, 8 candidates per layer: "
          f"{', '.join(a.short() for a in att) or '-'} (attention); {', '.join(f.short() for f in ffn)} (FFN)")
    print(f"[bld] matmul MACs per token and layer: parent forward {P / 1e6:.2f} M, the 8 units' training step "
          f"{U / 1e6:.2f} M ({U / P:.2f} P) -> FLOP ceiling of the ratio 8(P + U/8)/(P + U) = {ceiling:.2f}x")
    singles = [SearchSpace((a,), (pb.ffn,)) for a in att] + [SearchSpace((pb.attention,), (f,)) for f in ffn]
    loops: list[tuple[float, float]] = []  # training-loop (wall, CPU) seconds reported by the engine

    class Loop(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if hasattr(record, "bld_loop"):
                loops.append((record.bld_loop["seconds"], record.bld_loop["cpu_seconds"]))

    log = logging.getLogger("puzzlekit.bld.engine")
    log.addHandler(Loop())
    log.setLevel(logging.INFO)
    log.propagate = False
    loop_ratios, cpu_ratios, run_ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            def shared(r: int = r) -> tuple[float, float, float]:
                loops.clear()
                t0 = time.perf_counter()
                run_bld(parent, data, Path(tmp) / f"shared{r}", SearchSpace(att or (pb.attention,), ffn), cfg,
                        progress=False)
                return time.perf_counter() - t0, sum(w for w, _ in loops), sum(c for _, c in loops)

            def separate(r: int = r) -> tuple[float, float, float]:
                loops.clear()
                t0 = time.perf_counter()
                for k, sp in enumerate(singles):
                    run_bld(parent, data, Path(tmp) / f"sep{r}-{k}", sp, cfg, progress=False)
                return time.perf_counter() - t0, sum(w for w, _ in loops), sum(c for _, c in loops)

            if r % 2 == 0:
                (t_one, l_one, c_one), (t_sep, l_sep, c_sep) = shared(), separate()
            else:
                (t_sep, l_sep, c_sep), (t_one, l_one, c_one) = separate(), shared()
            loop_ratios.append(l_sep / l_one)
            cpu_ratios.append(c_sep / c_one)
            run_ratios.append(t_sep / t_one)
            tok = 8 * spec.num_hidden_layers * cfg.steps(seq) * args.batch_size * seq
            print(f"[bld] round {r + 1}: training loop: shared {l_one:.1f}s ({tok / l_one:,.0f} candidate-tokens/s), "
                  f"8 separate {l_sep:.1f}s ({tok / l_sep:,.0f}) -> {l_sep / l_one:.2f}x (CPU time "
                  f"{c_one:.1f}s vs {c_sep:.1f}s -> {c_sep / c_one:.2f}x); whole runs (with "
                  f"setup, evaluation, saving): {t_one:.1f}s vs {t_sep:.1f}s -> {t_sep / t_one:.2f}x")
    print(f"[bld] shared-pass training throughput / 8 separate passes: median {statistics.median(loop_ratios):.2f}x "
          f"wall over {len(loop_ratios)} rounds ({', '.join(f'{x:.2f}' for x in loop_ratios)}), "
          f"{statistics.median(cpu_ratios):.2f}x CPU time ({', '.join(f'{x:.2f}' for x in cpu_ratios)}); "
          f"whole runs {statistics.median(run_ratios):.2f}x wall; FLOP ceiling {ceiling:.2f}x")


def quality(args) -> None:
    from puzzlekit.accounting import attention_params, ffn_params
    from puzzlekit.bld import BLDConfig, SearchSpace, run_bld, unit_results
    from puzzlekit.data import build_token_data, load_tokenizer, shakespeare_texts
    from puzzlekit.demo.teacher import TEACHER_PRESETS, ensure_teacher
    from puzzlekit.model import load_parent
    from puzzlekit.scoring import score_library

    texts = shakespeare_texts(args.cache)
    ensure_teacher(args.teacher, texts, TEACHER_PRESETS["tiny"], progress=False)
    parent = load_parent(args.teacher)
    data = build_token_data(texts[:4], load_tokenizer(args.teacher), seq_len=64)
    spec = parent.config.parent_spec
    inter = spec.intermediate_size
    space = SearchSpace((AttentionConfig.gqa(spec.num_key_value_heads), AttentionConfig.gqa(1),
                         AttentionConfig.make_linear(), AttentionConfig.make_no_op()),
                        (FFNConfig.swiglu(inter), FFNConfig.swiglu(inter * 3 // 4), FFNConfig.swiglu(inter // 2),
                         FFNConfig.swiglu(inter // 4), FFNConfig.make_linear(), FFNConfig.make_no_op()))
    cfg = BLDConfig(tokens=args.quality_steps * 8 * 64, batch_size=8, lr=1e-3, eval_sequences=8)
    with tempfile.TemporaryDirectory() as tmp:
        lib = run_bld(parent, data, Path(tmp) / "q", space, cfg, progress=False)
        res = unit_results(Path(tmp) / "q")
        score_library(parent, lib, data, eval_sequences=16, progress=False, save=False)
    trained = {k: v for k, v in res.items() if "no_op" not in k and v["bld_nmse_init"] > 0}
    better = sum(v["bld_nmse"] < v["bld_nmse_init"] for v in trained.values())
    print(f"[bld] tiny teacher ({spec.num_hidden_layers} layers): NMSE below its initial value after "
          f"{cfg.steps(64)} steps: {better}/{len(trained)} pruned candidates")

    def size(c):
        return attention_params(spec, c.block.attention) + ffn_params(spec, c.block.ffn)

    cands = sorted(lib.candidates, key=size)
    half = len(cands) // 2
    small = sum(c.metrics["kl_div"] for c in cands[:half]) / half
    large = sum(c.metrics["kl_div"] for c in cands[half:]) / (len(cands) - half)
    print(f"[bld] mean replace-1-block KL: smaller half {small:.4f}, larger half {large:.4f} "
          f"(larger lower: {large < small})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seq-len", type=int, default=1024, help="sequence length")
    ap.add_argument("--mix", choices=MIXES, default="nvidia", help="which 8 candidates per layer (see eight_candidates)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quality", action="store_true", help="also BLD + scoring on the tiny trained teacher")
    ap.add_argument("--quality-steps", type=int, default=40)
    ap.add_argument("--teacher", default=str(Path(tempfile.gettempdir()) / "puzzlekit_teacher_tiny"))
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "puzzlekit"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    throughput(args)
    if args.quality:
        quality(args)


if __name__ == "__main__":
    main()
