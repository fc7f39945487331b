"""The comparison report (the demo's evidence): ``report.json``, ``report.md`` and three PNG plots in the
run directory, written by the ``report`` stage of a pipeline that compares the child with baselines.

``report.json`` keys: ``teacher`` (``val_loss``, ``tokens_per_s``), ``child`` (``val_loss``,
``kl_to_teacher``, ``measured_speedup``, ``predicted_speedup``, ``num_params``), ``baselines``
(a list of ``name``, ``val_loss``, ``kl_to_teacher``, ``measured_speedup``, ...), ``checks``
(whether the child beats every baseline, speed matching and prediction error), ``scenario``,
``stages`` (seconds each), ``plots``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..blocks import BlockConfig
from ..io import atomic_path, atomic_write_json

__all__ = ["write_report", "render_markdown", "PREDICTION_TOL"]

logger = logging.getLogger(__name__)

#: The largest relative gap between predicted and measured speed-up the demo accepts.
PREDICTION_TOL = 0.15


def _h100_speedup(library: Any, scenario: str, choices: list[int] | None, blocks: list[str]) -> float | None:
    """The analytic H100 FP8 speed-up of an architecture (roofline; non-block part included)."""
    try:
        table = library.costs[scenario]
        nb = library.meta.get("non_block_costs", {}).get(scenario, {}).get("runtime_ms", 0.0)
        pkey = library.parent.parent_block().key
        parent = nb + library.num_layers * table[pkey]["runtime_ms"]
        child = nb + sum(table[k]["runtime_ms"] for k in blocks)
        return parent / child
    except (KeyError, AttributeError):
        return None


def write_report(run: str | os.PathLike, *, cfg: Any, teacher: dict, tokens: dict, prof: dict, srch: dict,
                 child: dict, base: dict, heal: dict, parent_ms: float, stages: dict, total_seconds: float,
                 library: Any, session_seconds: float | None = None) -> dict[str, Any]:
    """Assemble the report from the stages' results (``teacher``: the parent stage's, ``child``: the child
    as fusion left it, ``heal``: per model ``kl_before`` / ``kl_after`` / ``before`` / ``after``) and write
    report.json, report.md and the plots."""
    run = Path(run)
    sc = cfg.scenario
    tokens_per_run = sc.batch * (sc.prefill + sc.decode)
    models = {n: _healed(m) for n, m in heal["models"].items()}
    pc = models["child"]
    rec = teacher["record"]
    h100 = prof.get("reference_scenario")
    child_rep = {
        "val_loss": pc["val_loss"], "kl_to_teacher": pc["kl_to_teacher"],
        "measured_speedup": child["measured"]["speedup"], "predicted_speedup": child["predicted_speedup"],
        "num_params": pc["num_params"], "kl_to_teacher_before_healing": pc["kl_before"],
        "predicted_kl_sum": child["kl_sum"], "requested_speedup": child["requested_speedup"],
        "search_attempts": child.get("attempts"), "tokens_per_s": tokens_per_run / child["measured"]["model_ms"] * 1e3,
        "architecture": pc["blocks"], "fusion": child.get("fusion", {"groups": [], "adopted": False}),
        "h100_fp8_predicted_speedup": _h100_speedup(library, h100, None, child["blocks"]) if h100 else None,
    }
    blist = []
    for name, b in base["baselines"].items():
        m = models[name]
        blist.append({"name": name, "val_loss": m["val_loss"], "kl_to_teacher": m["kl_to_teacher"],
                      "measured_speedup": b["measured_speedup"], "predicted_speedup": b["predicted_speedup"],
                      "speed_matched": bool(b["matched"]), "num_params": m["num_params"],
                      "kl_to_teacher_before_healing": m["kl_before"], "architecture": m["blocks"],
                      "match_trace": b["trace"], "note": b.get("note", "")})
    pred_err = abs(child_rep["predicted_speedup"] / child_rep["measured_speedup"] - 1)
    checks = {
        "child_beats_every_baseline": all(child_rep["kl_to_teacher"] < b["kl_to_teacher"] for b in blist),
        "child_beats_every_matched_baseline": all(child_rep["kl_to_teacher"] < b["kl_to_teacher"]
                                                  for b in blist if b["speed_matched"]),
        "baselines_speed_matched": all(b["speed_matched"] for b in blist),
        "speed_match_tolerance": cfg.baselines.match_tol,
        "prediction_relative_error": pred_err,
        "prediction_within_tolerance": pred_err <= PREDICTION_TOL,
        "prediction_tolerance": PREDICTION_TOL,
        "target_speedup": cfg.search.target_speedup,
    }
    report = {
        "teacher": {"val_loss": heal["parent_lm_loss"], "tokens_per_s": tokens_per_run / parent_ms * 1e3,
                    "num_params": rec.get("num_params"), "train_val_loss": rec.get("val_loss"),
                    "train_steps": rec.get("steps_done"), "train_tokens_per_s": rec.get("train_tokens_per_s"),
                    "settings": rec.get("settings")},
        "child": child_rep,
        "baselines": blist,
        "checks": checks,
        "scenario": sc.to_dict(),
        "search": {"budget_ms": srch["budget_ms"], "parent_predicted_ms": srch["parent_predicted_ms"],
                   "predicted_ms": child["predicted_ms"], "solver": srch["solver"], "pareto_points": len(srch.get("front", []))},
        "profile": {"non_block_ms": prof["non_block_ms"], "subblocks": prof["subblocks"],
                    # additivity: the parent as the sum of its measured blocks vs measured whole
                    "parent_predicted_ms": srch["parent_predicted_ms"], "parent_measured_ms": parent_ms},
        "data": tokens,
        "config": cfg.to_dict(),
        "stages": stages,
        "total_seconds": total_seconds,
        "session_seconds": session_seconds,
    }
    report["plots"] = _plots(run, report, srch, child, library, prof)
    atomic_write_json(run / "report.json", report)
    with atomic_path(run / "report.md", suffix=".md") as tmp:
        Path(tmp).write_text(render_markdown(report), encoding="utf-8")
    return report


def _healed(m: dict[str, Any]) -> dict[str, Any]:
    """A healed model's figures under the report's names (KL to the teacher, validation loss)."""
    return {"kl_before": m["kl_before"], "kl_to_teacher": m["kl_after"], "val_loss": m["after"]["lm_loss"],
            "val_loss_before": m["before"]["lm_loss"], "num_params": m["num_params"], "blocks": m["blocks"],
            "heal_seconds": m.get("heal_seconds")}


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: the results table, the checks and the child's architecture."""
    c, t, ch = report["child"], report["teacher"], report["checks"]
    sc = report["scenario"]
    lines = [
        "# puzzlekit demo report", "",
        f"Scenario (measured on this CPU): batch {sc['batch']}, prefill {sc['prefill']}, decode {sc['decode']}, "
        f"{sc['dtype']}; target speed-up {ch['target_speedup']}x.", "",
        "| model | KL to teacher | val loss | measured speed-up | predicted speed-up | params |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher | 0 | {t['val_loss']:.4f} | 1.00x | 1.00x | {t['num_params']:,} |",
        f"| **Puzzle child** | **{c['kl_to_teacher']:.4f}** | {c['val_loss']:.4f} | {c['measured_speedup']:.2f}x | "
        f"{c['predicted_speedup']:.2f}x | {c['num_params']:,} |",
    ]
    for b in report["baselines"]:
        lines.append(f"| {b['name']} | {b['kl_to_teacher']:.4f} | {b['val_loss']:.4f} | {b['measured_speedup']:.2f}x"
                     f"{'' if b['speed_matched'] else ' (unmatched)'} | {b['predicted_speedup']:.2f}x | "
                     f"{b['num_params']:,} |")
    lines += ["", "All models healed with the same GKD budget; each baseline matched to be at least as fast as "
              f"the child, measured (at most {100 * ch['speed_match_tolerance']:.0f} % faster)."]
    lines += [f"- {b['name']} unmatched: {b['note']}" for b in report["baselines"] if b.get("note")]
    lines += ["",
              "## Checks", "",
              f"- Puzzle child has the lowest KL to the teacher: **{ch['child_beats_every_baseline']}** "
              f"(among the speed-matched baselines: **{ch['child_beats_every_matched_baseline']}**)",
              f"- every baseline matched in measured speed: **{ch['baselines_speed_matched']}**",
              f"- predicted vs measured speed-up: {100 * ch['prediction_relative_error']:.1f} % apart "
              f"(tolerance {100 * ch['prediction_tolerance']:.0f} %): **{ch['prediction_within_tolerance']}**"]
    if c.get("h100_fp8_predicted_speedup"):
        lines.append(f"- the same child on an H100 in FP8 (analytic roofline, batch 256, 1000+200 tokens): "
                     f"{c['h100_fp8_predicted_speedup']:.2f}x predicted")
    fu = c.get("fusion") or {}
    if fu.get("groups"):
        lines.append(f"- FFN fusion of groups {fu['groups']}: {'adopted' if fu['adopted'] else 'not adopted'} "
                     f"(KL {fu['kl_unfused']:.4f} -> {fu['kl_fused']:.4f}, speed-up {fu['speedup_unfused']:.2f}x -> "
                     f"{fu['speedup_fused']:.2f}x)")
    lines += ["", "## The child's architecture", "", "| layer | attention | FFN |", "|---:|---|---|"]
    for i, k in enumerate(c["architecture"]):
        b = BlockConfig.from_key(k)
        lines.append(f"| {i} | {b.attention.short()} | {b.ffn.short()} |")
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---:|"]
    for k, v in report["stages"].items():
        lines.append(f"| {k} | {v['seconds']:.1f}{' (reused)' if v.get('reused') else ''} |")
    lines += [f"| total | {report['total_seconds']:.1f} |", ""]
    for name, p in report.get("plots", {}).items():
        lines.append(f"![{name}]({p})")
    return "\n".join(lines) + "\n"


def _plots(run: Path, report: dict[str, Any], srch: dict, child: dict, library: Any, prof: dict) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional for the library, required for plots only
        logger.warning("matplotlib is not installed; no plots (pip install matplotlib)")
        return {}
    out: dict[str, str] = {}
    nb = prof["non_block_ms"]
    parent_ms = srch["parent_predicted_ms"]

    # 1. Pareto front: predicted summed KL vs predicted runtime, the chosen point, the library baselines
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    front = sorted(srch.get("front", []), key=lambda p: p["runtime_ms"])
    ax.step([p["runtime_ms"] for p in front], [p["kl_sum"] for p in front], where="post", color="C0",
            label="Pareto front (exact)")
    ax.scatter([p["runtime_ms"] for p in front], [p["kl_sum"] for p in front], s=10, color="C0")
    ax.scatter([child["predicted_ms"]], [child["kl_sum"]], s=80, marker="*", color="C3", zorder=5,
               label=f"chosen ({child['predicted_speedup']:.2f}x predicted)")
    kl = library.metric_vector("kl_div")
    for i, b in enumerate(report["baselines"]):
        keys = b["architecture"]
        cands = library.candidates
        try:
            idx = [next(j for j, c in enumerate(cands) if c.first == li and c.block.key == k)
                   for li, k in enumerate(keys)]
        except StopIteration:
            continue
        rt = parent_ms / b["predicted_speedup"]
        ax.scatter([rt], [float(sum(kl[j] for j in idx))], marker="o", s=30, color=f"C{i + 4}", label=b["name"])
    ax.axvline(srch["parent_predicted_ms"] / child["requested_speedup"], color="gray", ls="--", lw=1,
               label="runtime budget")
    ax.set_xlabel(f"predicted runtime (ms, measured blocks + {nb:.1f} ms non-block)")
    ax.set_ylabel("predicted KL (sum of replace-1-block KL)")
    pos = [p["kl_sum"] for p in front if p["kl_sum"] > 0]
    ax.set_yscale("symlog", linthresh=max(min(pos, default=1e-4), 1e-6))
    ax.set_ylim(bottom=0)
    ax.set_title("Search: quality vs cost")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["pareto"] = _save(fig, run / "pareto.png")

    # 2. the child's architecture per layer
    blocks = [BlockConfig.from_key(k) for k in report["child"]["architecture"]]
    spec = library.parent
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.4, 4.2), sharex=True)
    xs = list(range(len(blocks)))
    att = [0 if b.attention.no_op else (0.5 if b.attention.linear else b.attention.num_kv_heads / spec.num_key_value_heads)
           for b in blocks]
    a1.bar(xs, att, color=["C3" if b.attention.no_op else ("C1" if b.attention.linear else "C0") for b in blocks])
    for x, b in zip(xs, blocks):
        a1.text(x, max(att[x], 0.02) + 0.03, b.attention.short(), ha="center", fontsize=7)
    a1.set_ylim(0, 1.3)
    a1.set_ylabel("attention\n(KV heads / parent)")
    ffn = [0 if b.ffn.no_op else (None if b.ffn.linear else b.ffn.intermediate_size / spec.intermediate_size)
           for b in blocks]
    a2.bar(xs, [0.05 if f is None else f for f in ffn],
           color=["C3" if b.ffn.no_op else ("C1" if b.ffn.linear else "C2") for b in blocks])
    for x, b in zip(xs, blocks):
        a2.text(x, (0.05 if ffn[x] is None else ffn[x]) + 0.03, b.ffn.short(), ha="center", fontsize=7)
    a2.set_ylim(0, 1.3)
    a2.set_ylabel("FFN width\n(/ parent)")
    a2.set_xlabel("layer")
    a2.set_xticks(xs)
    a1.set_title("The Puzzle child, layer by layer (red: removed, orange: linear)")
    fig.tight_layout()
    out["architecture"] = _save(fig, run / "architecture.png")

    # 3. measured vs predicted speed-up
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    pts = [("Puzzle child", report["child"]["predicted_speedup"], report["child"]["measured_speedup"])]
    pts += [(b["name"], b["predicted_speedup"], b["measured_speedup"]) for b in report["baselines"]]
    lo = min(min(p[1], p[2]) for p in pts) * 0.85
    hi = max(max(p[1], p[2]) for p in pts) * 1.15
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
    ax.fill_between([lo, hi], [lo / 1.15, hi / 1.15], [lo * 1.15, hi * 1.15], color="gray", alpha=0.15,
                    label="±15 %")
    tol = report["checks"]["speed_match_tolerance"]
    ax.axhspan(pts[0][2] * 0.99, pts[0][2] * (1 + tol), color="C3", alpha=0.1,
               label=f"matching window (child -1 % .. +{100 * tol:.0f} %)")
    for i, (n, p, m) in enumerate(pts):
        ax.scatter([p], [m], s=60 if i == 0 else 30, marker="*" if i == 0 else "o", color=f"C{3 if i == 0 else i + 3}",
                   label=n, zorder=5)
    ax.set_xlabel("predicted speed-up (sum of measured blocks)")
    ax.set_ylabel("measured speed-up (whole model)")
    ax.set_title("Speed on this CPU")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["speed"] = _save(fig, run / "speed.png")
    return out


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name
