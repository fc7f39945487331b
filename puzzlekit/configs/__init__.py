"""Model configs shipped with puzzlekit (Apache-2.0 Nemotron-NAS configs of Llama-Nemotron Super-49B and Ultra-253B).

``builtin_config_path("super-49b")`` is the path of one by its short name; every command that takes a
CONFIG argument accepts these names."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["BUILTIN_CONFIGS", "builtin_config_path"]

#: Configs shipped with puzzlekit, usable wherever a CONFIG argument is expected.
BUILTIN_CONFIGS = {
    "super-49b": "llama-3.3-nemotron-super-49b-v1.config.json",
    "ultra-253b": "llama-3.1-nemotron-ultra-253b-v1.config.json",
}


def builtin_config_path(name: str) -> Path:
    """The path of a shipped config by its short name."""
    return Path(str(resources.files("puzzlekit") / "configs" / BUILTIN_CONFIGS[name]))
