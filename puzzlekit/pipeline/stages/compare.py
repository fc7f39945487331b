"""The ``baselines`` stage: simple compressions (:mod:`puzzlekit.baselines`), each matched to the child's
*measured* speed (at least as fast, at most ``match_tol`` faster), timed against the child itself.

A method is one entry of :data:`METHODS`: ``make(env) -> (speed-up -> (Recipe, predicted speed-up))``,
the knob set from the measured cost model; a new baseline is one more entry, named in
``baselines.methods``.  ``drop-layers`` (ShortGPT-like) removes whole layers by Block Influence
(:func:`puzzlekit.scoring.importance.layer_importance` on the calibration rows: training text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import PuzzlekitError
from ...io import atomic_write_json, read_json
from ..runner import Stage, stage_hash
from .search import measured_speedup

__all__ = ["BASELINES", "METHODS", "MATCH_METHOD"]

#: How baselines are timed for speed matching (part of the stage's identity, so a change re-runs it).
MATCH_METHOD = "interleaved-with-child, at least as fast (1 % resolution), surprises confirmed"


@dataclass
class Env:
    """What a baseline method sets its knob from."""

    lib: Any
    spec: Any
    cm: Any  # the measured cost model (puzzlekit.profilers.cost_model.CostModel)
    scenario: str
    parent_pred: float
    non_block_ms: float
    seed: int
    importance: Any = None  # LayerImportance (for drop-layers)

    def pred(self, recipe: Any) -> float:
        return self.parent_pred / self.cm.runtime(recipe.blocks(self.lib))

    def within(self, choose: Callable[[float], list[int]], target_ms: float) -> list[int]:
        """``choose(budget)`` on the summed block runtimes, its budget bisected so that the predicted
        whole-model runtime (cache spill included: not a plain sum) is at most ``target_ms``."""
        lib, lo, hi = self.lib, 0.0, max(0.0, target_ms - self.non_block_ms)
        best = choose(lo) if lo > 0 else None
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            try:
                ch = choose(mid)
            except PuzzlekitError:
                lo = mid
                continue
            if self.cm.runtime([lib.candidates[i].block for i in ch]) <= target_ms:
                best, lo = ch, mid
            else:
                hi = mid
        return best if best is not None else choose(max(0.0, target_ms - self.non_block_ms))


def _uniform(env: Env) -> Callable[[float], tuple[Any, float]]:
    from ...baselines import uniform_ffn_recipe, uniform_width_for

    def make(s: float) -> tuple[Any, float]:
        r = uniform_ffn_recipe(env.spec, uniform_width_for(env.spec, env.cm, env.parent_pred / s))
        return r, env.pred(r)
    return make


def _drop_attention(env: Env) -> Callable[[float], tuple[Any, float]]:
    from ...baselines import drop_knob_for, drop_order, drop_recipe

    order = drop_order(env.lib)

    def make(s: float) -> tuple[Any, float]:
        r = drop_recipe(env.spec, order, drop_knob_for(env.spec, order, env.cm, env.parent_pred / s))
        return r, env.pred(r)
    return make


def _greedy(env: Env) -> Callable[[float], tuple[Any, float]]:
    from ...baselines import Recipe, greedy_choices

    def make(s: float) -> tuple[Any, float]:
        ch = env.within(lambda b: greedy_choices(env.lib, b, scenario=env.scenario), env.parent_pred / s)
        r = Recipe("greedy", choices=ch, knob=s)
        return r, env.pred(r)
    return make


def _random(env: Env) -> Callable[[float], tuple[Any, float]]:
    from ...baselines import Recipe, random_choices_at

    def make(s: float) -> tuple[Any, float]:
        ch = env.within(lambda b: random_choices_at(env.lib, b, scenario=env.scenario, seed=env.seed),
                        env.parent_pred / s)
        r = Recipe("random", choices=ch, knob=s)
        return r, env.pred(r)
    return make


def _drop_layers(env: Env) -> Callable[[float], tuple[Any, float]]:
    from ...baselines import layers_knob_for, layers_recipe

    order = env.importance.order("block")

    def make(s: float) -> tuple[Any, float]:
        r = layers_recipe(env.spec, order, layers_knob_for(env.spec, order, env.cm, env.parent_pred / s))
        return r, env.pred(r)
    return make


#: ``baselines.methods`` name → the method's knob (see the module doc).
METHODS: dict[str, Callable[[Env], Callable[[float], tuple[Any, float]]]] = {
    "uniform-ffn": _uniform, "drop-attention": _drop_attention, "drop-layers": _drop_layers, "greedy": _greedy,
    "random": _random}


def _fastest(name: str, recipe: Any, env: Env) -> bool:
    if name == "uniform-ffn":
        return recipe.knob == 0.0
    if name == "drop-attention":
        return (recipe.knob or 0) >= 2 * env.lib.num_layers
    if name == "drop-layers":
        return (recipe.knob or 0) >= env.lib.num_layers
    return False


def importance(ctx: Any) -> Any:
    """Block Influence of every layer of the parent on the calibration rows (training text), computed once
    per run (``importance.json``)."""
    from ...io import read_json
    from ...scoring.importance import LayerImportance, layer_importance

    rows = ctx.calib_ids()
    key = stage_hash([ctx.data.fingerprint, int(rows.shape[0])])
    path = ctx.out / "importance.json"
    if path.exists():
        d = read_json(path, what="layer importance")
        if d.get("key") == key:
            return LayerImportance.from_dict(d["importance"])
    imp = layer_importance(ctx.parent, rows.to(ctx.parent.device), batch_size=ctx.cfg.bld.batch)
    atomic_write_json(path, {"key": key, "importance": imp.to_dict()})
    return imp


def run_baselines(ctx: Any) -> dict[str, Any]:
    from ...baselines import RESOLUTION, Recipe, match_speed
    from ...profilers.cost_model import cost_model
    from ...progress import progress as progress_bar

    cfg, b = ctx.cfg, ctx.cfg.baselines
    unknown = [m for m in b.methods if m not in METHODS]
    if unknown:
        from ...errors import ConfigError, did_you_mean

        raise ConfigError(f"baselines.methods: unknown method {unknown[0]!r}; {did_you_mean(unknown[0], METHODS)}")
    prof, srch, child = ctx.result("profile"), ctx.result("search"), ctx.child()
    lib = ctx.library()
    env = Env(lib, ctx.spec, cost_model(prof, ctx.spec), prof["scenario"], srch["parent_predicted_ms"],
              prof["non_block_ms"], cfg.seed, importance(ctx) if "drop-layers" in b.methods else None)
    target = child["measured"]["speedup"]
    p_over_m = child["predicted_speedup"] / target
    child_model = ctx.build_model(Recipe.from_dict(child["recipe"]))

    def measure(recipe: Recipe) -> float:
        # timed against the child itself (interleaved rounds): the ratio that matters for matching,
        # with half the noise of two separate speed-ups over the parent
        # expected: the cost model's prediction, corrected by the child's own miss (as the knob's request is)
        rel = measured_speedup(child_model, ctx.build_model(recipe), cfg.scenario, cfg.profile.rounds,
                               cfg.profile.threads, expected=env.pred(recipe) / p_over_m / target)["speedup"]
        return target * rel

    # each finished baseline is kept, so a run killed in this stage resumes with the next one
    parts_path = ctx.path("stages/baseline_parts.json")
    key = stage_hash([ctx.identity("baselines"), child["recipe"], target])
    parts = read_json(parts_path, what="baseline parts") if parts_path.exists() else {}
    if parts.get("key") != key:
        parts = {"key": key, "baselines": {}}
    out = parts["baselines"]
    for name in progress_bar(b.methods, desc="baselines (speed matching)", disable=not ctx.progress, unit="baseline"):
        if name in out:
            continue
        recipe, s, trace = match_speed(METHODS[name](env), measure, target, p_over_m, tol=b.match_tol,
                                       max_iters=b.iters, at_least=True)
        recipe.name = name
        matched = -RESOLUTION <= s / target - 1 <= b.match_tol
        tried = ", ".join(f"{t['measured']:.2f}x" for t in trace)
        note = "" if matched else (f"measured {tried} for the child's {target:.2f}x; kept {s:.2f}x, the closest"
                                   + ("; this is its fastest setting" if _fastest(name, recipe, env) and s < target
                                      else "; its knob reaches no model in between" if len(trace) < b.iters else ""))
        out[name] = {"recipe": recipe.to_dict(), "measured_speedup": s, "predicted_speedup": env.pred(recipe),
                     "matched": matched, "trace": trace, "note": note}
        atomic_write_json(parts_path, parts)
    return {"target_speedup": target, "baselines": {n: out[n] for n in b.methods}}


BASELINES = Stage("baselines", run_baselines, lambda cfg: {
    "baselines": cfg.baselines, "rounds": cfg.profile.rounds, "threads": cfg.profile.threads, "seed": cfg.seed,
    "method": MATCH_METHOD},
    "simple compressions, each matched to the child's measured speed", reads=("the child", "library.json"),
    writes=("stages/baseline_parts.json",), per_target=True)
