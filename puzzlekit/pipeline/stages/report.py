"""The ``report`` stage (run every time): the comparison report of a pipeline that compares the child with
baselines (:func:`puzzlekit.pipeline.report.write_report`: ``report.json``, ``report.md``, plots), or
else a summary of every stage's figures (``report.json`` and ``report.md``, one line per stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...io import atomic_path, atomic_write_json
from ..runner import Stage

__all__ = ["REPORT", "stage_line", "summary_lines"]


def stage_line(name: str, r: dict[str, Any]) -> str:
    """One line per stage result (a per-target stage: one part per speed target)."""
    head = f"{name:<9}{'(reused) ' if r.get('reused') else ''}{r.get('seconds', 0):6.1f} s  "
    if "targets" in r and name != "evaluate":
        return head + "; ".join(f"[{k}] " + _line(name, v, "") for k, v in r["targets"].items())
    return _line(name, r, head)


def _line(name: str, r: dict[str, Any], head: str) -> str:
    if name == "parent":
        return head + f"{r.get('num_params', 0):,} parameters, {r.get('num_layers', '?')} layers ({r['path']})"
    if name == "tokens":
        return head + f"{r['train_sequences']} train / {r['heldout_sequences']} held-out rows of {r['seq_len']} tokens"
    if name == "bld":
        return head + f"{r['candidates']} candidates ({r['trained']} trained), {r['train_sequences']} train sequences"
    if name == "score":
        comp = f" (+ {r['composed']} pairs composed of their parts)" if r.get("composed") else ""
        return head + f"{r['scored']} candidates scored{comp}, {r['objective']} {r['min']:.4g}..{r['max']:.4g}"
    if name == "profile":
        if "subblocks" in r:
            return head + f"{len(r['subblocks'])} sub-blocks measured for {r['scenario']}"
        return head + f"{r['blocks']} blocks costed for {r['scenario']}"
    if name == "search":
        if r.get("speedup"):
            sp = f", {r['speedup']:.2f}x the parent's runtime"
        elif r.get("predicted_speedup"):
            sp = f", {r['predicted_speedup']:.2f}x predicted"
        else:
            sp = ""
        return head + f"{r['status']}: sum of {r['objective_name']} = {r['objective']:.4f}{sp}"
    if name == "child":
        m = f", measured {r['measured']['speedup']:.2f}x" if r.get("measured") else ""
        return head + (f"child {r['params_ratio']:.2f}x the parent's parameters, {r['attention_layers']} attention "
                       f"layers, KL to the parent {r['kl']['kl']:.4f}{m}")
    if name == "fuse":
        adopted = "" if r["fusion"].get("adopted") or not r["groups"] else " (not adopted)"
        return head + (f"{r['fused_ffns']} FFNs fused in {len(r['groups'])} groups{adopted}; KL "
                       f"{r['kl_before']['kl']:.4f} -> {r['kl_after']['kl']:.4f}")
    if name == "baselines":
        return head + ", ".join(f"{n} {b['measured_speedup']:.2f}x{'' if b['matched'] else ' (unmatched)'}"
                                for n, b in r["baselines"].items()) + f" for the child's {r['target_speedup']:.2f}x"
    if name == "heal":
        parts = [f"{n} {m['kl_before']:.4f} -> {m['kl_after']:.4f}" for n, m in r["models"].items()]
        c = r["models"]["child"]
        return head + (f"{r['steps']} steps each, KL to the parent: " + ", ".join(parts)
                       + f"; child LM loss {c['before']['lm_loss']:.3f} -> {c['after']['lm_loss']:.3f} "
                       f"(parent {r['parent_lm_loss']:.3f})")
    if name == "cpt":
        return head + (f"{r['steps']} steps, KL to the parent {r['kl_before']:.4f} -> {r['kl_after']:.4f}, "
                       f"LM loss {r['before']['lm_loss']:.3f} -> {r['after']['lm_loss']:.3f} "
                       f"(parent {r['parent_lm_loss']:.3f})")
    if name in ("sft", "rl"):
        a, b = r["before"], r["after"]
        if name == "rl" and r["reward"]:
            head += (f"{r['steps']} GRPO steps on {r['kept']}/{r['prompts']} prompts, reward {r['reward'][0]:.2f} -> "
                     f"{r['reward'][-1]:.2f}; ")
        return head + ("accuracy on/off " f"{a['on']['accuracy']:.2f}/{a['off']['accuracy']:.2f} -> "
                       f"{b['on']['accuracy']:.2f}/{b['off']['accuracy']:.2f}, think tags on/off "
                       f"{b['on']['think_tag_rate']:.2f}/{b['off']['think_tag_rate']:.2f}")
    if name == "evaluate":
        parts = []
        for k, t in r["targets"].items():
            c = t["models"][0].get("after") or t["models"][0]["before"]
            kl = ", ".join(f"{d} {v['kl']:.4f}" for d, v in c["domains"].items())
            chat = f", chat {c['chat']['share']:.2f}" if "chat" in c else ""
            parts.append(f"[{k}] child test KL {kl}{chat}")
        rc = r.get("rank_correlation") or {}
        sp = f"; Spearman(summed, realised KL) {rc['spearman']:.3f}" if rc.get("spearman") is not None else ""
        return head + "; ".join(parts) + sp
    if name == "report":
        return head + f"{r.get('path', 'report.json')}"
    return head


def summary_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    return [stage_line(n, r) for n, r in results.items()]


def _times(ctx: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for name in ctx.cfg.stages:
        if name == "report":
            continue
        r = ctx.result(name)
        out[name] = {"seconds": float(r.get("seconds", 0.0)), "reused": name not in ctx.ran}
        if r.get("load_avg"):
            out[name]["load_avg"] = r["load_avg"]
    return out


def run_report(ctx: Any) -> dict[str, Any]:
    stages = _times(ctx)
    if ctx.has("evaluate"):  # the real-parent report: per target, test text, chat, rank correlation
        from ..report_eval import write_eval_report

        return {"path": "report.json", "kind": "evaluation", "report": write_eval_report(ctx, stages)}
    if ctx.has("baselines") and ctx.has("heal"):
        from ..report import write_report

        child = ctx.child()
        rep = write_report(ctx.out, cfg=ctx.cfg, teacher=ctx.result("parent"), tokens=ctx.result("tokens"),
                           prof=ctx.result("profile"), srch=ctx.result("search"), child=child,
                           base=ctx.result("baselines"), heal=ctx.result("heal"),
                           parent_ms=child["measured"]["parent_ms"], stages=stages,
                           total_seconds=sum(v["seconds"] for v in stages.values()),
                           session_seconds=ctx.session_seconds(), library=ctx.library(reload=True))
        return {"path": "report.json", "kind": "comparison", "report": rep}
    results = {n: dict(ctx.result(n), reused=stages[n]["reused"]) for n in stages}
    rep = {"name": ctx.cfg.name, "stages": stages, "results": results, "config": ctx.cfg.to_dict(),
           "total_seconds": sum(v["seconds"] for v in stages.values())}
    atomic_write_json(ctx.out / "report.json", rep)
    md = [f"# {ctx.cfg.name}", "", "```", *summary_lines(results), "```", ""]
    with atomic_path(ctx.out / "report.md", suffix=".md") as tmp:
        Path(tmp).write_text("\n".join(md), encoding="utf-8")
    return {"path": "report.json", "kind": "summary", "report": rep}


REPORT = Stage("report", run_report, lambda cfg: {}, "report.json and report.md (+ plots when the run compares "
               "the child with baselines)", writes=("report.json", "report.md"), cached=False)
