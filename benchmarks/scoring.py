"""Scoring benchmark: replace-1-block with prefix reuse vs naive full passes (same numbers).

    python benchmarks/scoring.py --teacher runs/teacher_tiny
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(Path(tempfile.gettempdir()) / "puzzlekit_teacher_tiny"))
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "puzzlekit"))
    ap.add_argument("--eval-sequences", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
    from puzzlekit.data import build_token_data, load_tokenizer, shakespeare_texts
    from puzzlekit.demo.teacher import TEACHER_PRESETS, ensure_teacher
    from puzzlekit.library import BlockLibrary
    from puzzlekit.model import load_parent
    from puzzlekit.scoring import score_library

    texts = shakespeare_texts(args.cache)
    ensure_teacher(args.teacher, texts, TEACHER_PRESETS["tiny"], progress=False)
    parent = load_parent(args.teacher)
    data = build_token_data(texts[:4], load_tokenizer(args.teacher), seq_len=64)
    spec = parent.config.parent_spec
    lib = BlockLibrary(spec.num_hidden_layers, parent=spec)
    inter = spec.intermediate_size
    for i in range(spec.num_hidden_layers):
        for a in (AttentionConfig.gqa(spec.num_key_value_heads), AttentionConfig.gqa(1), AttentionConfig.make_no_op()):
            for f in (FFNConfig.swiglu(inter), FFNConfig.swiglu(inter // 2), FFNConfig.make_no_op()):
                lib.add(i, BlockConfig(a, f))
    kw = dict(eval_sequences=args.eval_sequences, progress=False, save=False)
    score_library(parent, lib, data, **kw)  # warm-up (and initialises candidate layers once)
    t0 = time.perf_counter()
    a = score_library(parent, lib, data, prefix_reuse=True, **kw)
    t_reuse = time.perf_counter() - t0
    ka = [c.metrics["kl_div"] for c in a.candidates]
    t0 = time.perf_counter()
    b = score_library(parent, lib, data, prefix_reuse=False, **kw)
    t_naive = time.perf_counter() - t0
    kb = [c.metrics["kl_div"] for c in b.candidates]
    err = max(abs(x - y) for x, y in zip(ka, kb))
    print(f"[scoring] {len(lib)} candidates, {spec.num_hidden_layers} layers: prefix reuse {t_reuse:.2f}s, "
          f"naive {t_naive:.2f}s -> speed-up {t_naive / t_reuse:.2f}x (max |dKL| {err:.2e})")


if __name__ == "__main__":
    main()
