"""``puzzlekit search LIB.json --objective kl_div --budget 'memory_mib<=80000' ...``."""

from __future__ import annotations

import argparse

from .common import print_json


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIB.json", help="a puzzlekit block library")
    p.add_argument("--objective", required=True, help="metric to optimise (e.g. kl_div)")
    p.add_argument("--maximize", action="store_true", help="maximise the objective (default: minimise)")
    p.add_argument("--budget", action="append", default=[], metavar="EXPR",
                   help="a budget: 'memory_mib<=80000', 'num_params>=1e9' or '30000<=memory_mib<=80000' (repeatable)")
    p.add_argument("--scenario", help="scenario whose costs are used (default: the library's)")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop candidates with NaN/inf metrics")


def parse_budgets(items: list[str]) -> dict:
    from ..search.constraints import parse_budget

    out: dict = {}
    for text in items:
        name, (lo, hi) = parse_budget(text)
        if name in out:
            lo0, hi0 = out[name]
            lo, hi = max(lo, lo0), min(hi, hi0)
        out[name] = (lo, hi)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the best architecture under budgets (MIP)")
    add_common(p)
    p.add_argument("--solver", help="backend (see `puzzlekit solvers`; default: the one-budget DP, else puzzlekit-exact)")
    p.add_argument("--num-solutions", type=int, default=1, metavar="K", help="diverse top-K solutions")
    p.add_argument("--min-diversity", type=int, default=1, metavar="D",
                   help="each solution differs from every earlier one in at least D layers")
    p.add_argument("--time-limit", type=float, metavar="S", help="seconds; returns the best found with its gap")
    p.add_argument("--mip-gap", type=float, default=0.0, help="relative gap to stop at (default 0: proven optimum)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    from .at_fit_args import add_at_fit_args

    add_at_fit_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..library import BlockLibrary
    from ..search import search, search_diverse
    from .at_fit_args import check_at_fit_args, run_at_fit

    if args.throughput_at_fit is not None:
        return run_at_fit(args)
    check_at_fit_args(args)
    lib = BlockLibrary.load(args.library, drop_nonfinite=args.drop_nonfinite)
    budgets = parse_budgets(args.budget)
    kw = dict(maximize=args.maximize, scenario=args.scenario, solver=args.solver,
              time_limit=args.time_limit, mip_gap=args.mip_gap)
    if args.num_solutions > 1:
        sols = search_diverse(lib, args.objective, budgets, num_solutions=args.num_solutions,
                              min_diversity=args.min_diversity, **kw)
    else:
        sols = [search(lib, args.objective, budgets, **kw)]
    if args.json:
        print_json(sols[0].to_dict() if args.num_solutions <= 1 else {"solutions": [s.to_dict() for s in sols]})
        return 0
    for k, s in enumerate(sols):
        head = f"solution {k + 1}: " if len(sols) > 1 else ""
        costs = ", ".join(f"{n} {v:.6g}" for n, v in s.costs.items())
        gap = f", gap {s.gap:.2e}" if s.gap else ""
        print(f"{head}{s.status.value} {s.objective_name} = {s.objective:.6f} ({costs}) "
              f"[{s.solver}, {s.solve_seconds:.3f} s{gap}]")
        if s.constants:
            print("  whole-model costs: the library's non-block part included ("
                  + ", ".join(f"{n} {v:.6g}" for n, v in s.constants.items()) + ")")
        for c in s.choices:
            where = f"{c.first}" if c.first == c.last else f"{c.first}-{c.last}"
            print(f"  layer {where:>7}: {c.key}")
    return 0
