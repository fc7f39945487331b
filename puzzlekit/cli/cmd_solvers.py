"""``puzzlekit solvers``: the MIP backends and whether each is installed."""

from __future__ import annotations

import argparse

from .common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solvers", help="list the MIP solver backends and whether each is installed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..solvers import solver_table

    rows = solver_table()
    if args.json:
        print_json({"solvers": rows})
        return 0
    for r in rows:
        mark = "installed" if r["installed"] else f"missing ({r['install']})"
        print(f"{r['name']:15s} {mark:12s} {r['description']}" + ("  [default]" if r["default"] else ""))
    return 0
