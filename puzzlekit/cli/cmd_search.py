"""``puzzlekit search LIB.json --objective kl_div --budget 'memory_mib<=80000' ...``."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import ConfigError
from .common import print_json

#: at most this many diverse solutions (each is one more solve, and the k-th differs from all earlier ones)
MAX_SOLUTIONS = 1000


class Progress:
    """``done/total`` lines on stderr for long runs: the first, then at most one a second, and the last."""

    def __init__(self, what: str, every: float = 1.0):
        self.what, self.every = what, every
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == 1 or done == total or now - self.last >= self.every:
            self.last = now
            print(f"{self.what} {done}/{total} ({now - self.t0:.1f} s)", file=sys.stderr, flush=True)


def check_counts(num_solutions: int, min_diversity: int, num_layers: int) -> None:
    """Refuse ``--num-solutions`` / ``--min-diversity`` values that cannot be meant (exit 2)."""
    if num_solutions < 1:
        raise ConfigError(f"--num-solutions {num_solutions}: must be at least 1 (1 = the optimum alone)")
    if num_solutions > MAX_SOLUTIONS:
        raise ConfigError(f"--num-solutions {num_solutions}: at most {MAX_SOLUTIONS} (each solution is one more "
                          "solve); for the trade-off curve use `puzzlekit sweep`")
    if not 1 <= min_diversity <= num_layers:
        raise ConfigError(f"--min-diversity {min_diversity}: must be between 1 and the library's {num_layers} layers "
                          "(solutions differ from each other in at least this many layers)")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", metavar="LIB.json", help="a puzzlekit block library")
    p.add_argument("--objective", required=True, help="metric to optimise (e.g. kl_div)")
    p.add_argument("--maximize", action="store_true", help="maximise the objective (default: minimise)")
    p.add_argument("--budget", action="append", default=[], metavar="EXPR",
                   help="a budget: 'memory_mib<=80000', 'num_params>=1e9' or '30000<=memory_mib<=80000' (repeatable)")
    p.add_argument("--scenario", help="scenario whose costs are used (default: the library's)")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop candidates with NaN/inf metrics")
    p.add_argument("--engine", metavar="ENGINE",
                   help="keep only candidates this serving engine serves: vllm, sglang, tensorrt-llm, llamacpp, "
                        "transformers (see `puzzlekit engines`)")


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

    if args.num_solutions < 1 or args.num_solutions > MAX_SOLUTIONS:  # before loading anything
        check_counts(args.num_solutions, 1, 1)
    if args.throughput_at_fit is not None:
        return run_at_fit(args)
    check_at_fit_args(args)
    lib = BlockLibrary.load(args.library, drop_nonfinite=args.drop_nonfinite)
    check_counts(args.num_solutions, args.min_diversity, lib.num_layers)
    budgets = parse_budgets(args.budget)
    kw = dict(maximize=args.maximize, scenario=args.scenario, solver=args.solver,
              time_limit=args.time_limit, mip_gap=args.mip_gap, engine=args.engine)
    if args.num_solutions > 1:
        sols = search_diverse(lib, args.objective, budgets, num_solutions=args.num_solutions,
                              min_diversity=args.min_diversity, progress=Progress("solution"), **kw)
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
