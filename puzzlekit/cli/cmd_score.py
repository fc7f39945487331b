"""``puzzlekit score``: replace-1-block scores of every candidate in a run's library (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parent_device_args, load_parent_from_args, print_json, resolve_parent_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="replace-1-block scoring (KL, LM loss, cosine, top-k) of a run's library")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory with library.json and tokens.npz")
    p.add_argument("--parent", required=True, metavar="MODEL_DIR|FILE.gguf",
                   help="the parent's model folder, or a .gguf file (dequantized once into RUN/parent)")
    p.add_argument("--eval-sequences", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--validate", type=int, default=0, metavar="N",
                   help="also compare summed vs realised KL over N random architectures")
    p.add_argument("--ref-memory-gb", type=float, default=None, metavar="GIB",
                   help="bound on the kept parent passes (layer inputs, log-probs); above it the log-probs are "
                        "recomputed per layer (default: half the GPU's free memory; unbounded on the CPU)")
    p.add_argument("--decoupled", action="store_true",
                   help="score only the pairs keeping the parent's attention or FFN; give the others the sum of "
                        "their two parts (m + n passes per layer instead of m x n)")
    add_parent_device_args(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import TokenData
    from ..errors import PuzzlekitError
    from ..library import BlockLibrary
    from ..rundir import RunDir, State
    from ..scoring import score_library, validate_additivity

    run_dir = Path(args.run)
    if not (run_dir / "library.json").exists() or not (run_dir / "tokens.npz").exists():
        raise PuzzlekitError(f"{run_dir}: no library.json / tokens.npz here; run `puzzlekit build-library` first")
    rd = RunDir(run_dir)
    data = TokenData.load(run_dir / "tokens.npz")
    lib = BlockLibrary.load(run_dir / "library.json")
    args.parent = resolve_parent_arg(args.parent, run_dir)
    parent = load_parent_from_args(args)
    from .._dist import setup

    rank, _ = setup()  # under torchrun / accelerate launch the layers are shared out over the processes
    if rank == 0:
        rd.set_stage("score", State.RUNNING)
    score_library(parent, lib, data, rd, eval_sequences=args.eval_sequences, batch_size=args.batch_size,
                  ref_memory_gb=args.ref_memory_gb, decoupled=args.decoupled,
                  progress=not args.no_progress and not args.json and rank == 0)
    if rank != 0:  # process 0 validates, records the stage and reports
        return 0
    out = {"run": str(run_dir), "num_candidates": len(lib), "metrics": list(lib.metric_names)}
    if args.validate:
        v = validate_additivity(parent, lib, data, n=args.validate, eval_sequences=args.eval_sequences,
                                batch_size=args.batch_size)
        out["validation"] = {"spearman": v["spearman"], "n": len(v["choices"])}
    rd.set_stage("score", State.COMPLETE, **({"spearman": out["validation"]["spearman"]} if args.validate else {}))
    if args.json:
        print_json(out)
    else:
        print(f"scored {len(lib)} candidates -> {run_dir / 'library.json'}"
              + (f"; Spearman(summed, realised KL) = {out['validation']['spearman']:.3f}" if args.validate else ""))
    return 0
