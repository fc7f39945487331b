"""``puzzlekit library import|show|validate|export``."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..architecture import ParentSpec
from ..formats.modelopt import import_modelopt, relocate_weights
from ..formats.nvlabs import export_nvlabs, import_nvlabs
from ..library import BlockLibrary
from .common import print_json, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("library", help="import, show, validate or export a block library")
    lsub = p.add_subparsers(dest="library_command", metavar="ACTION")
    lsub.required = True

    imp = lsub.add_parser("import", help="import a block library from another format")
    imp.add_argument("source", metavar="SRC", help="folder or file in the source format")
    imp.add_argument("--format", choices=["nvlabs", "modelopt"], default="nvlabs",
                     help="nvlabs: block_library.json; modelopt: a ModelOpt Puzzletron folder (replacement_library.json)")
    imp.add_argument("--parent", metavar="CONFIG", help="the parent's config.json (records its dimensions)")
    imp.add_argument("-o", "--output", required=True, metavar="LIB.json")
    imp.set_defaults(func=run_import)

    show = lsub.add_parser("show", help="summarise a library")
    show.add_argument("library", metavar="LIB.json")
    show.add_argument("--json", action="store_true")
    show.add_argument("--drop-nonfinite", action="store_true", help="drop candidates with NaN/inf metrics")
    show.set_defaults(func=run_show)

    val = lsub.add_parser("validate", help="check a library and report problems")
    val.add_argument("library", metavar="LIB.json")
    val.add_argument("--drop-nonfinite", action="store_true",
                     help="drop candidates with NaN/inf metrics (listed) instead of failing")
    val.set_defaults(func=run_validate)

    exp = lsub.add_parser("export", help="export a library to another format")
    exp.add_argument("library", metavar="LIB.json")
    exp.add_argument("--format", choices=["nvlabs"], default="nvlabs")
    exp.add_argument("-o", "--output", required=True, metavar="FOLDER")
    exp.add_argument("--scenario", help="scenario whose costs become the stats (default: the library's)")
    exp.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    parent = ParentSpec.from_hf_config(resolve_config(args.parent)) if args.parent else None
    if args.format == "modelopt":
        lib = import_modelopt(args.source, parent=parent)
        if relocate_weights(lib, Path(args.output).parent):
            print(f"note: weights of candidates whose files lie outside {Path(args.output).parent} are left empty "
                  "(write the library inside the ModelOpt folder to keep them)")
    else:
        lib = import_nvlabs(args.source, parent=parent)
    lib.validate()
    lib.save(args.output)
    print(f"imported {len(lib)} candidates over {lib.num_layers} layers -> {args.output}")
    return 0


def summary(lib: BlockLibrary) -> dict:
    per_layer = Counter(c.first for c in lib.candidates)
    return {
        "num_layers": lib.num_layers,
        "num_candidates": len(lib),
        "num_blocks": len(lib.blocks),
        "candidates_per_layer": {"min": min(per_layer.values()), "max": max(per_layer.values())},
        "spanning_candidates": sum(1 for c in lib.candidates if c.span > 1),
        "metrics": list(lib.metric_names),
        "scenarios": {name: {"costs": lib.cost_names_for(name), **s.to_dict()} for name, s in lib.scenarios.items()},
        "default_scenario": lib.default_scenario,
        "with_weights": sum(1 for c in lib.candidates if c.weights),
        "parent": lib.parent.to_dict() if lib.parent else None,
        "dropped": lib.dropped,
    }


def run_show(args: argparse.Namespace) -> int:
    lib = BlockLibrary.load(args.library, drop_nonfinite=args.drop_nonfinite)
    s = summary(lib)
    if args.json:
        print_json(s)
        return 0
    print(f"{args.library}: {s['num_candidates']} candidates over {s['num_layers']} layers "
          f"({s['candidates_per_layer']['min']}-{s['candidates_per_layer']['max']} per layer), "
          f"{s['num_blocks']} distinct blocks, {s['with_weights']} with weights")
    print(f"metrics: {', '.join(s['metrics']) or 'none'}")
    for name, sc in s["scenarios"].items():
        mark = " (default)" if name == s["default_scenario"] else ""
        print(f"scenario {name}{mark}: costs {', '.join(sc['costs']) or 'none'}")
    for d in s["dropped"]:
        print(f"dropped: {d}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    lib = BlockLibrary.load(args.library, drop_nonfinite=args.drop_nonfinite)
    for d in lib.dropped:
        print(f"dropped: {d}")
    print(f"{args.library}: valid ({len(lib)} candidates, {lib.num_layers} layers)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    lib = BlockLibrary.load(args.library)
    out = export_nvlabs(lib, Path(args.output), args.scenario)
    print(f"exported {len(lib)} candidates -> {out}")
    return 0
