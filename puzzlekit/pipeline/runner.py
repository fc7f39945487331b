"""The stage runner: one run directory, a manifest of stages, skip-if-done, resume, "run X first".

A :class:`Stage` is a named function of the run's :class:`~puzzlekit.pipeline.context.Context` that
reads the outputs of the stages before it from the run directory and returns a JSON-able result
(written to ``stages/<name>.json``).  Its *settings* are the config values it reads; its *identity*
chains them with the identity of the stage before it::

    id(stage k) = sha256(id(stage k-1), name k, settings k)

so the manifest records, per stage, its settings and (through ``upstream``) those of every stage
before it.  Then:

* **skip-if-done**: a stage recorded COMPLETE with the same identity is not run again (its result is
  read back);
* **resume**: a stage killed half-way is not COMPLETE, so it runs again, and its own work resumes
  from its journal / checkpoints (BLD, scoring, baselines and healing keep them);
* **order**: a stage whose previous stage is not complete with the expected identity stops with
  "run --stage <previous> first";
* a stage that re-runs marks the later ones PENDING (their inputs are about to change).

Under several processes (``torchrun`` / ``accelerate launch``) only the stages marked
``multi_process`` run; rank 0 keeps the books.

With several speed targets (``search.target_speedups``) a stage marked ``per_target`` runs once per
target (``ctx.target`` set; its files under ``targets/<key>/``), and its result is
``{"targets": {key: result}}``.  Each finished target is kept in ``stages/<name>.parts.json``, so a
stage killed half-way resumes with the next target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_json, read_json
from ..rundir import State

__all__ = ["Stage", "Runner", "stage_hash"]

logger = logging.getLogger("puzzlekit.pipeline")

#: Manifest entries of the pipeline's stages are ``pipeline/<name>``.
PREFIX = "pipeline/"


def stage_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """One stage: ``run(ctx) -> result``; ``settings(cfg)``: the config values it reads.

    ``reads`` / ``writes``: the run-directory paths it takes from earlier stages and leaves for later
    ones (documentation, shown by ``--dry-run``).  ``cached=False``: run every time (the report).
    ``multi_process``: may run under torchrun / accelerate launch.  ``per_target``: runs once per speed
    target when the config has several (see the module doc)."""

    name: str
    run: Callable[[Any], dict[str, Any]]
    settings: Callable[[Any], dict[str, Any]]
    doc: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    cached: bool = True
    multi_process: bool = False
    per_target: bool = False


def _load() -> list[float] | None:
    """The machine's load average (1, 5, 15 min) when a stage ends: how busy the cores were."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Runner:
    """Runs the configured stages of one pipeline in its run directory (``ctx.out``)."""

    def __init__(self, ctx: Any, stages: dict[str, Stage]):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.registry = stages
        self.names = list(self.cfg.stages)
        if not self.names:
            raise ConfigError(f"{self.cfg.name}: the config lists no stages; set stages: [parent, tokens, ...]")
        self.ids = self._identities()
        ctx.ids = self.ids

    # ---- identities
    def _identities(self) -> dict[str, dict[str, Any]]:
        out, up = {}, ""
        for name in self.names:
            from .config import config_to_dict

            settings = config_to_dict(self.registry[name].settings(self.cfg))
            sid = stage_hash([up, name, settings])
            out[name] = {"id": sid, "upstream": up, "settings": settings}
            up = sid
        return out

    def previous(self, name: str) -> str | None:
        i = self.names.index(name)
        return self.names[i - 1] if i else None

    def state(self, name: str) -> str:
        """``done`` (complete with these settings), ``stale`` (complete with others), ``running``
        (started, not finished: killed or still going), ``failed`` or ``pending``."""
        info = self.ctx.rd.stage_info(PREFIX + name)
        st = info.get("state")
        if st == State.COMPLETE.value:
            ok = (info.get("config") or {}).get("id") == self.ids[name]["id"]
            return "done" if ok and (self.ctx.out / "stages" / f"{name}.json").exists() else "stale"
        return {State.RUNNING.value: "running", State.FAILED.value: "failed"}.get(st, "pending")

    def resolve(self, stage: str | Sequence[str]) -> list[str]:
        """``all``, one stage name (or alias) or a list, as configured stage names in order."""
        from .config import ALIASES, STAGE_ORDER

        if isinstance(stage, str):
            if stage == "all":
                return list(self.names)
            stage = [stage]
        out = []
        for s in stage:
            s = ALIASES.get(s, s)
            if s not in self.names:
                if s in STAGE_ORDER:
                    raise ConfigError(f"stage {s!r} is not in this pipeline ({self.cfg.name}: "
                                      f"{', '.join(self.names)}); add it to stages: to run it")
                from ..errors import did_you_mean

                raise ConfigError(f"--stage {s!r}: {did_you_mean(s, [*self.names, 'all'])}")
            out.append(s)
        return sorted(out, key=self.names.index)

    # ---- running
    def run_stage(self, name: str) -> dict[str, Any]:
        """Run one stage (skipped when it finished with the same identity)."""
        st = self.registry[name]
        rank, world = _rank_world()
        if world > 1 and not st.multi_process:
            multi = [s for s in self.names if self.registry[s].multi_process]
            raise ConfigError(f"stage {name!r} runs as one process; launch only {', '.join(multi)} with "
                              "accelerate launch / torchrun")
        ident = self.ids[name]
        res_path = self.ctx.out / "stages" / f"{name}.json"
        if st.cached and self.state(name) == "done":
            logger.info("stage %s already complete in %s; reusing it", name, self.ctx.out)
            res = read_json(res_path, what=f"stage {name} result")
            self.ctx.results[name] = res
            return dict(res, reused=True)
        prev = self.previous(name)
        if prev is not None and self.state(prev) != "done":
            why = {"stale": "complete with other settings", "running": "not finished (killed?)",
                   "failed": "failed", "pending": "not run"}[self.state(prev)]
            raise ConfigError(f"stage {name!r} reads the output of stage {prev!r}, which is {why} in "
                              f"{self.ctx.out}: run --stage {prev} first (or --stage all)")
        main = rank == 0  # under several processes rank 0 keeps the books
        cfg = {"id": ident["id"], "upstream": ident["upstream"], "settings": ident["settings"]}
        if main:
            for later in self.names[self.names.index(name) + 1:]:  # their inputs are about to change
                if self.ctx.rd.stage_info(PREFIX + later).get("state") == State.COMPLETE.value:
                    self.ctx.rd.set_stage(PREFIX + later, State.PENDING)
            self.ctx.rd.set_stage(PREFIX + name, State.RUNNING, config=cfg)
        t0 = time.perf_counter()
        try:
            res = self._call(st, ident["id"], main)
        except BaseException:
            if main:
                self.ctx.rd.set_stage(PREFIX + name, State.FAILED, config=cfg)
            raise
        secs = time.perf_counter() - t0
        res = dict(res, stage=name, seconds=secs, load_avg=_load())
        if main:
            atomic_write_json(res_path, res)
            self.ctx.rd.set_stage(PREFIX + name, State.COMPLETE, config=cfg, seconds=secs)
        self.ctx.results[name] = res
        self.ctx.ran.add(name)
        logger.info("stage %s done in %.1f s", name, secs)
        return dict(res, reused=False)

    def _call(self, st: Stage, sid: str, main: bool) -> dict[str, Any]:
        """``st.run(ctx)``, or once per speed target for a per-target stage of a several-target config
        (finished targets kept in ``stages/<name>.parts.json``, so a killed stage resumes with the next)."""
        keys = [k for k, _ in self.cfg.targets() if k is not None] if st.per_target else []
        if not keys:
            return st.run(self.ctx)
        path = self.ctx.out / "stages" / f"{st.name}.parts.json"
        parts = read_json(path, what=f"stage {st.name} parts") if path.exists() else {}
        if parts.get("id") != sid:
            parts = {"id": sid, "targets": {}}
        for key in keys:
            if key in parts["targets"]:
                logger.info("stage %s, target %s: already complete; reusing it", st.name, key)
                continue
            if self.ctx.progress:
                print(f"  {st.name}: target {key}", file=sys.stderr, flush=True)
            self.ctx.target = key
            try:
                parts["targets"][key] = st.run(self.ctx)
            finally:
                self.ctx.target = None
            if main:
                atomic_write_json(path, parts)
        return {"targets": {k: parts["targets"][k] for k in keys}}

    def run(self, stage: str | Sequence[str] = "all") -> dict[str, dict[str, Any]]:
        """Run the stages (``all``, one name, or a list) in order; returns each one's result."""
        names = self.resolve(stage)
        out: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(names, 1):
            if self.ctx.progress:
                print(f"[{i}/{len(names)}] {name}: {self.registry[name].doc}", file=sys.stderr, flush=True)
            out[name] = self.run_stage(name)
        return out

    def dry_run(self) -> list[dict[str, Any]]:
        """What ``run`` would do, per configured stage: state, identity, settings, reads / writes."""
        rows = []
        for name in self.names:
            st = self.registry[name]
            state = self.state(name) if st.cached else "always"
            rows.append({"stage": name, "state": state, "would_run": state != "done", "doc": st.doc,
                         "id": self.ids[name]["id"], "settings": self.ids[name]["settings"],
                         "reads": list(st.reads), "writes": list(st.writes)})
        return rows
