"""BLD benchmark: 8 candidates per layer trained from one parent pass per batch vs 8 separate passes.

    python benchmarks/bld.py                      # throughput, demo-sized random Llama (see below)
    python benchmarks/bld.py --quality            # + the tiny trained teacher: NMSE vs init, KL vs size

Throughput: a random Llama with the dimensions of the teacher's ``demo`` preset
(``puzzlekit/demo/teacher.py``: hidden 256, FFN 768, 6 layers, 8 query / 4 KV heads, vocab 4096;
the weights' values do not change the cost), sequences of 128 tokens.  Every layer gets the same 8
distinct *trained* candidates, decoupled: attention GQA-2, GQA-1 and linear (each trained through
the parent FFN), FFN 75 %, 50 %, 25 %, 10 % and linear (each fed the parent attention output).
The parent's own variants and no-ops are left out: they cost nothing to train.

* shared: one ``run_bld`` over all 8 candidates of every layer (one parent pass per batch);
* separate: 8 ``run_bld`` calls, each one candidate per layer with its own parent pass per batch.

Both are the same engine on the same batches (same seed, steps, evaluation, initialisation and
saving), so the ratio measures the parent passes saved.  The headline is the training loop's
throughput (parent passes + candidate steps, timed by the engine); the whole-run ratio, which also
counts each run's fixed setup (held-out pass, initialisation, evaluation, saving), is printed too.
Rounds alternate the two orders; the ratio of each round and their median are printed, in wall
time and in this process's CPU time (1 thread: the CPU-time ratio is the one other jobs on a shared
machine disturb least).
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


def demo_sized_parent(layers: int = 6):
    """A random ``LlamaForCausalLM`` with the teacher ``demo`` preset's sizes, as a PuzzleForCausalLM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from puzzlekit.demo.teacher import TEACHER_PRESETS
    from puzzlekit.model import load_parent

    t = TEACHER_PRESETS["demo"]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                      num_hidden_layers=layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                      max_position_embeddings=2 * t.seq_len, tie_word_embeddings=False)
    return load_parent(LlamaForCausalLM(cfg).eval()), t.seq_len


def eight_candidates(spec):
    """3 attention + 5 FFN variants, all distinct and none the parent's (so all 8 are trained)."""
    inter, kv = spec.intermediate_size, spec.num_key_value_heads
    att = (AttentionConfig.gqa(kv // 2), AttentionConfig.gqa(kv // 4), AttentionConfig.make_linear())
    ffn = (FFNConfig.swiglu(inter * 3 // 4), FFNConfig.swiglu(inter // 2), FFNConfig.swiglu(inter // 4),
           FFNConfig.swiglu(8 * round(inter / 80)), FFNConfig.make_linear())
    pb = spec.parent_block()
    variants = [a for a in att if a != pb.attention] + [f for f in ffn if f != pb.ffn]
    if len(set(variants)) != 8:
        raise SystemExit(f"need 8 distinct non-parent variants, got {variants}")
    return att, ffn


def throughput(args) -> None:
    from puzzlekit.bld import BLDConfig, SearchSpace, run_bld
    from puzzlekit.data import TokenData

    parent, seq = demo_sized_parent(args.layers)
    spec = parent.config.parent_spec
    rng = np.random.default_rng(0)
    rows = rng.integers(0, spec.vocab_size, size=(args.batch_size * (args.steps + 2) + 16, seq)).astype(np.int64)
    data = TokenData(rows[:-16], rows[-16:], seq)
    att, ffn = eight_candidates(spec)
    pb = spec.parent_block()
    cfg = BLDConfig(tokens=args.steps * args.batch_size * seq, batch_size=args.batch_size, eval_sequences=8,
                    checkpoint_every=10_000)
    print(f"[bld] parent: random Llama, demo preset sizes (H={spec.hidden_size}, I={spec.intermediate_size}, "
          f"{spec.num_hidden_layers} layers, {spec.num_attention_heads}/{spec.num_key_value_heads} heads, "
          f"vocab {spec.vocab_size}); seq {seq}, batch {args.batch_size}, {cfg.steps(seq)} steps, "
          f"{args.threads} thread(s)")
    print(f"[bld] 8 candidates per layer: {', '.join(a.short() for a in att)} (attention); "
          f"{', '.join(f.short() for f in ffn)} (FFN)")
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
                run_bld(parent, data, Path(tmp) / f"shared{r}", SearchSpace(att, ffn), cfg, progress=False)
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
          f"whole runs {statistics.median(run_ratios):.2f}x wall")


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
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
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
