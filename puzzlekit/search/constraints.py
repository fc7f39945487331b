"""Human constraints, translated into linear budgets in one place.

A deployment target is said in human terms ("fits one 80 GB GPU with 300K
cached FP8 tokens", "at least 5,000 tokens/s at batch 256", "first token in
under 200 ms", "keep attention in the first 4 layers"); each class here turns
one of them into what the MIP understands: a cost column per candidate, a
non-block constant, and a ``(lower, upper)`` budget, or a mask of allowed
candidates.  :func:`translate` applies a list of them to a library.

Formulas (see ``puzzlekit.accounting`` for the counts):

* memory (MiB): ``block_params · bytes(dtype) + kv_bytes_per_token(block) · tokens``
  per candidate, ``non_block_params · bytes(dtype)`` constant, where ``tokens``
  is ``kv_tokens`` or ``batch · seq``;
* throughput: ``batch · (prefill + decode)`` tokens per ``Σ runtime_ms / 1000``
  seconds, so ``tokens/s >= T`` is ``Σ runtime_ms <= 1000 · batch · seq / T``;
* latency / TTFT: ``Σ cost_ms <= limit`` on the named per-block time cost;
* parameters: ``Σ block_params + non_block_params <= limit``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, did_you_mean

__all__ = [
    "parse_bound",
    "parse_budget",
    "MemoryLimit",
    "ThroughputTarget",
    "LatencyLimit",
    "TTFTLimit",
    "ParamsLimit",
    "KeepAttention",
    "Forbid",
    "Translated",
    "translate",
]

MIB = 2**20
GIB = 2**30


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"{what}: expected a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected a number, got {v!r}") from None
    if math.isnan(f):
        raise ConfigError(f"{what}: NaN is not a bound")
    return f


def parse_bound(b: Any, name: str = "budget") -> tuple[float, float]:
    """A budget as ``(lower, upper)``: a number (upper bound), a pair, or ``"<=80000"`` / ``">=5"``."""
    if b is None:
        return -math.inf, math.inf
    if isinstance(b, str):
        s = b.strip().replace(" ", "")
        for op, lo_hi in (("<=", 1), (">=", 0), ("<", 1), (">", 0)):
            if s.startswith(op):
                v = _num(s[len(op):], f"budget {name!r}")
                return (-math.inf, v) if lo_hi else (v, math.inf)
        return -math.inf, _num(s, f"budget {name!r}")
    if isinstance(b, (tuple, list)):
        if len(b) != 2:
            raise ConfigError(f"budget {name!r}: expected (lower, upper), got {b!r}")
        lo = -math.inf if b[0] is None else _num(b[0], f"budget {name!r} lower")
        hi = math.inf if b[1] is None else _num(b[1], f"budget {name!r} upper")
        if lo > hi:
            raise ConfigError(f"budget {name!r}: lower {lo} > upper {hi}")
        return lo, hi
    return -math.inf, _num(b, f"budget {name!r}")


_BUDGET_RE = re.compile(r"^\s*(?:([-+0-9.eE]+)\s*<=\s*)?([A-Za-z_][\w.@/-]*)\s*(<=|>=|=)\s*([-+0-9.eE]+)\s*$")


def parse_budget(text: str) -> tuple[str, tuple[float, float]]:
    """``"memory_mib<=80000"``, ``"num_params>=1e9"``, ``"30000<=memory_mib<=80000"`` -> ``(name, (lo, hi))``."""
    m = _BUDGET_RE.match(text)
    if not m:
        raise ConfigError(
            f"budget {text!r}: expected NAME<=VALUE, NAME>=VALUE or LOW<=NAME<=HIGH (e.g. 'memory_mib<=80000')"
        )
    low, name, op, val = m.groups()
    v = _num(val, f"budget {text!r}")
    if op == "<=":
        lo = _num(low, f"budget {text!r}") if low else -math.inf
        return name, parse_bound((lo, v), name)
    if low:
        raise ConfigError(f"budget {text!r}: a lower bound in front needs '<=' after the name")
    if op == ">=":
        return name, (v, math.inf)
    return name, (v, v)


@dataclass
class Translated:
    """Constraints in MIP form: budgets, extra cost columns, non-block constants, allowed candidates."""

    budgets: dict[str, tuple[float, float]]
    extra_costs: dict[str, np.ndarray]
    constants: dict[str, float]
    allowed: np.ndarray | None
    notes: list[str]


def _parent(library: Any, what: str) -> Any:
    if library.parent is None:
        raise ConfigError(
            f"{what} needs the parent's dimensions; import the library with --parent CONFIG "
            "(or set library.parent = ParentSpec.from_hf_config(...))"
        )
    return library.parent


def _dtype(library: Any, scenario: Any, dtype: str | None) -> str:
    if dtype is not None:
        return dtype
    try:
        sc = library.resolve_scenario(scenario)
        return library.scenarios[sc].dtype
    except Exception:
        return "bf16"


def _budget(lo: float | None, hi: float | None) -> tuple[float, float]:
    return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))


@dataclass(frozen=True)
class MemoryLimit:
    """Weights plus KV cache must fit: ``max_gib`` or ``max_mib`` (one of them).

    KV cache for ``kv_tokens`` cached tokens, or ``batch × seq``; ``dtype``
    for the weights and ``kv_dtype`` for the cache default to the scenario's.
    Without the parent's dimensions and without a KV-cache request, the
    library's own ``memory_mib`` cost is used as it is.
    """

    max_gib: float | None = None
    max_mib: float | None = None
    kv_tokens: int | None = None
    batch: int | None = None
    seq: int | None = None
    dtype: str | None = None
    kv_dtype: str | None = None
    name: str = "memory_mib"

    def limit_mib(self) -> float:
        if (self.max_gib is None) == (self.max_mib is None):
            raise ConfigError("MemoryLimit: give exactly one of max_gib or max_mib")
        return float(self.max_mib) if self.max_mib is not None else float(self.max_gib) * GIB / MIB

    def tokens(self) -> int:
        if self.kv_tokens is not None and (self.batch is not None or self.seq is not None):
            raise ConfigError("MemoryLimit: give kv_tokens or batch and seq, not both")
        if self.kv_tokens is not None:
            return int(self.kv_tokens)
        if (self.batch is None) != (self.seq is None):
            raise ConfigError("MemoryLimit: batch and seq go together (KV cache for batch × seq tokens)")
        return int(self.batch or 0) * int(self.seq or 0)

    def apply(self, library: Any, scenario: Any, out: Translated) -> None:
        from ..accounting import block_kv_bytes_per_token, block_params, dtype_bytes, non_block_params

        limit = self.limit_mib()
        tokens = self.tokens()
        if library.parent is None and tokens == 0 and self.dtype is None:
            out.budgets[self.name] = (-math.inf, limit)
            out.notes.append(f"{self.name} <= {limit:g} MiB (the library's own memory cost)")
            return
        spec = _parent(library, "MemoryLimit")
        wb = dtype_bytes(_dtype(library, scenario, self.dtype))
        kv_dt = _dtype(library, scenario, self.kv_dtype or self.dtype)
        kb = dtype_bytes(kv_dt)
        col = np.array([
            (block_params(spec, c.block) * wb + block_kv_bytes_per_token(spec, c.block.attention, kv_dt) * tokens) / MIB
            for c in library.candidates
        ])
        out.extra_costs[self.name] = col
        out.constants[self.name] = non_block_params(spec) * wb / MIB
        out.budgets[self.name] = (-math.inf, limit)
        out.notes.append(f"{self.name}: weights at {wb:g} B + KV cache of {tokens} tokens at {kb:g} B <= {limit:g} MiB")


def _time_cost(library: Any, scenario: Any, cost: str, what: str) -> None:
    names = library.cost_names_for(scenario)
    if cost not in names:
        raise ConfigError(f"{what} needs the per-block cost {cost!r} in the library; {did_you_mean(cost, names)}; "
                          "profile the library (puzzlekit profile) or name the cost")


@dataclass(frozen=True)
class ThroughputTarget:
    """At least ``min_tokens_per_s`` tokens/s, from the per-block ``cost`` (ms) of the scenario.

    ``batch``, ``prefill`` and ``decode`` default to the scenario's (the one
    the runtimes were measured under); the tokens per step are ``batch · (prefill + decode)``.
    """

    min_tokens_per_s: float
    batch: int | None = None
    prefill: int | None = None
    decode: int | None = None
    cost: str = "runtime_ms"

    def apply(self, library: Any, scenario: Any, out: Translated) -> None:
        if not self.min_tokens_per_s > 0:
            raise ConfigError(f"ThroughputTarget: min_tokens_per_s must be > 0, got {self.min_tokens_per_s}")
        sc = library.scenarios[library.resolve_scenario(scenario)]
        b = self.batch or sc.batch
        seq = (self.prefill if self.prefill is not None else sc.prefill) + \
              (self.decode if self.decode is not None else sc.decode)
        if (b, seq) != (sc.batch, sc.sequence_length):
            raise ConfigError(
                f"ThroughputTarget at batch {b}, {seq} tokens per sequence: the library's runtimes were measured under "
                f"{sc.name}; profile that scenario and pass it as scenario="
            )
        _time_cost(library, scenario, self.cost, "ThroughputTarget")
        limit = 1000.0 * b * seq / self.min_tokens_per_s
        lo, hi = out.budgets.get(self.cost, (-math.inf, math.inf))
        out.budgets[self.cost] = (lo, min(hi, limit))
        out.notes.append(f"{self.cost} <= {limit:g} ({self.min_tokens_per_s:g} tokens/s at batch {b}, {seq} tokens)")


@dataclass(frozen=True)
class LatencyLimit:
    """Sum of the per-block time ``cost`` (ms) at most ``max_ms``."""

    max_ms: float
    cost: str = "runtime_ms"

    def apply(self, library: Any, scenario: Any, out: Translated) -> None:
        _time_cost(library, scenario, self.cost, type(self).__name__)
        lo, hi = out.budgets.get(self.cost, (-math.inf, math.inf))
        out.budgets[self.cost] = (lo, min(hi, float(self.max_ms)))
        out.notes.append(f"{self.cost} <= {self.max_ms:g} ms")


@dataclass(frozen=True)
class TTFTLimit(LatencyLimit):
    """Time to first token: the sum of the per-block prefill time at most ``max_ms``."""

    cost: str = "prefill_ms"


@dataclass(frozen=True)
class ParamsLimit:
    """Total parameters (non-block ones included) between ``min_params`` and ``max_params``."""

    max_params: float | None = None
    min_params: float | None = None
    name: str = "num_params"

    def apply(self, library: Any, scenario: Any, out: Translated) -> None:
        from ..accounting import block_params, non_block_params

        if library.parent is None:
            if self.name not in library.cost_names_for(scenario):
                _parent(library, "ParamsLimit")
            out.budgets[self.name] = _budget(self.min_params, self.max_params)
            out.notes.append(f"{self.name} from the library's own cost (no parent dimensions: blocks only)")
            return
        spec = library.parent
        out.extra_costs[self.name] = np.array([float(block_params(spec, c.block)) for c in library.candidates])
        out.constants[self.name] = float(non_block_params(spec))
        out.budgets[self.name] = _budget(self.min_params, self.max_params)


@dataclass(frozen=True)
class KeepAttention:
    """Keep GQA attention in the first ``first`` and the last ``last`` layers (or in ``layers``)."""

    first: int = 0
    last: int = 0
    layers: Sequence[int] = ()

    def mask(self, library: Any) -> np.ndarray:
        L = library.num_layers
        keep = set(range(min(self.first, L))) | set(range(max(0, L - self.last), L)) | set(self.layers)
        return np.array([not (c.block.attention.kind != "gqa" and keep.intersection(c.layers))
                         for c in library.candidates])


@dataclass(frozen=True)
class Forbid:
    """Forbid a block kind: ``attention`` / ``ffn`` kind (``"no_op"``, ``"linear"``), or a block ``key``.

    ``layers`` restricts the rule to candidates touching those layers (all by default).
    """

    attention: str | None = None
    ffn: str | None = None
    key: str | None = None
    layers: Sequence[int] | None = None

    def mask(self, library: Any) -> np.ndarray:
        if self.attention is None and self.ffn is None and self.key is None:
            raise ConfigError("Forbid: name an attention kind, an ffn kind or a block key")
        rows = []
        for c in library.candidates:
            hit = ((self.attention is None or c.block.attention.kind == self.attention)
                   and (self.ffn is None or c.block.ffn.kind == self.ffn)
                   and (self.key is None or c.block.key == self.key))
            if self.layers is not None and not set(self.layers).intersection(c.layers):
                hit = False
            rows.append(not hit)
        return np.array(rows)


def translate(library: Any, constraints: Iterable[Any], scenario: Any = None) -> Translated:
    """Apply human constraints to ``library``: the one place they become budgets and masks."""
    out = Translated({}, {}, {}, None, [])
    allowed = np.ones(len(library.candidates), dtype=bool)
    for c in constraints:
        if hasattr(c, "mask"):
            allowed &= c.mask(library)
        if hasattr(c, "apply"):  # a constraint may do both (e.g. puzzlekit.engines.EngineConstraint)
            c.apply(library, scenario, out)
        if not hasattr(c, "mask") and not hasattr(c, "apply"):
            raise ConfigError(f"unknown constraint {c!r}; use MemoryLimit, ThroughputTarget, LatencyLimit, "
                              "TTFTLimit, ParamsLimit, KeepAttention or Forbid")
    if not allowed.all():
        out.allowed = allowed
    return out
