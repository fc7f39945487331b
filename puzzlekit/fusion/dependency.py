"""How much each FFN of a run depends on the FFNs before it (FFN Fusion paper, §3).

For a run of FFNs ``f_1 … f_n`` with no attention between them, entry ``(i, j)``
(``i < j``) of the dependency matrix is the cosine distance between FFN ``j``'s
contribution to the residual stream with and without FFN ``i`` before it,
averaged over calibration tokens::

    D[i, j] = mean_t (1 - cos(f_j(x_j), f_j(x_j \\ f_i)))

where ``x_j \\ f_i`` is the input FFN ``j`` sees when FFN ``i``'s contribution is
removed and the run is recomputed from there.  Low values mark FFNs that can be
evaluated in parallel with little change: those are safe to fuse.  The
diagonal and lower triangle are zero.

:class:`RunDependency` and :class:`DependencyReport` are plain numpy objects
(JSON-saveable); :func:`dependency_matrix` measures them on a model and needs torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["RunDependency", "DependencyReport", "dependency_matrix"]


@dataclass
class RunDependency:
    """The dependency matrix of one FFN run (layers in order, ``matrix[i, j]`` for ``i < j``)."""

    layers: tuple[int, ...]
    matrix: np.ndarray
    num_tokens: int = 0

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        m = np.asarray(self.matrix, dtype=np.float64)
        n = len(self.layers)
        if m.shape != (n, n):
            raise ConfigError(f"dependency matrix for layers {list(self.layers)} must be {n}x{n}, got {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ConfigError(f"dependency matrix for layers {list(self.layers)} has non-finite entries")
        self.matrix = np.triu(m, 1)

    def index(self, layer: int) -> int:
        """Position of ``layer`` inside the run."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise ConfigError(f"layer {layer} is not in the run {list(self.layers)}") from None

    def group_score(self, layers: Sequence[int]) -> float:
        """Worst pairwise dependency inside a group of consecutive FFNs of the run (0 for one FFN)."""
        idx = [self.index(x) for x in layers]
        if len(idx) < 2:
            return 0.0
        sub = self.matrix[np.ix_(idx, idx)]
        return float(sub.max())

    def summary(self) -> dict[str, Any]:
        """Per-run scores: mean / max of the upper triangle, adjacent-pair mean, and per FFN
        ``influence`` (mean of its row: how much it changes later FFNs) and ``sensitivity``
        (mean of its column: how much earlier FFNs change it)."""
        n = len(self.layers)
        iu = np.triu_indices(n, 1)
        vals = self.matrix[iu]
        adj = np.diag(self.matrix, 1)
        infl = [float(self.matrix[i, i + 1:].mean()) if i < n - 1 else 0.0 for i in range(n)]
        sens = [float(self.matrix[:j, j].mean()) if j > 0 else 0.0 for j in range(n)]
        return {
            "first": self.layers[0],
            "last": self.layers[-1],
            "length": n,
            "mean": float(vals.mean()) if vals.size else 0.0,
            "max": float(vals.max()) if vals.size else 0.0,
            "adjacent_mean": float(adj.mean()) if adj.size else 0.0,
            "influence": infl,
            "sensitivity": sens,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "matrix": self.matrix.round(8).tolist(),
                "num_tokens": self.num_tokens, "summary": self.summary()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunDependency:
        if not isinstance(d, Mapping) or "layers" not in d or "matrix" not in d:
            raise ConfigError("a run dependency must be an object with 'layers' and 'matrix'")
        return cls(tuple(d["layers"]), np.asarray(d["matrix"], dtype=np.float64), int(d.get("num_tokens", 0)))


@dataclass
class DependencyReport:
    """Dependency matrices of every FFN run of a model, keyed by the run's first layer."""

    runs: list[RunDependency] = field(default_factory=list)

    def for_layers(self, layers: Iterable[int]) -> RunDependency | None:
        """The run holding all of ``layers``, or None."""
        want = set(layers)
        for r in self.runs:
            if want <= set(r.layers):
                return r
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DependencyReport:
        if not isinstance(d, Mapping) or not isinstance(d.get("runs"), list):
            raise ConfigError("a dependency report must be an object with a 'runs' list")
        return cls([RunDependency.from_dict(r) for r in d["runs"]])

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically."""
        from ..io import atomic_write_json

        atomic_write_json(path, self.to_dict(), indent=1)

    def __str__(self) -> str:
        lines = []
        for r in self.runs:
            s = r.summary()
            lines.append(f"run {s['first']}-{s['last']} ({s['length']} FFNs): mean dependency {s['mean']:.4f}, "
                         f"max {s['max']:.4f}, adjacent {s['adjacent_mean']:.4f}")
            n = len(r.layers)
            lines.append("      " + " ".join(f"{x:>6}" for x in r.layers))
            for i in range(n):
                row = " ".join("     ." if j <= i else f"{r.matrix[i, j]:6.3f}" for j in range(n))
                lines.append(f"{r.layers[i]:>5} {row}")
        return "\n".join(lines) if lines else "no FFN runs"


def dependency_matrix(model: Any, data: Any, runs: Sequence[Any] | None = None, *,
                      max_tokens: int | None = 4096, batch_size: int = 8) -> DependencyReport:
    """Measure the dependency matrix of each FFN run of ``model`` on calibration ``data``.

    ``data`` is a LongTensor of token ids ``(batch, seq)`` or an iterable of them.
    ``runs`` defaults to every run of two or more FFNs (:func:`find_ffn_runs`).
    The model is run once per batch up to each run's shared input; then, inside
    the run (attention-free, so token-wise), FFN ``j``'s contribution is recomputed
    with each earlier FFN ``i`` removed.  At most ``max_tokens`` calibration tokens
    are used per run (None for all).
    """
    import torch

    from ._torch import capture_layer_inputs, iter_batches
    from .graph import find_ffn_runs

    if runs is None:
        runs = find_ffn_runs(model)
    runs = [tuple(getattr(r, "layers", r)) for r in runs]
    if not runs:
        return DependencyReport([])
    layers = model.model.layers
    firsts = sorted({r[0] for r in runs})
    sums = {r: np.zeros((len(r), len(r))) for r in runs}
    counts = {r: 0 for r in runs}
    for ids, mask in iter_batches(data, batch_size):
        if max_tokens is not None and all(counts[r] >= max_tokens for r in runs):
            break
        hs = capture_layer_inputs(model, ids, firsts, mask)  # layer -> FFN input (after its attention)
        for r in runs:
            x = hs[r[0]]
            x = x[mask.bool()] if mask is not None else x.reshape(-1, x.shape[-1])
            if max_tokens is not None:
                x = x[: max(0, max_tokens - counts[r])]
            if x.shape[0] == 0:
                continue
            with torch.no_grad():
                x = x.float()
                ffns = [layers[i] for i in r]
                base_in, base_out = [], []
                h = x
                for f in ffns:
                    base_in.append(h)
                    d = f.ffn_delta(h.to(_dtype(f))).float()
                    base_out.append(d)
                    h = h + d
                n = len(r)
                for i in range(n - 1):
                    h = base_in[i]  # skip FFN i
                    for j in range(i + 1, n):
                        d = ffns[j].ffn_delta(h.to(_dtype(ffns[j]))).float()
                        cos = torch.nn.functional.cosine_similarity(d, base_out[j], dim=-1, eps=1e-12)
                        sums[r][i, j] += float((1.0 - cos).sum())
                        h = h + d
            counts[r] += x.shape[0]
    out = []
    for r in runs:
        if counts[r] == 0:
            raise ConfigError("calibration data holds no tokens; pass token ids of shape (batch, seq)")
        out.append(RunDependency(r, sums[r] / counts[r], counts[r]))
    return DependencyReport(out)


def _dtype(layer: Any) -> Any:
    for p in layer.parameters():
        return p.dtype
    return None
