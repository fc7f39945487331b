"""Helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..configs import BUILTIN_CONFIGS, builtin_config_path
from ..errors import PuzzlekitError

__all__ = ["BUILTIN_CONFIGS", "builtin_config_path", "resolve_config", "print_json", "fmt_num", "fmt_bytes",
           "add_parent_device_args", "load_parent_from_args"]


def resolve_config(arg: str) -> Path:
    """A CONFIG argument: a config.json, a model folder, or a built-in name (``super-49b``)."""
    if arg in BUILTIN_CONFIGS:
        return builtin_config_path(arg)
    p = Path(arg)
    if not p.exists():
        raise PuzzlekitError(
            f"{arg}: no such file or folder; give a config.json, a model folder, or one of "
            + ", ".join(BUILTIN_CONFIGS)
        )
    return p


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


def fmt_num(n: float) -> str:
    """12.3B / 456.7M / 8.2K style."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def fmt_bytes(n: float) -> str:
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:g} B"


def add_parent_device_args(p: Any) -> None:
    """``--device``, ``--device-map`` and ``--dtype``: where and in which precision the parent runs."""
    p.add_argument("--device", default="auto",
                   help="where the parent runs: 'auto' (this process's GPU, cuda:LOCAL_RANK, when there is one, "
                        "else the CPU), 'cpu', 'cuda', 'cuda:1', ... (default: auto)")
    p.add_argument("--device-map", default=None, metavar="DEVICES",
                   help="spread the parent's layers over several devices instead: 'auto' (every visible GPU; under "
                        "torchrun, this process's share of them) or "
                        "a comma-separated list, e.g. cuda:0,cuda:1 (for a parent larger than one GPU)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the parent's precision (default: as stored)")


def resolve_parent_arg(parent: str, run_dir: Any = None) -> str:
    """A parent argument (a model folder, a ``.gguf`` file or a folder holding one) as a model folder:
    a GGUF parent is dequantized once into ``RUN/parent`` (with a run directory) or the user cache
    (``$PUZZLEKIT_CACHE/gguf``) and read from there afterwards."""
    from ..model.gguf import find_gguf, resolve_parent_path

    p = Path(parent)
    if not p.exists():
        raise PuzzlekitError(f"{parent}: no such file or folder; give the parent's model folder or a .gguf file")
    if find_gguf(p) is None:
        return parent
    return str(resolve_parent_path(p, gguf_cache=Path(run_dir) / "parent" if run_dir is not None else None))


def load_parent_from_args(args: Any) -> Any:
    """The ``--parent`` model, on ``--device`` / ``--device-map`` in ``--dtype``."""
    import os

    import torch

    from ..model import load_parent
    from ..model.placement import check_device

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.device_map is not None:
        if args.device != "auto":
            raise PuzzlekitError("--device and --device-map: give one of them")
        dm = args.device_map if args.device_map == "auto" else [d.strip() for d in args.device_map.split(",") if d.strip()]
        return load_parent(args.parent, dtype=dtype, device_map=dm)
    device = args.device
    if device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}" \
            if torch.cuda.is_available() and torch.cuda.device_count() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PuzzlekitError(f"--device {device!r}: not a device; use cpu, cuda or cuda:N") from None
    check_device(dev, "--device")
    return load_parent(args.parent, dtype=dtype, device=device)
