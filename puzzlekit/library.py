"""The block library: candidates per layer, their quality metrics and costs.

Contract (what readers and writers may rely on):

* A library covers ``num_layers`` parent layers.  Each :class:`Candidate` spans
  the consecutive parent layers ``first..last`` (usually one) and replaces them
  with one :class:`~puzzlekit.BlockConfig`.
* Quality metrics belong to a candidate (they depend on the layer):
  ``candidate.metrics["kl_div"]``.
* Costs belong to a block under a scenario (they do not depend on the layer):
  ``library.costs[scenario_name][block.key]["runtime_ms"]``.
* Trained weights are safetensors files named by a path relative to the
  library document's folder; paths that leave the folder are refused.  A
  candidate's ``weights`` is one file (the whole block) or a list of files whose
  tensors together make the block (e.g. its attention sub-block's file and its
  FFN sub-block's file, shared with the other candidates of the layer: a
  decoupled BLD library stores each trained sub-block once, not once per pair).
* The document is canonical JSON with ``schema_version``; :meth:`BlockLibrary.save`
  replaces it atomically, so a reader never sees a half-written library.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .architecture import ParentSpec, Scenario
from .blocks import BlockConfig
from .errors import LibraryError, did_you_mean
from .io import atomic_write_json, read_json, resolve_inside

__all__ = ["Candidate", "BlockLibrary", "NameList", "SCHEMA_VERSION", "LIBRARY_FORMAT"]

SCHEMA_VERSION = 1
LIBRARY_FORMAT = "puzzlekit.block-library"


def _check_weights(weights: Any, what: str) -> str | tuple[str, ...] | None:
    """A candidate's ``weights``: None, one relative path, or a non-empty list of distinct paths (its
    sub-block files), returned as a tuple."""
    if weights is None or isinstance(weights, str):
        return weights
    if isinstance(weights, (list, tuple)) and weights and all(isinstance(w, str) for w in weights):
        if len(set(weights)) != len(weights):
            raise LibraryError(f"{what} lists a file twice: {list(weights)!r}")
        return tuple(weights)
    raise LibraryError(f"{what} must be a relative path string or a non-empty list of them "
                       f"(the block's sub-block files), got {weights!r}")


class NameList(list):
    """A list of names that can still be called the way it was before it became a list.

    ``lib.cost_names`` and ``lib.metric_names`` are lists (like ``lib.costs`` is a dict and
    ``lib.blocks`` a list); calling them, ``lib.cost_names(scenario)``, was the old form: it still
    answers, with a :class:`DeprecationWarning`.
    """

    def __init__(self, items: Iterable[str], call: Any = None):
        super().__init__(items)
        self._call = call

    def __call__(self, *args: Any, **kwargs: Any) -> list[str]:
        import warnings

        warnings.warn("calling lib.cost_names(...) / lib.metric_names() is deprecated: they are lists now; use "
                      "lib.cost_names (default scenario), lib.cost_names_for(scenario) or lib.metric_names",
                      DeprecationWarning, stacklevel=2)
        return list(self) if self._call is None else list(self._call(*args, **kwargs))


@dataclass
class Candidate:
    """One replacement for parent layers ``first..last`` by ``block``."""

    first: int
    last: int
    block: BlockConfig
    metrics: dict[str, float] = field(default_factory=dict)
    weights: str | tuple[str, ...] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.weights, list):
            self.weights = tuple(self.weights)

    @property
    def weight_files(self) -> tuple[str, ...]:
        """The candidate's weight files (relative paths): none, one, or its sub-blocks' files."""
        if self.weights is None:
            return ()
        return (self.weights,) if isinstance(self.weights, str) else tuple(self.weights)

    @property
    def layers(self) -> range:
        return range(self.first, self.last + 1)

    @property
    def span(self) -> int:
        return self.last - self.first + 1

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"layers": [self.first, self.last], "block": self.block.to_dict(),
                             "metrics": dict(self.metrics)}
        if self.weights is not None:
            d["weights"] = self.weights if isinstance(self.weights, str) else list(self.weights)
        if self.name is not None:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Candidate:
        if not isinstance(d, Mapping):
            raise LibraryError(f"{where}: a candidate must be an object, got {type(d).__name__}")
        layers = d.get("layers")
        if (not isinstance(layers, Sequence) or len(layers) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)):
            raise LibraryError(f"{where}.layers must be [first, last] (integers), got {layers!r}")
        try:
            block = BlockConfig.from_dict(d.get("block"))
        except Exception as e:  # ConfigError: re-raise with the location
            raise LibraryError(f"{where}.block: {e}") from None
        metrics = d.get("metrics", {})
        if not isinstance(metrics, Mapping):
            raise LibraryError(f"{where}.metrics must be an object of name -> number")
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise LibraryError(f"{where}.metrics.{k} must be a number, got {v!r}")
        weights = _check_weights(d.get("weights"), f"{where}.weights")
        name = d.get("name")
        if name is not None and not isinstance(name, str):
            raise LibraryError(f"{where}.name must be a string, got {name!r}")
        return cls(int(layers[0]), int(layers[1]), block, {k: float(v) for k, v in metrics.items()},
                   weights, name)


class BlockLibrary:
    """Candidates per layer with metrics, per-scenario block costs and weights.

    Build one with :meth:`add`, :meth:`set_costs`, or load one with :meth:`load`
    (our format) or :func:`puzzlekit.formats.nvlabs.import_nvlabs`.
    """

    def __init__(
        self,
        num_layers: int,
        parent: ParentSpec | None = None,
        *,
        root: str | os.PathLike | None = None,
        meta: Mapping[str, Any] | None = None,
    ):
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
            raise LibraryError(f"num_layers must be a positive integer, got {num_layers!r}")
        self.num_layers = num_layers
        self.parent = parent
        self.candidates: list[Candidate] = []
        self.scenarios: dict[str, Scenario] = {}
        self.costs: dict[str, dict[str, dict[str, float]]] = {}
        self.default_scenario: str | None = None
        self.root = Path(root) if root is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        #: What :meth:`validate` dropped when told to drop non-finite candidates.
        self.dropped: list[str] = []

    # ---- building ------------------------------------------------------------------------
    def add(
        self,
        layers: int | tuple[int, int],
        block: BlockConfig,
        metrics: Mapping[str, float] | None = None,
        *,
        weights: str | Sequence[str] | None = None,
        name: str | None = None,
    ) -> int:
        """Add a candidate for one layer (or a ``(first, last)`` span); returns its index.

        ``weights``: the block's safetensors file relative to the library folder, or a list of files
        whose tensors together make the block (e.g. its attention and FFN sub-blocks' files)."""
        weights = _check_weights(weights, "weights")
        first, last = (layers, layers) if isinstance(layers, int) else layers
        if not (0 <= first <= last < self.num_layers):
            raise LibraryError(
                f"candidate layers ({first}, {last}) must satisfy 0 <= first <= last < num_layers={self.num_layers}"
            )
        for c in self.candidates:
            if c.first == first and c.last == last and c.block == block:
                raise LibraryError(f"duplicate candidate {block.key} for layers {first}..{last}")
        self.candidates.append(Candidate(first, last, block, dict(metrics or {}), weights, name))
        return len(self.candidates) - 1

    def add_scenario(self, scenario: Scenario, *, default: bool | None = None) -> str:
        """Register a scenario; the first one registered becomes the default."""
        self.scenarios[scenario.name] = scenario
        self.costs.setdefault(scenario.name, {})
        if default or (default is None and self.default_scenario is None):
            self.default_scenario = scenario.name
        return scenario.name

    def set_costs(self, scenario: Scenario | str, block: BlockConfig, costs: Mapping[str, float]) -> None:
        """Record the costs of ``block`` under ``scenario`` (merged with what is there)."""
        name = scenario if isinstance(scenario, str) else self.add_scenario(scenario, default=None)
        if name not in self.scenarios:
            raise LibraryError(f"unknown scenario {name!r}; {did_you_mean(name, self.scenarios)}")
        self.costs[name].setdefault(block.key, {}).update({k: float(v) for k, v in costs.items()})

    # ---- queries -------------------------------------------------------------------------
    def candidates_for_layer(self, layer: int) -> list[int]:
        """Indices of candidates whose span starts at ``layer``."""
        return [i for i, c in enumerate(self.candidates) if c.first == layer]

    def covering(self, layer: int) -> list[int]:
        """Indices of candidates whose span includes ``layer``."""
        return [i for i, c in enumerate(self.candidates) if c.first <= layer <= c.last]

    @property
    def blocks(self) -> list[BlockConfig]:
        """Distinct blocks, in first-seen order."""
        seen: dict[str, BlockConfig] = {}
        for c in self.candidates:
            seen.setdefault(c.block.key, c.block)
        return list(seen.values())

    @property
    def metric_names(self) -> NameList:
        """Metric names present on every candidate (a list; ``lib.metric_names()`` is the deprecated form)."""
        if not self.candidates:
            return NameList([], self._metric_names_call)
        names = set(self.candidates[0].metrics)
        for c in self.candidates[1:]:
            names &= set(c.metrics)
        return NameList(sorted(names), self._metric_names_call)

    def _metric_names_call(self, *args: Any) -> list[str]:
        return list(self.metric_names)

    def resolve_scenario(self, scenario: str | Scenario | None = None) -> str:
        """The name of ``scenario`` (default: the library's default scenario)."""
        if isinstance(scenario, Scenario):
            scenario = scenario.name
        if scenario is None:
            if self.default_scenario is None:
                if len(self.scenarios) == 1:
                    return next(iter(self.scenarios))
                raise LibraryError(
                    "the library has no default scenario and "
                    + ("no scenarios at all; profile it first (puzzlekit profile)" if not self.scenarios
                       else f"{len(self.scenarios)} scenarios; name one: {sorted(self.scenarios)}")
                )
            return self.default_scenario
        if scenario not in self.scenarios:
            raise LibraryError(f"no scenario {scenario!r} in the library; {did_you_mean(scenario, self.scenarios)}")
        return scenario

    @property
    def cost_names(self) -> NameList:
        """Cost names every candidate's block has under the default scenario (a list; [] without scenarios).

        Other scenarios: :meth:`cost_names_for`.  ``lib.cost_names(scenario)`` still works (deprecated)."""
        if not self.scenarios:
            return NameList([], self.cost_names_for)
        return NameList(self.cost_names_for(None), self.cost_names_for)

    def cost_names_for(self, scenario: str | Scenario | None = None) -> list[str]:
        """Cost names every candidate's block has under ``scenario`` (default: the default scenario)."""
        name = self.resolve_scenario(scenario)
        table = self.costs.get(name, {})
        sets = [set(table.get(c.block.key, {})) for c in self.candidates]
        return sorted(set.intersection(*sets)) if sets else []

    def non_block_costs_for(self, scenario: str | Scenario | None = None) -> dict[str, float]:
        """The costs outside the blocks (embeddings, final norm, LM head, ...) that profiling recorded for
        ``scenario`` in ``meta["non_block_costs"]``; ``{}`` when none were recorded.

        The search adds them to every architecture's totals by default (see ``puzzlekit.search``)."""
        nb = self.meta.get("non_block_costs")
        if not nb or not self.scenarios:
            return {}
        name = self.resolve_scenario(scenario)
        if not isinstance(nb, Mapping):
            raise LibraryError("meta.non_block_costs must be an object of scenario -> {cost: number}")
        rec = nb.get(name)
        if rec is None:
            return {}
        if not isinstance(rec, Mapping) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rec.values()):
            raise LibraryError(f"meta.non_block_costs[{name!r}] must map cost names to finite numbers, got {rec!r}")
        return {str(k): float(v) for k, v in rec.items()}

    def metric_vector(self, metric: str) -> np.ndarray:
        """``metric`` of every candidate, in candidate order."""
        missing = [i for i, c in enumerate(self.candidates) if metric not in c.metrics]
        if missing:
            all_names = {k for c in self.candidates for k in c.metrics}
            if metric not in all_names:
                raise LibraryError(f"no metric {metric!r} in the library; {did_you_mean(metric, all_names)}")
            c = self.candidates[missing[0]]
            raise LibraryError(
                f"metric {metric!r} is missing on {len(missing)} candidates (first: {c.block.key} at layer {c.first}); "
                "score them or choose another metric"
            )
        return np.array([c.metrics[metric] for c in self.candidates], dtype=float)

    def cost_matrix(self, names: Sequence[str], scenario: str | Scenario | None = None) -> np.ndarray:
        """Costs ``names`` of every candidate's block under ``scenario``: shape (candidates, len(names))."""
        sc = self.resolve_scenario(scenario)
        table = self.costs.get(sc, {})
        out = np.empty((len(self.candidates), len(names)), dtype=float)
        for j, n in enumerate(names):
            for i, c in enumerate(self.candidates):
                v = table.get(c.block.key, {}).get(n)
                if v is None:
                    all_names = {k for d in table.values() for k in d}
                    if n not in all_names:
                        raise LibraryError(f"no cost {n!r} under scenario {sc!r}; {did_you_mean(n, all_names)}")
                    raise LibraryError(
                        f"cost {n!r} is missing for block {c.block.key} under scenario {sc!r}; profile that block"
                    )
                out[i, j] = v
        return out

    def weights_path(self, index: int) -> Path | None:
        """The resolved weights file of candidate ``index`` (inside the library folder), or None.

        For a candidate stored as several sub-block files use :meth:`weights_paths`."""
        paths = self.weights_paths(index)
        if len(paths) > 1:
            raise LibraryError(f"candidate {index} is stored as {len(paths)} sub-block files; use weights_paths()")
        return paths[0] if paths else None

    def weights_paths(self, index: int) -> list[Path]:
        """The resolved weight files of candidate ``index`` (inside the library folder); [] when it has none."""
        c = self.candidates[index]
        if c.weights is None:
            return []
        if self.root is None:
            raise LibraryError("the library has no folder (root) to resolve weight paths against; save or load it first")
        return [resolve_inside(self.root, w, what=f"candidate {index} weights") for w in c.weight_files]

    def architecture(self, choices: Sequence[int], parent: ParentSpec | None = None):
        """The child :class:`~puzzlekit.Architecture` of chosen candidates (one per span, in layer order).

        ``choices`` is e.g. ``Solution.candidates``; they must cover every layer exactly once.
        ``parent`` defaults to the library's parent spec.
        """
        from .architecture import Architecture

        spec = parent or self.parent
        if spec is None:
            raise LibraryError("the library has no parent spec; pass parent=ParentSpec.from_hf_config(...)")
        chosen = sorted((self.candidates[i] for i in choices), key=lambda c: c.first)
        nxt = 0
        for c in chosen:
            if c.first != nxt:
                raise LibraryError(
                    f"choices do not cover the layers exactly once: expected a candidate starting at layer {nxt}, "
                    f"got one spanning {c.first}..{c.last}"
                )
            nxt = c.last + 1
        if nxt != self.num_layers:
            raise LibraryError(f"choices cover layers 0..{nxt - 1}, the library has {self.num_layers}")
        return Architecture(spec, tuple(c.block for c in chosen))

    # ---- validation ----------------------------------------------------------------------
    def validate(self, *, drop_nonfinite: bool = False) -> list[str]:
        """Check the library; returns a description of what was dropped (with ``drop_nonfinite``).

        Errors: candidates outside the layer range or duplicated, a layer no
        candidate covers, non-finite metrics (unless dropped), negative or
        missing costs, weight paths that leave the library folder.
        """
        dropped: list[str] = []
        keep: list[Candidate] = []
        seen: set[tuple[int, int, str]] = set()
        for i, c in enumerate(self.candidates):
            where = f"candidate {i} ({c.block.key}, layers {c.first}..{c.last})"
            if not (0 <= c.first <= c.last < self.num_layers):
                raise LibraryError(f"{where}: layers outside 0..{self.num_layers - 1}")
            k = (c.first, c.last, c.block.key)
            if k in seen:
                raise LibraryError(f"{where}: duplicate candidate; remove one of them")
            seen.add(k)
            bad = [m for m, v in c.metrics.items() if not math.isfinite(v)]
            if bad:
                if not drop_nonfinite:
                    raise LibraryError(
                        f"{where}: metric {bad[0]!r} is {c.metrics[bad[0]]}; fix it or pass drop_nonfinite "
                        "(CLI: --drop-nonfinite) to drop such candidates"
                    )
                dropped.append(f"{where}: non-finite {', '.join(bad)}")
                continue
            for w in c.weight_files:
                resolve_inside(self.root if self.root is not None else ".", w, what=f"{where} weights")
            keep.append(c)
        if dropped:
            self.candidates = keep
        for layer in range(self.num_layers):
            if not any(c.first <= layer <= c.last for c in self.candidates):
                raise LibraryError(f"layer {layer} has no candidate; every layer needs at least one")
        for sc, table in self.costs.items():
            if sc not in self.scenarios:
                raise LibraryError(f"costs given for unknown scenario {sc!r}; {did_you_mean(sc, self.scenarios)}")
            names = {k for d in table.values() for k in d}
            for c in self.candidates:
                d = table.get(c.block.key)
                if d is None:
                    raise LibraryError(f"scenario {sc!r}: no costs for block {c.block.key}; profile it")
                missing = names - set(d)
                if missing:
                    raise LibraryError(f"scenario {sc!r}: block {c.block.key} lacks cost {sorted(missing)[0]!r}")
            for key, d in table.items():
                for n, v in d.items():
                    if not math.isfinite(v) or v < 0:
                        raise LibraryError(f"scenario {sc!r}: cost {n!r} of block {key} is {v}; costs must be finite and >= 0")
        if self.default_scenario is not None and self.default_scenario not in self.scenarios:
            raise LibraryError(f"default_scenario {self.default_scenario!r} is not one of the scenarios")
        return dropped

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LIBRARY_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "num_layers": self.num_layers,
            "parent": self.parent.to_dict() if self.parent else None,
            "scenarios": {k: v.to_dict() for k, v in self.scenarios.items()},
            "default_scenario": self.default_scenario,
            "costs": {sc: {b: dict(d) for b, d in t.items()} for sc, t in self.costs.items()},
            "candidates": [c.to_dict() for c in self.candidates],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Any, *, root: str | os.PathLike | None = None, source: str = "library") -> BlockLibrary:
        if not isinstance(d, Mapping):
            raise LibraryError(f"{source}: a block library must be a JSON object")
        if d.get("format") not in (None, LIBRARY_FORMAT):
            raise LibraryError(
                f"{source}: format {d.get('format')!r} is not a puzzlekit library; "
                "import other formats with `puzzlekit library import --format nvlabs`"
            )
        ver = d.get("schema_version")
        if ver != SCHEMA_VERSION:
            raise LibraryError(
                f"{source}: schema_version {ver!r} is not supported (this puzzlekit reads version {SCHEMA_VERSION})"
                + ("; is this an NVlabs library? use `puzzlekit library import --format nvlabs`"
                   if ver is None and any(str(k).startswith("layer_") for k in d) else "")
            )
        try:
            meta = d.get("meta") or {}
            if not isinstance(meta, Mapping):
                raise LibraryError(f"'meta' must be an object, got {type(meta).__name__}")
            lib = cls(d.get("num_layers"), root=root, meta=meta)
            if d.get("parent") is not None:
                lib.parent = ParentSpec.from_dict(d["parent"])
            scen = d.get("scenarios") or {}
            if not isinstance(scen, Mapping):
                raise LibraryError("'scenarios' must be an object of name -> scenario")
            for name, sd in scen.items():
                s = Scenario.from_dict(sd)
                if s.name != name:
                    raise LibraryError(f"scenario key {name!r} does not match its fields (expected {s.name!r})")
                lib.scenarios[name] = s
            ds = d.get("default_scenario")
            if ds is not None and not isinstance(ds, str):
                raise LibraryError(f"'default_scenario' must be a scenario name or null, got {ds!r}")
            lib.default_scenario = ds
            costs = d.get("costs") or {}
            if not isinstance(costs, Mapping):
                raise LibraryError("'costs' must be an object of scenario -> block key -> cost -> number")
            for sc, table in costs.items():
                if not isinstance(table, Mapping):
                    raise LibraryError(f"costs[{sc!r}] must be an object of block key -> costs")
                lib.costs[sc] = {}
                for key, cd in table.items():
                    BlockConfig.from_key(key)
                    if not isinstance(cd, Mapping):
                        raise LibraryError(f"costs[{sc!r}][{key!r}] must be an object of name -> number")
                    for n, v in cd.items():
                        if isinstance(v, bool) or not isinstance(v, (int, float)):
                            raise LibraryError(f"costs[{sc!r}][{key!r}].{n} must be a number, got {v!r}")
                    lib.costs[sc][key] = {n: float(v) for n, v in cd.items()}
            cands = d.get("candidates")
            if not isinstance(cands, list):
                raise LibraryError("'candidates' must be a list")
            for i, cd in enumerate(cands):
                lib.candidates.append(Candidate.from_dict(cd, f"candidates[{i}]"))
        except LibraryError as e:
            raise LibraryError(f"{source}: {e}") from None
        except Exception as e:
            from .errors import PuzzlekitError

            if isinstance(e, PuzzlekitError):
                raise LibraryError(f"{source}: {e}") from None
            raise
        return lib

    def save(self, path: str | os.PathLike) -> Path:
        """Write the library document atomically; its folder becomes :attr:`root`."""
        path = Path(path)
        if self.root is not None and self.root.resolve() != path.parent.resolve():
            if any(c.weights for c in self.candidates):
                raise LibraryError(
                    f"{path}: the library's weights live under {self.root}; save it in that folder "
                    "(weight paths are relative to the library document)"
                )
        atomic_write_json(path, self.to_dict())
        self.root = path.parent
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, validate: bool = True, drop_nonfinite: bool = False) -> BlockLibrary:
        """Read a library document (and validate it unless told not to)."""
        path = Path(path)
        lib = cls.from_dict(read_json(path, what="block library"), root=path.parent, source=str(path))
        if validate:
            try:
                lib.dropped = lib.validate(drop_nonfinite=drop_nonfinite)
            except LibraryError as e:
                raise LibraryError(f"{path}: {e}") from None
        return lib

    # ---- convenience ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.candidates)

    def __repr__(self) -> str:
        return (f"BlockLibrary(num_layers={self.num_layers}, candidates={len(self.candidates)}, "
                f"scenarios={list(self.scenarios)})")

    def layer_table(self) -> list[list[int]]:
        """For each layer, the candidates starting there."""
        table: list[list[int]] = [[] for _ in range(self.num_layers)]
        for i, c in enumerate(self.candidates):
            table[c.first].append(i)
        return table

    def extend(self, candidates: Iterable[Candidate]) -> None:
        for c in candidates:
            self.add((c.first, c.last), c.block, c.metrics, weights=c.weights, name=c.name)
