"""Helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import PuzzlekitError

#: Configs shipped with puzzlekit, usable wherever a CONFIG argument is expected.
BUILTIN_CONFIGS = {
    "super-49b": "llama-3.3-nemotron-super-49b-v1.config.json",
    "ultra-253b": "llama-3.1-nemotron-ultra-253b-v1.config.json",
}


def builtin_config_path(name: str) -> Path:
    """The path of a shipped config by its short name."""
    return Path(str(resources.files("puzzlekit") / "configs" / BUILTIN_CONFIGS[name]))


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
