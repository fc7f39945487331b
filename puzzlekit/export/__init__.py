"""Checkpoints that serving engines load: Nemotron-NAS folders and GGUF files, checked per engine.

* :func:`write_decilm_module` puts ``configuration_decilm.py`` (our own config class, the file a
  Nemotron-NAS ``config.json``'s ``auto_map`` names) into a model folder, so that transformers'
  ``AutoConfig`` with remote code allowed (how vLLM, SGLang and TensorRT-LLM read the folder)
  gives ``block_configs`` with ``.attention`` / ``.ffn`` attributes.  puzzlekit's own loaders read
  ``config.json`` as data and never import it.
* :func:`export_model` (torch) writes a child for one engine after checking it
  (:mod:`puzzlekit.engines`): a Nemotron-NAS folder, or a GGUF file for llama.cpp
  (:mod:`puzzlekit.export.gguf`).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["DECILM_MODULE", "decilm_module_source", "write_decilm_module", "export_model"]

#: The file name ``auto_map`` points at (``configuration_decilm.DeciLMConfig``).
DECILM_MODULE = "configuration_decilm.py"


def decilm_module_source() -> str:
    """The text of the ``configuration_decilm.py`` written beside exported configs."""
    return (resources.files(__name__) / DECILM_MODULE).read_text(encoding="utf-8")


def write_decilm_module(folder: str | os.PathLike) -> Path:
    """Write ``configuration_decilm.py`` into ``folder`` (atomically); returns its path."""
    from ..io import atomic_path

    path = Path(folder) / DECILM_MODULE
    with atomic_path(path) as tmp:
        Path(tmp).write_text(decilm_module_source(), encoding="utf-8")
    return path


def __getattr__(name: str) -> Any:
    if name == "export_model":
        from .nemotron_nas import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
