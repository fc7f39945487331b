"""The dry run's planning at real scale, without GPUs or weights: the parent and the child on the meta
device, the library (NVIDIA's imported one when ``search.library`` points at it, else a synthetic one),
the deployment search (the same :func:`~puzzlekit.pipeline.stages.search.deployment_search` as the
``search`` stage), the child's analytic costs, the FFN fusion plan, and what the stages would train.
Writes ``plan.json`` and the child's Nemotron-NAS ``child_config.json``."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..architecture import Architecture, ParentSpec, Scenario
from ..errors import ConfigError
from ..io import atomic_write_json

__all__ = ["plan", "summary", "meta_model", "synthetic_library", "load_library"]

logger = logging.getLogger("puzzlekit.pipeline")


def meta_model(arch: Architecture) -> Any:
    """The model on the meta device (no memory): its real module tree and parameter count."""
    import torch

    from ..model import PuzzleForCausalLM

    with torch.device("meta"):
        return PuzzleForCausalLM.from_architecture(arch)


def synthetic_library(spec: ParentSpec, scenario: Scenario) -> Any:
    """Puzzle's default space on every layer, analytic costs, and a *synthetic* KL score per candidate.

    The score is a stand-in for BLD + replace-1-block scoring (which need the weights): a layer
    importance that is high at both ends of the network times how much of the parent block is removed
    (FFN removal costs more than attention removal, as Puzzle found).  Labelled as synthetic in the plan.
    """
    from ..profilers import profile_library

    lib = profile_library(spec, scenario)
    if not any(c.block == spec.parent_block() for c in lib.candidates):
        # a tiny parent: the profilers' default widths are rounded past its FFN; use BLD's space instead
        from ..bld import default_search_space
        from ..profilers.library import library_from_space

        lib = profile_library(library_from_space(spec, default_search_space(spec).blocks()), scenario, parent=spec)
    L = lib.num_layers
    for c in lib.candidates:
        i = c.first
        w = 1.0 + 3.0 * math.exp(-i / (0.05 * L)) + 2.0 * math.exp(-(L - 1 - i) / (0.05 * L))
        a, f = c.block.attention, c.block.ffn
        att = 1.0 if a.no_op else 0.6 if a.linear else 0.25 * (1 - a.num_kv_heads / spec.num_key_value_heads)
        ffn = 1.0 if f.no_op else 0.8 if f.linear else (1 - f.intermediate_size / spec.intermediate_size) ** 1.5
        c.metrics["kl_div"] = 0.01 * w * (0.4 * att + 1.0 * ffn)
    lib.meta["source"] = "synthetic (analytic costs, synthetic kl_div scores)"
    return lib


def load_library(cfg: Any, spec: ParentSpec, scenario: Scenario) -> tuple[Any, str]:
    """NVIDIA's imported library when ``search.library`` names an NVlabs folder that exists (relative paths
    from the working directory), else the synthetic one."""
    from .. import import_nvlabs

    if cfg.search.library:
        p = Path(cfg.search.library).expanduser()
        if (p / "block_library.json").exists():
            lib = import_nvlabs(p)
            if lib.num_layers != spec.num_hidden_layers:
                raise ConfigError(f"library {p}: {lib.num_layers} layers, the parent has {spec.num_hidden_layers}")
            lib.parent = spec
            return lib, f"imported: {p}"
        logger.info("library %s not found: using a synthetic one", p)
    return synthetic_library(spec, scenario), "synthetic"


def plan(cfg: Any) -> dict[str, Any]:
    """Plan the pipeline ``cfg`` at its real scale; write ``plan.json`` and ``child_config.json`` into
    ``cfg.output_dir``; return the plan."""
    from ..profilers import architecture_cost
    from .stages.search import deployment_search

    t0 = time.perf_counter()
    out = Path(cfg.output_dir).expanduser()
    spec, sc = cfg.parent_spec(), cfg.scenario
    parent_arch = Architecture.homogeneous(spec)
    parent = meta_model(parent_arch)
    parent_params = sum(p.numel() for p in parent.parameters())
    logger.info("parent on the meta device: %.1fB parameters", parent_params / 1e9)
    lib, source = load_library(cfg, spec, sc)
    scen = lib.resolve_scenario(None)
    logger.info("library ready (%s, %d candidates); searching", source, len(lib))
    sol, ref = deployment_search(cfg, lib, spec, scen)
    child_arch = Architecture(spec, tuple(lib.candidates[j].block for j in sol.candidates))
    child = meta_model(child_arch)
    child_params = sum(p.numel() for p in child.parameters())
    kv = cfg.search.kv_tokens
    pc = architecture_cost(parent_arch, sc, sc.hardware, kv_tokens=kv)
    cc = architecture_cost(child_arch, sc, sc.hardware, kv_tokens=kv)
    fusion, final_arch, cc_final = None, child_arch, cc
    if "fuse" in cfg.stages:
        from ..fusion import find_ffn_runs, fused_architecture, make_plan

        fp = make_plan(child_arch, leave_last=cfg.fuse.leave_last, max_group=cfg.fuse.max_group or None)
        final_arch = fused_architecture(child_arch, fp)
        cc_final = architecture_cost(final_arch, sc, sc.hardware, kv_tokens=kv)
        fusion = {"ffn_runs": [str(r) for r in find_ffn_runs(child_arch)],
                  "fused_ffns": sum(len(g) for g in fp.groups), "groups": [list(g) for g in fp.groups],
                  "runtime_ms": cc_final.runtime_ms, "speedup_vs_parent": pc.runtime_ms / cc_final.runtime_ms,
                  "sequential_subblocks": cc_final.sequential_subblocks}
    n_cands = sum(1 for c in lib.candidates if c.block != spec.parent_block())
    has = set(cfg.stages)
    would_train = {
        "bld": {"trainings": n_cands, "tokens_each": cfg.bld.tokens,
                "note": "decoupled BLD: each non-parent candidate mimics its parent block (one teacher pass feeds all)"},
        "score": {"replace_1_block_evaluations": n_cands, "metric": cfg.search.objective},
        "gkd": {"tokens": cfg.heal.tokens, "steps": cfg.heal.steps, "loss": "cosine(hidden) + KL(parent||child)",
                "trainable_params": child_params, "stage": "heal"} if "heal" in has else None,
        "cpt": {"tokens": cfg.cpt.tokens} if "cpt" in has else None,
        "sft": {"stages": list(cfg.sft.stages), "stage": "sft"} if "sft" in has else None,
        "rl": {"algorithm": "GRPO, accuracy + format rewards, pass-rate curriculum", "stage": "rl"} if "rl" in has
        else None,
    }
    report = {
        "name": cfg.name, "dry_run": True, "library": source, "scenario": asdict(sc), "num_gpus": cfg.num_gpus,
        "parent": {"num_layers": spec.num_hidden_layers, "params": parent_params,
                   "analytic_runtime_ms": pc.runtime_ms, "kv_bytes_per_token": pc.kv_bytes_per_token,
                   "memory_gib": pc.memory_bytes / 2**30},
        "search": {"objective": cfg.search.objective, "value": sol.objective, "costs": sol.costs, "solver": sol.solver,
                   "status": sol.status.name, "gap": sol.gap, "solve_s": sol.solve_seconds,
                   "library_parent_runtime_ms": ref},
        "child": {"params": child_params, "params_ratio": child_params / parent_params,
                  "attention_layers": sum(1 for b in child_arch.blocks if not b.attention.no_op),
                  "attention_free_runs": child_arch.attention_free_runs(),
                  "analytic_runtime_ms": cc.runtime_ms, "analytic_speedup": pc.runtime_ms / cc.runtime_ms,
                  "kv_bytes_per_token": cc.kv_bytes_per_token,
                  "memory_gib": cc_final.memory_bytes / 2**30,  # per GPU when tensor parallel
                  "weight_gib": cc_final.weight_bytes / 2**30,
                  "fits": bool(cc_final.memory_bytes <= cfg.search.memory_gib * 2**30 * cfg.num_gpus / sc.tp)},
        "fusion": fusion,
        "at_fit": _at_fit(sol) if cfg.search.at_fit else None,
        "deployment_report": _deployment_report(cfg, lib, source, out),
        "would_train": would_train,
        "wall_s": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    final_arch.save_config(out / "child_config.json")
    atomic_write_json(out / "plan.json", report)
    return report


def _at_fit(sol: Any) -> dict[str, Any]:
    return {"batch": sol.batch, "tokens_per_s": sol.tokens_per_s, "speedup": sol.speedup,
            "parent_batch": sol.reference_batch, "parent_tokens_per_s": sol.reference_tokens_per_s}


def _deployment_report(cfg: Any, lib: Any, source: str, out: Path) -> dict[str, Any] | None:
    """``search.report``: LN-Super's target as the Llama-Nemotron report states it (throughput at the batch that
    fits, the published Super-49B against our exact front, why the roofline does or does not reach 5x) or
    LN-Ultra's (latency at TP 8 with and without FFN fusion), from :mod:`puzzlekit.search.ln_targets`; written
    to ``deployment_report.md``.  LN-Super's needs NVIDIA's library (the published model's blocks are scored
    there)."""
    from ..search import ln_targets as lt

    kind = cfg.search.report
    if not kind:
        return None
    if kind == "ln-super":
        if not source.startswith("imported"):
            logger.info("search.report=ln-super needs NVIDIA's Llama-3.3-70B library (search.library); skipped")
            return {"skipped": "needs NVIDIA's Llama-3.3-70B block library at search.library"}
        s = cfg.search
        rep = lt.ln_super_report(lib, hardware=s.at_fit_hardware or "calibrated", memory_gib=s.memory_gib,
                                 min_kv_tokens=s.kv_tokens, prefill=cfg.scenario.prefill, decode=cfg.scenario.decode,
                                 objective=s.objective)
        md = lt.super_markdown(rep)
    else:
        rep = lt.ln_ultra_report(tp=cfg.scenario.tp, kv_tokens=cfg.search.kv_tokens)
        md = lt.ultra_markdown(rep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deployment_report.md").write_text(md + "\n")
    return rep


def summary(r: dict[str, Any]) -> str:
    """The plan in a few lines."""
    c, p, s = r["child"], r["parent"], r["search"]
    lines = [f"{r['name']} (dry run) — library: {r['library']}",
             f"parent: {p['num_layers']} layers, {p['params'] / 1e9:.1f}B params",
             f"search ({s['solver']}, {s['status']}, gap {s['gap'] or 0:.2%}, {s['solve_s']:.2f} s): {s['objective']} = "
             f"{s['value']:.4f}, costs " + ", ".join(f"{k} {v:,.1f}" for k, v in s["costs"].items()),
             f"child: {c['params'] / 1e9:.1f}B params ({c['params_ratio']:.2f}x), {c['attention_layers']} attention "
             f"layers, analytic speedup {c['analytic_speedup']:.2f}x at batch {r['scenario']['batch']}, memory {c['memory_gib']:.1f} GiB "
             f"(fits {r['num_gpus']} GPU(s): {c['fits']})"]
    if r.get("at_fit"):
        a = r["at_fit"]
        lines.append(f"at the batch that fits: batch {a['batch']}, {a['speedup']:.2f}x the parent's throughput "
                     f"(parent at batch {a['parent_batch']})")
    if r["fusion"]:
        f = r["fusion"]
        lines.append(f"FFN fusion: {f['fused_ffns']} FFNs in {len(f['groups'])} groups, analytic speedup "
                     f"{f['speedup_vs_parent']:.2f}x")
    w = r["would_train"]
    train = [f"BLD {w['bld']['trainings']} candidates x {w['bld']['tokens_each']:.0e} tokens"]
    if w["gkd"]:
        train.append(f"GKD {w['gkd']['tokens']:.0e} tokens" if w["gkd"]["tokens"] else f"GKD {w['gkd']['steps']} steps")
    if w["cpt"]:
        train.append(f"CPT {w['cpt']['tokens']:.0e}")
    if w["sft"]:
        train.append(f"SFT {'/'.join(w['sft']['stages'])}")
    if w["rl"]:
        train.append("RL (GRPO)")
    lines.append("would train: " + "; ".join(train))
    if r.get("deployment_report") and "skipped" not in r["deployment_report"]:
        lines.append("deployment report: deployment_report.md beside plan.json")
    return "\n".join(lines)
