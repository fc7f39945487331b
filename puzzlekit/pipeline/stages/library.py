"""The block library: ``bld`` (train every candidate, :mod:`puzzlekit.bld`), ``score`` (replace-1-block
metrics, :mod:`puzzlekit.scoring`) and ``profile`` (costs per block: :mod:`puzzlekit.profilers`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...io import read_json
from ..runner import Stage

__all__ = ["BLD", "SCORE", "PROFILE", "search_space"]


def search_space(cfg: Any, spec: Any) -> Any:
    """The candidate space of ``cfg.space`` for a parent of dimensions ``spec``."""
    from ...bld import FFN_FRACTIONS, default_search_space

    sp = cfg.space
    return default_search_space(spec, ffn_fractions=sp.ffn_fractions or FFN_FRACTIONS, kv_heads=sp.kv_heads or None,
                                linear=sp.linear, no_op=sp.no_op)


def run_bld(ctx: Any) -> dict[str, Any]:
    from ...bld import BLDConfig, run_bld

    b = ctx.cfg.bld
    space = search_space(ctx.cfg, ctx.spec)
    cfg = BLDConfig(tokens=int(b.tokens), batch_size=b.batch, lr=b.lr, seed=ctx.cfg.seed,
                    eval_sequences=min(8, len(ctx.data.heldout)), checkpoint_every=b.checkpoint_every)
    lib = run_bld(ctx.parent, ctx.data, ctx.rd, space, cfg, progress=ctx.progress)
    ctx.library(reload=True)
    return {"candidates": len(lib), "trained": sum(1 for c in lib.candidates if c.weights), "space": space.to_dict(),
            "train_sequences": len(ctx.data.train), "heldout_sequences": len(ctx.data.heldout)}


BLD = Stage("bld", run_bld, lambda cfg: {"space": cfg.space, "bld": cfg.bld, "seed": cfg.seed},
            "blockwise local distillation of every candidate (journaled per unit)", reads=("tokens.npz",),
            writes=("library.json", "blocks/"), multi_process=True)


def run_score(ctx: Any) -> dict[str, Any]:
    from ...scoring import score_library

    s, objective = ctx.cfg.score, ctx.cfg.search.objective
    lib = ctx.library(reload=True)
    score_library(ctx.parent, lib, ctx.data, ctx.rd, eval_sequences=s.sequences, batch_size=s.batch,
                  progress=ctx.progress, decoupled=s.decoupled)
    lib.save(ctx.out / "library.json")
    kl = [c.metrics[objective] for c in lib.candidates if objective in c.metrics]
    if len(kl) != len(lib):
        raise ConfigError(f"scoring left {len(lib) - len(kl)} candidates without {objective!r}; set "
                          "search.objective to a metric puzzlekit.scoring computes (kl_div, lm_loss, ...)")
    composed = sum(1 for c in lib.candidates if c.metrics.get("composed"))
    return {"scored": len(kl) - composed, "composed": composed, "objective": objective, "min": min(kl), "max": max(kl),
            "tokens": min(s.sequences, len(ctx.data.heldout)) * ctx.data.seq_len}


SCORE = Stage("score", run_score, lambda cfg: {"score": cfg.score, "objective": cfg.search.objective},
              "replace-1-block KL, LM loss, cosine and top-k of every candidate (journaled)",
              reads=("library.json", "blocks/", "tokens.npz"), writes=("library.json (metrics)",))


def _profile_settings(cfg: Any) -> dict[str, Any]:
    from ...profilers.cost_model import PROFILE_METHOD, PROFILE_METHOD_TWO_POINT

    p = cfg.profile
    out: dict[str, Any] = {"profiler": p.profiler, "scenario": p.scenario, "reference": p.reference}
    if p.profiler == "measured":
        out.update(repeats=p.repeats, threads=p.threads, seed=cfg.seed, method=PROFILE_METHOD if p.spill == "stack" else PROFILE_METHOD_TWO_POINT)
        if p.passes != 3:  # the default is left out: runs profiled before the setting existed stay valid
            out["passes"] = p.passes
        if p.whole:
            from ...profilers.whole import WHOLE_METHOD

            out.update(whole=p.whole, whole_method=WHOLE_METHOD)
            if p.whole_axes:
                out["whole_axes"] = True
        if p.from_file:
            f = Path(p.from_file).expanduser()
            out["from_file"] = hashlib.sha256(f.read_bytes()).hexdigest()[:16] if f.is_file() else str(f)
    return out


def run_profile(ctx: Any) -> dict[str, Any]:
    from ...architecture import Scenario
    from ...profilers import profile_library

    p = ctx.cfg.profile
    sc = ctx.cfg.scenario
    lib = ctx.library(reload=True)
    if p.profiler == "analytic":
        profile_library(lib, sc, parent=lib.parent, default=True)  # the loaded parent's dimensions, as BLD recorded
        lib.save(ctx.out / "library.json")
        return {"scenario": sc.name, "hardware": sc.hardware, "blocks": len(lib.blocks)}
    from ...profilers.cost_model import apply_profile, measure_profile

    if p.from_file:
        f = Path(p.from_file).expanduser()
        if not f.is_file():
            raise ConfigError(f"profile.from_file={p.from_file}: no such file; give a stages/profile.json of a "
                              "measured run")
        prof = {k: v for k, v in read_json(f, what="measured profile").items()
                if k not in ("stage", "seconds", "reused")}
        if "subblocks" not in prof or "non_block_ms" not in prof:
            raise ConfigError(f"{f}: not a measured profile (no subblocks / non_block_ms)")
    else:
        prof = measure_profile(ctx.parent, lib, sc, repeats=p.repeats, threads=p.threads, seed=ctx.cfg.seed,
                               passes=p.passes, progress=ctx.progress, spill=p.spill, whole=p.whole,
                               whole_axes=p.whole_axes)
    name = apply_profile(lib, prof, default=True)
    if p.reference:  # an analytic scenario beside it, for the report (e.g. an H100 in FP8)
        ref = Scenario(**p.reference)
        profile_library(lib, ref, default=False)
        prof["reference_scenario"] = ref.name
    lib.default_scenario = name
    lib.save(ctx.out / "library.json")
    ctx.library(reload=True)
    return dict(prof, scenario=name)


PROFILE = Stage("profile", run_profile, _profile_settings,
                "costs of every block for the scenario: analytic roofline, or measured on this machine "
                "(+ the measured cache-spill fit)", reads=("library.json",), writes=("library.json (costs)",))
