"""``puzzlekit search ... --throughput-at-fit 'h100-sxm:fp8:1000+200>=3x'``: the serving batch chosen by memory.

The flags live here so that ``cmd_search`` only hands over to :func:`run_at_fit`.
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import print_json


def add_at_fit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("throughput at the batch that fits (the batch is searched too)")
    g.add_argument("--throughput-at-fit", metavar="SPEC",
                   help="HARDWARE:DTYPE[:tpN]:PREFILL+DECODE[>=TARGET]: tokens/s at the best batch whose weights + KV "
                        "cache fit the device; TARGET 'Nx' (x the parent's throughput at the batch the parent fits) "
                        "or tokens/s, e.g. 'h100-sxm:fp8:1000+200>=3x'; without a target, maximise the throughput "
                        "under --objective-bound")
    g.add_argument("--objective-bound", type=float, metavar="Q",
                   help="with a target-less --throughput-at-fit: the objective's bound (<= Q; >= Q with --maximize)")
    g.add_argument("--batches", metavar="LIST",
                   help="batch sizes to consider, comma-separated (default: powers of two and their midpoints, 1..1024)")
    g.add_argument("--memory-gib", type=float, metavar="G",
                   help="memory per GPU the model may use (default: 95%% of the device's)")
    g.add_argument("--min-kv-tokens", type=int, default=0, metavar="N",
                   help="KV-cache tokens the model must hold at any batch (e.g. 300000)")
    g.add_argument("--parent", metavar="CONFIG",
                   help="the parent's config.json / model folder / built-in name, when the library records none "
                        "(NVIDIA's Llama-3.3-70B library: 'super-49b' has its parent's dimensions)")
    g.add_argument("--analytic-only", action="store_true",
                   help="use the analytic roofline at every batch, even where the library has measured runtimes")


def _batches(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        bs = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(f"--batches {text!r}: expected comma-separated positive integers, e.g. '64,128,256'") from None
    return {"batches": bs}


def check_at_fit_args(args: argparse.Namespace) -> None:
    """Refuse flags that only make sense together (exit 2)."""
    if args.throughput_at_fit is None:
        for flag in ("objective_bound", "batches", "memory_gib", "parent"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --throughput-at-fit SPEC")
        if args.min_kv_tokens or args.analytic_only:
            raise ConfigError("--min-kv-tokens and --analytic-only need --throughput-at-fit SPEC")
        return
    if args.num_solutions != 1:
        raise ConfigError("--throughput-at-fit gives one answer; drop --num-solutions")
    if args.mip_gap:
        raise ConfigError("--throughput-at-fit solves to proven optimality; drop --mip-gap")
    if args.scenario:
        raise ConfigError("--throughput-at-fit profiles every batch of its own deployment; drop --scenario")


def run_at_fit(args: argparse.Namespace) -> int:
    from ..library import BlockLibrary
    from ..search.at_fit import AtFit
    from ..search.deploy import parse_fit_spec
    from .cmd_search import parse_budgets

    check_at_fit_args(args)
    dep, target = parse_fit_spec(args.throughput_at_fit, memory_gib=args.memory_gib,
                                 min_kv_tokens=args.min_kv_tokens, measured=not args.analytic_only,
                                 **_batches(args.batches))
    if target and args.objective_bound is not None:
        raise ConfigError(f"--throughput-at-fit {args.throughput_at_fit!r} has a target; --objective-bound goes with "
                          "a spec without one (maximise the throughput under the bound)")
    if not target and args.objective_bound is None:
        raise ConfigError(f"--throughput-at-fit {args.throughput_at_fit!r} has no target: add '>=3x' (or tokens/s), "
                          "or give --objective-bound Q to maximise the throughput with the objective within Q")
    lib = BlockLibrary.load(args.library, drop_nonfinite=args.drop_nonfinite)
    engine = []
    if getattr(args, "engine", None):
        from ..engines import EngineConstraint, get_engine

        engine = [EngineConstraint(get_engine(args.engine).name)]
    fit = AtFit(lib, args.objective, dep, parent=args.parent, maximize=args.maximize,
                budgets=parse_budgets(args.budget), constraints=engine)
    if target:
        sol = fit.search(solver=args.solver, time_limit=args.time_limit, **target)
    else:
        sol = fit.max_throughput(bound=args.objective_bound, solver=args.solver, time_limit=args.time_limit)
    if args.json:
        print_json(sol.to_dict())
        return 0
    ref = (f" ({sol.speedup:.2f}x the parent's {sol.reference_tokens_per_s:,.0f} at batch {sol.reference_batch})"
           if sol.speedup is not None else " (the parent fits no batch)")
    solved = [r for r in sol.scan if r["status"] == "solved"]
    pruned = sum(r["status"] == "pruned" for r in sol.scan)
    gap = f", gap {sol.gap:.2e}" if sol.gap else ""
    print(f"{sol.status.value} {sol.objective_name} = {sol.objective:.6f} at batch {sol.batch}: "
          f"{sol.tokens_per_s:,.0f} tokens/s{ref}")
    print(f"  {dep.describe()}; memory {sol.costs['memory_mib'] / 1024:.2f} of "
          f"{sol.info['memory_limit_mib'] / 1024:.2f} GiB, runtime {sol.costs['runtime_ms']:,.1f} ms per batch")
    if sol.scan:
        print(f"  {len(dep.batches)} batches in {sol.solve_seconds:.2f} s: {len(solved)} solved "
              f"({', '.join(str(r['batch']) for r in solved)}), {pruned} skipped by their bound, "
              f"{len(sol.scan) - len(solved) - pruned} infeasible [{sol.solver}{gap}]")
    else:
        print(f"  {sol.info['level_steps']} throughput levels in {sol.solve_seconds:.2f} s [{sol.solver or 'default'}{gap}]")
    for c in sol.choices:
        where = f"{c.first}" if c.first == c.last else f"{c.first}-{c.last}"
        print(f"  layer {where:>7}: {c.block}")
    return 0
