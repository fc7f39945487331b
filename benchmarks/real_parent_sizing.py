"""Sizing the real-parent run (SmolLM2-135M-Instruct, sequences of 256): what BLD and scoring cost, and
how many scoring tokens the replace-1-block KL needs.

    python benchmarks/real_parent_sizing.py --part bld          # seconds per unit-step, per parent pass
    python benchmarks/real_parent_sizing.py --part scoring      # seconds per scored candidate vs its layer
    python benchmarks/real_parent_sizing.py --part variance     # KL's spread over sequences; ranking vs tokens
    python benchmarks/real_parent_sizing.py --part decoupled    # pair KL vs attention KL + FFN KL
    python benchmarks/real_parent_sizing.py --part heal         # GKD step, evaluation, chat, whole-model timing
    python benchmarks/real_parent_sizing.py --part all --json sizing.json

* ``bld``: one parent pass (no grad, all 30 layers, ``--batch`` x 256 tokens) and one training step of
  each unit kind at a middle layer, with the engine's own pieces (:mod:`puzzlekit.bld.step`: norm-folded
  forward, normalized MSE on the layer output, backward, clipping, fused AdamW); medians of 3 steps
  after a warm-up.  A BLD step of a space costs ``parent pass + sum over layers and units``; the
  prediction is checked against a real ``run_bld`` on two layers.
* ``scoring``: ``score_library`` (prefix reuse) on the full pair space at layers 0, 15 and 29, timed per
  layer; a candidate runs the layers after its own plus the 49K-vocabulary head (about eight layers'
  worth of multiply-adds here).
* ``variance``: per-sequence KL(parent || child) of 18 candidates (6 layers x GQA-1, FFN 25 %, FFN 75 %,
  initialised from the parent) on 32 held-out sequences: the relative standard error of the mean and
  the Spearman correlation of the candidates' ranking on n sequences with the ranking on all 32 (200
  random subsets).
* ``decoupled``: at 4 layers, every pair of attention {parent, GQA-1, none} x FFN {parent, 75, 50,
  25 %, none}: the pair's KL against the attention variant's KL (parent FFN) + the FFN variant's KL
  (parent attention) -- what scoring m + n sub-blocks instead of m x n pairs would predict.

Times are this process's CPU seconds (``time.process_time``; run with ``--threads 1``, the default): on
a shared machine wall time grows with other jobs' load, CPU time much less.  A two-core run splits
BLD units and scoring layers over 2 processes (torchrun, gloo), about 1.8x (``docs/bld.md``).
Candidates are initialised from the parent (not BLD-trained): costs do not depend on training, KL
spreads are an upper bound of trained ones.  Text: :mod:`puzzlekit.corpus` (Shakespeare + the Python
standard library), ``valid`` rows.  The load average is printed with each result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig

SEQ = 256


def setup(args):
    from puzzlekit.corpus import build_domain_data, two_domain_documents
    from puzzlekit.data import load_tokenizer
    from puzzlekit.fetch import smollm2_gguf
    from puzzlekit.model import load_parent

    torch.set_num_threads(args.threads)
    path = smollm2_gguf()
    parent = load_parent(path).requires_grad_(False)
    tok = load_tokenizer(path)
    dd = build_domain_data(two_domain_documents(), tok, seq_len=SEQ, train_tokens=16 * SEQ, valid_tokens=16 * SEQ,
                           test_tokens=SEQ, seed=0)
    return parent, dd


def _widths(spec, fracs):
    return [max(8, 8 * round(spec.intermediate_size * f / 8)) for f in fracs]


def now() -> float:
    """This process's CPU time: with 1 thread it is the wall time a quiet core would take, and other jobs
    on shared cores (time slicing) do not inflate it as they inflate wall time."""
    return time.process_time()


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.1f}/{b:.1f}/{c:.1f}"


# ---- BLD ---------------------------------------------------------------------------------------------
def part_bld(parent, dd, args) -> dict:
    from puzzlekit.bld.engine import parent_activations
    from puzzlekit.bld.step import FrozenFFN, LayerBatch, unit_output
    from puzzlekit.model import init_child_layer

    spec = parent.config.parent_spec
    ids = torch.from_numpy(dd.train[: args.batch])
    L = spec.num_hidden_layers
    t = []
    for _ in range(4):
        t0 = now()
        with torch.no_grad():
            pe, acts = parent_activations(parent, ids, list(range(L)))
        t.append(now() - t0)
    t_parent = statistics.median(t[1:])
    li = args.layer
    player = parent.model.layers[li]
    lb = LayerBatch(player, acts[li], pe, FrozenFFN(player))
    pb = spec.parent_block()
    units = [("attn", BlockConfig(AttentionConfig.gqa(1), FFNConfig.make_no_op())),
             ("attn", BlockConfig(AttentionConfig.make_linear(), FFNConfig.make_no_op()))]
    units += [("ffn", BlockConfig(AttentionConfig.make_no_op(), FFNConfig.swiglu(w)))
              for w in _widths(spec, (0.875, 0.75, 0.5, 0.25, 0.2, 0.1))]
    units.append(("ffn", BlockConfig(AttentionConfig.make_no_op(), FFNConfig.make_linear())))
    x, _, _ = acts[li]
    per: dict[str, float] = {}
    for kind, block in units:
        m = init_child_layer(player, block, calib_inputs=x, position_embeddings=pe)
        m.requires_grad_(True)
        params = list(m.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        ts = []
        for _ in range(4):
            t0 = now()
            lb = LayerBatch(player, acts[li], pe, FrozenFFN(player) if kind == "attn" else None)
            loss = lb.loss(unit_output(kind, m, lb))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            ts.append(now() - t0)
        key = f"{kind}:{block.attention.short() if kind == 'attn' else block.ffn.short()}"
        per[key] = statistics.median(ts[1:])
        print(f"  unit {key:14s} {per[key] * 1000:7.1f} ms / step", flush=True)
    tok = args.batch * SEQ
    space_sum = sum(per.values())
    res = {"batch_tokens": tok, "parent_pass_s": t_parent, "unit_step_s": per, "layer": li,
           "units_per_layer": len(per), "space_step_s": t_parent + L * space_sum, "load": _load()}
    print(f"BLD at {tok} tokens/step: parent pass (30 layers) {t_parent:.2f} s; units at layer {li}: "
          f"{space_sum:.2f} s for {len(per)} units; a step of the default space over 30 layers "
          f"{res['space_step_s']:.1f} s ({_load()})", flush=True)
    if args.check_run:
        res["check"] = _bld_check(parent, dd, args, t_parent, per)
    del pb
    return res


def _bld_check(parent, dd, args, t_parent: float, per: dict) -> dict:
    """A real run_bld on layers 14-15 with the same units, 3 steps: its loop time vs the prediction."""
    from puzzlekit.bld import BLDConfig, SearchSpace, run_bld

    spec = parent.config.parent_spec
    att = (AttentionConfig.gqa(spec.num_key_value_heads), AttentionConfig.gqa(1), AttentionConfig.make_linear())
    ffn = tuple([FFNConfig.swiglu(spec.intermediate_size)]
                + [FFNConfig.swiglu(w) for w in _widths(spec, (0.875, 0.75, 0.5, 0.25, 0.2, 0.1))]
                + [FFNConfig.make_linear()])
    space = SearchSpace(att, ffn, (14, 15))
    loops = []

    class Grab(logging.Handler):
        def emit(self, record):
            if hasattr(record, "bld_loop"):
                loops.append(record.bld_loop)

    h = Grab()
    lg = logging.getLogger("puzzlekit.bld.engine")
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as d:
        t0 = now()
        run_bld(parent, dd.token_data(), d, space, BLDConfig(tokens=3 * args.batch * SEQ, batch_size=args.batch,
                                                             eval_sequences=2), progress=False)
        whole = now() - t0
    lg.removeHandler(h)
    loop = loops[0]["cpu_seconds"]
    with torch.no_grad():
        from puzzlekit.bld.engine import parent_activations

        t0 = now()
        parent_activations(parent, torch.from_numpy(dd.train[: args.batch]), [15])
        t16 = now() - t0
    pred = 3 * (t16 + 2 * sum(per.values()))
    print(f"check: run_bld layers 14-15, {loops[0]['units']} units, 3 steps: loop {loop:.1f} s vs predicted "
          f"{pred:.1f} s; whole run {whole:.1f} s", flush=True)
    del t_parent
    return {"loop_s": loop, "predicted_s": pred, "whole_s": whole, "units": loops[0]["units"]}


# ---- scoring -----------------------------------------------------------------------------------------
def _pair_library(spec, layers, attn, ffn):
    from puzzlekit.library import BlockLibrary

    lib = BlockLibrary(num_layers=spec.num_hidden_layers, parent=spec)
    pb = spec.parent_block()
    for li in range(spec.num_hidden_layers):
        blocks = [BlockConfig(a, f) for a in attn for f in ffn] if li in layers else [pb]
        for b in blocks:
            lib.add(li, b, {})
    return lib


def part_scoring(parent, dd, args) -> dict:
    from puzzlekit.scoring import score_library

    spec = parent.config.parent_spec
    attn = (AttentionConfig.gqa(spec.num_key_value_heads), AttentionConfig.gqa(1), AttentionConfig.make_no_op())
    ffn = tuple([FFNConfig.swiglu(w) for w in _widths(spec, (1.0, 0.75, 0.5, 0.25))] + [FFNConfig.make_no_op()])
    rows = torch.from_numpy(dd.valid[: args.score_sequences])
    out = {}
    for li in (0, 15, 29):
        lib = _pair_library(spec, [li], attn, ffn)
        n = sum(1 for c in lib.candidates if c.first == li and c.block != spec.parent_block())
        t0 = now()
        score_library(parent, lib, rows, None, eval_sequences=len(rows), batch_size=8, progress=False, save=False)
        secs = now() - t0
        out[li] = {"candidates": n, "seconds": secs, "per_candidate_s": secs / n}
        print(f"scoring layer {li:2d}: {n} candidates on {rows.numel()} tokens in {secs:.1f} s "
              f"({secs / n:.2f} s each; {_load()})", flush=True)
    return {"tokens": int(rows.numel()), "layers": out, "load": _load()}


# ---- per-sequence KL -----------------------------------------------------------------------------------
@torch.no_grad()
def per_sequence_kl(parent, rows: torch.Tensor, cands: list[tuple[int, torch.nn.Module]], batch: int = 4) -> np.ndarray:
    """``(len(cands), len(rows))`` mean per-token KL(parent || child) of each candidate (one layer
    swapped) on each sequence; the parent's pass is shared per batch."""
    inner = parent.model
    out = np.zeros((len(cands), len(rows)))
    for b in range(0, len(rows), batch):
        ids = rows[b:b + batch]
        x = inner.embed_tokens(ids)
        pe = inner.rotary_emb(x, torch.arange(ids.shape[1])[None])
        xs = []
        for layer in inner.layers:
            xs.append(x)
            x = layer(x, pe)
        hp = inner.norm(x)
        lps = [F.log_softmax(parent.lm_head(hp[r]).float(), -1) for r in range(ids.shape[0])]
        negent = [(lp.exp() * lp).sum(-1) for lp in lps]
        for k, (li, m) in enumerate(cands):
            y = m(xs[li], pe)
            for j in range(li + 1, len(inner.layers)):
                y = inner.layers[j](y, pe)
            hq = inner.norm(y)
            for r in range(ids.shape[0]):
                lq = F.log_softmax(parent.lm_head(hq[r]).float(), -1)
                kl = negent[r] - torch.linalg.vecdot(lps[r].exp(), lq)
                out[k, b + r] = float(kl.clamp_min(0).mean())
    return out


def _spearman(a, b):
    from puzzlekit.scoring import spearman

    return spearman(list(a), list(b))


def part_variance(parent, dd, args) -> dict:
    from puzzlekit.model import init_child_layer

    spec = parent.config.parent_spec
    rows = torch.from_numpy(dd.valid[: args.var_sequences])
    calib = torch.from_numpy(dd.train[:4])
    with torch.no_grad():
        hs = parent(calib, output_hidden_states=True).hidden_states
    pe = parent.model.rotary_emb(hs[0], torch.arange(SEQ)[None])
    pb = spec.parent_block()
    cands, names = [], []
    for li in (0, 3, 9, 15, 22, 29):
        for b in (BlockConfig(AttentionConfig.gqa(1), pb.ffn), BlockConfig(pb.attention, FFNConfig.swiglu(384)),
                  BlockConfig(pb.attention, FFNConfig.swiglu(1152))):
            cands.append((li, init_child_layer(parent.model.layers[li], b, calib_inputs=hs[li], position_embeddings=pe)))
            names.append(f"L{li}/{b.key}")
    t0 = now()
    kl = per_sequence_kl(parent, rows, cands)
    secs = now() - t0
    n_all = kl.shape[1]
    mean = kl.mean(1)
    rse = {n: float(np.median(kl.std(1, ddof=1) / np.sqrt(n) / mean)) for n in (1, 2, 4, 8, 16, 32) if n <= n_all}
    rng = np.random.default_rng(0)
    rho = {}
    for n in (1, 2, 4, 8, 16):
        if n >= n_all:
            continue
        rs = [_spearman(kl[:, rng.choice(n_all, n, replace=False)].mean(1), mean) for _ in range(200)]
        rho[n] = {"median": float(np.median(rs)), "p10": float(np.percentile(rs, 10))}
    dom = {}
    print(f"variance: {len(cands)} candidates x {n_all} sequences of {SEQ} in {secs:.0f} s ({_load()})")
    for n, v in rse.items():
        print(f"  {n:2d} sequences ({n * SEQ:5d} tokens): median relative SE of the mean KL {v:.1%}"
              + (f"; Spearman vs all {n_all}: median {rho[n]['median']:.3f}, p10 {rho[n]['p10']:.3f}" if n in rho else ""))
    return {"candidates": names, "kl_mean": mean.tolist(), "kl_sd": kl.std(1, ddof=1).tolist(),
            "relative_se": rse, "spearman_vs_all": rho, "sequences": n_all, "seconds": secs, "domains": dom,
            "load": _load()}


def part_decoupled(parent, dd, args) -> dict:
    from puzzlekit.model import init_child_layer

    spec = parent.config.parent_spec
    rows = torch.from_numpy(dd.valid[: args.dec_sequences])
    calib = torch.from_numpy(dd.train[:4])
    with torch.no_grad():
        hs = parent(calib, output_hidden_states=True).hidden_states
    pe = parent.model.rotary_emb(hs[0], torch.arange(SEQ)[None])
    pb = spec.parent_block()
    attn = (pb.attention, AttentionConfig.gqa(1), AttentionConfig.make_no_op())
    ffn = tuple([pb.ffn] + [FFNConfig.swiglu(w) for w in _widths(spec, (0.75, 0.5, 0.25))] + [FFNConfig.make_no_op()])
    layers = (2, 10, 18, 26)
    cands, keys = [], []
    for li in layers:
        for a in attn:
            for f in ffn:
                b = BlockConfig(a, f)
                if b == pb:
                    continue
                cands.append((li, init_child_layer(parent.model.layers[li], b, calib_inputs=hs[li], position_embeddings=pe)))
                keys.append((li, a, f))
    t0 = now()
    kl = per_sequence_kl(parent, rows, cands).mean(1)
    secs = now() - t0
    val = {k: float(v) for k, v in zip(keys, kl)}
    pred, real, per_layer = [], [], {}
    for li in layers:
        pl, rl = [], []
        for a in attn[1:]:
            for f in ffn[1:]:
                p = val[(li, a, pb.ffn)] + val[(li, pb.attention, f)]
                pl.append(p)
                rl.append(val[(li, a, f)])
        pred += pl
        real += rl
        per_layer[li] = {"spearman": _spearman(pl, rl), "ratio_median": float(np.median(np.asarray(rl) / np.asarray(pl)))}
    rho_all = _spearman(pred, real)
    print(f"decoupled: {len(cands)} candidates on {rows.numel()} tokens in {secs:.0f} s; pair KL vs attention + FFN "
          f"KL: Spearman {rho_all:.3f} over {len(pred)} pairs; per layer " +
          ", ".join(f"L{li} {v['spearman']:.2f} (ratio {v['ratio_median']:.2f})" for li, v in per_layer.items()))
    return {"spearman_all": rho_all, "per_layer": {str(k): v for k, v in per_layer.items()},
            "pairs": [{"layer": li, "attention": a.short(), "ffn": f.short(), "kl": val[(li, a, f)]}
                      for (li, a, f) in keys], "tokens": int(rows.numel()), "seconds": secs, "load": _load()}


def part_heal(parent, dd, args) -> dict:
    """GKD step of a ~2x child, evaluation per 1K held-out tokens, 30 chat answers, one whole-model timing."""
    from puzzlekit.profilers.measured import measure_model

    from puzzlekit.architecture import Architecture, Scenario
    from puzzlekit.data import load_tokenizer
    from puzzlekit.distill import DistillConfig, distill
    from puzzlekit.eval import ParentReference, evaluate_model, greedy_answers
    from puzzlekit.fetch import smollm2_gguf
    from puzzlekit.model import assemble

    spec = parent.config.parent_spec
    pb = spec.parent_block()
    blocks = [BlockConfig(AttentionConfig.make_no_op() if i % 3 == 1 else pb.attention,
                          FFNConfig.swiglu(768 if i % 2 else 384)) for i in range(spec.num_hidden_layers)]
    child = assemble(parent, Architecture(spec, tuple(blocks)))
    train = torch.from_numpy(dd.train)
    res: dict = {"load": _load()}
    for b in (2, 4):
        t0 = now()
        distill(child, parent, train, DistillConfig(max_steps=3, batch_size=b, learning_rate=1e-5, mixed_precision="no",
                                                    log_every=0))
        res[f"gkd_step_s_batch{b}"] = (now() - t0) / 3
    ref_rows = {"python": dd.valid[:4]}
    t0 = now()
    ref = ParentReference.build(parent, ref_rows, batch_size=4)
    res["parent_reference_s_per_1k_tokens"] = (now() - t0) / 1.024
    t0 = now()
    evaluate_model(child, ref)
    res["evaluate_child_s_per_1k_tokens"] = (now() - t0) / 1.024
    tok = load_tokenizer(smollm2_gguf())
    for name, m in (("parent", parent), ("child", child)):
        t0 = now()
        greedy_answers(m, tok, max_new_tokens=16, batch_size=8)
        res[f"chat30_{name}_s"] = now() - t0
    for sc in (Scenario("local-cpu", "fp32", 1, 128, 16), Scenario("local-cpu", "fp32", 4, 128, 32)):
        t0 = now()
        tm = measure_model(parent, sc, threads=args.threads, repeats=3, warmup=1)
        res[f"measure_parent_{sc.batch}x{sc.prefill}+{sc.decode}"] = {"cost_s": now() - t0, "runtime_ms": tm.runtime_ms}
    print("heal/eval: " + ", ".join(f"{k} {v if isinstance(v, (str, dict)) else round(v, 2)}" for k, v in res.items()),
          flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["bld", "scoring", "variance", "decoupled", "heal", "all"], default="all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="BLD batch (sequences of 256)")
    ap.add_argument("--layer", type=int, default=15, help="BLD: the layer whose units are timed")
    ap.add_argument("--check-run", action="store_true", help="BLD: also time a real run_bld on layers 14-15")
    ap.add_argument("--score-sequences", type=int, default=8)
    ap.add_argument("--var-sequences", type=int, default=32)
    ap.add_argument("--dec-sequences", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()
    parent, dd = setup(args)
    print(f"SmolLM2-135M-Instruct, {args.threads} thread(s), {_load()}", flush=True)
    parts = ["bld", "scoring", "variance", "decoupled", "heal"] if args.part == "all" else [args.part]
    res = {"threads": args.threads}
    for p in parts:
        res[p] = globals()[f"part_{p}"](parent, dd, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
