"""A seeded synthetic search problem shaped like a real Puzzle block library.

Used by the solver benchmark (162 layers × 200 candidates × 3 budgets) and the
tests.  It mirrors the structure of NVIDIA's libraries instead of being
uniform noise:

* a candidate is an (attention variant, FFN variant) pair: 10 attention
  variants (GQA with 8/4/2/1 KV heads, full or sliding-window, a linear layer,
  no-op) × 20 FFN variants (18 widths from 100 % down to 5 % of the parent's
  intermediate size, a linear layer, no-op) = 200 candidates per layer;
* costs are additive over the two sub-blocks and equal across layers (as when
  profiled per variant): memory (weights + KV cache for ``kv_tokens`` tokens,
  MiB), runtime (ms, a compute part plus a KV-read part) and parameters, so the
  three are correlated but not proportional (sliding windows and fewer KV
  heads save memory and runtime, not parameters);
* the score (a KL-like damage, minimised) grows as blocks shrink: per layer,
  attention damage × that layer's attention sensitivity + FFN damage × its FFN
  sensitivity (sensitivities are log-normal around a U-shaped profile over
  depth: first and last layers matter most), a small interaction term, and
  multiplicative log-normal noise per (layer, variant);
* a few non-monotone cases: in about 3 % of (layer, variant) pairs a smaller
  variant scores better than a larger one (its damage is scaled down);
* the three budgets are fractions of the parent's totals chosen so that all
  three bind at the optimum (``budgets_binding`` in the benchmark checks it).
"""

from __future__ import annotations

import numpy as np

from .problem import Problem

__all__ = ["synthetic_problem"]

# (name, KV heads or None, window fraction of the context, kind)
_ATTN = [("gqa8", 8, 1.0), ("gqa4", 4, 1.0), ("gqa2", 2, 1.0), ("gqa1", 1, 1.0),
         ("gqa8-sw", 8, 0.25), ("gqa4-sw", 4, 0.25), ("gqa2-sw", 2, 0.25), ("gqa1-sw", 1, 0.25),
         ("linear", 0, 0.0), ("no_op", 0, 0.0)]
_FFN_FRAC = [1.0, 0.9, 0.87, 0.8, 0.75, 0.7, 0.62, 0.56, 0.5, 0.44, 0.37, 0.31, 0.25, 0.2, 0.15, 0.1, 0.075, 0.05]


def synthetic_problem(
    num_layers: int = 162,
    seed: int = 0,
    *,
    fractions: tuple[float, float, float] = (0.42, 0.485, 0.5),
    kv_tokens: int = 300_000,
) -> Problem:
    """The seeded synthetic problem (see the module docstring); budgets on memory, runtime and params.

    ``fractions`` are the memory, runtime and parameter budgets as fractions of
    the parent's (every layer at full size) block totals.
    """
    r = np.random.default_rng(seed)
    L = int(num_layers)
    hidden, inter, heads, head_dim = 8192, 28672, 64, 128
    bytes_w, bytes_kv = 1.0, 1.0  # FP8 weights and cache
    # attention sub-block costs
    a_params, a_mem, a_rt, a_dmg = [], [], [], []
    for name, kv, win in _ATTN:
        if name == "no_op":
            p, kvb, rt, d = 0.0, 0.0, 0.0, 1.0
        elif name == "linear":
            p = float(hidden * hidden)
            kvb, rt, d = 0.0, 0.03, 0.55
        else:
            p = float(hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2)
            kvb = 2 * kv * head_dim * bytes_kv * win  # K and V per token
            rt = 0.05 + 0.10 * (kv / 8) * win + 0.05 * win  # projections + KV reads + scores
            d = {8: 0.0, 4: 0.04, 2: 0.10, 1: 0.19}[kv] + (0.12 if win < 1 else 0.0)
        a_params.append(p)
        a_mem.append((p * bytes_w + kvb * kv_tokens) / 2**20)
        a_rt.append(rt)
        a_dmg.append(d)
    f_params, f_mem, f_rt, f_dmg = [], [], [], []
    for frac in _FFN_FRAC:
        p = 3.0 * hidden * inter * frac
        f_params.append(p)
        f_mem.append(p * bytes_w / 2**20)
        f_rt.append(0.02 + 0.30 * frac)
        f_dmg.append((1.0 - frac) ** 1.6 * 0.8)
    for p, rt, d in ((float(hidden * hidden), 0.03, 0.62), (0.0, 0.0, 1.0)):  # linear, no-op
        f_params.append(p)
        f_mem.append(p * bytes_w / 2**20)
        f_rt.append(rt)
        f_dmg.append(d)
    A, F = len(_ATTN), len(f_params)
    ai, fi = np.repeat(np.arange(A), F), np.tile(np.arange(F), A)
    cost_v = np.column_stack([np.asarray(a_mem)[ai] + np.asarray(f_mem)[fi],
                              np.asarray(a_rt)[ai] + np.asarray(f_rt)[fi],
                              np.asarray(a_params)[ai] + np.asarray(f_params)[fi]])
    # sensitivities: U-shaped over depth, log-normal per layer
    depth = np.linspace(-1.0, 1.0, L)
    shape = 0.4 + 1.2 * depth**4
    s_attn = shape * r.lognormal(0.0, 0.5, L) * 0.05
    s_ffn = shape * r.lognormal(0.0, 0.5, L) * 0.08
    da = np.asarray(a_dmg)[ai][None, :] * r.lognormal(0.0, 0.15, (L, A))[:, ai]
    df = np.asarray(f_dmg)[fi][None, :] * r.lognormal(0.0, 0.15, (L, F))[:, fi]
    flip = r.random((L, A * F)) < 0.03  # a few non-monotone cases: a smaller block that scores better
    df = np.where(flip, df * r.uniform(0.3, 0.8, (L, A * F)), df)
    score = s_attn[:, None] * da + s_ffn[:, None] * df + 0.2 * np.sqrt(s_attn * s_ffn)[:, None] * da * df
    score *= r.lognormal(0.0, 0.05, score.shape)
    first = np.repeat(np.arange(L), A * F)
    costs = np.tile(cost_v, (L, 1))
    parent = cost_v[0] * L
    upper = parent * np.asarray(fractions, dtype=float)
    labels = tuple(f"L{i}:{_ATTN[a][0]}|ffn{fi_}" for i in range(L) for a, fi_ in zip(ai, fi))
    return Problem(L, first, first, score.ravel(), costs, ("memory_mib", "runtime_ms", "num_params"),
                   upper=upper, objective_name="kl_div", labels=labels,
                   meta={"generator": "puzzlekit.search.synthetic", "seed": seed})
