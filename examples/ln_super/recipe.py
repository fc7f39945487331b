"""The LN-Super pipeline: parent → block library → search under the deployment targets → child →
(FFN fusion) → GKD → SFT → RL, each stage a command; ``--dry-run`` does the planning part for real
(meta-device models, analytic or imported costs, the MIP search) and reports what would be trained.

Reads top to bottom: config → parent (meta device) → library (imported or synthetic) → constraints
(memory with the KV cache, throughput / latency vs the parent) → search → child (meta device, costs,
optional FFN-fusion plan) → training plan → ``plan.json`` + the child's Nemotron-NAS ``config.json``.

    python examples/ln_super/recipe.py --config examples/ln_super/config.yaml --dry-run
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from puzzlekit.architecture import Architecture, ParentSpec, Scenario
from puzzlekit.errors import ConfigError
from puzzlekit.io import atomic_write_json
from puzzlekit.post.recipe_config import load_recipe_config, parse_overrides

logger = logging.getLogger("ln_pipeline")

STAGES = ("library", "bld", "score", "search", "assemble", "fuse", "gkd", "cpt", "sft", "rl")


@dataclass(frozen=True)
class Config:
    """Every knob of the pipeline (the YAML beside it sets them)."""

    name: str = "ln_super"
    output_dir: str = "runs/ln_super"
    parent_path: str = ""
    parent: dict = field(default_factory=dict)
    scenario: dict = field(default_factory=dict)
    num_gpus: int = 1
    library: str | None = None
    objective: str = "kl_div"
    memory_gib: float = 80.0
    kv_tokens: int = 300_000
    throughput_speedup: float = 0.0
    latency_speedup: float = 0.0
    fuse_ffns: bool = False
    fusion_max_group: int = 0
    bld_tokens: float = 1e9
    gkd_tokens: float = 4e10
    cpt_tokens: float = 0.0
    sft_stages: tuple[str, ...] = ("reasoning", "non_reasoning", "chat")
    rl: bool = False
    search_time_limit: float = 120.0

    def parent_spec(self) -> ParentSpec:
        """The parent's dimensions from the ``parent`` mapping (HF config.json keys)."""
        return ParentSpec.from_hf_config({"model_type": "llama", "tie_word_embeddings": False, **self.parent})

    def scenario_obj(self) -> Scenario:
        """The deployment scenario."""
        try:
            return Scenario(**self.scenario)
        except TypeError as e:
            raise ConfigError(f"scenario {self.scenario}: {e}; keys: hardware, dtype, batch, prefill, decode, tp") from e


# ---------------------------------------------------------------- stages used by the dry run
def meta_model(arch: Architecture) -> Any:
    """The model on the meta device (no memory): its real module tree and parameter count."""
    import torch

    from puzzlekit.model import PuzzleForCausalLM

    with torch.device("meta"):
        return PuzzleForCausalLM.from_architecture(arch)


def synthetic_library(spec: ParentSpec, scenario: Scenario) -> Any:
    """Puzzle's default space on every layer, analytic costs, and a *synthetic* KL score per candidate.

    The score is a stand-in for BLD + replace-1-block scoring (which need the weights): a layer
    importance that is high at both ends of the network times how much of the parent block is removed
    (FFN removal costs more than attention removal, as Puzzle found).  Labelled as synthetic in the plan.
    """
    from puzzlekit.profilers import profile_library

    lib = profile_library(spec, scenario)
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


def load_library(cfg: Config, spec: ParentSpec, scenario: Scenario, root: Path) -> tuple[Any, str]:
    """NVIDIA's imported library when the path exists, else the synthetic one."""
    from puzzlekit import import_nvlabs

    if cfg.library:
        p = Path(cfg.library)
        if not p.is_absolute():
            p = (root / p) if (root / p).exists() else Path.cwd() / p
        if (p / "block_library.json").exists():
            lib = import_nvlabs(p)
            if lib.num_layers != spec.num_hidden_layers:
                raise ConfigError(f"library {p}: {lib.num_layers} layers, the parent has {spec.num_hidden_layers}")
            lib.parent = spec
            return lib, f"imported: {p}"
        logger.info("library %s not found: using a synthetic one", p)
    return synthetic_library(spec, scenario), "synthetic"


def parent_runtime_ms(lib: Any, spec: ParentSpec, scenario: str, cost: str = "runtime_ms") -> float:
    """The parent's summed per-block cost in the library (the parent block on every layer)."""
    pb = spec.parent_block()
    col = lib.cost_names(scenario).index(cost)
    mat = lib.cost_matrix([lib.cost_names(scenario)[col]], scenario)[:, 0]
    total = 0.0
    for layer in range(lib.num_layers):
        idx = [j for j in lib.candidates_for_layer(layer) if lib.candidates[j].block == pb]
        if not idx:
            raise ConfigError(f"the library has no parent block {pb.key} on layer {layer}; cannot take the "
                              "parent's runtime as the reference")
        total += float(mat[idx[0]])
    return total


def dry_run(cfg: Config, root: Path) -> dict[str, Any]:
    """Plan the whole pipeline without GPUs or weights; write ``plan.json`` and the child's config."""
    from puzzlekit.profilers import architecture_cost

    from puzzlekit.search import LatencyLimit, MemoryLimit, ThroughputTarget, search

    t0 = time.perf_counter()
    out = Path(cfg.output_dir)
    spec, sc = cfg.parent_spec(), cfg.scenario_obj()
    parent_arch = Architecture.homogeneous(spec)

    # --- parent on the meta device
    parent = meta_model(parent_arch)
    parent_params = sum(p.numel() for p in parent.parameters())

    # --- block library
    logger.info("parent on the meta device: %.1fB parameters", parent_params / 1e9)
    lib, source = load_library(cfg, spec, sc, root)
    scen = lib.resolve_scenario(None)
    lib_sc = lib.scenarios[scen]

    # --- constraints: weights + KV cache on the GPUs, throughput or latency relative to the parent
    constraints: list[Any] = [MemoryLimit(max_gib=cfg.memory_gib * cfg.num_gpus, kv_tokens=cfg.kv_tokens,
                                          dtype=sc.dtype)]
    ref = parent_runtime_ms(lib, spec, scen)
    if cfg.throughput_speedup > 0:
        parent_tps = 1000.0 * lib_sc.batch * lib_sc.sequence_length / ref
        constraints.append(ThroughputTarget(min_tokens_per_s=cfg.throughput_speedup * parent_tps))
    if cfg.latency_speedup > 0:
        constraints.append(LatencyLimit(max_ms=ref / cfg.latency_speedup))

    # --- search
    logger.info("library ready (%s, %d candidates); searching", source, len(lib))
    sol = search(lib, cfg.objective, constraints=constraints, scenario=scen, time_limit=cfg.search_time_limit)
    logger.info("search: %s %s in %.1f s", sol.status.name, sol.objective, sol.solve_seconds)
    child_arch = Architecture(spec, tuple(lib.candidates[j].block for j in sol.candidates))

    # --- child: meta-device model, counts, analytic costs vs the parent, optional FFN fusion
    child = meta_model(child_arch)
    child_params = sum(p.numel() for p in child.parameters())
    pc = architecture_cost(parent_arch, sc, sc.hardware, kv_tokens=cfg.kv_tokens)
    cc = architecture_cost(child_arch, sc, sc.hardware, kv_tokens=cfg.kv_tokens)
    fusion = None
    final_arch = child_arch
    if cfg.fuse_ffns:
        from puzzlekit.fusion import find_ffn_runs, fused_architecture, make_plan

        plan = make_plan(child_arch, leave_last=True, max_group=cfg.fusion_max_group or None)
        final_arch = fused_architecture(child_arch, plan)
        fc = architecture_cost(final_arch, sc, sc.hardware, kv_tokens=cfg.kv_tokens)
        fusion = {"ffn_runs": [str(r) for r in find_ffn_runs(child_arch)],
                  "fused_ffns": sum(len(g) for g in plan.groups), "groups": [list(g) for g in plan.groups],
                  "runtime_ms": fc.runtime_ms, "speedup_vs_parent": pc.runtime_ms / fc.runtime_ms,
                  "sequential_subblocks": fc.sequential_subblocks}
        cc_final = fc
    else:
        cc_final = cc

    # --- what would be trained
    n_cands = sum(1 for c in lib.candidates if c.block != spec.parent_block())
    plan_train = {
        "bld": {"trainings": n_cands, "tokens_each": cfg.bld_tokens,
                "note": "decoupled BLD: each non-parent candidate mimics its parent block (one teacher pass feeds all)"},
        "score": {"replace_1_block_evaluations": n_cands, "metric": cfg.objective},
        "gkd": {"tokens": cfg.gkd_tokens, "loss": "cosine(hidden) + KL(parent||child)",
                "trainable_params": child_params, "recipe": "examples/gkd"},
        "cpt": {"tokens": cfg.cpt_tokens} if cfg.cpt_tokens else None,
        "sft": {"stages": list(cfg.sft_stages), "recipe": "examples/sft_reasoning_toggle"},
        "rl": {"algorithm": "GRPO, accuracy + format rewards, pass-rate curriculum",
               "recipe": "examples/grpo_curriculum"} if cfg.rl else None,
    }
    report = {
        "name": cfg.name, "dry_run": True, "library": source, "scenario": asdict(sc), "num_gpus": cfg.num_gpus,
        "parent": {"num_layers": spec.num_hidden_layers, "params": parent_params,
                   "analytic_runtime_ms": pc.runtime_ms, "kv_bytes_per_token": pc.kv_bytes_per_token,
                   "memory_gib": pc.memory_bytes / 2**30},
        "search": {"objective": cfg.objective, "value": sol.objective, "costs": sol.costs, "solver": sol.solver,
                   "status": sol.status.name, "gap": sol.gap, "solve_s": sol.solve_seconds,
                   "library_parent_runtime_ms": ref},
        "child": {"params": child_params, "params_ratio": child_params / parent_params,
                  "attention_layers": sum(1 for b in child_arch.blocks if not b.attention.no_op),
                  "attention_free_runs": child_arch.attention_free_runs(),
                  "analytic_runtime_ms": cc.runtime_ms, "analytic_speedup": pc.runtime_ms / cc.runtime_ms,
                  "kv_bytes_per_token": cc.kv_bytes_per_token,
                  "memory_gib": cc_final.memory_bytes / 2**30,  # per GPU when tensor parallel
                  "weight_gib": cc_final.weight_bytes / 2**30, "fits": bool(cc_final.memory_bytes <= cfg.memory_gib * 2**30 * cfg.num_gpus / sc.tp)},
        "fusion": fusion,
        "would_train": plan_train,
        "wall_s": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    final_arch.save_config(out / "child_config.json")
    atomic_write_json(out / "plan.json", report)
    return report


def real_stage(cfg: Config, stage: str) -> None:
    """A real stage needs GPUs and the parent's weights; say what is missing and what to run."""
    import torch

    if stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}: use one of {', '.join(STAGES)}")
    have = torch.cuda.device_count()
    if have < cfg.num_gpus:
        raise ConfigError(f"stage {stage!r} of {cfg.name} needs {cfg.num_gpus} GPU(s) and the weights at "
                          f"{cfg.parent_path!r}; this machine has {have}. Run with --dry-run to plan, or see "
                          f"examples/{cfg.name}/README.md for the command of each stage")
    raise ConfigError(f"stage {stage!r}: run the command listed for it in examples/{cfg.name}/README.md "
                      "(the library CLI and the examples/gkd, sft_reasoning_toggle, grpo_curriculum recipes)")


def summary(r: dict[str, Any]) -> str:
    """The plan in a few lines."""
    c, p, s = r["child"], r["parent"], r["search"]
    lines = [f"{r['name']} (dry run) — library: {r['library']}",
             f"parent: {p['num_layers']} layers, {p['params'] / 1e9:.1f}B params",
             f"search ({s['solver']}, {s['status']}, gap {s['gap'] or 0:.2%}, {s['solve_s']:.2f} s): {s['objective']} = {s['value']:.4f}, costs "
             + ", ".join(f"{k} {v:,.1f}" for k, v in s["costs"].items()),
             f"child: {c['params'] / 1e9:.1f}B params ({c['params_ratio']:.2f}x), {c['attention_layers']} attention "
             f"layers, analytic speedup {c['analytic_speedup']:.2f}x, memory {c['memory_gib']:.1f} GiB "
             f"(fits {r['num_gpus']} GPU(s): {c['fits']})"]
    if r["fusion"]:
        f = r["fusion"]
        lines.append(f"FFN fusion: {f['fused_ffns']} FFNs in {len(f['groups'])} groups, analytic speedup "
                     f"{f['speedup_vs_parent']:.2f}x")
    w = r["would_train"]
    lines.append(f"would train: BLD {w['bld']['trainings']} candidates x {w['bld']['tokens_each']:.0e} tokens; "
                 f"GKD {w['gkd']['tokens']:.0e} tokens" + (f"; CPT {w['cpt']['tokens']:.0e}" if w["cpt"] else "")
                 + f"; SFT {'/'.join(w['sft']['stages'])}" + ("; RL (GRPO)" if w["rl"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command line: ``--dry-run`` or ``--stage NAME``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).with_name("config.yaml")))
    ap.add_argument("--dry-run", action="store_true", help="plan without GPUs or weights")
    ap.add_argument("--stage", choices=STAGES, help="run one real stage (GPUs and weights needed)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    a = ap.parse_args(argv)
    cfg = load_recipe_config(a.config, Config, parse_overrides(a.overrides))
    root = Path(__file__).resolve().parents[2]
    if a.dry_run:
        r = dry_run(cfg, root)
        print(summary(r))
        return r
    real_stage(cfg, a.stage or "library")
    return None


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
