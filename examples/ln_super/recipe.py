"""The LN-Super pipeline: parent → block library → search under the deployment targets → child →
(FFN fusion) → GKD (→ CPT) → SFT → RL, each stage a command; ``--dry-run`` does the planning part for
real (meta-device models, analytic or imported costs, the MIP search) and reports what would be trained.

Reads top to bottom: config → dry run (parent on the meta device → library, imported or synthetic →
constraints: memory with the KV cache, throughput / latency vs the parent → search → child costs →
``plan.json``) → the real stages, one function each, every one reading the previous stage's outputs
from ``output_dir`` and recording itself in the run directory's manifest (a finished stage with the
same settings is skipped, a killed one resumes):

    bld       tokens.npz + BLD-trained block library (library.json, blocks/)   puzzlekit.bld
    score     replace-1-block KL of every candidate (into library.json)        puzzlekit.scoring
    profile   analytic costs of every block for the config's scenario          puzzlekit.profilers
    search    the dry run's search on the trained library (search.json)        puzzlekit.search
    assemble  the child as a Nemotron-NAS folder (child/)                      puzzlekit.model
    fuse      FFN fusion of the attention-free runs (fused/; fuse_ffns only)   puzzlekit.fusion
    gkd       global KD toward the parent (gkd/model)                          puzzlekit.distill
    cpt       continued pre-training, LM loss (cpt/model; cpt_tokens > 0)      puzzlekit.distill
    sft       SFT with the reasoning toggle, staged mix (sft/model)            puzzlekit.post + TRL
    rl        GRPO, accuracy + format rewards, pass-rate curriculum (rl/model; rl: true)

    python examples/ln_super/recipe.py --config examples/ln_super/config.yaml --dry-run
    python examples/ln_super/recipe.py --config examples/ln_super/config.yaml --stage bld      # ... one per stage
    python examples/ln_super/recipe.py --config examples/ln_super/config_tiny.yaml --stage all # tiny stand-in, CPU
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from puzzlekit.architecture import Architecture, ParentSpec, Scenario
from puzzlekit.errors import ConfigError
from puzzlekit.io import atomic_write_json, read_json
from puzzlekit.post.recipe_config import load_recipe_config, parse_overrides

logger = logging.getLogger("ln_pipeline")

#: The real stages in order (``--stage all`` runs the enabled ones; ``library`` is an alias of ``bld``).
STAGES = ("bld", "score", "profile", "search", "assemble", "fuse", "gkd", "cpt", "sft", "rl")
ALIASES = {"library": "bld"}
#: ``parent_path`` of the tiny stand-in: a Llama with the ``parent`` mapping's dimensions, built here.
TINY = "tiny"
#: ``data`` of the tiny stand-in: reasoning-toggle chat text generated in code (written to the run dir).
GENERATED = "generated"


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
    # --- the real stages (the dry run reads none of these)
    data: str = ""  # a local text file or folder of .txt files; "generated": chat text made in code
    seq_len: int = 2048
    max_data_tokens: int = 0  # 0: all of the data
    seed: int = 0
    ffn_fractions: tuple[float, ...] = ()  # (): Puzzle's default widths
    linear_subblocks: bool = True  # linear attention / FFN replacements in the space (Puzzle's default)
    fusion_leave_last: bool = True  # keep each attention-free run's last FFN unfused (as the dry run plans)
    bld_batch: int = 8
    bld_lr: float = 1e-4
    score_sequences: int = 64
    eval_sequences: int = 32
    fusion_threshold: float = 0.0  # > 0: merge FFNs while their measured dependency stays below it
    gkd_batch: int = 8  # sequences per process per step (GKD and CPT)
    gkd_lr: float = 1e-4
    cpt_lr: float = 3e-5
    sft_problems: int = 4000
    sft_samples_per_stage: int = 12000
    sft_batch: int = 32
    sft_lr: float = 2e-5
    sft_data: str = ""  # JSONL: {"prompt", "completion", "source": reasoning|non_reasoning|chat|tool}; "": generated
    rl_data: str = ""  # JSONL: {"question", "answer"} verifiable prompts; "": generated arithmetic
    rl_prompts: int = 512
    rl_steps: int = 100
    rl_prompts_per_step: int = 4
    rl_generations: int = 8
    rl_lr: float = 1e-6
    rl_max_pass_rate: float = 0.75
    max_completion_length: int = 64
    tiny_parent_steps: int = 0  # tiny stand-in: LM steps on the data so the parent is not uniform noise
    cpu_max_params: float = 2e9  # a larger parent needs num_gpus CUDA devices
    num_threads: int = 0  # CPU threads for torch (0: torch's default)

    def __post_init__(self) -> None:
        for name in ("seq_len", "bld_batch", "score_sequences", "eval_sequences", "gkd_batch", "sft_batch",
                     "rl_steps", "rl_prompts_per_step", "rl_generations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.fuse_ffns and self.fusion_max_group == 1:
            raise ConfigError("fusion_max_group=1 fuses nothing; use 0 (no cap) or >= 2")

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
    if not any(c.block == spec.parent_block() for c in lib.candidates):
        # a tiny parent: the profilers' default widths are rounded past its FFN; use BLD's space instead
        from puzzlekit.profilers.library import library_from_space

        from puzzlekit.bld import default_search_space

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
    """The parent's whole-model cost in the library: the parent block on every layer plus the library's
    non-block part (which the search adds to every architecture's totals)."""
    pb = spec.parent_block()
    col = lib.cost_names_for(scenario).index(cost)
    mat = lib.cost_matrix([lib.cost_names_for(scenario)[col]], scenario)[:, 0]
    total = 0.0
    for layer in range(lib.num_layers):
        idx = [j for j in lib.candidates_for_layer(layer) if lib.candidates[j].block == pb]
        if not idx:
            raise ConfigError(f"the library has no parent block {pb.key} on layer {layer}; cannot take the "
                              "parent's runtime as the reference")
        total += float(mat[idx[0]])
    return total + lib.non_block_costs_for(scenario).get(cost, 0.0)


def search_library(cfg: Config, lib: Any, spec: ParentSpec, scen: str) -> tuple[Any, float]:
    """The search under the human constraints (the dry run and the ``search`` stage both call this):
    weights + KV cache for ``kv_tokens`` within ``memory_gib`` × ``num_gpus``, and throughput at least
    ``throughput_speedup`` × / latency at most 1 / ``latency_speedup`` × the parent's, both measured by
    the library's per-block ``runtime_ms`` of scenario ``scen``.  Returns the solution and the parent's
    summed runtime."""
    from puzzlekit.search import LatencyLimit, MemoryLimit, ThroughputTarget, search

    sc = cfg.scenario_obj()
    lib_sc = lib.scenarios[scen]
    constraints: list[Any] = [MemoryLimit(max_gib=cfg.memory_gib * cfg.num_gpus, kv_tokens=cfg.kv_tokens,
                                          dtype=sc.dtype)]
    ref = parent_runtime_ms(lib, spec, scen)
    if cfg.throughput_speedup > 0:
        parent_tps = 1000.0 * lib_sc.batch * lib_sc.sequence_length / ref
        constraints.append(ThroughputTarget(min_tokens_per_s=cfg.throughput_speedup * parent_tps))
    if cfg.latency_speedup > 0:
        constraints.append(LatencyLimit(max_ms=ref / cfg.latency_speedup))
    sol = search(lib, cfg.objective, constraints=constraints, scenario=scen, time_limit=cfg.search_time_limit)
    logger.info("search: %s %s in %.1f s", sol.status.name, sol.objective, sol.solve_seconds)
    return sol, ref


def dry_run(cfg: Config, root: Path) -> dict[str, Any]:
    """Plan the whole pipeline without GPUs or weights; write ``plan.json`` and the child's config."""
    from puzzlekit.profilers import architecture_cost

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

    # --- constraints (weights + KV cache, throughput / latency vs the parent) and the search
    logger.info("library ready (%s, %d candidates); searching", source, len(lib))
    sol, ref = search_library(cfg, lib, spec, scen)
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

        plan = make_plan(child_arch, leave_last=cfg.fusion_leave_last, max_group=cfg.fusion_max_group or None)
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


# ---------------------------------------------------------------- the real stages
def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: The config keys each stage depends on (a change re-runs that stage and every later one).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "bld": ("parent_path", "parent", "data", "seq_len", "max_data_tokens", "seed", "ffn_fractions", "linear_subblocks", "bld_tokens",
            "bld_batch", "bld_lr", "tiny_parent_steps", "eval_sequences", "cpu_max_params"),
    "score": ("score_sequences",),
    "profile": ("scenario",),
    "search": ("objective", "memory_gib", "num_gpus", "kv_tokens", "throughput_speedup", "latency_speedup",
               "search_time_limit"),
    "assemble": (),
    "fuse": ("fuse_ffns", "fusion_max_group", "fusion_threshold", "fusion_leave_last"),
    "gkd": ("gkd_tokens", "gkd_batch", "gkd_lr"),
    "cpt": ("cpt_tokens", "cpt_lr"),
    "sft": ("sft_stages", "sft_problems", "sft_samples_per_stage", "sft_batch", "sft_lr", "max_completion_length",
            "sft_data"),
    "rl": ("rl_data", "rl_prompts", "rl_steps", "rl_prompts_per_step", "rl_generations", "rl_lr", "rl_max_pass_rate",
           "max_completion_length"),
}


def enabled(cfg: Config, stage: str) -> str | None:
    """``None`` when the config runs ``stage``, else why not."""
    if stage == "fuse" and not cfg.fuse_ffns:
        return "fuse_ffns is false"
    if stage == "cpt" and not cfg.cpt_tokens > 0:
        return "cpt_tokens is 0"
    if stage == "rl" and not cfg.rl:
        return "rl is false"
    return None


#: Stages that may run as several processes (accelerate launch / torchrun): BLD shards its units, GKD / CPT
#: train data-parallel (FSDP with examples/gkd/accelerate_fsdp.yaml).  The others run as one process.
MULTI_PROCESS = ("bld", "gkd", "cpt")


def _rank_world() -> tuple[int, int]:
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def previous_stage(cfg: Config, stage: str) -> str | None:
    """The enabled stage before ``stage`` (whose outputs it reads)."""
    before = [s for s in STAGES[:STAGES.index(stage)] if enabled(cfg, s) is None]
    return before[-1] if before else None


class Pipeline:
    """The run directory (``output_dir``) and what the stages share, loaded on first use."""

    def __init__(self, cfg: Config):
        from puzzlekit.rundir import RunDir

        self.cfg = cfg
        if cfg.num_threads > 0:
            import torch

            torch.set_num_threads(cfg.num_threads)
        self.out = Path(cfg.output_dir).expanduser().resolve()
        self.rd = RunDir(self.out)
        self._parent: Any = None
        self._data: Any = None

    # --- device: CPU for a small parent, the configured GPUs otherwise
    def device(self) -> str:
        """``cuda`` when there is a GPU; ``cpu`` when the parent is small enough; else a ConfigError."""
        import torch

        from puzzlekit.accounting import count

        if torch.cuda.is_available():  # one process per GPU under torchrun / accelerate launch
            import os

            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        n = count(Architecture.homogeneous(self.cfg.parent_spec())).num_params
        if n > self.cfg.cpu_max_params:
            raise ConfigError(
                f"{self.cfg.name}: the parent has {n / 1e9:.1f}B parameters; its real stages need "
                f"{self.cfg.num_gpus} CUDA GPU(s) (this machine has none; cpu_max_params={self.cfg.cpu_max_params:.0e}). "
                f"Run --dry-run to plan here, or config_tiny.yaml for the whole chain on a tiny stand-in")
        return "cpu"

    # --- the parent: a local Hugging Face folder, or the tiny stand-in built here
    def parent_dir(self) -> Path:
        """The parent's model folder (the tiny stand-in is built on first use)."""
        if self.cfg.parent_path == TINY:
            d = self.out / "parent"
            rec = d / "tiny_parent.json"
            if not rec.exists() or read_json(rec, what="tiny parent record").get("settings") != tiny_settings(self.cfg):
                build_tiny_parent(self.cfg, d, self.texts())
            return d
        d = Path(self.cfg.parent_path).expanduser()
        if not (d / "config.json").exists():
            raise ConfigError(
                f"parent_path={self.cfg.parent_path!r}: no model folder (config.json + safetensors) there; download "
                f"the weights (e.g. `huggingface-cli download {self.cfg.parent_path} --local-dir DIR`) and set "
                f"parent_path=DIR, or use parent_path={TINY} for the tiny stand-in")
        return d

    @property
    def parent(self) -> Any:
        if self._parent is None:
            import torch

            from puzzlekit.model import load_parent

            dev = self.device()
            dtype = torch.bfloat16 if dev.startswith("cuda") else None
            self._parent = load_parent(self.parent_dir(), dtype=dtype, device=dev).eval().requires_grad_(False)
        return self._parent

    def tokenizer(self) -> Any:
        from puzzlekit.data import load_tokenizer

        return load_tokenizer(self.parent_dir())

    # --- data: a local text path (or generated text), packed once into tokens.npz
    def texts(self) -> list[str]:
        from puzzlekit.data import read_texts

        if self.cfg.data == GENERATED:
            f = self.out / "data" / f"corpus-seed{self.cfg.seed}.txt"
            if not f.exists():
                from puzzlekit.io import atomic_path

                f.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(f, suffix=".txt") as tmp:
                    Path(tmp).write_text(generated_corpus(self.cfg), encoding="utf-8")
            return read_texts(f)
        if not self.cfg.data:
            raise ConfigError(f"{self.cfg.name}: set data= to a local text file or folder of .txt files (the BLD, "
                              f"scoring and GKD tokens), or data={GENERATED} for generated text")
        return read_texts(Path(self.cfg.data).expanduser())

    @property
    def data(self) -> Any:
        if self._data is None:
            from puzzlekit.data import TokenData

            path = self.out / "tokens.npz"
            if not path.exists():
                raise ConfigError(f"{path}: no tokens; run --stage bld first")
            self._data = TokenData.load(path)
        return self._data

    def train_ids(self) -> Any:
        return self.data.torch("train")

    def heldout_ids(self) -> Any:
        return self.data.torch("heldout")[: self.cfg.eval_sequences]

    def library(self) -> Any:
        from puzzlekit.library import BlockLibrary

        return BlockLibrary.load(self.out / "library.json")

    def load_model(self, rel: str) -> Any:
        """A model folder of an earlier stage, on the pipeline's device."""
        import torch

        from puzzlekit.model import load_parent

        path = self.out / rel
        if not (path / "config.json").exists():
            raise ConfigError(f"{path}: missing; run the stage that writes it first")
        dev = self.device()
        return load_parent(path, dtype=torch.bfloat16 if dev.startswith("cuda") else None, device=dev)

    def save_model(self, model: Any, rel: str) -> Path:
        """Save a stage's model folder (an older one from other settings is replaced)."""
        from puzzlekit.model import save_model

        path = self.out / rel
        if path.exists():
            shutil.rmtree(path)
        return save_model(model, path, tokenizer_from=self.parent_dir())

    # --- stage bookkeeping
    def stage_id(self, stage: str) -> str:
        """This stage's identity: its settings and the identity of the stage it reads from."""
        prev = previous_stage(self.cfg, stage)
        up = ""
        if prev is not None:
            from puzzlekit.rundir import State

            info = self.rd.stage_info(f"ln/{prev}")
            if info.get("state") != State.COMPLETE.value:
                raise ConfigError(f"stage {stage!r} reads the output of stage {prev!r}, which is not complete in "
                                  f"{self.out}: run --stage {prev} first (or --stage all)")
            up = info["config"]["id"]
        return _hash([up, stage, {k: getattr(self.cfg, k) for k in STAGE_KEYS[stage]}])

    def run(self, stage: str) -> dict[str, Any]:
        """Run one stage (skipped when it finished with the same settings and upstream)."""
        from puzzlekit.rundir import State

        stage = ALIASES.get(stage, stage)
        if stage not in STAGES:
            raise ConfigError(f"--stage {stage!r}: use one of {', '.join(STAGES)}, all")
        why = enabled(self.cfg, stage)
        if why:
            raise ConfigError(f"stage {stage!r} is off in this config ({why})")
        rank, world = _rank_world()
        if world > 1 and stage not in MULTI_PROCESS:
            raise ConfigError(f"stage {stage!r} runs as one process; launch only {', '.join(MULTI_PROCESS)} with "
                              "accelerate launch / torchrun")
        sid = self.stage_id(stage)
        cfg = {"id": sid}
        res_path = self.out / "stages" / f"{stage}.json"
        if self.rd.is_complete(f"ln/{stage}", cfg) and res_path.exists():
            logger.info("stage %s already complete in %s; nothing to do", stage, self.out)
            return dict(read_json(res_path, what=f"stage {stage} result"), reused=True)
        main = rank == 0  # under several processes rank 0 keeps the books
        if main:
            for later in STAGES[STAGES.index(stage) + 1:]:  # a re-run stage makes the later ones stale
                if self.rd.stage_info(f"ln/{later}"):
                    self.rd.set_stage(f"ln/{later}", State.PENDING, config={"id": ""})
            self.rd.set_stage(f"ln/{stage}", State.RUNNING, config=cfg)
        t0 = time.perf_counter()
        try:
            res = STAGE_FNS[stage](self)
        except BaseException:
            if main:
                self.rd.set_stage(f"ln/{stage}", State.FAILED, config=cfg)
            raise
        res = dict(res, stage=stage, seconds=time.perf_counter() - t0)
        if main:
            atomic_write_json(res_path, res)
            self.rd.set_stage(f"ln/{stage}", State.COMPLETE, config=cfg, seconds=res["seconds"])
        logger.info("stage %s done in %.1f s", stage, res["seconds"])
        return dict(res, reused=False)


def generated_corpus(cfg: Config, n_problems: int = 1000) -> str:
    """Chat text made in code: arithmetic questions answered with and without a ``<think>`` trace,
    in the reasoning-toggle chat format (what the tiny stand-in parent is trained on)."""
    from puzzlekit.post import arithmetic_pairs, make_problems, to_prompt_completion

    docs = []
    for s in arithmetic_pairs(make_problems(n_problems, seed=cfg.seed + 7, max_digits=2)):
        pc = to_prompt_completion(s)
        docs.append(pc["prompt"] + pc["completion"] + "<|end|>")
    return "\n".join(docs) + "\n"


def tiny_settings(cfg: Config) -> dict[str, Any]:
    """What the tiny stand-in parent is built from (a change rebuilds it)."""
    return {"parent": dict(cfg.parent), "steps": cfg.tiny_parent_steps, "seed": cfg.seed, "seq_len": cfg.seq_len,
            "data": cfg.data}


def build_tiny_parent(cfg: Config, out: Path, texts: list[str]) -> dict[str, Any]:
    """The tiny stand-in parent: a ``transformers`` LlamaForCausalLM with the ``parent`` mapping's
    dimensions (the published parent's layout scaled down), a character tokenizer over printable ASCII,
    ``tiny_parent_steps`` AdamW steps of LM loss on the data; saved as safetensors (atomically)."""
    import string
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from puzzlekit.data import build_token_data
    from puzzlekit.post import char_tokenizer

    tok = char_tokenizer(string.printable, model_max_length=max(256, cfg.seq_len))
    p = dict(cfg.parent)
    if int(p.get("vocab_size", len(tok))) != len(tok):
        raise ConfigError(f"parent.vocab_size={p['vocab_size']}: the tiny stand-in's tokenizer has {len(tok)} "
                          f"tokens; set parent.vocab_size: {len(tok)}")
    p["vocab_size"] = len(tok)
    hf_cfg = LlamaConfig(**p, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(hf_cfg)
    losses: list[float] = []
    if cfg.tiny_parent_steps > 0:
        rows = torch.from_numpy(build_token_data(texts, tok, seq_len=cfg.seq_len, seed=cfg.seed).train).long()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(cfg.seed)
        model.train()
        for step in range(cfg.tiny_parent_steps):
            for g in opt.param_groups:
                g["lr"] = 3e-3 * min(1.0, (step + 1) / 10) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.tiny_parent_steps)))
            batch = rows[torch.randint(len(rows), (8,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    rec = {"settings": tiny_settings(cfg), "params": sum(x.numel() for x in model.parameters()),
           "steps": cfg.tiny_parent_steps,
           "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
    atomic_write_json(tmp / "tiny_parent.json", rec)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("tiny stand-in parent: %d parameters, LM loss %s -> %s", rec["params"], rec["loss_first"],
                rec["loss_last"])
    return rec


def stage_bld(pl: Pipeline) -> dict[str, Any]:
    """Tokens (tokens.npz) and the BLD-trained block library over Puzzle's space (resumable per unit)."""
    from puzzlekit.bld import FFN_FRACTIONS, BLDConfig, default_search_space, run_bld
    from puzzlekit.data import build_token_data

    cfg = pl.cfg
    pl.device()  # a parent too large for this machine stops here, before anything is built
    rank, world = _rank_world()
    tokens, rec = pl.out / "tokens.npz", pl.out / "tokens.json"
    settings = {"data": cfg.data, "seq_len": cfg.seq_len, "seed": cfg.seed, "max_data_tokens": cfg.max_data_tokens,
                "eval_sequences": cfg.eval_sequences, "parent": str(pl.out / "parent") if cfg.parent_path == TINY
                else cfg.parent_path}
    # rank 0 builds the tiny parent (when asked for) and the tokens; the other ranks wait, then read them
    if rank == 0 and (not tokens.exists() or not rec.exists() or read_json(rec, what="token record") != settings
                      or cfg.parent_path == TINY):
        pl.parent_dir()
    if rank == 0 and (not tokens.exists() or not rec.exists() or read_json(rec, what="token record") != settings):
        data = build_token_data(pl.texts(), pl.tokenizer(), seq_len=cfg.seq_len, seed=cfg.seed,
                                max_tokens=cfg.max_data_tokens or None, min_heldout=cfg.eval_sequences)
        data.save(tokens)
        atomic_write_json(rec, settings)
        pl._data = None
    if world > 1:  # the other ranks read the tokens rank 0 wrote
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")  # as puzzlekit.bld does
        dist.barrier()
    parent = pl.parent
    space = default_search_space(parent.config.parent_spec, ffn_fractions=cfg.ffn_fractions or FFN_FRACTIONS,
                                 linear=cfg.linear_subblocks)
    bld_cfg = BLDConfig(tokens=int(cfg.bld_tokens), batch_size=cfg.bld_batch, lr=cfg.bld_lr, seed=cfg.seed,
                        eval_sequences=min(8, len(pl.data.heldout)))
    lib = run_bld(parent, pl.data, pl.rd, space, bld_cfg, progress=False)
    trained = sum(1 for c in lib.candidates if c.weights)
    return {"candidates": len(lib), "trained": trained, "space": space.to_dict(),
            "train_sequences": len(pl.data.train), "heldout_sequences": len(pl.data.heldout)}


def stage_score(pl: Pipeline) -> dict[str, Any]:
    """Replace-1-block KL (and the other metrics) of every candidate, journaled, into library.json."""
    from puzzlekit.scoring import score_library

    lib = pl.library()
    score_library(pl.parent, lib, pl.data, pl.rd, eval_sequences=pl.cfg.score_sequences,
                  batch_size=pl.cfg.bld_batch, progress=False)
    lib.save(pl.out / "library.json")
    kl = [c.metrics[pl.cfg.objective] for c in lib.candidates if pl.cfg.objective in c.metrics]
    if len(kl) != len(lib):
        raise ConfigError(f"scoring left {len(lib) - len(kl)} candidates without {pl.cfg.objective!r}; "
                          "set objective to a metric puzzlekit.scoring computes (kl_div, lm_loss, ...)")
    return {"scored": len(kl), "objective": pl.cfg.objective, "min": min(kl), "max": max(kl)}


def stage_profile(pl: Pipeline) -> dict[str, Any]:
    """Analytic (roofline) costs of every block of the library for the config's scenario."""
    from puzzlekit.profilers import profile_library

    lib = pl.library()
    sc = pl.cfg.scenario_obj()
    profile_library(lib, sc, parent=lib.parent, default=True)  # the loaded parent's dimensions, as BLD recorded them
    lib.save(pl.out / "library.json")
    return {"scenario": sc.name, "hardware": sc.hardware, "blocks": len(lib.blocks)}


def stage_search(pl: Pipeline) -> dict[str, Any]:
    """The dry run's search (same constraints, :func:`search_library`) on the trained, scored library."""
    lib = pl.library()
    spec = lib.parent
    scen = pl.cfg.scenario_obj().name
    sol, ref = search_library(pl.cfg, lib, spec, scen)
    if not sol.status.has_solution:
        raise ConfigError(f"search: {sol.status.name} under the constraints of {pl.cfg.name}; relax memory_gib, "
                          "throughput_speedup or latency_speedup")
    res = {"objective_name": pl.cfg.objective, "solution": sol.to_dict(), "candidates": list(sol.candidates), "blocks": sol.block_keys,
           "objective": sol.objective, "costs": sol.costs, "status": sol.status.name,
           "parent_runtime_ms": ref, "speedup": ref / sol.costs["runtime_ms"] if sol.costs.get("runtime_ms") else None}
    atomic_write_json(pl.out / "search.json", res)
    return res


def _kl(pl: Pipeline, model: Any) -> dict[str, float]:
    from puzzlekit.distill import evaluate_kl

    return evaluate_kl(model, pl.parent, pl.heldout_ids().to(pl.parent.device), batch_size=8)


def stage_assemble(pl: Pipeline) -> dict[str, Any]:
    """The child from the searched candidates (trained BLD weights), saved as a Nemotron-NAS folder."""
    from puzzlekit.model import assemble

    srch = read_json(pl.out / "search.json", what="search result")
    child = assemble(pl.parent, None, pl.library(), srch["candidates"],
                     init={"calib_input_ids": pl.train_ids()[: 2 * pl.cfg.bld_batch].to(pl.parent.device)})
    pl.save_model(child, "child")
    n_c = sum(p.numel() for p in child.parameters())
    n_p = sum(p.numel() for p in pl.parent.parameters())
    return {"params": n_c, "params_ratio": n_c / n_p, "kl": _kl(pl, child),
            "attention_layers": sum(1 for b in child.architecture.blocks if not b.attention.no_op)}


def stage_fuse(pl: Pipeline) -> dict[str, Any]:
    """FFN fusion of the child's attention-free runs (the same plan rule as the dry run: each run's last
    FFN kept, groups capped at ``fusion_max_group``; with ``fusion_threshold`` the measured dependency
    decides), checked exact per group; fused/ holds the result (the child unchanged when nothing fuses)."""
    from puzzlekit.fusion import find_ffn_runs, find_fusable, fuse_ffns

    cfg = pl.cfg
    child = pl.load_model("child")
    calib = pl.train_ids()[: 2 * cfg.bld_batch].to(next(child.parameters()).device)
    plan = find_fusable(child, calib if cfg.fusion_threshold > 0 else None,
                        threshold=cfg.fusion_threshold or None, leave_last=cfg.fusion_leave_last,
                        max_group=cfg.fusion_max_group or None)
    plan.save(pl.out / "fusion_plan.json")
    before = _kl(pl, child)
    fused, changes = fuse_ffns(child, plan, inplace=False)
    pl.save_model(fused, "fused")
    return {"ffn_runs": [list(r.layers) for r in find_ffn_runs(child)], "groups": [list(g) for g in plan.groups],
            "fused_ffns": sum(len(g) for g in plan.groups), "changes": [c.to_dict() for c in changes],
            "kl_before": before, "kl_after": _kl(pl, fused)}


def _steps(tokens: float, batch: int, seq_len: int) -> int:
    return max(1, math.ceil(float(tokens) / (batch * seq_len)))


def _train(pl: Pipeline, src: str, dst: str, tokens: float, lr: float, kd: bool, seed: int) -> dict[str, Any]:
    """GKD (cosine + KL to the parent) or CPT (LM loss) of ``src`` into ``dst``; checkpointed under
    ``dst``'s ``ckpt-<stage id>``, so a killed run resumes and a changed config starts afresh."""
    import torch
    from accelerate import Accelerator

    from puzzlekit.distill import DistillConfig, GKDWeights, distill

    cfg = pl.cfg
    acc = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True: several CPU processes run as MULTI_CPU
    child = pl.load_model(src)
    steps = _steps(tokens, cfg.gkd_batch * acc.num_processes, pl.data.seq_len)  # gkd_batch rows per process
    stage = "gkd" if kd else "cpt"
    dcfg = DistillConfig(max_steps=steps, batch_size=cfg.gkd_batch, learning_rate=lr,
                         warmup_steps=max(1, steps // 20),
                         weights=GKDWeights(1.0, 1.0, 0.0) if kd else GKDWeights(cosine=0, kl=0, lm=1),
                         eval_every=max(1, steps // 4) if kd else 0, save_every=max(1, steps // 4),
                         output_dir=str(pl.out / stage / f"ckpt-{pl.stage_id(stage)[:10]}"), seed=seed,
                         log_every=max(1, steps // 4))
    before = _kl(pl, child)
    held = pl.heldout_ids()
    res = distill(child, pl.parent if kd else None, pl.train_ids(), dcfg, eval_tokens=held if kd else None,
                  accelerator=acc)
    child = acc.unwrap_model(child)
    after = _kl(pl, child)
    if acc.is_main_process:
        pl.save_model(child, dst)
    out = {"steps": steps, "processes": acc.num_processes,
           "tokens": steps * cfg.gkd_batch * acc.num_processes * pl.data.seq_len,
           "kl_before": before,
           "kl_after": after, "evals": res.evals,
           "lm_first_last": [res.history[0].get("lm"), res.history[-1].get("lm")] if res.history else None,
           "parent_lm_loss": _kl(pl, pl.parent)["lm_loss"]}
    # ours: tear the process group down before exit (as examples/gkd does; gloo aborts otherwise)
    acc.wait_for_everyone()
    acc.end_training()
    return out


def stage_gkd(pl: Pipeline) -> dict[str, Any]:
    """Global KD of the (fused) child toward the parent: cosine of hidden states + KL over the vocabulary."""
    return _train(pl, "fused" if pl.cfg.fuse_ffns else "child", "gkd/model", pl.cfg.gkd_tokens, pl.cfg.gkd_lr,
                  kd=True, seed=pl.cfg.seed)


def stage_cpt(pl: Pipeline) -> dict[str, Any]:
    """Continued pre-training of the GKD'd child on raw text (LM loss), as LN-Ultra did after KD."""
    return _train(pl, "gkd/model", "cpt/model", pl.cfg.cpt_tokens, pl.cfg.cpt_lr, kd=False, seed=pl.cfg.seed + 1)


def _recipe_module(name: str) -> Any:
    """Another example recipe as a module (its functions are reused, not copied)."""
    import importlib.util
    import sys

    key = f"{name}_recipe"
    if key in sys.modules:
        return sys.modules[key]
    path = Path(__file__).resolve().parents[1] / name / "recipe.py"
    spec = importlib.util.spec_from_file_location(key, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod
    spec.loader.exec_module(mod)
    return mod


def _eval_problems(cfg: Config) -> list[Any]:
    from puzzlekit.post import make_problems

    return make_problems(cfg.eval_sequences, seed=cfg.seed + 101, max_digits=2)


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each an object with the ``required`` keys (a ConfigError names the line)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give a JSONL file with the keys {', '.join(required)}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not JSON ({e.msg})") from e
        missing = [k for k in required if not isinstance(row, dict) or k not in row]
        if missing:
            raise ConfigError(f"{path}:{n}: missing {', '.join(missing)}; each line needs {', '.join(required)}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def read_sft_data(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``sft_data`` as sources for :func:`puzzlekit.post.staged_mix`: rows grouped by ``source``
    (``prompt``: text or a message list, rendered with the reasoning-toggle chat format)."""
    from puzzlekit.post import DEFAULT_STAGES, to_prompt_completion

    known = {k for _, w in DEFAULT_STAGES for k in w}
    sources: dict[str, list[dict[str, Any]]] = {}
    for n, row in enumerate(read_jsonl(path, ("prompt", "completion", "source")), 1):
        if row["source"] not in known:
            raise ConfigError(f"{path}: row {n} has source {row['source']!r}; use one of {', '.join(sorted(known))}")
        sources.setdefault(row["source"], []).append(to_prompt_completion(row))
    return sources


def stage_sft(pl: Pipeline) -> dict[str, Any]:
    """SFT with the reasoning toggle on the healed child: the samples of ``sft_data`` (JSONL, one
    ``source`` per row) or, without it, paired thinking-on / off samples of a verifiable task (arithmetic made
    in code, the evaluation problems excluded); staged in ``sft_stages`` order with Llama-Nemotron's mixing
    weights (a stage whose own source has no data, e.g. ``chat`` without ``sft_data``, is reported as
    skipped), TRL's SFTTrainer with the
    loss on the response only, linear warm-up + cosine decay per stage; evaluated with the
    sft_reasoning_toggle recipe's ``evaluate`` (think-tag rate, format and accuracy per mode)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from puzzlekit.post import (
        DEFAULT_STAGES,
        Stage,
        arithmetic_pairs,
        make_problems,
        staged_mix,
        to_prompt_completion,
    )

    cfg = pl.cfg
    sft_recipe = _recipe_module("sft_reasoning_toggle")
    model = pl.load_model("cpt/model" if enabled(cfg, "cpt") is None else "gkd/model")
    tok = pl.tokenizer()
    test = _eval_problems(cfg)
    if cfg.sft_data:
        sources = read_sft_data(Path(cfg.sft_data).expanduser())
    else:
        train = make_problems(cfg.sft_problems, seed=cfg.seed + 11, max_digits=2, exclude={p.question for p in test})
        pairs = [to_prompt_completion(s) for s in arithmetic_pairs(train)]
        sources = {"reasoning": [s for s in pairs if s["thinking"]],
                   "non_reasoning": [s for s in pairs if not s["thinking"]]}
    mixes = dict(DEFAULT_STAGES)
    stages, skipped = [], []
    for name in cfg.sft_stages:
        if name not in mixes:
            raise ConfigError(f"sft_stages: unknown stage {name!r}; use {', '.join(mixes)}")
        w = {k: v for k, v in mixes[name].items() if k in sources}
        if name not in sources:  # the stage's own data (chat, tool calling) is not generated here
            skipped.append(name)
            continue
        stages.append(Stage(name, cfg.sft_samples_per_stage, w))
    before = sft_recipe.evaluate(model, tok, test, cfg.max_completion_length)
    history = []
    for stage, data in zip(stages, staged_mix(sources, stages, seed=cfg.seed)):
        ds = Dataset.from_list([{"prompt": s["prompt"], "completion": s["completion"]} for s in data])
        steps = max(1, len(ds) // cfg.sft_batch)
        args = SFTConfig(output_dir=str(pl.out / "sft" / "trainer" / stage.name), per_device_train_batch_size=cfg.sft_batch,
                         num_train_epochs=1, learning_rate=cfg.sft_lr, lr_scheduler_type="cosine",
                         warmup_steps=max(1, steps // 20), completion_only_loss=True,
                         max_length=max(128, cfg.seq_len), logging_steps=max(1, steps // 5), save_strategy="no",
                         report_to="none", use_cpu=not torch.cuda.is_available(), seed=cfg.seed,
                         dataloader_num_workers=0, disable_tqdm=True, eos_token=tok.eos_token,
                         pad_token=tok.pad_token, bf16=torch.cuda.is_available(), gradient_checkpointing=False)
        tok.padding_side = "right"
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        trainer.remove_callback(PrinterCallback)  # the per-step logs go to stages/sft.json, not stdout
        result = trainer.train()
        logs = [r for r in trainer.state.log_history if "loss" in r]
        history.append({"stage": stage.name, "samples": len(ds), "steps": trainer.state.global_step,
                        "first_loss": logs[0]["loss"] if logs else None, "last_loss": logs[-1]["loss"] if logs else None,
                        "train_loss": result.training_loss})
    after = sft_recipe.evaluate(model, tok, test, cfg.max_completion_length)
    pl.save_model(model, "sft/model")
    return {"stages": history, "skipped_stages": skipped, "before": before, "after": after}


def stage_rl(pl: Pipeline) -> dict[str, Any]:
    """GRPO on the SFT'd child: prompts in both modes, pass rates from k samples, the solved ones
    (>= ``rl_max_pass_rate``) dropped, batches ordered by the Gaussian pass-rate curriculum, TRL's
    GRPOTrainer with the accuracy and format rewards; held-out accuracy before / after."""
    import random

    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from puzzlekit.post import (
        CurriculumSampler,
        accuracy_reward,
        build_messages,
        estimate_pass_rates,
        filter_by_pass_rate,
        format_reward,
        hf_generator,
        make_problems,
        render_chat,
    )

    cfg = pl.cfg
    sft_recipe = _recipe_module("sft_reasoning_toggle")
    model = pl.load_model("sft/model")
    tok = pl.tokenizer()
    test = _eval_problems(cfg)
    rng = random.Random(cfg.seed)
    if cfg.rl_data:
        qa = read_jsonl(Path(cfg.rl_data).expanduser(), ("question", "answer"))[: cfg.rl_prompts]
    else:
        qa = [{"question": p.question, "answer": p.answer}
              for p in make_problems(cfg.rl_prompts, seed=cfg.seed + 202, max_digits=2,
                                     exclude={p.question for p in test})]
    rows = []
    for q in qa:
        th = rng.random() < 0.5
        rows.append({"prompt": render_chat(build_messages(str(q["question"]), "", "x", th)[:2],
                                           add_generation_prompt=True), "answer": str(q["answer"]), "thinking": th})

    def passed(completions: Any, answer: Any, thinking: Any, **kw: Any) -> list[float]:
        a = accuracy_reward(completions=completions, answer=answer)
        f = format_reward(completions=completions, thinking=thinking)
        return [x * y for x, y in zip(a, f)]

    tok.padding_side = "left"
    gen = hf_generator(model, tok, max_new_tokens=cfg.max_completion_length, temperature=1.0)
    torch.manual_seed(cfg.seed)
    rates = estimate_pass_rates([r["prompt"] for r in rows], gen, k=cfg.rl_generations, reward=passed,
                                answer=[r["answer"] for r in rows], thinking=[r["thinking"] for r in rows])
    keep = filter_by_pass_rate(rates, max_rate=cfg.rl_max_pass_rate)
    if len(keep) < cfg.rl_prompts_per_step:
        raise ConfigError(f"rl: only {len(keep)} of {len(rows)} prompts have a pass rate below "
                          f"{cfg.rl_max_pass_rate}; raise rl_prompts or rl_max_pass_rate")
    pool = [dict(rows[i], pass_rate=rates[i]) for i in keep]
    order = CurriculumSampler([r["pass_rate"] for r in pool], batch_size=cfg.rl_prompts_per_step,
                              num_batches=cfg.rl_steps, seed=cfg.seed).order()
    before = sft_recipe.evaluate(model, tok, test, cfg.max_completion_length)
    args = GRPOConfig(output_dir=str(pl.out / "rl" / "trainer"), max_steps=cfg.rl_steps,
                      per_device_train_batch_size=cfg.rl_prompts_per_step * cfg.rl_generations,
                      num_generations=cfg.rl_generations, max_completion_length=cfg.max_completion_length,
                      learning_rate=cfg.rl_lr, beta=0.0, shuffle_dataset=False, logging_steps=1, save_strategy="no",
                      report_to="none", use_cpu=not torch.cuda.is_available(), seed=cfg.seed, disable_tqdm=True,
                      bf16=torch.cuda.is_available(), gradient_checkpointing=False)
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward, format_reward], args=args,
                          train_dataset=Dataset.from_list([pool[i] for i in order]), processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "reward" in r]
    after = sft_recipe.evaluate(model, tok, test, cfg.max_completion_length)
    pl.save_model(model, "rl/model")
    return {"prompts": len(rows), "kept": len(pool), "steps": trainer.state.global_step,
            "reward": [r["reward"] for r in logs], "before": before, "after": after}


STAGE_FNS = {"bld": stage_bld, "score": stage_score, "profile": stage_profile, "search": stage_search,
             "assemble": stage_assemble, "fuse": stage_fuse, "gkd": stage_gkd, "cpt": stage_cpt,
             "sft": stage_sft, "rl": stage_rl}


def run_stages(cfg: Config, stage: str) -> dict[str, dict[str, Any]]:
    """``stage`` (or every enabled stage in order, for ``all``); returns each stage's result."""
    pl = Pipeline(cfg)
    names = [s for s in STAGES if enabled(cfg, s) is None] if stage == "all" else [stage]
    return {ALIASES.get(s, s): pl.run(s) for s in names}


def stage_line(name: str, r: dict[str, Any]) -> str:
    """One line per stage result."""
    head = f"{name:<9}{'(reused) ' if r.get('reused') else ''}{r.get('seconds', 0):6.1f} s  "
    if name == "bld":
        return head + f"{r['candidates']} candidates ({r['trained']} trained), {r['train_sequences']} train sequences"
    if name == "score":
        return head + f"{r['scored']} candidates scored, {r['objective']} {r['min']:.4g}..{r['max']:.4g}"
    if name == "profile":
        return head + f"{r['blocks']} blocks costed for {r['scenario']}"
    if name == "search":
        sp = f", {r['speedup']:.2f}x the parent's runtime" if r.get("speedup") else ""
        return head + f"{r['status']}: sum of {r['objective_name']} = {r['objective']:.4f}{sp}"
    if name == "assemble":
        return head + (f"child {r['params_ratio']:.2f}x the parent's parameters, {r['attention_layers']} attention "
                       f"layers, KL to the parent {r['kl']['kl']:.4f}")
    if name == "fuse":
        return head + f"{r['fused_ffns']} FFNs fused in {len(r['groups'])} groups; KL {r['kl_before']['kl']:.4f} -> {r['kl_after']['kl']:.4f}"
    if name in ("gkd", "cpt"):
        return head + (f"{r['steps']} steps, KL to the parent {r['kl_before']['kl']:.4f} -> {r['kl_after']['kl']:.4f}, "
                       f"LM loss {r['kl_before']['lm_loss']:.3f} -> {r['kl_after']['lm_loss']:.3f} (parent {r['parent_lm_loss']:.3f})")
    if name in ("sft", "rl"):
        a, b = r["before"], r["after"]
        if name == "rl" and r["reward"]:
            head += f"{r['steps']} GRPO steps on {r['kept']}/{r['prompts']} prompts, reward {r['reward'][0]:.2f} -> {r['reward'][-1]:.2f}; "
        return head + ("accuracy on/off " f"{a['on']['accuracy']:.2f}/{a['off']['accuracy']:.2f} -> "
                       f"{b['on']['accuracy']:.2f}/{b['off']['accuracy']:.2f}, think tags on/off "
                       f"{b['on']['think_tag_rate']:.2f}/{b['off']['think_tag_rate']:.2f}")
    return head


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
    """Command line: ``--dry-run`` or ``--stage NAME|all``; returns the plan or the stage results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).with_name("config.yaml")))
    ap.add_argument("--dry-run", action="store_true", help="plan without GPUs or weights")
    ap.add_argument("--stage", choices=(*STAGES, *ALIASES, "all"),
                    help="run one real stage, or all enabled stages in order (resumable)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    a = ap.parse_args(argv)
    cfg = load_recipe_config(a.config, Config, parse_overrides(a.overrides))
    root = Path(__file__).resolve().parents[2]
    if a.dry_run:
        r = dry_run(cfg, root)
        print(summary(r))
        return r
    if not a.stage:
        raise ConfigError("give --dry-run or --stage NAME (" + ", ".join((*STAGES, "all")) + ")")
    t0 = time.perf_counter()
    res = run_stages(cfg, a.stage)
    for name, r in res.items():
        print(stage_line(name, r))
    print(f"{cfg.name}: {', '.join(res)} in {time.perf_counter() - t0:.1f} s (run directory {cfg.output_dir})")
    return res


def cli(argv: list[str] | None = None) -> int:
    """``main`` for the shell: a bad config or a missing earlier stage prints one line and exits 2."""
    import sys

    from puzzlekit.errors import PuzzlekitError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        main(argv)
    except PuzzlekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
