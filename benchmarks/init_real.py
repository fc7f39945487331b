"""Child initialisation on a real pretrained parent: SmolLM2-135M-Instruct (30 layers).

    python benchmarks/init_real.py                         # FFN 75/50/25/12.5 %, KV 3 -> 1, 30 layers
    python benchmarks/init_real.py --json out.json --tokens 4096

For every layer, each pruned sub-block is initialised from the parent's by each method of
:func:`puzzlekit.model.init_child_layer` and compared with the parent sub-block it replaces, as the
normalised MSE of the sub-block's output (its update to the residual stream)
``NMSE = mean((child - parent)^2) / mean(parent^2)``, on the layer's real inputs:

* FFN channel pruning to a width: ``contribution`` (channels kept by ``mean|X_i| * ||W_down[:, i]||``
  on calibration text), ``truncate`` (the first channels), ``random`` (mean of 3 seeds);
* KV heads 3 -> 1: ``mean_pool`` (the average of the parent's K and V heads), ``first``, ``random``
  (mean of 3 seeds);
* for reference, linear attention / linear FFN initialised from the parent (``W_o W_v``, ``W_down W_up``).

Text: the two no-hub domains of :mod:`puzzlekit.corpus` (Shakespeare, the Python standard library);
the contribution scores are computed on ``train`` rows and every NMSE on ``valid`` rows (other
documents), ``--tokens`` of each.  Deterministic apart from float rounding; no timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig


def _sub_nmse(child: torch.Tensor, parent: torch.Tensor) -> float:
    from puzzlekit.model import normalized_mse

    return normalized_mse(child, parent)


@torch.no_grad()
def layer_inputs(parent, ids: torch.Tensor) -> tuple[list[torch.Tensor], tuple]:
    out = parent(input_ids=ids, output_hidden_states=True, use_cache=False)
    x = parent.model.embed_tokens(ids)
    pe = parent.model.rotary_emb(x, torch.arange(ids.shape[1])[None])
    return list(out.hidden_states[: len(parent.model.layers)]), pe


@torch.no_grad()
def run(args: argparse.Namespace) -> dict:
    from puzzlekit.corpus import build_domain_data, two_domain_documents
    from puzzlekit.data import load_tokenizer
    from puzzlekit.fetch import smollm2_gguf
    from puzzlekit.model import init_child_layer, load_parent

    torch.set_num_threads(args.threads)
    path = smollm2_gguf()
    parent = load_parent(path).requires_grad_(False)
    tok = load_tokenizer(path)
    spec = parent.config.parent_spec
    rows = args.tokens // args.seq_len
    dd = build_domain_data(two_domain_documents(), tok, seq_len=args.seq_len, train_tokens=args.tokens // 2,
                           valid_tokens=args.tokens // 2, test_tokens=args.seq_len, seed=0)
    calib = torch.from_numpy(dd.train[:rows])
    evalr = torch.from_numpy(dd.valid[:rows])
    xs_cal, pe = layer_inputs(parent, calib)
    xs_ev, _ = layer_inputs(parent, evalr)
    widths = [max(8, 8 * round(spec.intermediate_size * f / 8)) for f in args.ffn_fractions]
    pblock = spec.parent_block()
    res: dict = {"ffn": {w: {m: [] for m in ("contribution", "truncate", "random")} for w in widths},
                 "kv": {m: [] for m in ("mean_pool", "first", "random")}, "linear_ffn": [], "linear_attention": []}
    t0 = time.perf_counter()
    for i, player in enumerate(parent.model.layers):
        x, xc = xs_ev[i], xs_cal[i]
        h = x + player.attn_delta(x, pe)
        ffn_ref = player.ffn_delta(h)
        attn_ref = player.attn_delta(x, pe)
        for w in widths:
            block = BlockConfig(pblock.attention, FFNConfig.swiglu(w))
            for m in ("contribution", "truncate", "random"):
                vals = []
                for seed in (range(3) if m == "random" else (0,)):
                    child = init_child_layer(player, block, ffn_method=m, calib_inputs=xc, position_embeddings=pe,
                                             seed=seed)
                    vals.append(_sub_nmse(child.ffn_delta(h), ffn_ref))
                res["ffn"][w][m].append(statistics.fmean(vals))
        for m in ("mean_pool", "first", "random"):
            vals = []
            for seed in (range(3) if m == "random" else (0,)):
                child = init_child_layer(player, BlockConfig(AttentionConfig.gqa(1), pblock.ffn), kv_method=m,
                                         seed=seed)
                vals.append(_sub_nmse(child.attn_delta(x, pe), attn_ref))
            res["kv"][m].append(statistics.fmean(vals))
        lin = init_child_layer(player, BlockConfig(AttentionConfig.make_linear(), FFNConfig.make_linear()))
        res["linear_attention"].append(_sub_nmse(lin.attn_delta(x, pe), attn_ref))
        res["linear_ffn"].append(_sub_nmse(lin.ffn_delta(h), ffn_ref))
        if args.verbose:
            print(f"layer {i:2d}: ffn {widths[-2]} contribution {res['ffn'][widths[-2]]['contribution'][-1]:.3f} "
                  f"truncate {res['ffn'][widths[-2]]['truncate'][-1]:.3f}; kv mean_pool {res['kv']['mean_pool'][-1]:.3f} "
                  f"first {res['kv']['first'][-1]:.3f}", flush=True)
    res["seconds"] = time.perf_counter() - t0
    res["tokens_each"] = int(rows * args.seq_len)
    res["widths"] = widths
    return res


def summary(v: list[float]) -> str:
    a = np.asarray(v)
    return f"{np.mean(a):.3f} (median {np.median(a):.3f}, {a.min():.3f}-{a.max():.3f})"


def report(res: dict, spec_ffn: int = 1536) -> None:
    print(f"\nNMSE of the sub-block output to the parent's, mean over 30 layers (median, range); "
          f"{res['tokens_each']} calibration + {res['tokens_each']} evaluation tokens\n")
    print("| FFN width | contribution | truncate | random (3 seeds) | contribution best in |")
    print("|---|---|---|---|---|")
    for w in res["widths"]:
        d = res["ffn"][w]
        best = sum(c < min(t, r) for c, t, r in zip(d["contribution"], d["truncate"], d["random"]))
        print(f"| {w} ({w / spec_ffn:.1%}) | {summary(d['contribution'])} | {summary(d['truncate'])} | "
              f"{summary(d['random'])} | {best}/{len(d['contribution'])} layers |")
    d = res["kv"]
    best = sum(a < min(b, c) for a, b, c in zip(d["mean_pool"], d["first"], d["random"]))
    print(f"\n| KV heads 3 -> 1 | mean_pool | first | random (3 seeds) | mean_pool best in |\n|---|---|---|---|---|\n"
          f"| | {summary(d['mean_pool'])} | {summary(d['first'])} | {summary(d['random'])} | {best}/{len(d['first'])} layers |")
    print(f"\nlinear attention (W_o W_v): {summary(res['linear_attention'])}; linear FFN (W_down W_up): "
          f"{summary(res['linear_ffn'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096, help="calibration tokens and evaluation tokens (each)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--ffn-fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.75, 0.5, 0.25, 0.125])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the per-layer numbers here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    res = run(args)
    report(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**res, "ffn": {str(k): v for k, v in res["ffn"].items()}}, f, indent=1)
    print(f"\n{res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
