"""Durable, safe file I/O shared by every stage.

* Documents are replaced atomically: write a temporary file in the same folder,
  flush, fsync, rename, fsync the folder.  A reader never sees half a document.
* JSON inputs above a size limit are refused before parsing.
* Paths stored inside a folder's documents must stay inside that folder.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import PuzzlekitError, UnsafeInputError

__all__ = [
    "MAX_JSON_BYTES",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_safetensors",
    "atomic_path",
    "read_json",
    "resolve_inside",
    "fsync_dir",
]

#: Largest JSON document read without an explicit ``max_bytes`` (64 MiB).
MAX_JSON_BYTES = 64 * 1024 * 1024


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _writable_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PuzzlekitError(f"{parent}: cannot create the folder ({e.strerror}); choose a writable location") from e


_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def _remove_orphaned_temps(path: Path) -> None:
    """Delete temporary files of ``path`` left by a writer on this host that no longer runs (killed
    mid-write); temporaries of live processes and of other hosts are left alone."""
    head = f".{path.name}.{_HOST}-"
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(head) and e.name.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(head):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except OSError:  # exists, owned by someone else
            continue
        try:
            (path.parent / name).unlink()
        except OSError:
            pass


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    Use it for writers that want a filename (``safetensors.torch.save_file``).
    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    _writable_parent(path)
    owner = f"{_HOST}-{os.getpid()}"
    _remove_orphaned_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as e:
        raise PuzzlekitError(f"{path}: cannot write here ({e.strerror}); check the folder's permissions and free space") from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException as e:
        try:
            tmp_path.unlink()
        except OSError:
            pass
        # writers such as safetensors report a full disk with their own error type ("I/O error: ... os error 28")
        if isinstance(e, OSError) or (type(e).__name__ == "SafetensorError" and "I/O error" in str(e)):
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise PuzzlekitError(
                f"{path}: writing failed ({reason}); the previous version, if any, is intact. "
                "Free some disk space or fix the folder's permissions, then re-run"
            ) from e
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
    except OSError as e:
        raise PuzzlekitError(
            f"{path}: writing failed ({e.strerror}); the previous version, if any, is intact. "
            "Free some disk space or choose another location"
        ) from e


def _finite(obj: Any, where: str) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise PuzzlekitError(f"refusing to write a non-finite number ({obj}) at {where}; fix or drop it first")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _finite(v, f"{where}[{i}]")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (no NaN/inf) and replace ``path`` atomically."""
    _finite(obj, "$")
    text = json.dumps(obj, indent=indent, allow_nan=False, sort_keys=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def read_json(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_BYTES, what: str = "JSON document") -> Any:
    """Read a JSON file, refusing files over ``max_bytes`` before parsing them."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PuzzlekitError(f"{path}: no such file; check the path") from None
    except OSError as e:
        raise PuzzlekitError(f"{path}: cannot read ({e.strerror})") from e
    if path.is_dir():
        raise PuzzlekitError(f"{path}: is a folder, expected a {what} file")
    if size > max_bytes:
        raise UnsafeInputError(
            f"{path}: {size} bytes is over the {max_bytes}-byte limit for a {what}; "
            "pass a larger max_bytes if you trust this file"
        )
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise PuzzlekitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a {what}") from None
    except json.JSONDecodeError as e:
        raise PuzzlekitError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise PuzzlekitError(f"{path}: invalid JSON: {e}") from None
    except OSError as e:
        raise PuzzlekitError(f"{path}: cannot read ({e.strerror})") from e


def resolve_inside(root: str | os.PathLike, relative: str, *, what: str = "path") -> Path:
    """Resolve ``relative`` under ``root``, refusing absolute paths and escapes (``..``, symlinks)."""
    if not isinstance(relative, str) or not relative:
        raise UnsafeInputError(f"{what} must be a non-empty relative path, got {relative!r}")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise UnsafeInputError(f"{what} {relative!r} is absolute; paths must be relative to {root}")
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / relative).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise UnsafeInputError(f"{what} {relative!r} points outside {root}; keep files inside the library's folder")
    return candidate


def atomic_write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Serialise ``tensors`` (torch) to safetensors bytes and replace ``path`` atomically.

    Unlike ``safetensors.torch.save_file``, which creates a hidden temporary of its own that a
    kill can leave behind, only :func:`atomic_write_bytes`'s tracked temporary ever exists.
    The whole file is built in memory: meant for block-sized files, not whole large models.
    """
    from safetensors.torch import save  # lazy: puzzlekit.io must not import torch

    atomic_write_bytes(path, save(tensors, metadata=metadata))
