"""Llama-Nemotron's deployment targets, measured with our roofline: LN-Super's throughput at the batch that
fits, LN-Ultra's latency with and without FFN fusion.  The library side of
``examples/ln_super/throughput_target.py`` (and of the LN presets).

Targets as the Llama-Nemotron report (arXiv 2505.00949) states them: LN-Super serves on one H100 in FP8
with about 300K cached tokens at ≥ 5× the throughput of Llama-3.3-70B; LN-Ultra serves on one 8×H100 node
(FP8, 3M cached tokens) at ≥ 1.5× lower latency than Llama-3.1-405B, reaching 1.71× after FFN fusion
(FFN Fusion, arXiv 2503.18908, which fused 49 attention-free FFNs of Ultra into 4).  Puzzle's MIP
(arXiv 2411.19146) solves one problem per batch size and keeps the best.  Quality: the replace-1-block
KL divergences of NVIDIA's Llama-3.3-70B block library (BLD-trained blocks; its H100 FP8 runtimes at
batch 256 × 1,200 tokens calibrate the roofline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

__all__ = ["LLAMA_33_70B", "LLAMA_31_405B", "parent_spec", "library_score", "describe", "ln_super_report",
           "ln_ultra_report", "unfused_blocks", "fit_hardware"]

#: Llama-3.3-70B's config.json dimensions (Super-49B keeps them).
LLAMA_33_70B = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
                "num_key_value_heads": 8, "num_hidden_layers": 80, "vocab_size": 128256}
#: Llama-3.1-405B's config.json dimensions.
LLAMA_31_405B = {"model_type": "llama", "hidden_size": 16384, "intermediate_size": 53248, "num_attention_heads": 128,
                 "num_key_value_heads": 8, "num_hidden_layers": 126, "vocab_size": 128256}
GIB = float(2**30)


def parent_spec(config: dict) -> Any:
    from ..architecture import ParentSpec

    return ParentSpec.from_hf_config(config)


def _published(name: str) -> Any:
    from ..architecture import Architecture
    from ..configs import builtin_config_path

    return Architecture.from_config(builtin_config_path(name))


def library_score(library: Any, blocks: Sequence[Any], metric: str = "kl_div") -> float:
    """Σ ``metric`` of an architecture whose every block is a candidate of its layer (e.g. Super-49B)."""
    total = 0.0
    for i, b in enumerate(blocks):
        js = [j for j in library.candidates_for_layer(i) if library.candidates[j].block == b
              and library.candidates[j].last == i]
        if not js:
            raise ConfigError(f"layer {i}: block {b.key} is not a candidate of the library")
        total += library.candidates[js[0]].metrics[metric]
    return total


def describe(blocks: Sequence[Any], spec: Any, ev: Any = None, ref: Any = None) -> dict[str, Any]:
    """Parameters, attention layers, KV bytes per token (FP8) and, with an evaluation, batch and throughput."""
    from ..accounting import block_kv_bytes_per_token, block_params, non_block_params

    d: dict[str, Any] = {
        "params": non_block_params(spec) + sum(block_params(spec, b) for b in blocks),
        "attention_layers": sum(1 for b in blocks if not b.attention.no_op),
        "kv_bytes_per_token": sum(block_kv_bytes_per_token(spec, b.attention, "fp8") for b in blocks),
    }
    if ev is not None:
        d.update({"batch": ev.batch, "tokens_per_s": ev.tokens_per_s,
                  "memory_gib": None if ev.memory_mib is None else ev.memory_mib / 1024})
        if ref is not None and ref.fits:
            d["speedup"] = ev.tokens_per_s / ref.tokens_per_s
    return d


def _child(fit: Any, sol: Any, target: float | None = None) -> dict[str, Any]:
    blocks = [fit.library.candidates[c].block for c in sol.candidates]
    d = describe(blocks, fit.spec, fit.evaluate(blocks), fit.reference())
    d.update({"target": target, "objective": sol.objective, "status": sol.status.value,
              "blocks": [b.key for b in blocks]})
    return d


def fit_hardware(library: Any, hardware: Any) -> tuple[Any, str]:
    """``hardware`` resolved for a deployment: ``"calibrated"`` (the roofline fitted to the NVlabs ``library``'s
    measured runtimes), a catalogue name, a profile path or a Hardware; with its source."""
    from puzzlekit.profilers import calibrate_nvlabs, resolve_hardware

    if hardware == "calibrated":
        res = calibrate_nvlabs(library, parent=library.parent)
        return res.hardware, res.hardware.source
    hw = resolve_hardware(hardware)
    return hw, hw.source


def _dense_batch(fit: Any, blocks: Sequence[Any], memory_mib: float, tokens_per_seq: int) -> int:
    """The largest batch (any integer) whose weights + KV cache of ``tokens_per_seq`` tokens per sequence fit."""
    from ..accounting import block_kv_bytes_per_token, block_params, non_block_params

    spec = fit.spec
    w = (non_block_params(spec) + sum(block_params(spec, b) for b in blocks)) * 1.0  # fp8: 1 byte per weight
    kv = sum(block_kv_bytes_per_token(spec, b.attention, "fp8") for b in blocks)
    return int((memory_mib * 2**20 - w) // (kv * tokens_per_seq)) if kv else 10**9


def _tput_at(fit: Any, blocks: Sequence[Any], batch: int) -> float:
    rt = fit.costs.non_block(batch)[0] + sum(fit.costs.block(b, batch)[0] for b in blocks)
    return 1000.0 * batch * fit.dep.sequence_length / rt


def _why_not_5x(fit: Any, sup_blocks: Sequence[Any], sup_t: float) -> dict[str, Any]:
    """What separates the roofline's ratio from NVIDIA's measured 5x: the parent's batch, set by the memory
    an engine keeps out of the KV cache; paging; per-kernel overhead (CUDA graphs)."""
    from dataclasses import replace

    from .deploy import FitCosts

    parent = list(fit.parent_arch.blocks)
    S = fit.dep.sequence_length
    lim = fit.dep.memory_gib * 1024

    def at_reserve(reserve_gib: float) -> dict[str, Any]:
        bp = _dense_batch(fit, parent, lim - reserve_gib * 1024, S)
        bs = min(1024, _dense_batch(fit, sup_blocks, lim - reserve_gib * 1024, S))
        ratio = _tput_at(fit, sup_blocks, bs) / _tput_at(fit, parent, bp) if bp >= 1 else math.inf
        return {"reserve_gib": reserve_gib, "parent_batch": bp, "super_batch": bs, "speedup": ratio}

    # memory an engine keeps out of the KV cache (any batch size, not only the deployment's set)
    rows = [at_reserve(r) for r in (0, 1, 2, 3, 4, 5, 6, 7, 8)]
    at5 = next((at_reserve(r / 10) for r in range(0, 200) if at_reserve(r / 10)["speedup"] >= 5), None)
    # paging: a paged cache holds what each sequence has written, on average prefill + decode/2 tokens
    paged = fit.dep.prefill + fit.dep.decode // 2
    bp_paged, bs_paged = _dense_batch(fit, parent, lim, paged), min(1024, _dense_batch(fit, sup_blocks, lim, paged))
    bp_full, bs_full = _dense_batch(fit, parent, lim, S), min(1024, _dense_batch(fit, sup_blocks, lim, S))
    # per-kernel overhead: CUDA graphs remove most launch gaps at decode
    low = replace(fit.dep, hardware=fit.costs.hw.with_factors(kernel_overhead=3e-6), min_kv_tokens=0)
    fc = FitCosts(fit.spec, low, fit.library)
    ov_ratio = fc.evaluate(sup_blocks).tokens_per_s / fc.evaluate(parent).tokens_per_s
    return {
        "reserve_table": rows, "reserve_for_5x": at5,
        # vLLM's EngineArgs default: the KV cache gets what is left of 90 % of the device's memory
        "vllm_default_utilization": at_reserve(fit.dep.memory_gib - 0.90 * fit.costs.hw.memory_bytes / GIB),
        "paged": {"tokens_per_sequence": paged, "parent_batch": [bp_full, bp_paged], "super_batch": [bs_full, bs_paged],
                  "speedup": [_tput_at(fit, sup_blocks, bs_full) / _tput_at(fit, parent, bp_full),
                              _tput_at(fit, sup_blocks, bs_paged) / _tput_at(fit, parent, bp_paged)]},
        "kernel_overhead_3us_speedup": ov_ratio, "kernel_overhead_us": fit.costs.hw.kernel_overhead * 1e6,
        "fixed_batch_256": {"speedup": _tput_at(fit, sup_blocks, 256) / _tput_at(fit, parent, 256),
                            "parent_fits": fit.reference().at(256)["fits"]},
    }


def ln_super_report(library: Any, *, hardware: Any = "calibrated", memory_gib: float = 76.0,
                    min_kv_tokens: int = 300_000, prefill: int = 1000, decode: int = 200,
                    speedups: Sequence[float] = (2.0, 3.0, 4.0, 5.0), objective: str = "kl_div",
                    front_levels: Sequence[float] = (), front_batches: Sequence[int] = ()) -> dict[str, Any]:
    """LN-Super's target on NVIDIA's Llama-3.3-70B block library (a path or an imported library).

    ``hardware``: ``"calibrated"`` (the H100 roofline fitted to the library's measured runtimes), a catalogue
    name or a Hardware.  Children keep ``min_kv_tokens`` cached tokens; the parent is the reference at the
    batch it fits.  ``front_levels`` (× the parent): the exact front over all batches at those targets, and
    for each of ``front_batches`` the front at that batch alone (for the plot).
    """
    from .. import import_nvlabs
    from .at_fit import AtFit
    from .deploy import Deployment

    t0 = time.perf_counter()
    lib = library if hasattr(library, "candidates") else import_nvlabs(library)
    if lib.parent is None:
        lib.parent = parent_spec(LLAMA_33_70B)
    hw, source = fit_hardware(lib, hardware)
    dep = Deployment(hardware=hw, dtype="fp8", prefill=prefill, decode=decode, memory_gib=memory_gib,
                     min_kv_tokens=min_kv_tokens, measured=False)
    fit = AtFit(lib, objective, dep)
    ref = fit.reference()
    sup_blocks = list(_published("super-49b").blocks)
    sup_ev = fit.evaluate(sup_blocks)
    sup = describe(sup_blocks, fit.spec, sup_ev, ref)
    sup["objective"] = library_score(lib, sup_blocks, objective)
    sc = lib.resolve_scenario()
    if lib.scenarios[sc].batch in dep.batches and all("runtime_ms" in lib.costs[sc].get(b.key, {}) for b in sup_blocks):
        # a cross-check: Super-49B and the parent at the library's own batch with NVIDIA's measured block runtimes
        b0 = lib.scenarios[sc].batch
        meas = sum(lib.costs[sc][b.key]["runtime_ms"] for b in sup_blocks) + fit.costs.non_block(b0)[0]
        sup["measured_runtime_tokens_per_s"] = {"batch": b0, "tokens_per_s": 1000.0 * b0 * dep.sequence_length / meas}
    out: dict[str, Any] = {
        "deployment": {"describe": dep.describe(), "memory_gib": memory_gib, "min_kv_tokens": min_kv_tokens,
                       "hardware": source, "monotone": fit.costs.monotone(fit.blocks, dep.batches),
                       "batches": list(dep.batches)},
        "parent": describe(list(fit.parent_arch.blocks), fit.spec, ref, ref), "super49b": sup,
    }
    # datasheet roofline for comparison (the figures)
    if hardware != "h100-sxm":
        d_fit = AtFit(lib, objective, Deployment(hardware="h100-sxm", dtype="fp8", prefill=prefill, decode=decode,
                                                 memory_gib=memory_gib, min_kv_tokens=min_kv_tokens, measured=False))
        d_ref, d_sup = d_fit.reference(), d_fit.evaluate(sup_blocks)
        d_max = d_fit.max_throughput(bound=sup["objective"])
        out["datasheet"] = {"parent": {"batch": d_ref.batch, "tokens_per_s": d_ref.tokens_per_s},
                            "super49b": {"batch": d_sup.batch, "tokens_per_s": d_sup.tokens_per_s,
                                         "speedup": d_sup.tokens_per_s / d_ref.tokens_per_s},
                            "largest_n_at_super_quality": d_max.speedup}
    # the largest N: at Super-49B's quality, and with no quality bound at all
    t1 = time.perf_counter()
    best = fit.max_throughput(bound=sup["objective"])
    out["largest_n"] = {"at_super_quality": {**_child(fit, best), "seconds": time.perf_counter() - t1},
                        "unbounded": _child(fit, fit.max_throughput())}
    # the children at each N, and Super-49B against the exact front
    kids = []
    for n in speedups:
        t1 = time.perf_counter()
        kids.append({**_child(fit, fit.search(min_speedup=n), n), "seconds": time.perf_counter() - t1})
    out["children"] = kids
    eq_t = fit.search(min_tokens_per_s=sup_ev.tokens_per_s)
    out["super_vs_front"] = {"equal_throughput_at_fit": _child(fit, eq_t), "equal_quality": out["largest_n"]["at_super_quality"]}
    if "memory_mib" in lib.cost_names and "runtime_ms" in lib.cost_names:
        from .api import search

        mem = sum(lib.costs[sc][b.key]["memory_mib"] for b in sup_blocks)
        rt = sum(lib.costs[sc][b.key]["runtime_ms"] for b in sup_blocks)
        s = search(lib, objective, {"memory_mib": mem, "runtime_ms": rt})
        out["super_vs_front"]["equal_library_memory_runtime"] = {
            "scenario": sc, "memory_mib": mem, "runtime_ms": rt, "objective": s.objective,
            "super_objective": sup["objective"]}
    out["why_not_5x"] = _why_not_5x(fit, sup_blocks, sup_ev.tokens_per_s)
    # timing: the whole batch scan against one fixed-batch solve at the same target
    from .api import solve_problem

    tau = 3.0 * ref.tokens_per_s
    t1 = time.perf_counter()
    AtFit(lib, objective, dep).search(min_tokens_per_s=tau)
    scan_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    solve_problem(fit.problem(256, tau))
    out["timing"] = {"scan_seconds": scan_s, "fixed_batch_solve_seconds": time.perf_counter() - t1,
                     "batches": len(dep.batches)}
    if front_levels:
        env = []
        for n, s in zip(front_levels, fit.front(front_levels)):
            env.append(None if s is None else {"target": n, "speedup": s.speedup, "objective": s.objective,
                                               "batch": s.batch})
        per = {}
        for b in front_batches:  # the front if the model had to serve at batch b: throughput at b
            per[str(b)] = [None if s is None else {"target": n, "objective": s.objective, "speedup": s.speedup}
                           for n, s in zip(front_levels, fit.front(front_levels, batches=[b]))]
        out["front"] = {"levels": list(front_levels), "envelope": env, "per_batch": per}
    out["seconds"] = time.perf_counter() - t0
    return out


def unfused_blocks(arch: Any, num_ffns: int = 49, min_width: int | None = None) -> list[Any]:
    """``arch``'s blocks with each fused FFN split back into the FFNs it came from.

    A published config holds only the fused FFNs (wider than the parent's, ``min_width``); FFN Fusion fused
    ``num_ffns`` of them (Ultra: 49 into 4).  Each fused FFN becomes ``k`` attention-free FFNs of the same
    total width, ``k`` proportional to its width (largest remainders, Σk = ``num_ffns``).  The roofline
    depends on the count and the total width only, not on how the width was shared.
    """
    from ..blocks import AttentionConfig, BlockConfig, FFNConfig

    wide = min_width or arch.parent.intermediate_size
    idx = [i for i, b in enumerate(arch.blocks) if b.ffn.intermediate_size and b.ffn.intermediate_size >= wide
           and b.attention.no_op]
    if not idx:
        raise ConfigError("the architecture has no fused (wider than min_width, attention-free) FFN")
    widths = [arch.blocks[i].ffn.intermediate_size for i in idx]
    share = [num_ffns * w / sum(widths) for w in widths]
    ks = [max(1, int(s)) for s in share]
    for j in sorted(range(len(ks)), key=lambda j: share[j] - int(share[j]), reverse=True)[:num_ffns - sum(ks)]:
        ks[j] += 1
    out = []
    for i, b in enumerate(arch.blocks):
        if i in idx:
            k, w = ks[idx.index(i)], b.ffn.intermediate_size
            out += [BlockConfig(AttentionConfig.make_no_op(), FFNConfig.swiglu(w // k + (r < w % k))) for r in range(k)]
        else:
            out.append(b)
    return out


def ln_ultra_report(*, hardware: Any = "h100-sxm", dtype: str = "fp8", prefill: int = 1024, decode: int = 256,
                    tp: int = 8, kv_tokens: int = 3_000_000, memory_gib: float = 76.0,
                    overheads_us: Sequence[float] = (0.0, 29.3)) -> dict[str, Any]:
    """LN-Ultra against Llama-3.1-405B on one 8×H100 node: latency (batch 1) of the parent, of Ultra as published
    (fused) and of Ultra with its fused FFNs split back; memory per GPU with ``kv_tokens`` cached tokens; and the
    throughput at the batch that fits.  ``overheads_us``: the same with other per-kernel overheads."""
    from ..architecture import Architecture, Scenario
    from ..profilers import architecture_cost, resolve_hardware
    from .deploy import Deployment, FitCosts

    hw = resolve_hardware(hardware)
    spec = parent_spec(LLAMA_31_405B)
    parent = Architecture.homogeneous(spec)
    ultra = _published("ultra-253b")
    unfused = unfused_blocks(ultra, min_width=spec.intermediate_size + 1)
    sc = Scenario(hw.name, dtype, 1, prefill, decode, tp)

    def lat(h: Any) -> dict[str, Any]:
        costs = {}
        for name, a in (("parent", parent), ("ultra_unfused", unfused), ("ultra", ultra)):
            c = architecture_cost(a, sc, h, parent=ultra.parent, kv_tokens=kv_tokens)
            costs[name] = {"latency_ms": c.runtime_ms, "decode_ms_per_token": c.decode_ms / max(1, decode),
                           "sequential_subblocks": c.sequential_subblocks, "memory_gib_per_gpu": c.memory_bytes / GIB,
                           "fits": c.memory_bytes <= memory_gib * GIB}
        p = costs["parent"]["latency_ms"]
        return {**costs, "puzzle_speedup": p / costs["ultra_unfused"]["latency_ms"],
                "fused_speedup": p / costs["ultra"]["latency_ms"],
                "fusion_gain": costs["ultra_unfused"]["latency_ms"] / costs["ultra"]["latency_ms"]}

    out: dict[str, Any] = {"scenario": sc.name, "kv_tokens": kv_tokens, "memory_gib": memory_gib,
                           "hardware": hw.source, "kernel_overhead_us": hw.kernel_overhead * 1e6,
                           "fused_ffns": 49, "unfused_ffns_added": len(unfused) - len(ultra.blocks) + 4,
                           "latency": lat(hw), "published": {"puzzle_speedup": 1.53, "fused_speedup": 1.71}}
    out["overheads"] = {f"{o:g}": lat(hw.with_factors(kernel_overhead=o * 1e-6)) for o in overheads_us}
    dep = Deployment(hardware=hw, dtype=dtype, prefill=prefill, decode=decode, tp=tp, memory_gib=memory_gib,
                     batches=tuple(sorted({*Deployment().batches, 1536, 2048, 3072, 4096})))
    fc = FitCosts(ultra.parent, dep)
    pe, ue = fc.evaluate(parent.blocks), fc.evaluate(ultra.blocks)
    out["throughput_at_fit"] = {"parent": {"batch": pe.batch, "tokens_per_s": pe.tokens_per_s},
                                "ultra": {"batch": ue.batch, "tokens_per_s": ue.tokens_per_s},
                                "speedup": ue.tokens_per_s / pe.tokens_per_s if pe.fits else None}
    out["params"] = {"parent": describe(parent.blocks, spec)["params"], "ultra": describe(ultra.blocks, spec)["params"]}
    return out


# ---- presentation -------------------------------------------------------------------------------------
def plot_super_front(report: dict[str, Any], path: Any) -> None:
    """The throughput / quality front over batch sizes (needs the report's ``front``), with the parent,
    the published Super-49B and the children at each N; saved as an image (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'puzzlekit[plot]'") from None
    import os

    from ..io import atomic_path

    fr = report.get("front")
    if not fr:
        raise ConfigError("the report has no front: run ln_super_report(..., front_levels=[...])")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    cmap = plt.get_cmap("viridis")
    per = fr["per_batch"]
    for k, (b, pts) in enumerate(per.items()):
        xy = sorted((p["speedup"], p["objective"]) for p in pts if p)
        if xy:
            ax.plot(*zip(*xy), "-", lw=1, color=cmap(k / max(1, len(per) - 1)), alpha=0.8, label=f"batch {b} only")
    env = sorted({(p["speedup"], p["objective"]) for p in fr["envelope"] if p})
    ax.plot(*zip(*env), "k.-", lw=2.2, ms=5, label="exact optimum at each target, best batch that fits")
    ax.plot([1.0], [0.0], "k*", ms=12, label=f"Llama-3.3-70B (batch {report['parent']['batch']})")
    sup = report["super49b"]
    ax.plot([sup["speedup"]], [sup["objective"]], "rD", ms=8,
            label=f"Super-49B as published (batch {sup['batch']})")
    for c in report["children"]:
        ax.plot([c["speedup"]], [c["objective"]], "o", color="tab:orange", ms=7, mec="k")
        ax.annotate(f"{c['target']:g}x: {c['params'] / 1e9:.1f}B, {c['attention_layers']} attn, b{c['batch']}",
                    (c["speedup"], c["objective"]), textcoords="offset points", xytext=(6, -10), fontsize=7.5)
    ax.plot([], [], "o", color="tab:orange", mec="k", label="our children (min ΣKL at N×)")
    ax.axvline(5.0, ls=":", color="gray")
    ax.text(5.03, ax.get_ylim()[1] * 0.03, "NVIDIA's 5× (measured)", fontsize=7.5, color="gray", rotation=90)
    ax.set_xlabel("throughput at the batch that fits, × Llama-3.3-70B at the batch it fits")
    ax.set_ylabel("Σ replace-1-block KL (NVIDIA's library)")
    ax.set_title(f"LN-Super on one H100, FP8, ≥ {report['deployment']['min_kv_tokens'] / 1e3:.0f}K cached tokens "
                 "(roofline)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=os.path.splitext(str(path))[1].lstrip(".") or "png", dpi=110)
    plt.close(fig)


def super_markdown(r: dict[str, Any]) -> str:
    """LN-Super's figures as Markdown tables."""
    p, s, ln = r["parent"], r["super49b"], r["largest_n"]["at_super_quality"]
    ds = r.get("datasheet")
    L = [f"Deployment: {r['deployment']['describe']}, memory ≤ {r['deployment']['memory_gib']:g} GiB, roofline: "
         f"{r['deployment']['hardware']}.", "",
         "| model | ΣKL | params | attention layers | batch | tokens/s | × parent |", "|---|---:|---:|---:|---:|---:|---:|",
         f"| Llama-3.3-70B (reference, no 300K cache) | 0 | {p['params'] / 1e9:.1f}B | {p['attention_layers']} | "
         f"{p['batch']} | {p['tokens_per_s']:,.0f} | 1.00 |",
         f"| Super-49B as published | {s['objective']:.4f} | {s['params'] / 1e9:.1f}B | {s['attention_layers']} | "
         f"{s['batch']} | {s['tokens_per_s']:,.0f} | {s['speedup']:.2f} |"]
    for c in r["children"]:
        L.append(f"| child at ≥ {c['target']:g}× | {c['objective']:.4f} | {c['params'] / 1e9:.1f}B | "
                 f"{c['attention_layers']} | {c['batch']} | {c['tokens_per_s']:,.0f} | {c['speedup']:.2f} |")
    L.append(f"| fastest child within Super-49B's ΣKL | {ln['objective']:.4f} | {ln['params'] / 1e9:.1f}B | "
             f"{ln['attention_layers']} | {ln['batch']} | {ln['tokens_per_s']:,.0f} | **{ln['speedup']:.2f}** |")
    v = r["super_vs_front"]
    L += ["", "Super-49B against the exact front (ΣKL, lower is better):", "",
          "| at equal | Super-49B | our front |", "|---|---:|---:|"]
    if "equal_library_memory_runtime" in v:
        e = v["equal_library_memory_runtime"]
        L.append(f"| memory ({e['memory_mib']:,.0f} MiB) and runtime ({e['runtime_ms']:,.0f} ms) in the library's own "
                 f"b256 costs | {e['super_objective']:.4f} | {e['objective']:.4f} |")
    L.append(f"| throughput at the batch that fits ({s['tokens_per_s']:,.0f} tokens/s) | {s['objective']:.4f} | "
             f"{v['equal_throughput_at_fit']['objective']:.4f} |")
    L.append(f"| ΣKL ({s['objective']:.4f}): throughput | {s['speedup']:.3f}× | {ln['speedup']:.3f}× |")
    if ds:
        L += ["", f"Datasheet roofline (uncalibrated): parent {ds['parent']['tokens_per_s']:,.0f} tokens/s at batch "
              f"{ds['parent']['batch']}, Super-49B {ds['super49b']['tokens_per_s']:,.0f} at batch "
              f"{ds['super49b']['batch']} ({ds['super49b']['speedup']:.2f}×); largest N at Super-49B's ΣKL "
              f"{ds['largest_n_at_super_quality']:.2f}×."]
    w = r["why_not_5x"]
    L += ["", "What moves the ratio Super-49B / parent (any batch size, both models):", "",
          "| memory kept out of the KV cache | parent batch | Super-49B batch | × parent |", "|---:|---:|---:|---:|"]
    L += [f"| {x['reserve_gib']:g} GiB | {x['parent_batch']} | {x['super_batch']} | {x['speedup']:.2f} |"
          for x in w["reserve_table"]]
    v = w["vllm_default_utilization"]
    L.append(f"| {v['reserve_gib']:.1f} GiB (vLLM's default: 90 % of the device) | {v['parent_batch']} | "
             f"{v['super_batch']} | {v['speedup']:.2f} |")
    if w["reserve_for_5x"]:
        x = w["reserve_for_5x"]
        L.append(f"\n5× needs {x['reserve_gib']:.1f} GiB kept out of the KV cache (parent batch {x['parent_batch']}, "
                 f"Super-49B batch {x['super_batch']}).")
    pg = w["paged"]
    L.append(f"Paged KV cache ({pg['tokens_per_sequence']} tokens per sequence on average): parent batch "
             f"{pg['parent_batch'][0]} → {pg['parent_batch'][1]}, Super-49B {pg['super_batch'][0]} → "
             f"{pg['super_batch'][1]}: {pg['speedup'][0]:.2f}× → {pg['speedup'][1]:.2f}×. Per-kernel overhead "
             f"{w['kernel_overhead_us']:.1f} µs → 3 µs (CUDA graphs): {s['speedup']:.2f}× → "
             f"{w['kernel_overhead_3us_speedup']:.2f}×. At a fixed batch 256 (the parent does not fit): "
             f"{w['fixed_batch_256']['speedup']:.2f}×.")
    if "measured_runtime_tokens_per_s" in s:
        m = s["measured_runtime_tokens_per_s"]
        L.append(f"Super-49B at batch {m['batch']} with NVIDIA's measured block runtimes: {m['tokens_per_s']:,.0f} tokens/s "
                 f"({m['tokens_per_s'] / p['tokens_per_s']:.2f}× the roofline parent).")
    t = r["timing"]
    L += ["", f"Batch scan ({t['batches']} batches, cost tables included): {t['scan_seconds']:.2f} s; one fixed-batch "
          f"solve: {t['fixed_batch_solve_seconds']:.2f} s."]
    return "\n".join(L)


def ultra_markdown(u: dict[str, Any]) -> str:
    """LN-Ultra's figures as a Markdown table."""
    la = u["latency"]
    L = [f"Scenario {u['scenario']} (latency: prefill + decode of one sequence), {u['kv_tokens'] / 1e6:g}M cached "
         f"tokens, ≤ {u['memory_gib']:g} GiB per GPU.", "",
         "| model | latency | decode ms/token | sequential sub-blocks | GiB per GPU with the cache | × parent |",
         "|---|---:|---:|---:|---:|---:|"]
    for name, label in (("parent", "Llama-3.1-405B"), ("ultra_unfused", "Ultra-253B, fused FFNs split back (49)"),
                        ("ultra", "Ultra-253B as published (fused)")):
        c = la[name]
        sp = la["parent"]["latency_ms"] / c["latency_ms"]
        L.append(f"| {label} | {c['latency_ms']:,.0f} ms | {c['decode_ms_per_token']:.2f} | {c['sequential_subblocks']} | "
                 f"{c['memory_gib_per_gpu']:.1f}{'' if c['fits'] else ' (does not fit)'} | {sp:.3f} |")
    L += ["", f"Report: {u['published']['puzzle_speedup']}× from Puzzle alone, {u['published']['fused_speedup']}× with "
          f"fusion; roofline ({u['kernel_overhead_us']:g} µs per kernel): {la['puzzle_speedup']:.2f}× and "
          f"{la['fused_speedup']:.2f}× (fusion {la['fusion_gain']:.3f}×)."]
    for o, v in u["overheads"].items():
        L.append(f"With {o} µs per kernel: {v['puzzle_speedup']:.2f}× and {v['fused_speedup']:.2f}× "
                 f"(fusion {v['fusion_gain']:.3f}×).")
    t = u["throughput_at_fit"]
    L.append(f"Throughput at the batch that fits (8 GPUs): parent batch {t['parent']['batch']}, Ultra batch "
             f"{t['ultra']['batch']}: {t['speedup']:.2f}×.")
    return "\n".join(L)
