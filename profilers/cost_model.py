"""A measured cost model of whole models: sub-block runtimes timed on this machine, summed, plus the
measured non-block part and the decode cache-spill correction.

    prof = measure_profile(parent, library, scenario)      # times every sub-block (+ non-block, parent, spill)
    apply_profile(library, prof, parent.config.parent_spec)  # the costs into the library (search reads them)
    cm = cost_model(prof, spec)
    cm.runtime(blocks)                                      # predicted whole-model ms of any architecture

**Prediction** = non-block part (a model of L no-op layers: embeddings, final norm, LM head, the
per-step harness and the per-layer constant) + the sum of the measured sub-blocks (FFN widths not
timed are interpolated) + ``gamma · max(0, W − C)`` for the model's decode working set ``W``: the
sub-blocks are timed in small stacks that stay in the CPU cache, and a model larger than the cache
decodes slower than its sum (:class:`~puzzlekit.profilers.measured.CacheSpill`; ``gamma`` measured by
a stack of the parent's size, the capacity ``C`` fitted on the parent's own decode excess).  Since
``max(0, ·)`` is convex, "prediction ≤ T" is exactly two linear budgets (:func:`spill_budgets`), so a
search under it stays an exact MIP.  The measurements behind it are in ``docs/profilers.md``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from puzzlekit.architecture import Architecture, ParentSpec, Scenario
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
from puzzlekit.errors import ConfigError, PuzzlekitError

__all__ = ["CostModel", "SPILL_COST", "PROFILE_METHOD", "measure_profile", "apply_profile", "cost_model",
           "spill_budgets", "subkey", "sub_from_key"]

#: The library cost that adds the cache-spill term's linear part (see :func:`spill_budgets`).
SPILL_COST = "runtime_spill_ms"
#: How :func:`measure_profile` measures (recorded with a profile, part of a pipeline stage's identity).
PROFILE_METHOD = ("repeated-block, non-block of L no-op layers, decode cache-spill (slope at the parent's size, "
                  "capacity fitted on the parent)")
#: The method with ``spill="two-point"``: slope and capacity both fitted on two whole models.
PROFILE_METHOD_TWO_POINT = ("repeated-block, non-block of L no-op layers, decode cache-spill (slope and capacity "
                            "fitted on the parent and on the parent with every other layer removed)")
#: FFN widths (fractions of the parent's) timed beyond the library's, so any uniform width interpolates.
EXTRA_FFN_FRACTIONS = (0.0625, 0.375, 0.625, 0.875)


class CostModel:
    """Predicted runtime (ms) of any architecture from measured sub-block costs.

    ``attn``: measured runtime per attention variant; ``ffn_widths``/``ffn_ms``: measured
    SwiGLU runtimes at some widths (linearly interpolated in between, 0 at width 0);
    ``linear_ffn_ms``; ``non_block_ms``.  ``spill`` (a
    :class:`~puzzlekit.profilers.measured.CacheSpill`) with ``working_set(blocks)`` (bytes) adds the
    decode cache-spill correction of models too big for the CPU cache.
    """

    def __init__(self, attn: dict[AttentionConfig, float], ffn_widths: Sequence[int], ffn_ms: Sequence[float],
                 linear_ffn_ms: float, non_block_ms: float, *, spill: Any = None,
                 working_set: Callable[[Sequence[BlockConfig]], float] | None = None,
                 corrections: dict[str, float] | None = None, intercept_ms: float = 0.0):
        self.spill, self.working_set = spill, working_set
        # fitted on whole models (profilers.whole): ms per use of a sub-block kind, and the intercept
        self.corrections, self.intercept_ms = dict(corrections or {}), float(intercept_ms)
        cw = sorted((sub_from_key(k).intermediate_size, v) for k, v in self.corrections.items()
                    if k.startswith("ffn=") and not sub_from_key(k).linear)
        self._cw = (np.array([w for w, _ in cw], float), np.array([v for _, v in cw], float))
        self.attn = dict(attn)
        order = np.argsort(ffn_widths)
        self.w = np.concatenate([[0.0], np.asarray(ffn_widths, float)[order]])
        self.t = np.concatenate([[0.0], np.asarray(ffn_ms, float)[order]])
        self.linear_ffn_ms = float(linear_ffn_ms)
        self.non_block_ms = float(non_block_ms)

    def ffn(self, f: FFNConfig) -> float:
        if f.no_op:
            return 0.0
        if f.linear:
            return max(0.0, self.linear_ffn_ms + self.corrections.get(subkey(f), 0.0))
        base = float(np.interp(f.intermediate_size, self.w, self.t))
        return max(0.0, base + self.ffn_correction(f))

    def ffn_correction(self, f: FFNConfig) -> float:
        """The whole-model correction of a SwiGLU FFN: fitted for its width, else interpolated in width."""
        if subkey(f) in self.corrections:
            return self.corrections[subkey(f)]
        w, v = self._cw
        return float(np.interp(f.intermediate_size, w, v)) if len(w) else 0.0

    def attention(self, a: AttentionConfig) -> float:
        if a.no_op:
            return 0.0
        if a not in self.attn:
            raise PuzzlekitError(f"no measured cost for attention {a.key}; profile it first")
        return max(0.0, self.attn[a] + self.corrections.get(subkey(a), 0.0))

    def runtime(self, blocks: Sequence[BlockConfig]) -> float:
        """Predicted whole-model runtime (ms) of a model with these blocks."""
        blocks = list(blocks)
        t = self.non_block_ms + self.intercept_ms + sum(self.attention(b.attention) + self.ffn(b.ffn) for b in blocks)
        if self.spill is not None and self.working_set is not None:
            t += self.spill.extra_ms(self.working_set(blocks))
        return t


def subkey(s: AttentionConfig | FFNConfig) -> str:
    """``attention=gqa:2`` / ``ffn=ffn:384`` / ``ffn=linear``: a sub-block's key in a profile."""
    return ("attention=" if isinstance(s, AttentionConfig) else "ffn=") + s.short()


def sub_from_key(key: str) -> AttentionConfig | FFNConfig:
    kind, short = key.split("=", 1)
    if kind == "attention":
        return BlockConfig.from_key(f"attn={short}|ffn=no_op").attention
    return BlockConfig.from_key(f"attn=no_op|ffn={short}").ffn


def _subblocks(library: Any, spec: ParentSpec) -> list[Any]:
    subs: list[Any] = []
    for b in library.blocks:
        for s in (b.attention, b.ffn):
            if not s.no_op and s not in subs:
                subs.append(s)
    widths = sorted({8} | {max(8, 8 * round(spec.intermediate_size * f / 8)) for f in EXTRA_FFN_FRACTIONS})
    for w in widths:
        f = FFNConfig.swiglu(w)
        if f not in subs:
            subs.append(f)
    return subs


def measure_profile(parent: Any, library: Any, scenario: Scenario, *, repeats: int = 5, threads: int | None = 1,
                    seed: int = 0, passes: int = 3, progress: bool = False, spill: str = "stack",
                    whole: int = 0, whole_axes: bool = False) -> dict[str, Any]:
    """Time every sub-block of ``library`` (and a few more FFN widths) on this machine for ``scenario``,
    the non-block part and the parent (a ``PuzzleForCausalLM``) whole, and fit the cache-spill term.

    ``passes`` passes over every sub-block (each measurement a median of ``repeats``), the median per
    sub-block: load from other jobs on shared cores drifts over time, and passes spread it evenly
    instead of inflating whichever sub-blocks were timed during a burst.  Returns the profile (a JSON
    document: per sub-block timings, ``non_block_ms``, ``cache_spill``, ...) that :func:`apply_profile`
    and :func:`cost_model` read.

    ``spill``: how the cache-spill term is fitted.  ``stack`` (default): its slope from a stack of one
    sub-block as large as the parent, its capacity from the parent's measured decode excess.
    ``two-point``: slope and capacity from two whole models, the parent and the parent with every other
    layer removed (about half its working set, where children live): on SmolLM2-135M at batch 1 the
    stack's slope (0.83 ms/MiB) was 2.4x the parent's mean excess per MiB and the fit put the capacity
    at 299 MiB, so a 315 MiB child was predicted additive while it decoded 112 ms (0.36 ms/MiB) over
    its sum, as the parent does (0.35 ms/MiB): predicted 2.39x, measured 1.80x.

    ``whole`` > 0: that many architectures sampled from the library are timed whole against the parent,
    and each sub-block kind's cost is corrected by least squares so the sums predict them
    (:mod:`puzzlekit.profilers.whole`; the record is the profile's ``whole_fit``); with ``whole_axes`` the
    first of them are the axis shapes (each sub-block kind on every layer).
    """
    from puzzlekit.progress import progress as progress_bar

    from .measured import (
        CacheSpill,
        measure_model,
        measure_non_block,
        measure_spill_gamma,
        subblock_working_set_bytes,
        time_subblock,
        working_set_bytes,
    )

    spec = parent.config.parent_spec
    subs = _subblocks(library, spec)
    L = spec.num_hidden_layers
    if spill not in ("stack", "two-point"):
        raise ConfigError(f"measure_profile: spill={spill!r}; use stack or two-point")
    runs: dict[str, list[Any]] = {subkey(s): [] for s in subs}
    nbs, parents, excess, halves, half_excess = [], [], [], [], []
    half = _half_architecture(parent.architecture) if spill == "two-point" else None
    bar = progress_bar(total=passes * (len(subs) + 2 + (half is not None)) + (half is None),
                       desc=f"profile (measured sub-blocks, {passes} passes)",
                       disable=not progress, unit="sub")
    for k in range(passes):
        for s in subs:
            runs[subkey(s)].append(time_subblock(spec, s, scenario, threads=threads, repeats=repeats, warmup=1,
                                                 seed=seed + k))
            bar.update(1)
        nbs.append(measure_non_block(spec, scenario, layers=L, threads=threads, repeats=max(3, repeats), warmup=1,
                                     seed=k))
        bar.update(1)
        parents.append(measure_model(parent, scenario, threads=threads, repeats=max(3, repeats), warmup=1, seed=k))
        bar.update(1)
        summed = nbs[-1].decode_ms + sum(runs[subkey(x)][-1].decode_ms for b in parent.architecture.blocks
                                         for x in (b.attention, b.ffn) if not x.no_op)
        excess.append(parents[-1].decode_ms - summed)
        if half is not None:
            halves.append(measure_model(half, scenario, threads=threads, repeats=max(3, repeats), warmup=1, seed=k))
            bar.update(1)
            summed_h = nbs[-1].decode_ms + sum(runs[subkey(x)][-1].decode_ms for b in half.blocks
                                               for x in (b.attention, b.ffn) if not x.no_op)
            half_excess.append(halves[-1].decode_ms - summed_h)
    # cache spill: decode of a model whose working set exceeds the CPU cache costs more than its summed
    # sub-blocks (timed in small, cache-resident stacks); gamma measured, capacity fitted on the parent
    w_parent = working_set_bytes(parent.architecture, scenario)
    if half is None:
        gs = [measure_spill_gamma(spec, scenario, at_bytes=w_parent, threads=threads, repeats=max(2, repeats // 2),
                                  seed=seed + k) for k in range(passes)]
        gamma = statistics.median(g for g, _ in gs)
        gdetail = {**gs[0][1], "gammas_ms_per_mib": [g * 2**20 for g, _ in gs]}
        bar.update(1)
        fit = CacheSpill.fit_capacity(gamma, w_parent, statistics.median(excess))
    else:
        w_half = working_set_bytes(half, scenario)
        fit = CacheSpill.fit_two_points(w_half, statistics.median(half_excess), w_parent, statistics.median(excess))
        gdetail = {"half_working_set_mib": w_half / 2**20, "half_decode_excess_ms": half_excess,
                   "half_measured_ms": statistics.median(h.runtime_ms for h in halves)}
    bar.close()
    timings: dict[str, dict[str, float]] = {}
    for key, ts in runs.items():
        t = sorted(ts, key=lambda x: x.runtime_ms)[len(ts) // 2]
        timings[key] = {"prefill_ms": t.prefill_ms, "decode_ms": t.decode_ms, "runtime_ms": t.runtime_ms,
                        "spread_ms": max(x.runtime_ms for x in ts) - min(x.runtime_ms for x in ts),
                        "working_set_bytes": subblock_working_set_bytes(spec, sub_from_key(key), scenario)}
    nb = sorted(nbs, key=lambda x: x.runtime_ms)[len(nbs) // 2]
    from .measured import non_block_working_set_bytes

    prof = {"scenario": scenario.name, "subblocks": timings, "non_block_ms": nb.runtime_ms,
            "non_block_layers": L, "non_block_working_set_bytes": non_block_working_set_bytes(spec, scenario),
            "cache_spill": fit.to_dict(), "cache_spill_gamma_detail": gdetail, "parent_working_set_bytes": w_parent,
            "parent_measured_ms": statistics.median(p.runtime_ms for p in parents),
            "parent_decode_excess_ms": excess,
            "scenario_dims": [scenario.dtype, scenario.batch, scenario.prefill, scenario.decode],
            "scenario_spec": scenario.to_dict(), "threads": threads, "repeats": repeats,
            "method": PROFILE_METHOD if half is None else PROFILE_METHOD_TWO_POINT}
    if whole:
        from .whole import fit_on_whole_models

        prof["whole_fit"] = fit_on_whole_models(parent, library, prof, scenario, whole, threads=threads,
                                                repeats=max(3, repeats), seed=seed, axes=whole_axes,
                                                progress=progress)
    return prof


def _half_architecture(arch: Architecture) -> Architecture:
    """``arch`` with every other layer (1, 3, 5, ...) removed: about half the parent's working set."""
    gone = BlockConfig(AttentionConfig.make_no_op(), FFNConfig.make_no_op())
    return Architecture(arch.parent, tuple(gone if i % 2 else b for i, b in enumerate(arch.blocks)))


def _scenario(prof: dict[str, Any]) -> Scenario:
    if "scenario_spec" in prof:
        return Scenario.from_dict(prof["scenario_spec"])
    return Scenario("local-cpu", *prof["scenario_dims"])


def _spill(prof: dict[str, Any]) -> Any:
    from .measured import CacheSpill

    return CacheSpill.from_dict(prof["cache_spill"]) if "cache_spill" in prof else CacheSpill(0.0, 0.0)


def _whole_fit(prof: dict[str, Any]) -> dict[str, Any]:
    """The profile's fit on whole models (:mod:`puzzlekit.profilers.whole`), or ``{}``: no corrections."""
    return prof.get("whole_fit") or {}


def apply_profile(library: Any, prof: dict[str, Any], *, default: bool = True) -> str:
    """Write a measured profile's costs into ``library`` (per block: ``runtime_ms``, ``prefill_ms``,
    ``decode_ms``, the attention / FFN parts and :data:`SPILL_COST`; the non-block constants in
    ``library.meta["non_block_costs"]``).  Returns the scenario name.  A profile fitted on whole models
    (``whole_fit``, :mod:`puzzlekit.profilers.whole`) has its corrections in ``runtime_ms`` and the parts
    (``prefill_ms`` / ``decode_ms`` stay the sub-block timings)."""
    zero = {"runtime_ms": 0.0, "prefill_ms": 0.0, "decode_ms": 0.0, "working_set_bytes": 0.0}
    timings = prof["subblocks"]
    spill = _spill(prof)
    cm = cost_model(prof)
    name = library.add_scenario(_scenario(prof), default=default)

    def runtime(s: AttentionConfig | FFNConfig, t: dict[str, float]) -> float:
        if s.no_op or subkey(s) not in timings:
            return t["runtime_ms"]
        return cm.attention(s) if isinstance(s, AttentionConfig) else cm.ffn(s)

    for b in library.blocks:
        a = timings.get(subkey(b.attention), zero)
        f = timings.get(subkey(b.ffn), zero)
        ra, rf = runtime(b.attention, a), runtime(b.ffn, f)
        library.set_costs(name, b, {"runtime_ms": ra + rf, "prefill_ms": a["prefill_ms"] + f["prefill_ms"],
                                    "decode_ms": a["decode_ms"] + f["decode_ms"],
                                    "attention_runtime_ms": ra, "ffn_runtime_ms": rf,
                                    SPILL_COST: ra + rf + spill.gamma_ms_per_byte * (a["working_set_bytes"]
                                                                                     + f["working_set_bytes"])})
    nb, nb_ws = prof["non_block_ms"] + cm.intercept_ms, prof["non_block_working_set_bytes"]
    library.meta.setdefault("non_block_costs", {})[name] = {
        "runtime_ms": nb, SPILL_COST: nb + spill.gamma_ms_per_byte * nb_ws
        - spill.gamma_ms_per_byte * spill.capacity_bytes}
    library.meta.setdefault("profiles", {})[name] = {"profiler": "measured", "threads": prof.get("threads"),
                                                     "repeats": prof.get("repeats"), "cache_spill": spill.to_dict()}
    if "whole_fit" in prof:
        from .whole import fit_summary

        library.meta["profiles"][name]["whole_fit"] = fit_summary(prof["whole_fit"])
    return name


def cost_model(prof: dict[str, Any], spec: ParentSpec | None = None) -> CostModel:
    """The whole-model cost model of a measured profile: non-block part + summed measured sub-blocks
    (FFN widths interpolated) + the cache-spill correction of the decode working set (with ``spec``)."""
    attn, fw, fms, linear = {}, [], [], 0.0
    for key, t in prof["subblocks"].items():
        s = sub_from_key(key)
        if isinstance(s, AttentionConfig):
            attn[s] = t["runtime_ms"]
        elif s.linear:
            linear = t["runtime_ms"]
        else:
            fw.append(s.intermediate_size)
            fms.append(t["runtime_ms"])
    spill, ws = None, None
    if spec is not None and "cache_spill" in prof:
        from .measured import subblock_working_set_bytes

        sc = _scenario(prof)
        spill = _spill(prof)
        nb_ws = prof["non_block_working_set_bytes"]

        def ws(blocks: Any) -> float:
            return nb_ws + sum(subblock_working_set_bytes(spec, x, sc) for b in blocks for x in (b.attention, b.ffn))
    fit = _whole_fit(prof)
    return CostModel(attn, fw, fms, linear, prof["non_block_ms"], spill=spill, working_set=ws,
                     corrections=fit.get("subblocks"), intercept_ms=fit.get("intercept_ms", 0.0))


def spill_budgets(library: Any, prof: dict[str, Any], budget_ms: float) -> tuple[dict[str, float], dict[str, float]]:
    """Search budgets and non-block constants for a predicted whole-model runtime of at most ``budget_ms``:
    ``sum + gamma · max(0, W − C) ≤ T`` is exactly ``sum ≤ T`` and ``sum + gamma · (W − C) ≤ T``."""
    sc = prof["scenario"]
    nbc = library.meta.get("non_block_costs", {}).get(sc, {})
    intercept = _whole_fit(prof).get("intercept_ms", 0.0)
    budgets, consts = {"runtime_ms": budget_ms}, {"runtime_ms": prof["non_block_ms"] + intercept}
    if "cache_spill" in prof and SPILL_COST in nbc:
        budgets[SPILL_COST] = budget_ms
        consts[SPILL_COST] = nbc[SPILL_COST]
    return budgets, consts
