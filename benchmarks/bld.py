"""BLD benchmark: 8 candidates per layer from one parent pass vs 8 separate passes (same tokens),
and, on the tiny trained teacher, NMSE after BLD vs at initialisation and KL vs candidate size.

    python benchmarks/bld.py --teacher runs/teacher_tiny --steps 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from puzzlekit.blocks import AttentionConfig, FFNConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(Path(tempfile.gettempdir()) / "puzzlekit_teacher_tiny"))
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "puzzlekit"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
    # 8 candidates per layer: 4 attention + 4 FFN variants (decoupled), none equal to the parent's
    att = (AttentionConfig.gqa(1), AttentionConfig.make_linear(), AttentionConfig.gqa(spec.num_key_value_heads // 2 or 1),
           AttentionConfig.make_no_op())
    att = tuple(dict.fromkeys(att))
    ffn = (FFNConfig.swiglu(inter * 3 // 4), FFNConfig.swiglu(inter // 2), FFNConfig.swiglu(inter // 4), FFNConfig.make_linear())
    space = SearchSpace(att, ffn)
    cfg = BLDConfig(tokens=args.steps * 8 * 64, batch_size=8, lr=1e-3, eval_sequences=8)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lib = run_bld(parent, data, Path(tmp) / "one", space, cfg, progress=False)
        t_one = time.perf_counter() - t0
        res = unit_results(Path(tmp) / "one")
        t0 = time.perf_counter()
        for k, (a, f) in enumerate([(a, None) for a in att] + [(None, f) for f in ffn]):
            sp = SearchSpace((a or spec.parent_block().attention,), (f or spec.parent_block().ffn,))
            run_bld(parent, data, Path(tmp) / f"sep{k}", sp, cfg, progress=False)
        t_sep = time.perf_counter() - t0
        n_units = len(att) + len(ffn)
        print(f"[bld] {n_units} candidates/layer x {spec.num_hidden_layers} layers, {cfg.steps(64)} steps: "
              f"one parent pass {t_one:.2f}s, separate passes {t_sep:.2f}s -> speed-up {t_sep / t_one:.2f}x")
        trained = {k: v for k, v in res.items() if "no_op" not in k}
        better = sum(v["bld_nmse"] < v["bld_nmse_init"] for v in trained.values())
        print(f"[bld] NMSE below its initial value after BLD: {better}/{len(trained)} trained candidates")
        score_library(parent, lib, data, eval_sequences=16, progress=False, save=False)
        from puzzlekit.accounting import attention_params, ffn_params

        def size(c):
            return attention_params(spec, c.block.attention) + ffn_params(spec, c.block.ffn)

        cands = sorted(lib.candidates, key=size)
        half = len(cands) // 2
        small = sum(c.metrics["kl_div"] for c in cands[:half]) / half
        large = sum(c.metrics["kl_div"] for c in cands[half:]) / (len(cands) - half)
        print(f"[bld] mean replace-1-block KL: smaller half {small:.4f}, larger half {large:.4f} "
              f"(larger lower: {large < small})")


if __name__ == "__main__":
    main()
