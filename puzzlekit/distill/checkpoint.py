"""Checkpoint folders of :func:`puzzlekit.distill.distill`: where they are, what they hold, whether they fit.

``output_dir/checkpoints/step_N/`` holds ``state.json`` (step, logs, config, the process count and
global batch that wrote it) and the weights in one of two formats:

* ``model.safetensors`` + ``optimizer.pt`` -- one process or DDP (the full state, written by rank 0;
  the optimizer is read back with ``torch.load(weights_only=True)``);
* ``dcp/`` -- FSDP: a ``torch.distributed.checkpoint`` folder, each process writing its own shards of
  the model and of the optimizer state (nothing is gathered on one rank).  It can be read back by any
  number of processes (DCP re-shards on load).

A folder is written under a temporary name (``.step_N.tmp``) and renamed when complete; then
``latest.json`` is replaced atomically.  A run killed at any point resumes from the last complete
checkpoint.  Before resuming, the stored tensors' names and shapes are compared with the model's: a
folder that holds another model's run is refused with a message saying so, not with a raw
``size mismatch`` from ``load_state_dict``.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, UnsafeInputError
from ..io import atomic_write_json, fsync_dir, read_json

__all__ = ["latest_checkpoint", "checkpoint_format", "stored_shapes", "check_fits", "check_resume_state",
           "commit_checkpoint", "read_dcp_metadata"]

DCP_DIR = "dcp"


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The last complete checkpoint folder under ``output_dir/checkpoints`` (None when there is none)."""
    root = Path(output_dir) / "checkpoints"
    ptr = root / "latest.json"
    if not ptr.exists():
        return None
    name = read_json(ptr, what="checkpoint pointer")["name"]
    path = root / str(name)
    if path.parent != root or checkpoint_format(path) is None:
        raise ConfigError(f"{ptr}: points at {path}, which is not a complete checkpoint; delete the pointer "
                          "to start over")
    return path


def checkpoint_format(path: Path) -> str | None:
    """``"safetensors"`` (one process / DDP), ``"dcp"`` (FSDP) or None (not a complete checkpoint)."""
    if not (path / "state.json").exists():
        return None
    if (path / "model.safetensors").exists():
        return "safetensors"
    if (path / DCP_DIR / ".metadata").exists():
        return "dcp"
    return None


# ---- reading DCP metadata without unpickling arbitrary objects ------------------------------------

#: The classes a ``torch.distributed.checkpoint`` ``.metadata`` file may name (it is a pickle).
_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", n) for n in
    ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
     "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
     ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_CLASSES or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                 torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata class")


def read_dcp_metadata(dcp_dir: Path) -> Any:
    """A DCP ``.metadata`` file, unpickled with only DCP's own metadata classes allowed (torch's
    ``FileSystemReader`` would unpickle anything)."""
    path = dcp_dir / ".metadata"
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as e:
        raise UnsafeInputError(f"{path}: refused, not a plain torch.distributed.checkpoint metadata file ({e}); "
                               "delete this checkpoint folder to resume from the previous one") from None


# ---- does a checkpoint fit this model? -----------------------------------------------------------

def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the model tensors stored in checkpoint folder ``path`` (either format)."""
    fmt = checkpoint_format(path)
    if fmt == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path / "model.safetensors"), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise UnsafeInputError(f"{path / 'model.safetensors'}: not a readable safetensors file ({e}); delete "
                                   "this checkpoint folder to resume from the previous one") from None
    if fmt == "dcp":
        md = read_dcp_metadata(path / DCP_DIR)
        return {k[len("model."):]: tuple(v.size) for k, v in md.state_dict_metadata.items()
                if k.startswith("model.") and hasattr(v, "size")}
    raise ConfigError(f"{path}: not a complete checkpoint")


def check_fits(ckpt: Path, shapes: Mapping[str, tuple[int, ...]], output_dir: Path) -> None:
    """Raise a :class:`ConfigError` saying that ``output_dir`` holds another model's run when the
    tensors stored in ``ckpt`` are not exactly the model's (``shapes``: name -> shape; non-persistent
    buffers such as RoPE frequencies excluded)."""
    stored = stored_shapes(ckpt)
    wanted = {k: tuple(v) for k, v in shapes.items()}
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    differ = sorted(k for k in set(wanted) & set(stored) if wanted[k] != stored[k])
    if not (missing or extra or differ):
        return
    what = []
    if differ:
        k = differ[0]
        what.append(f"{len(differ)} tensors of another shape (e.g. {k!r}: {list(stored[k])} there, "
                    f"{list(wanted[k])} in this model)")
    if missing:
        what.append(f"{len(missing)} of this model's tensors absent (e.g. {missing[0]!r})")
    if extra:
        what.append(f"{len(extra)} tensors this model does not have (e.g. {extra[0]!r})")
    raise ConfigError(f"{output_dir}: holds the checkpoint of another model's run ({ckpt.name}: "
                      + "; ".join(what) + "). Point output_dir at a new folder for this model, or delete "
                      f"{output_dir / 'checkpoints'} to start this model's run there")


def check_resume_state(ckpt: Path, state: Mapping[str, Any], *, fmt: str, global_batch: int, world: int,
                       batch_size: int, grad_accum_steps: int) -> None:
    """Refuse to resume a checkpoint of the other format, or with another global batch (the batch
    order and the schedule are functions of the global batch: a different one is another run)."""
    have = checkpoint_format(ckpt)
    if have != fmt:
        how = ("DistillConfig(fsdp=True), with any number of processes" if have == "dcp"
               else "DistillConfig(fsdp=False) (one process or DDP)")
        raise ConfigError(f"{ckpt}: written by a{'n FSDP' if have == 'dcp' else ' one-process / DDP'} run "
                          f"({have}); resume it with {how}, or use a fresh output_dir")
    was = state.get("global_batch")
    if was is not None and int(was) != global_batch:
        raise ConfigError(f"{ckpt}: written with a global batch of {was} rows per step ({state.get('world')} "
                          f"processes); this run has {global_batch} ({world} processes x batch_size {batch_size} "
                          f"x grad_accum_steps {grad_accum_steps}). Set batch_size or grad_accum_steps so the "
                          "product is the same, or use a fresh output_dir")


# ---- writing ------------------------------------------------------------------------------------

def begin_checkpoint(out: Path, step: int) -> Path:
    """Create (empty) the temporary folder of step ``step``'s checkpoint; returns it (main process only)."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit_checkpoint(out: Path, step: int, state: Mapping[str, Any], keep: int) -> Path:
    """Write ``state.json`` into the temporary folder, rename it to ``step_N``, point ``latest.json``
    at it and drop all but the last ``keep`` checkpoints (main process only, after every process
    has written its part)."""
    root = out / "checkpoints"
    name = f"step_{step:08d}"
    tmp = root / f".{name}.tmp"
    atomic_write_json(tmp / "state.json", dict(state))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_json(root / "latest.json", {"name": name, "step": step})
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*.tmp"):  # left by a run killed while writing
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final
