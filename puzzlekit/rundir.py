"""The run directory: one folder every pipeline stage reads and writes.

Layout::

    RUN/
      manifest.json      stages and their status (replaced atomically)
      journal.jsonl      append-only record of per-item state changes (fsynced)
      library.json       the block library document
      blocks/            trained block weights (safetensors)
      ...                whatever a stage writes, always inside RUN/

Contract: documents are replaced atomically; the journal is append-only and
each line is flushed and fsynced before the state it records is relied upon.
A torn last line (a kill mid-write) is ignored on replay.  Re-running a stage
whose status is COMPLETE is a no-op; one killed half-way resumes from the journal.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import PuzzlekitError
from .io import atomic_write_json, read_json, resolve_inside

__all__ = ["State", "Journal", "RunDir"]


class State(str, enum.Enum):
    """Lifecycle of a stage or of one work item (a candidate block, a batch)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


class Journal:
    """An append-only JSON-lines journal; each record is flushed and fsynced."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, sort_keys=True) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as f:
                if f.tell() > 0:  # a kill mid-append leaves a torn last line: end it so this record stays whole
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
                f.write(line.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise PuzzlekitError(
                f"{self.path}: cannot append to the journal ({e.strerror}); finished work is kept, "
                "free disk space or fix permissions and re-run"
            ) from e

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, in order; a torn final line is skipped."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn write from a kill: ignore
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    yield rec

    def states(self, kind: str) -> dict[str, dict[str, Any]]:
        """The latest record of each item of ``kind`` (keyed by ``record['item']``)."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self.records():
            if rec.get("kind") == kind and "item" in rec:
                out[str(rec["item"])] = rec
        return out

    def set_state(self, kind: str, item: str, state: State, **info: Any) -> None:
        self.append({"kind": kind, "item": item, "state": State(state).value, "time": time.time(), **info})


class RunDir:
    """A run directory with a manifest of stages and a journal."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        # absolute (as run.file() paths are): paths inside it are made relative to it again, and a
        # process that changes directory keeps finding it
        self.path = Path(os.path.abspath(path))
        if create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PuzzlekitError(f"{self.path}: cannot create the run directory ({e.strerror})") from e
        elif not self.path.is_dir():
            raise PuzzlekitError(f"{self.path}: no such run directory; create it by running the first stage")
        self.journal = Journal(self.path / "journal.jsonl")

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        m = read_json(self.manifest_path, what="run manifest")
        if not isinstance(m, dict) or not isinstance(m.get("stages"), dict):
            raise PuzzlekitError(f"{self.manifest_path}: not a puzzlekit run manifest; use another run directory")
        return m

    def stage_info(self, stage: str) -> dict[str, Any]:
        return dict(self.manifest()["stages"].get(stage, {}))

    def set_stage(self, stage: str, state: State, **info: Any) -> None:
        m = self.manifest()
        entry = m["stages"].setdefault(stage, {})
        entry.update(info)
        entry["state"] = State(state).value
        entry["updated"] = time.time()
        atomic_write_json(self.manifest_path, m)

    def is_complete(self, stage: str, config: dict[str, Any] | None = None) -> bool:
        """True when ``stage`` finished (with the same ``config``, when one is given)."""
        info = self.stage_info(stage)
        if info.get("state") != State.COMPLETE.value:
            return False
        return config is None or info.get("config") == config

    def file(self, relative: str) -> Path:
        """A path inside the run directory (refusing escapes)."""
        return resolve_inside(self.path, relative, what="run file")
