"""``puzzlekit sweep LIB.json --objective kl_div --vary 'memory_mib=30000:115000:100'``."""

from __future__ import annotations

import argparse
import re

from ..errors import PuzzlekitError
from .cmd_search import Progress, add_common, parse_budgets
from .common import print_json

#: at most this many points: past it the spacing is below any difference between two architectures' costs
#: (`puzzlekit search` and the Python ``pareto_front`` give the exact frontier instead)
MAX_POINTS = 10_000
_VARY = re.compile(r"^\s*([A-Za-z_][\w.@/-]*)\s*=\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*:\s*(\d+)\s*$")


def parse_vary(text: str) -> tuple[str, list[float]]:
    """``NAME=FROM:TO:N`` -> N evenly spaced values, both ends included (as numpy.linspace)."""
    import numpy as np

    m = _VARY.match(text)
    if not m:
        raise PuzzlekitError(f"--vary {text!r}: expected NAME=FROM:TO:N, e.g. 'memory_mib=30000:115000:100'")
    name, a, b, n = m.groups()
    try:
        lo, hi, k = float(a), float(b), int(n)
    except ValueError:
        raise PuzzlekitError(f"--vary {text!r}: FROM and TO must be numbers, N an integer") from None
    if k < 1:
        raise PuzzlekitError(f"--vary {text!r}: N must be at least 1")
    if k > MAX_POINTS:
        raise PuzzlekitError(f"--vary {text!r}: {k} points; at most {MAX_POINTS} (the exact frontier of the "
                             "objective against one cost is puzzlekit.search.pareto_front)")
    return name, [float(v) for v in np.linspace(lo, hi, k)]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="the exact optimum at each of N values of one budget")
    add_common(p)
    p.add_argument("--vary", required=True, metavar="NAME=FROM:TO:N", help="the budget to vary")
    p.add_argument("--solver", help="backend when the DP does not apply (default highs)")
    p.add_argument("--method", choices=["auto", "solver", "dp"], default="auto")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the points as JSON")
    out.add_argument("--csv", metavar="FILE", help="write the points as CSV")
    p.add_argument("--plot", metavar="FILE.png", help="plot the objective against the budget")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..library import BlockLibrary
    from ..search import sweep

    lib = BlockLibrary.load(args.library, drop_nonfinite=args.drop_nonfinite)
    name, values = parse_vary(args.vary)
    res = sweep(lib, args.objective, name, values, parse_budgets(args.budget), maximize=args.maximize,
                scenario=args.scenario, solver=args.solver, method=args.method, engine=args.engine,
                progress=Progress("point"))
    if args.csv:
        res.to_csv(args.csv)
    if args.plot:
        res.plot(args.plot)
    if args.json:
        print_json(res.to_dict())
        return 0
    if not args.csv:
        for v, s in res.points:
            obj = "-" if s.objective is None else f"{s.objective:.6f}"
            print(f"{name} <= {v:.6g}: {s.status.value:10s} {res.objective} {obj}")
    print(f"{len(res.points)} points in {res.seconds:.3f} s" + (f" -> {args.csv}" if args.csv else ""))
    return 0
