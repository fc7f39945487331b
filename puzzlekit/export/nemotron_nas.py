"""``export_model``: write a child for one serving engine, checked before anything is written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..engines import EngineError, get_engine, parent_issues, require_servable
from ..errors import ConfigError

__all__ = ["export_model", "FORMATS", "default_format", "check_export", "HF_TOKENIZER_FILES"]

FORMATS = ("nemotron-nas", "gguf")
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def default_format(engine: str) -> str:
    """The format puzzlekit writes for ``engine`` (GGUF for llama.cpp, Nemotron-NAS otherwise)."""
    return get_engine(engine).format


def check_export(arch: Any, engine: str, fmt: str | None = None, tokenizer_dir: str | os.PathLike | None = None,
                 *, what: str = "child", check_tokenizer: bool = True) -> str:
    """Every check :func:`export_model` makes before writing; returns the format.  Raises
    :class:`~puzzlekit.engines.EngineError` naming the layer, sub-block and engine."""
    e = get_engine(engine)
    fmt = fmt or e.format
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != e.format:
        hint = ("llama.cpp reads GGUF: use --format gguf (its own convert_hf_to_gguf.py would refuse most children: "
                "ffn_mult widths and Llama-3 / Llama-2 vocabularies only)" if e.name == "llamacpp"
                else f"{e.title} loads Hugging Face folders: use --format nemotron-nas")
        raise EngineError(f"{what}: --format {fmt} is not what {e.title} loads; {hint}")
    require_servable(arch, e, what=what)
    issues = parent_issues(e, arch.parent)
    if issues:
        raise EngineError(f"{what}: " + "; ".join(str(i) for i in issues))
    if not check_tokenizer:
        return fmt
    if tokenizer_dir is None or not any((Path(tokenizer_dir) / f).is_file() for f in HF_TOKENIZER_FILES):
        where = f"{tokenizer_dir}" if tokenizer_dir is not None else "no tokenizer folder"
        raise EngineError(f"{what}: {where} has no Hugging Face tokenizer (tokenizer.json or tokenizer.model); "
                          f"{e.title} serves text through it. Give the parent's folder with --tokenizer DIR")
    return fmt


def export_model(source: Any, out: str | os.PathLike, *, engine: str = "transformers", fmt: str | None = None,
                 tokenizer_dir: str | os.PathLike | None = None, dtype: str | None = None) -> Path:
    """Write the child ``source`` (a model folder or a ``PuzzleForCausalLM``) for ``engine``.

    ``fmt``: ``"nemotron-nas"`` (a Hugging Face folder: ``config.json`` with ``auto_map`` and
    ``configuration_decilm.py`` beside it, safetensors, tokenizer files) or ``"gguf"`` (one file for
    llama.cpp); default: what ``engine`` loads.  ``tokenizer_dir`` defaults to ``source`` when it is a
    folder.  ``dtype``: ``fp32`` / ``fp16`` / ``bf16`` (default: as stored; GGUF: fp32).  The engine's
    rules are checked first (:func:`check_export`); on refusal nothing is written, and writes are
    atomic (a temporary beside ``out``, renamed).  An in-memory model given with ``dtype`` is
    converted in place.
    """
    import torch

    from ..architecture import Architecture
    from ..model import PuzzleForCausalLM, load_parent, save_model

    folder = None
    if isinstance(source, PuzzleForCausalLM):
        arch = source.architecture
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise ConfigError(f"{folder}: not a model folder; give the child folder (puzzlekit assemble's --out)")
        arch = Architecture.from_config(folder)
        if tokenizer_dir is None:
            tokenizer_dir = folder
    fmt = check_export(arch, engine, fmt, tokenizer_dir, what=str(folder or "child"))
    tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype is not None and dtype not in tdtype:
        raise ConfigError(f"--dtype must be one of {sorted(tdtype)}, got {dtype!r}")
    model = source if folder is None else load_parent(folder)
    if fmt == "gguf":
        from .gguf import write_gguf

        return write_gguf(model, out, tokenizer_dir=tokenizer_dir, dtype=dtype or "fp32")
    if dtype is not None:
        model = model.to(tdtype[dtype])
    return save_model(model, out, tokenizer_from=tokenizer_dir)
