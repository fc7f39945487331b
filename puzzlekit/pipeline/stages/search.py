"""``search`` (the MIP over the scored, costed library: :mod:`puzzlekit.search`), ``child`` (assemble it,
:mod:`puzzlekit.model`; with ``child.match_speed``, re-search until its *measured* speed-up meets the
target) and ``fuse`` (FFN fusion of its attention-free runs, :mod:`puzzlekit.fusion`).

The search takes its budget in one of two ways (``search`` section):

* ``target_speedup``: a predicted speed-up over the parent on the measured cost model
  (:mod:`puzzlekit.profilers.cost_model`: summed sub-blocks + non-block part + cache spill);
* deployment constraints (:func:`deployment_search`): weights + KV cache within the GPUs' memory,
  throughput / latency relative to the parent's, on the library's per-block runtimes.  A search
  over the batch size that fits (throughput at fit) plugs in here.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

from ...errors import ConfigError
from ...io import atomic_write_json, read_json
from ...profilers.whole import SURPRISE  # 8 %: a surprising timing is confirmed, as in the cost-model fit
from ..runner import Stage

__all__ = ["SEARCH", "CHILD", "FUSE", "deployment_search", "parent_runtime_ms", "measured_speedup"]

logger = logging.getLogger("puzzlekit.pipeline")


def measured_speedup(parent: Any, model: Any, scenario: Any, rounds: int, threads: int, *,
                     expected: float | None = None, extra: int = 2) -> dict[str, Any]:
    """Whole-model latency of ``model`` against ``parent``: ``rounds`` interleaved measurements
    (parent, model, parent, model, ...), each a median of 3; the speed-up is the median of the
    per-round ratios, so slow drifts of a shared machine cancel.

    A surprising result is confirmed before anything acts on it: while the median is more than
    ``SURPRISE`` (8 %) from ``expected`` (the cost model's prediction) or the rounds are more than 8 %
    apart, up to ``extra`` more rounds are taken.  With one round a noisy timing cannot be told from a wrong
    cost model (a 2x child's first search once timed at 2.45x in one round, and the re-search settled on a
    1.64x child); the median of three outvotes a stray round, and a cost model that is really that wrong is
    confirmed at the cost of two rounds."""
    from ...profilers.measured import measure_model

    ratios: list[float] = []
    tp: list[float] = []
    tm: list[float] = []

    def surprising() -> bool:
        med = statistics.median(ratios)
        if expected is not None and abs(med / expected - 1) > SURPRISE:
            return True
        return len(ratios) > 1 and max(ratios) / min(ratios) - 1 > SURPRISE

    n = max(1, rounds)
    while len(ratios) < n or (len(ratios) < n + max(0, extra) and surprising()):
        r = len(ratios)
        a = measure_model(parent, scenario, threads=threads, repeats=3, warmup=1, seed=r).runtime_ms
        b = measure_model(model, scenario, threads=threads, repeats=3, warmup=1, seed=r).runtime_ms
        ratios.append(a / b)
        tp.append(a)
        tm.append(b)
    return {"speedup": statistics.median(ratios), "parent_ms": statistics.median(tp), "model_ms": statistics.median(tm),
            "ratios": ratios}


# ---------------------------------------------------------------- deployment constraints
def parent_runtime_ms(lib: Any, spec: Any, scenario: str, cost: str = "runtime_ms") -> float:
    """The parent's whole-model cost in the library: the parent block on every layer plus the library's
    non-block part (which the search adds to every architecture's totals)."""
    pb = spec.parent_block()
    mat = lib.cost_matrix([cost], scenario)[:, 0]
    total = 0.0
    for layer in range(lib.num_layers):
        idx = [j for j in lib.candidates_for_layer(layer) if lib.candidates[j].block == pb]
        if not idx:
            raise ConfigError(f"the library has no parent block {pb.key} on layer {layer}; cannot take the "
                              "parent's runtime as the reference")
        total += float(mat[idx[0]])
    return total + lib.non_block_costs_for(scenario).get(cost, 0.0)


def deployment_search(cfg: Any, lib: Any, spec: Any, scen: str) -> tuple[Any, float]:
    """The search under the deployment constraints of ``cfg.search``: weights + KV cache for ``kv_tokens``
    within ``memory_gib`` × ``num_gpus``, and throughput at least ``throughput_speedup`` × / latency at most
    1 / ``latency_speedup`` × the parent's, both by the library's per-block ``runtime_ms`` of scenario
    ``scen``.  Returns the solution and the parent's summed runtime (the dry run calls this too)."""
    from ...search import LatencyLimit, MemoryLimit, ThroughputTarget, search

    s = cfg.search
    if s.at_fit:
        return at_fit_search(cfg, lib, spec, scen)
    lib_sc = lib.scenarios[scen]
    constraints: list[Any] = [MemoryLimit(max_gib=s.memory_gib * cfg.num_gpus, kv_tokens=s.kv_tokens,
                                          dtype=cfg.scenario.dtype)]
    ref = parent_runtime_ms(lib, spec, scen)
    if s.throughput_speedup > 0:
        parent_tps = 1000.0 * lib_sc.batch * lib_sc.sequence_length / ref
        constraints.append(ThroughputTarget(min_tokens_per_s=s.throughput_speedup * parent_tps))
    if s.latency_speedup > 0:
        constraints.append(LatencyLimit(max_ms=ref / s.latency_speedup))
    sol = search(lib, s.objective, constraints=constraints, scenario=scen, time_limit=s.time_limit)
    logger.info("search: %s %s in %.1f s", sol.status.name, sol.objective, sol.solve_seconds)
    return sol, ref


def fit_deployment(cfg: Any, lib: Any) -> Any:
    """The :class:`~puzzlekit.search.Deployment` of ``cfg``: its scenario's hardware, dtype, lengths and TP,
    ``search.memory_gib`` per GPU, ``search.kv_tokens`` cached at any batch, analytic costs."""
    from ...search.deploy import DEFAULT_BATCHES, Deployment
    from ...search.ln_targets import fit_hardware

    s, sc = cfg.search, cfg.scenario
    hw, _ = fit_hardware(lib, s.at_fit_hardware or sc.hardware)
    return Deployment(hardware=hw, dtype=sc.dtype, prefill=sc.prefill, decode=sc.decode, tp=sc.tp,
                      batches=tuple(s.at_fit_batches) or DEFAULT_BATCHES, memory_gib=s.memory_gib,
                      min_kv_tokens=s.kv_tokens, measured=False)


def at_fit_search(cfg: Any, lib: Any, spec: Any, scen: str) -> tuple[Any, float]:
    """``search.throughput_speedup`` × the parent's throughput, each at the batch that fits (one exact MIP per
    batch, the best kept; :func:`puzzlekit.search.search_at_fit`).  Returns the solution (with its ``batch``,
    ``tokens_per_s`` and ``speedup``) and the parent's summed runtime at the library's scenario."""
    from ...search import search_at_fit

    s = cfg.search
    dep = fit_deployment(cfg, lib)
    sol = search_at_fit(lib, s.objective, dep, parent=spec, min_speedup=s.throughput_speedup,
                        time_limit=s.time_limit)
    logger.info("search at the batch that fits: %s %s, batch %s, %s x the parent's throughput (batch %s)",
                sol.status.name, sol.objective, sol.batch, sol.speedup, sol.reference_batch)
    return sol, parent_runtime_ms(lib, spec, scen)


# ---------------------------------------------------------------- search
def _solution_info(ctx: Any, prof: dict[str, Any], parent_pred: float, speedup: float, sol: Any) -> dict[str, Any]:
    from ...profilers.cost_model import cost_model

    lib = ctx.library()
    pred = cost_model(prof, ctx.spec).runtime([lib.candidates[i].block for i in sol.candidates])
    return {"choices": list(sol.candidates), "predicted_ms": pred, "predicted_speedup": parent_pred / pred,
            "kl_sum": sol.objective, "blocks": sol.block_keys, "requested_speedup": speedup, "solver": sol.solver,
            "status": sol.status.name}


def _search_at(ctx: Any, prof: dict[str, Any], parent_pred: float, speedup: float, top_k: int = 1,
               min_diversity: int = 1) -> Any:
    """The optimum at a predicted speed-up ``speedup`` on the measured cost model; with ``top_k`` > 1 the list
    of up to ``top_k`` diverse solutions in objective order (:func:`puzzlekit.search.search_diverse`)."""
    from ...profilers.cost_model import spill_budgets
    from ...search import search, search_diverse

    lib = ctx.library()
    budgets, consts = spill_budgets(lib, prof, parent_pred / speedup)
    if top_k > 1:
        from .parent import check_min_diversity

        check_min_diversity(ctx.cfg, lib.num_layers)  # a resumed run with a changed setting
        sols = search_diverse(lib, ctx.cfg.search.objective, budgets, num_solutions=top_k,
                              min_diversity=min_diversity, scenario=prof["scenario"], constants=consts)
        return [_solution_info(ctx, prof, parent_pred, speedup, s) for s in sols]
    sol = search(lib, ctx.cfg.search.objective, budgets, scenario=prof["scenario"], constants=consts)
    return _solution_info(ctx, prof, parent_pred, speedup, sol)


def run_search(ctx: Any) -> dict[str, Any]:
    from ...baselines import parent_choices

    s = ctx.cfg.search
    lib = ctx.library(reload=True)
    target = ctx.target_speedup
    if target > 0:
        from ...profilers.cost_model import cost_model
        from ...search import pareto_front

        prof = ctx.result("profile")
        cm = cost_model(prof, ctx.spec)
        parent_ch = parent_choices(lib)
        parent_pred = cm.runtime([lib.candidates[i].block for i in parent_ch])
        info = _search_at(ctx, prof, parent_pred, target)
        res = {"parent_predicted_ms": parent_pred, "budget_ms": parent_pred / target,
               "parent_choices": parent_ch, **info, "objective_name": s.objective, "objective": info["kl_sum"],
               "candidates": info["choices"]}
        if s.pareto:
            front = pareto_front(lib, s.objective, cost="runtime_ms", scenario=prof["scenario"])
            res["front"] = [{"runtime_ms": cm.runtime(list(p.blocks)), "kl_sum": p.objective,
                             "blocks": p.block_keys} for p in front]
    else:
        scen = ctx.cfg.scenario.name
        sol, ref = deployment_search(ctx.cfg, lib, lib.parent, scen)
        if not sol.status.has_solution:
            raise ConfigError(f"search: {sol.status.name} under the constraints of {ctx.cfg.name}; relax "
                              "search.memory_gib, throughput_speedup or latency_speedup")
        res = {"objective_name": s.objective, "solution": sol.to_dict(), "candidates": list(sol.candidates),
               "choices": list(sol.candidates), "blocks": sol.block_keys, "objective": sol.objective,
               "costs": sol.costs, "status": sol.status.name, "solver": sol.solver, "parent_runtime_ms": ref,
               "speedup": ref / sol.costs["runtime_ms"] if sol.costs.get("runtime_ms") else None}
    atomic_write_json(ctx.path("search.json"), res)
    return res


def _search_settings(cfg: Any) -> dict[str, Any]:
    s = cfg.search
    out = {"objective": s.objective, "target_speedup": s.target_speedup, "pareto": s.pareto}
    if s.target_speedups:
        out["target_speedups"] = list(s.target_speedups)
    elif not s.target_speedup > 0:
        out.update(memory_gib=s.memory_gib, kv_tokens=s.kv_tokens, throughput_speedup=s.throughput_speedup,
                   latency_speedup=s.latency_speedup, time_limit=s.time_limit, num_gpus=cfg.num_gpus,
                   scenario=cfg.profile.scenario)
        if s.at_fit:
            out.update(at_fit=True, at_fit_hardware=s.at_fit_hardware, at_fit_batches=list(s.at_fit_batches))
    return out


SEARCH = Stage("search", run_search, _search_settings,
               "the MIP optimum of the summed score under the speed target or the deployment constraints",
               reads=("library.json",), writes=("search.json",), per_target=True)


# ---------------------------------------------------------------- child
def run_child(ctx: Any) -> dict[str, Any]:
    from ...baselines import Recipe, match_speed

    cfg, c = ctx.cfg, ctx.cfg.child
    srch = ctx.result("search")
    recipe = Recipe("puzzle", choices=list(srch["choices"]))
    res: dict[str, Any] = {}
    if c.match_speed:
        prof = ctx.result("profile")
        target = ctx.target_speedup
        infos: dict[str, dict[str, Any]] = {}
        measures: dict[str, dict[str, Any]] = {}

        def make(want: float) -> tuple[Recipe, float]:
            # a request near the parent's own speed only follows a measurement that noise on a busy machine
            # blew up (a 2x child timed at 4x): corrections may halve the requested gain, never drop it
            floor = 1.0 + 0.5 * (target - 1.0)
            if want < floor:
                logger.warning("child search: corrected request %.3fx is below %.3fx (the measurement was noisy); "
                               "searching at %.3fx", want, floor, floor)
                want = floor
            info = _search_at(ctx, prof, srch["parent_predicted_ms"], want)
            r = Recipe("puzzle", choices=info["choices"])
            infos[repr(r.to_dict())] = info
            return r, info["predicted_speedup"]

        def measure(r: Recipe, expected: float | None = None) -> float:
            # a speed-up far from the expected one (the prediction; for the top-k, the optimum's measured one)
            # is confirmed by more rounds before the budget is corrected or a solution turned down on it
            if expected is None:
                expected = infos[repr(r.to_dict())]["predicted_speedup"]
            m = measured_speedup(ctx.parent, ctx.build_model(r), cfg.scenario, cfg.profile.rounds, cfg.profile.threads,
                                 expected=expected)
            measures[repr(r.to_dict())] = m
            return m["speedup"]

        recipe, _, attempts = match_speed(make, measure, target, 1.0, tol=c.match_tol, max_iters=c.iters)
        info = infos[repr(recipe.to_dict())]
        res = {**info, "measured": measures[repr(recipe.to_dict())], "attempts": attempts}
        if c.top_k > 1:
            def record(r: Recipe, expected: float) -> dict[str, Any]:
                key = repr(r.to_dict())
                if key not in measures:  # a solution the speed matching timed already is not timed again
                    measure(r, expected)
                return measures[key]

            res = _select_top_k(ctx, res, srch["parent_predicted_ms"], record, target)
            recipe = Recipe("puzzle", choices=list(res["choices"]))
    else:
        res = {k: srch[k] for k in ("predicted_ms", "predicted_speedup", "kl_sum", "requested_speedup") if k in srch}
        res.update(choices=list(srch["choices"]), blocks=list(srch["blocks"]))
        if c.top_k > 1:
            res = _select_top_k(ctx, res, srch["parent_predicted_ms"], None, ctx.target_speedup)
            recipe = Recipe("puzzle", choices=list(res["choices"]))
    child = ctx.build_model(recipe)
    kl = ctx.kl(child)
    ctx.save_model(child, "child")
    n_c = sum(p.numel() for p in child.parameters())
    n_p = sum(p.numel() for p in ctx.parent.parameters())
    return {**res, "recipe": recipe.to_dict(), "kl_unhealed": kl["kl"], "kl": kl, "params": n_c,
            "params_ratio": n_c / n_p, "attention_layers": sum(1 for b in child.architecture.blocks
                                                                if not b.attention.no_op)}


def _select_top_k(ctx: Any, best: dict[str, Any], parent_pred: float, measure: Any, target: float) -> dict[str, Any]:
    """Puzzle's last step: the diverse top-k solutions at the budget of ``best`` (the optimum the search settled
    on), each assembled and its KL to the parent measured on held-out (valid) rows; the lowest is kept.  With
    ``measure`` (recipe -> measured speed-up record) the candidates are timed in KL order and the first whose
    speed-up misses ``target`` by no more than ``child.match_tol`` (or than ``best`` did) wins.  Each finished
    candidate is kept in ``stages/top_k.json``, so a killed stage resumes where it was."""
    from ...baselines import Recipe
    from ...eval import ParentReference, evaluate_model
    from ...progress import progress as progress_bar
    from ..runner import stage_hash

    c = ctx.cfg.child
    prof = ctx.result("profile")
    cands = _search_at(ctx, prof, parent_pred, best["requested_speedup"], c.top_k, c.min_diversity)
    if not any(x["choices"] == best["choices"] for x in cands):  # a tie broken otherwise: keep the optimum in
        cands = [{k: v for k, v in best.items() if k not in ("measured", "attempts")}, *cands[: c.top_k - 1]]
    rows = ctx.heldout(c.select_sequences or len(ctx.data.heldout))
    path = ctx.path("stages/top_k.json")
    # "reference": the KL is evaluate_model's against a cached parent (the next-token positions of each row)
    key = stage_hash([ctx.identity("child"), [x["choices"] for x in cands], best["requested_speedup"], "reference"])
    parts = read_json(path, what="top-k parts") if path.exists() else {}
    if parts.get("key") != key:
        parts = {"key": key, "kl": {}, "measured": {}}
    ref = None
    for i in progress_bar(range(len(cands)), desc=f"child: top-{len(cands)} by valid KL", disable=not ctx.progress,
                          unit="solution"):
        if str(i) not in parts["kl"]:
            if ref is None:  # the parent's side once for every solution (it is most of a KL evaluation's cost)
                ref = ParentReference.build(ctx.parent, {"valid": rows}, batch_size=8)
            model = ctx.build_model(Recipe("puzzle", choices=cands[i]["choices"]))
            parts["kl"][str(i)] = evaluate_model(model, ref)["valid"]["kl"]
            del model
            atomic_write_json(path, parts)
        cands[i]["kl_valid"] = parts["kl"][str(i)]
    order = sorted(range(len(cands)), key=lambda i: (cands[i]["kl_valid"], i))
    pick = order[0]
    if measure is not None:
        pick = next(i for i, x in enumerate(cands) if x["choices"] == best["choices"])
        cands[pick]["measured"] = best["measured"]
        limit = max(c.match_tol, abs(best["measured"]["speedup"] / target - 1))
        for i in order:
            if i == pick:
                break  # the optimum is at least as good as what is left
            if str(i) not in parts["measured"]:
                parts["measured"][str(i)] = measure(Recipe("puzzle", choices=cands[i]["choices"]),
                                                    best["measured"]["speedup"])
                atomic_write_json(path, parts)
            cands[i]["measured"] = parts["measured"][str(i)]
            if abs(cands[i]["measured"]["speedup"] / target - 1) <= limit:
                pick = i
                break
    logger.info("child: solution %d of %d by valid KL (%s; the optimum %.4f)", pick + 1, len(cands),
                ", ".join(f"{x['kl_valid']:.4f}" for x in cands), cands[0]["kl_valid"])
    out = {**best, **{k: v for k, v in cands[pick].items() if k != "kl_valid"}}
    out["top_k"] = {"selected": pick, "rows": int(rows.shape[0]), "tokens": int(rows.numel()),
                    "min_diversity": c.min_diversity, "candidates": cands}
    return out


def _child_settings(cfg: Any) -> dict[str, Any]:
    c = cfg.child
    # top-k off: the settings as before it existed, so runs made then keep their child
    child = c if c.top_k > 1 else {"match_speed": c.match_speed, "match_tol": c.match_tol, "iters": c.iters}
    out = {"child": child, "eval_sequences": cfg.data.eval_sequences}
    if c.match_speed:
        out.update(rounds=cfg.profile.rounds, threads=cfg.profile.threads)
    return out


CHILD = Stage("child", run_child, _child_settings,
    "assemble the searched child from its trained blocks (re-searched until its measured speed-up meets "
    "the target, with child.match_speed; the lowest valid KL of the diverse top-k, with child.top_k)",
    reads=("search.json", "library.json", "blocks/"), writes=("child/", "stages/top_k.json"), per_target=True)


# ---------------------------------------------------------------- fuse
def run_fuse(ctx: Any) -> dict[str, Any]:
    from ...baselines import Recipe
    from ...fusion import find_ffn_runs, find_fusable, fuse_ffns

    cfg, f = ctx.cfg, ctx.cfg.fuse
    child = ctx.result("child")
    recipe = Recipe.from_dict(child["recipe"])
    model = ctx.build_model(recipe)
    calib = ctx.calib_ids().to(ctx.parent.device)
    plan = find_fusable(model, calib if f.threshold > 0 else None, threshold=f.threshold or None,
                        leave_last=f.leave_last, max_group=f.max_group or None)
    plan.save(ctx.path("fusion_plan.json"))
    res = dict(child)
    runs = [list(r.layers) for r in find_ffn_runs(model)]
    res.update(ffn_runs=runs, groups=[], fused_ffns=0, changes=[], kl_before=child["kl"], kl_after=child["kl"],
               fusion={"groups": [], "adopted": False})
    if not plan.groups:
        return res
    kl0 = child["kl"]
    fused, changes = fuse_ffns(model, plan, inplace=False)
    kl1 = ctx.kl(fused)
    m0 = child.get("measured")
    m1 = None
    if f.adopt == "always":
        adopt = True
    else:
        if m0 is None:
            raise ConfigError("fuse.adopt: if_better compares measured speed; set child.match_speed: true")
        m1 = measured_speedup(ctx.parent, fused, cfg.scenario, cfg.profile.rounds, cfg.profile.threads)
        adopt = kl1["kl"] <= kl0["kl"] * (1 + f.max_kl_increase) and m1["speedup"] >= m0["speedup"]
    info = {"groups": [list(g) for g in plan.groups], "adopted": bool(adopt), "kl_unfused": kl0["kl"],
            "kl_fused": kl1["kl"], "speedup_unfused": m0["speedup"] if m0 else None,
            "speedup_fused": m1["speedup"] if m1 else None, "changes": [ch.to_dict() for ch in changes]}
    res.update(groups=info["groups"], fused_ffns=sum(len(g) for g in plan.groups), changes=info["changes"],
               kl_after=kl1, fusion=info)
    if adopt:
        recipe.fusion = [list(g) for g in plan.groups]
        res.update(recipe=recipe.to_dict(), kl_unhealed=kl1["kl"], kl=kl1)
        if m1 is not None:
            res["measured"] = m1
        ctx.save_model(fused, "fused")
    return res


FUSE = Stage("fuse", run_fuse, lambda cfg: {
    "fuse": cfg.fuse, "eval_sequences": cfg.data.eval_sequences,
    **({"rounds": cfg.profile.rounds, "threads": cfg.profile.threads} if cfg.fuse.adopt == "if_better" else {})},
    "FFN fusion of the child's attention-free runs (each group checked exact)",
    reads=("child's recipe",), writes=("fusion_plan.json", "fused/"), per_target=True)
