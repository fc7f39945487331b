"""The residual-stream graph of a model's sub-blocks and its runs of attention-free FFNs.

A decoder layer is two sub-blocks on the residual stream, attention then FFN
(``h = x + attn(x); y = h + ffn(h)``).  :func:`residual_graph` lays them out as a
directed path ``embed → attn0 → ffn0 → attn1 → … → head`` (networkx), each node
carrying its kind (``gqa`` / ``linear`` / ``no_op`` / ``swiglu``), its layer and
its intermediate size.  :func:`find_ffn_runs` walks that path and returns every
maximal run of FFNs with no attention (GQA or linear) between them: the FFNs
that FFN Fusion can evaluate in parallel.  No-op sub-blocks are skipped over;
the runs agree with :meth:`puzzlekit.Architecture.ffn_runs` (a test checks it).

Pure Python + networkx: works on a bare ``config.json`` as well as on a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from ..architecture import Architecture
from ..errors import ConfigError

__all__ = ["FFNRun", "residual_graph", "find_ffn_runs", "architecture_of"]


@dataclass(frozen=True)
class FFNRun:
    """A maximal run of FFNs with no attention between them.

    ``layers`` are the layers holding an active FFN (no-op FFNs skipped), in
    order; ``sizes`` their intermediate sizes (``None`` for a linear FFN);
    ``kinds`` their FFN kinds.  The first FFN may follow a live attention in
    its own layer: that attention's output is the run's shared input.
    """

    layers: tuple[int, ...]
    sizes: tuple[int | None, ...]
    kinds: tuple[str, ...]

    @property
    def first(self) -> int:
        return self.layers[0]

    @property
    def last(self) -> int:
        return self.layers[-1]

    @property
    def span(self) -> tuple[int, int]:
        """``(first_layer, last_layer)``, as :meth:`Architecture.ffn_runs` returns it."""
        return (self.layers[0], self.layers[-1])

    def __len__(self) -> int:
        return len(self.layers)

    def fusable_segments(self) -> list[tuple[int, ...]]:
        """Maximal stretches of SwiGLU FFNs inside the run (a linear FFN cannot be fused)."""
        segs: list[tuple[int, ...]] = []
        cur: list[int] = []
        for layer, kind in zip(self.layers, self.kinds):
            if kind == "swiglu":
                cur.append(layer)
            else:
                if cur:
                    segs.append(tuple(cur))
                cur = []
        if cur:
            segs.append(tuple(cur))
        return segs

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "layers": list(self.layers),
                "intermediate_sizes": list(self.sizes), "kinds": list(self.kinds)}


def architecture_of(obj: Any) -> Architecture:
    """The :class:`Architecture` of an Architecture, a ``PuzzleForCausalLM`` or its config."""
    if isinstance(obj, Architecture):
        return obj
    cfg = getattr(obj, "config", obj)
    arch = getattr(cfg, "architecture", None)
    if isinstance(arch, Architecture):
        return arch
    raise ConfigError(
        f"expected an Architecture, a PuzzleForCausalLM or a PuzzleConfig, got {type(obj).__name__}; "
        "load a model with puzzlekit.model.load_parent / assemble, or a config with Architecture.from_config"
    )


def residual_graph(source: Any) -> nx.DiGraph:
    """The model's sub-blocks as a directed path along the residual stream.

    Nodes are ``"embed"``, ``("attn", i)``, ``("ffn", i)`` for every layer ``i``
    (no-op sub-blocks included, with ``kind="no_op"``) and ``"head"``; node
    attributes: ``role`` (``attn`` / ``ffn`` / ``embed`` / ``head``), ``kind``,
    ``layer``, ``num_kv_heads`` / ``intermediate_size``.  Edge ``u → v`` means
    ``v`` reads the residual stream ``u`` wrote.
    """
    arch = architecture_of(source)
    g = nx.DiGraph(num_layers=arch.num_layers, hidden_size=arch.parent.hidden_size)
    g.add_node("embed", role="embed", kind="embed", layer=-1)
    prev: Any = "embed"
    for i, b in enumerate(arch.blocks):
        a = ("attn", i)
        f = ("ffn", i)
        g.add_node(a, role="attn", kind=b.attention.kind, layer=i, num_kv_heads=b.attention.num_kv_heads)
        g.add_node(f, role="ffn", kind=b.ffn.kind, layer=i, intermediate_size=b.ffn.intermediate_size)
        g.add_edge(prev, a)
        g.add_edge(a, f)
        prev = f
    g.add_node("head", role="head", kind="head", layer=arch.num_layers)
    g.add_edge(prev, "head")
    return g


def _residual_order(g: nx.DiGraph) -> Sequence[Any]:
    if "embed" not in g or "head" not in g:
        raise ConfigError("residual graph must have 'embed' and 'head' nodes; build it with residual_graph()")
    order = list(nx.topological_sort(g))
    if not nx.is_directed_acyclic_graph(g) or any(g.out_degree(n) > 1 for n in g):
        raise ConfigError("residual graph must be a single path; build it with residual_graph()")
    return order


def find_ffn_runs(source: Any, min_length: int = 2) -> list[FFNRun]:
    """Every maximal run of at least ``min_length`` FFNs with no attention between them.

    ``source`` is a residual graph, an :class:`Architecture`, or a model.  A GQA
    or linear attention ends a run; no-op attention and no-op FFNs do not.
    """
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
        raise ConfigError(f"min_length must be a positive integer, got {min_length!r}")
    g = source if isinstance(source, nx.DiGraph) else residual_graph(source)
    runs: list[FFNRun] = []
    cur: list[tuple[int, int | None, str]] = []

    def close() -> None:
        if len(cur) >= min_length:
            runs.append(FFNRun(tuple(c[0] for c in cur), tuple(c[1] for c in cur), tuple(c[2] for c in cur)))
        cur.clear()

    for node in _residual_order(g):
        d = g.nodes[node]
        if d["role"] == "attn" and d["kind"] != "no_op":
            close()
        elif d["role"] == "ffn" and d["kind"] != "no_op":
            cur.append((d["layer"], d.get("intermediate_size"), d["kind"]))
    close()
    return runs
