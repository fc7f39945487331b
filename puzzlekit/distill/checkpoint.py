"""Checkpoint folders of :func:`puzzlekit.distill.distill`: where they are, what they hold, whether they fit.

``output_dir/checkpoints/step_N/`` holds ``state.json`` (step, logs, config, the process count and
global batch that wrote it) and the weights in one of two formats:

* ``model.safetensors`` + ``optimizer.pt`` -- one process or DDP (the full state, written by rank 0;
  the optimizer is read back with ``torch.load(weights_only=True)``);
* ``dcp/`` -- FSDP: a ``torch.distributed.checkpoint`` folder, each process writing its own shards of
  the model and of the optimizer state (nothing is gathered on one rank).  It can be read back by any
  number of processes (DCP re-shards on load).  Its metadata is written as JSON
  (``.metadata.json``), not as the pickle torch's ``FileSystemWriter`` writes, so resuming unpickles
  nothing; only tensors are stored (the optimizer's hyper-parameters go into ``state.json``).

A folder is written under a temporary name (``.step_N.tmp``) and renamed when complete; then
``latest.json`` is replaced atomically.  A run killed at any point resumes from the last complete
checkpoint.  Before resuming, the stored tensors' names and shapes are compared with the model's: a
folder that holds another model's run is refused with a message saying so, not with a raw
``size mismatch`` from ``load_state_dict``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, UnsafeInputError
from ..io import atomic_write_json, fsync_dir, read_json

__all__ = ["latest_checkpoint", "checkpoint_format", "stored_shapes", "check_fits", "check_resume_state",
           "commit_checkpoint", "read_dcp_metadata", "dcp_writer", "dcp_reader"]

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
    if (path / DCP_DIR / METADATA_JSON).exists():
        return "dcp"
    return None


# ---- DCP metadata as JSON (torch's own FileSystemWriter pickles it) --------------------------------

METADATA_JSON = ".metadata.json"


def _dtype(name: Any, where: Path) -> torch.dtype:
    d = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(d, torch.dtype):
        raise UnsafeInputError(f"{where}: {name!r} is not a torch dtype; the checkpoint metadata is damaged. "
                               "Delete this checkpoint folder to resume from the previous one")
    return d


def _metadata_to_json(md: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    sd = {}
    for k, v in md.state_dict_metadata.items():
        if isinstance(v, TensorStorageMetadata):
            sd[k] = {"dtype": str(v.properties.dtype).removeprefix("torch."), "size": list(v.size),
                     "requires_grad": bool(v.properties.requires_grad),
                     "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in v.chunks]}
        else:
            sd[k] = {"bytes": True}
    storage = [{"fqn": i.fqn, "offset": None if i.offset is None else list(i.offset), "index": i.index,
                "file": s.relative_path, "start": s.offset, "length": s.length,
                "transforms": None if s.transform_descriptors is None else list(s.transform_descriptors)}
               for i, s in (md.storage_data or {}).items()]
    planner = ({k: list(v) for k, v in md.planner_data.items()} if isinstance(md.planner_data, dict) else None)
    return {"format": "puzzlekit-dcp-metadata", "version": md.version, "state_dict_metadata": sd,
            "planner_data": planner, "storage_data": storage}


def read_dcp_metadata(dcp_dir: Path) -> Any:
    """The ``torch.distributed.checkpoint`` ``Metadata`` of a checkpoint folder, from its JSON file
    (nothing is unpickled; a folder written with torch's own pickled ``.metadata`` is refused)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    path = dcp_dir / METADATA_JSON
    if not path.exists():
        raise UnsafeInputError(f"{dcp_dir}: no {METADATA_JSON}; puzzlekit does not read torch's pickled .metadata. "
                               "Delete this checkpoint folder to resume from the previous one")
    doc = read_json(path, what="checkpoint metadata")
    try:
        sd: dict[str, Any] = {}
        for k, v in doc["state_dict_metadata"].items():
            if v.get("bytes"):
                sd[k] = BytesStorageMetadata()
                continue
            props = TensorProperties(dtype=_dtype(v["dtype"], path), requires_grad=bool(v["requires_grad"]))
            chunks = [ChunkStorageMetadata(torch.Size(int(x) for x in c["offsets"]),
                                           torch.Size(int(x) for x in c["sizes"])) for c in v["chunks"]]
            sd[str(k)] = TensorStorageMetadata(props, torch.Size(int(x) for x in v["size"]), chunks)
        storage = {MetadataIndex(str(e["fqn"]), None if e["offset"] is None else [int(x) for x in e["offset"]],
                                 None if e["index"] is None else int(e["index"])):
                   _StorageInfo(str(e["file"]), int(e["start"]), int(e["length"]),
                                None if e["transforms"] is None else [str(t) for t in e["transforms"]])
                   for e in doc["storage_data"]}
        planner = doc["planner_data"]
        planner = None if planner is None else {str(k): tuple(v) for k, v in planner.items()}
        for e in storage.values():
            if Path(e.relative_path).name != e.relative_path:
                raise ValueError(f"shard file {e.relative_path!r} outside the folder")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UnsafeInputError(f"{path}: not a checkpoint metadata document ({e}); delete this checkpoint folder "
                               "to resume from the previous one") from None
    return Metadata(state_dict_metadata=sd, planner_data=planner, storage_data=storage,
                    storage_meta=StorageMeta(checkpoint_id=str(dcp_dir)), version=doc.get("version"))


def dcp_writer(path: Path) -> Any:
    """torch's ``FileSystemWriter`` (each process writes its shards, fsynced) with the metadata written
    as JSON by the coordinator instead of a pickle."""
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION

    class _Writer(FileSystemWriter):
        def finish(self, metadata: Any, results: list) -> None:
            metadata.version = CURRENT_DCP_VERSION
            metadata.storage_data = {wr.index: wr.storage_data for wrs in results for wr in wrs}
            atomic_write_json(Path(self.path) / METADATA_JSON, _metadata_to_json(metadata))

    return _Writer(str(path), sync_files=True, overwrite=True)


def dcp_reader(path: Path) -> Any:
    """torch's ``FileSystemReader`` reading the JSON metadata of :func:`dcp_writer` (tensors only:
    DCP reads them with ``torch.load(weights_only=True)`` or as raw bytes)."""
    from torch.distributed.checkpoint import FileSystemReader

    class _Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            md = read_dcp_metadata(Path(self.path))
            md.storage_meta.load_id = self.load_id
            return md

    return _Reader(str(path))


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
