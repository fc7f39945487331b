"""``puzzlekit fuse``: find runs of attention-free FFNs, plan their fusion, fuse a model.

    puzzlekit fuse super-49b --plan-only --json                   # runs + a plan + predicted latency
    puzzlekit fuse MODEL_DIR --plan-only --data corpus.txt        # + dependency scores
    puzzlekit fuse MODEL_DIR --data corpus.txt --plan auto -o OUT # fuse and save (Nemotron-NAS)
    puzzlekit fuse MODEL_DIR --plan plan.json -o OUT              # a hand-edited plan
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..architecture import Architecture, Scenario
from ..errors import ConfigError, PuzzlekitError
from .common import BUILTIN_CONFIGS, print_json, resolve_config, resolve_parent_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fuse",
        help="FFN Fusion: list attention-free FFN runs, plan which to fuse, fuse a model",
        description="On a config (a config.json, a model folder, or "
        f"{', '.join(BUILTIN_CONFIGS)}) list the runs of FFNs with no attention between them and a fusion "
        "plan with its predicted latency change; on a model folder with --data also measure the dependency "
        "matrix; with --plan and -o fuse the model and save it in the Nemotron-NAS format.",
    )
    p.add_argument("source", metavar="CONFIG_OR_MODEL")
    p.add_argument("--plan-only", action="store_true", help="print the runs and the plan; change nothing")
    p.add_argument("--plan", metavar="PLAN.json|auto", help="the plan to apply: a JSON file or 'auto' (default auto)")
    p.add_argument("--data", metavar="DATA",
                   help="calibration data: text files / a folder (tokenised with the model's tokenizer) or a .npy "
                   "array of token ids (N, T)")
    p.add_argument("--seq-len", type=int, default=128, help="calibration sequence length for text data (default 128)")
    p.add_argument("--max-tokens", type=int, default=4096, help="calibration tokens per run (default 4096)")
    crit = p.add_mutually_exclusive_group()
    crit.add_argument("--threshold", type=float, help="fuse while the worst pairwise dependency in a group <= this")
    crit.add_argument("--target-steps", type=int, help="fuse until the runs take this many sequential FFN steps")
    p.add_argument("--leave-last", action="store_true", help="keep the last FFN of each run unfused")
    p.add_argument("--max-group", type=int, help="at most this many FFNs per fused group")
    p.add_argument("--hardware", default="h100-sxm", help="hardware for the predicted latency (default h100-sxm)")
    p.add_argument("--dtype", choices=["bf16", "fp8", "fp16", "fp32"], default="bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prefill", type=int, default=1024)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (fused FFNs also save all-reduces)")
    p.add_argument("-o", "--output", metavar="OUT", help="folder to write the fused model to")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _check_scenario_args(arch: Architecture, args: argparse.Namespace) -> None:
    """Refuse a tensor-parallel degree or scenario sizes that cannot be meant (exit 2)."""
    heads = arch.parent.num_attention_heads
    if args.tp < 1 or heads % args.tp:
        ok = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ConfigError(f"--tp {args.tp}: must divide the model's {heads} attention heads (tensor parallelism "
                          f"splits them evenly); choose one of {ok}")
    for name in ("batch", "prefill", "decode"):
        if getattr(args, name) < (1 if name == "batch" else 0):
            raise ConfigError(f"--{name} {getattr(args, name)}: must be "
                              + ("at least 1" if name == "batch" else "0 or more"))


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.safetensors"))


def _load_data(arg: str, model_dir: Path, seq_len: int) -> Any:
    import numpy as np
    import torch

    path = Path(arg)
    if not path.exists():
        raise PuzzlekitError(f"--data {arg}: no such file or folder; give text files, a folder, or a .npy of token ids")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise PuzzlekitError(f"--data {arg}: a .npy must hold integer token ids of shape (N, T), got {arr.shape} {arr.dtype}")
        return torch.from_numpy(arr.astype(np.int64))
    from ..data import load_tokenizer, pack_sequences, read_texts, tokenize_texts

    tok = load_tokenizer(model_dir)
    ids = pack_sequences(tokenize_texts(read_texts(str(path)), tok), seq_len)
    if len(ids) == 0:
        raise PuzzlekitError(f"--data {arg}: fewer than {seq_len} tokens; give more text or a smaller --seq-len")
    return torch.from_numpy(np.asarray(ids, dtype=np.int64))


def _predicted(arch: Architecture, fused: Architecture, args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        from ..profilers import architecture_cost
    except ImportError:  # pragma: no cover - the profilers ship with puzzlekit
        return None
    sc = Scenario(args.hardware, dtype=args.dtype, batch=args.batch, prefill=args.prefill, decode=args.decode, tp=args.tp)
    a, b = architecture_cost(arch, sc, args.hardware), architecture_cost(fused, sc, args.hardware)
    return {
        "scenario": sc.name,
        "runtime_ms": [a.runtime_ms, b.runtime_ms],
        "prefill_ms": [a.prefill_ms, b.prefill_ms],
        "decode_ms": [a.decode_ms, b.decode_ms],
        "speedup": a.runtime_ms / b.runtime_ms,
        "decode_speedup": a.decode_ms / b.decode_ms if b.decode_ms else None,
        "sequential_subblocks": [a.sequential_subblocks, b.sequential_subblocks],
        "allreduces_per_pass": [a.allreduces_per_pass, b.allreduces_per_pass],
    }


def run(args: argparse.Namespace) -> int:
    from ..fusion.graph import find_ffn_runs
    from ..fusion.plan import FusionPlan, fused_architecture, make_plan

    src = Path(args.source)
    if args.source not in BUILTIN_CONFIGS and src.exists() and (not args.plan_only or args.data):
        src = Path(resolve_parent_arg(args.source))  # a .gguf model: its dequantized folder
    is_model = args.source not in BUILTIN_CONFIGS and _is_model_folder(src)
    if not args.plan_only and not args.output:
        raise ConfigError("fuse: give --plan-only to print a plan, or -o OUT (with a model folder) to fuse and save")
    if args.output and not is_model:
        raise ConfigError(f"fuse {args.source}: -o needs a model folder with safetensors weights; a config alone has "
                          "nothing to fuse (use --plan-only)")
    if args.data and not is_model:
        raise ConfigError(f"fuse {args.source}: --data needs a model folder with weights to measure dependencies on")
    model = None
    if is_model:
        from ..model import load_parent

        model = load_parent(src).eval()
        arch = model.architecture
    else:
        arch = Architecture.from_config(resolve_config(args.source))

    _check_scenario_args(arch, args)
    runs = find_ffn_runs(arch)
    dependency = None
    if args.plan and args.plan != "auto":
        plan = FusionPlan.load(args.plan)
        plan.validate(arch)
    else:
        if model is not None and args.data:
            from ..fusion.dependency import dependency_matrix

            dependency = dependency_matrix(model, _load_data(args.data, src, args.seq_len), runs,
                                           max_tokens=args.max_tokens)
        if (args.threshold is not None or args.target_steps is not None) and dependency is None and model is not None:
            raise ConfigError("fuse: --threshold / --target-steps on a model need --data to measure dependencies "
                              "(or give a --plan)")
        plan = make_plan(arch, dependency, threshold=args.threshold, target_steps=args.target_steps,
                         leave_last=args.leave_last, max_group=args.max_group)
    fused_arch = fused_architecture(arch, plan)
    pred = _predicted(arch, fused_arch, args)
    out: dict[str, Any] = {
        "source": args.source,
        "num_layers": arch.num_layers,
        "ffn_runs": [r.to_dict() for r in runs],
        "plan": plan.to_dict(),
        "predicted": pred,
    }
    if dependency is not None:
        out["dependency"] = dependency.to_dict()

    if args.output and not args.plan_only:
        from ..fusion.fuse import fuse_ffns
        from ..io import atomic_write_json

        fused, changes = fuse_ffns(model, plan, inplace=True)
        dest = Path(args.output)
        if dest.exists() and any(dest.iterdir()):
            raise ConfigError(f"-o {dest}: folder exists and is not empty; choose a new folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            fused.save_pretrained(tmp)
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
                if (src / name).exists() and not (tmp / name).exists():
                    shutil.copy2(src / name, tmp / name)
            out["changes"] = [c.to_dict() for c in changes]
            atomic_write_json(tmp / "fusion_report.json", out, indent=1)
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        out["output"] = str(dest)

    if args.json:
        print_json(out)
        return 0
    print(f"{args.source}: {arch.num_layers} layers, {len(runs)} FFN run(s) with no attention between FFNs")
    for r in runs:
        print(f"  layers {r.first}-{r.last}: {len(r)} FFNs, intermediate sizes {list(r.sizes)}")
    if dependency is not None:
        print(dependency)
    print(plan)
    if pred is not None:
        print(f"predicted on {pred['scenario']}: {pred['runtime_ms'][0]:.1f} -> {pred['runtime_ms'][1]:.1f} ms "
              f"({pred['speedup']:.3f}x; decode {pred['decode_ms'][0]:.1f} -> {pred['decode_ms'][1]:.1f} ms), "
              f"sequential sub-blocks {pred['sequential_subblocks'][0]} -> {pred['sequential_subblocks'][1]}, "
              f"all-reduces per pass {pred['allreduces_per_pass'][0]} -> {pred['allreduces_per_pass'][1]}")
    if "output" in out:
        worst = max((c["rel_error"] for c in out["changes"]), default=0.0)
        print(f"fused {len(out['changes'])} group(s), worst relative error {worst:.2e}; saved to {out['output']}")
    return 0
