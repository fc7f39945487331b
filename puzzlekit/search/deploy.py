"""Throughput at the batch that fits: the serving batch as part of the search.

On one GPU the batch a model serves is set by its memory: the weights leave
room for the KV cache of so many sequences, and a child with less KV cache per
token runs a far larger batch than its parent.  A throughput target at a fixed
batch misses this (Llama-3.3-70B does not even fit batch 256 on one H100).

**The deployment** (:class:`Deployment`): hardware, dtype, ``prefill + decode``
tokens per sequence, tensor-parallel degree, a set of batch sizes
(:data:`DEFAULT_BATCHES`: powers of two and their midpoints up to 1,024), the
memory per GPU (default 95 % of the device's) and optionally a KV-cache
capacity the model must hold (``min_kv_tokens``, e.g. LN-Super's ~300K).

**The model.**  For an architecture ``x`` and a batch ``b``:

* ``memory_b(x) = Σ weights/tp + Σ kv_bytes_per_token · max((b + q)·S, min_kv_tokens) + non-block weights``
  with ``S = prefill + decode`` (``q`` and a prefill-query buffer from the memory
  convention; plain by default: the KV cache of exactly ``b`` sequences of ``S`` tokens);
* ``runtime_b(x) = Σ runtime_ms(block, b) + runtime_ms(non-block, b)``: the scenario
  time of :mod:`puzzlekit.profilers.analytic` (prefill passes + every decode
  step, embeddings and LM head included), or the library's measured
  ``runtime_ms`` where it has this batch's scenario;
* ``tokens_per_s_b(x) = 1000 · b · S / runtime_b(x)`` (the profilers' definition;
  generated tokens are ``decode / S`` of it, so every ratio is the same either way);
* **throughput at the batch that fits**: ``T(x) = max { tokens_per_s_b(x) : b in batches,
  memory_b(x) <= limit }``.  When every block's runtime per sequence is
  non-increasing in ``b`` (checked: ``info["monotone"]``) this is the throughput
  at the *largest* batch that fits.

The search over architectures and batches is :mod:`puzzlekit.search.at_fit`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["DEFAULT_BATCHES", "Deployment", "ArchitectureFit", "FitCosts", "parse_fit_spec", "throughput_at_fit",
           "resolve_parent"]

#: Powers of two and their midpoints, 1 … 1,024.
DEFAULT_BATCHES: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                                    1024)
MIB = float(2**20)
GIB = float(2**30)
_RT, _MEM = "runtime_ms", "memory_mib"


@dataclass(frozen=True)
class Deployment:
    """Where and how the model is served; the batch is chosen by memory (see the module docstring).

    ``hardware``: a catalogue name, a hardware-profile JSON path or a
    :class:`~puzzlekit.profilers.Hardware`.  ``memory_gib``: memory per GPU the
    model may use (default ``memory_fraction`` × the device's).  ``min_kv_tokens``:
    the KV cache the model must hold at any batch.  ``memory``: a
    :class:`~puzzlekit.profilers.MemoryConvention` (default: plain).  ``measured``:
    use the library's measured ``runtime_ms`` where it has the batch's scenario.
    """

    hardware: Any = "h100-sxm"
    dtype: str = "fp8"
    prefill: int = 1000
    decode: int = 200
    tp: int = 1
    batches: tuple[int, ...] = DEFAULT_BATCHES
    memory_gib: float | None = None
    memory_fraction: float = 0.95
    min_kv_tokens: int = 0
    memory: Any = None
    measured: bool = True

    def __post_init__(self) -> None:
        from ..architecture import Scenario

        Scenario("x", self.dtype, 1, self.prefill, self.decode, self.tp)  # the same checks as a scenario
        bs = self.batches
        if isinstance(bs, (str, bytes)) or not isinstance(bs, Iterable):
            raise ConfigError(f"deployment: batches must be a list of positive integers, got {bs!r}")
        bs = tuple(bs)
        if not bs or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in bs):
            raise ConfigError(f"deployment: batches must be a non-empty list of positive integers, got {list(bs)}")
        object.__setattr__(self, "batches", tuple(sorted({int(b) for b in bs})))
        def num(v: Any) -> bool:
            return not isinstance(v, bool) and isinstance(v, (int, float, np.number)) and math.isfinite(v)

        if self.memory_gib is not None and not (num(self.memory_gib) and self.memory_gib > 0):
            raise ConfigError(f"deployment: memory_gib must be a positive number of GiB per GPU, got {self.memory_gib!r}")
        if not (num(self.memory_fraction) and 0 < self.memory_fraction <= 1):
            raise ConfigError(f"deployment: memory_fraction must be in (0, 1], got {self.memory_fraction!r}")
        k = self.min_kv_tokens
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ConfigError(f"deployment: min_kv_tokens must be an integer >= 0, got {k!r}")

    @property
    def sequence_length(self) -> int:
        return self.prefill + self.decode

    def resolve_hardware(self) -> Any:
        from puzzlekit.profilers import resolve_hardware

        return resolve_hardware(self.hardware)

    def limit_mib(self, hw: Any = None) -> float:
        """Memory per GPU the model may use, in MiB."""
        if self.memory_gib is not None:
            return float(self.memory_gib) * GIB / MIB
        hw = hw or self.resolve_hardware()
        return self.memory_fraction * float(hw.memory_bytes) / MIB

    def scenario(self, batch: int, hw_name: str | None = None) -> Any:
        from ..architecture import Scenario

        name = hw_name or (self.hardware if isinstance(self.hardware, str) else self.hardware.name)
        return Scenario(str(name), self.dtype, int(batch), self.prefill, self.decode, self.tp)

    def describe(self) -> str:
        hw = self.hardware if isinstance(self.hardware, str) else self.hardware.name
        tp = f", tp {self.tp}" if self.tp > 1 else ""
        kv = f", >= {self.min_kv_tokens:,} cached tokens" if self.min_kv_tokens else ""
        return f"{hw} {self.dtype}{tp}, {self.prefill}+{self.decode} tokens/sequence{kv}"


_SPEC_RE = re.compile(r"^\s*(?P<hw>[^:]+):(?P<dtype>[^:]+)(?::tp(?P<tp>\d+))?:(?P<p>\d+)\s*\+\s*(?P<d>\d+)\s*"
                      r"(?:>=\s*(?P<val>[0-9.eE+]+)\s*(?P<x>[x×])?)?\s*$")


def parse_fit_spec(text: str, **deployment: Any) -> tuple[Deployment, dict[str, float]]:
    """``'h100-sxm:fp8:1000+200>=3x'`` -> ``(Deployment, {"min_speedup": 3.0})``.

    Form: ``HARDWARE:DTYPE[:tpN]:PREFILL+DECODE[>=TARGET]``; ``TARGET`` is ``Nx``
    (N × the parent's throughput at the batch the parent fits) or a number of
    tokens/s; without a target, ``{}`` (maximise throughput under a quality bound).
    ``deployment`` keywords (batches, memory_gib, min_kv_tokens, ...) are passed on.
    """
    m = _SPEC_RE.match(str(text))
    if not m:
        raise ConfigError(
            f"throughput-at-fit {text!r}: expected HARDWARE:DTYPE[:tpN]:PREFILL+DECODE[>=TARGET], e.g. "
            "'h100-sxm:fp8:1000+200>=3x' (3x the parent's throughput at the batch it fits) or "
            "'h100-sxm:fp8:tp8:1024+256>=20000' (tokens/s)")
    try:
        dep = Deployment(hardware=m["hw"].strip(), dtype=m["dtype"].strip(), prefill=int(m["p"]), decode=int(m["d"]),
                         tp=int(m["tp"] or 1), **deployment)
    except ConfigError as e:
        raise ConfigError(f"throughput-at-fit {text!r}: {e}") from None
    target: dict[str, float] = {}
    if m["val"] is not None:
        try:
            v = float(m["val"])
        except ValueError:
            raise ConfigError(f"throughput-at-fit {text!r}: {m['val']!r} is not a number") from None
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"throughput-at-fit {text!r}: the target must be a positive number")
        target = {"min_speedup": v} if m["x"] else {"min_tokens_per_s": v}
    return dep, target


def resolve_parent(parent: Any, library: Any = None) -> Any:
    """A :class:`~puzzlekit.ParentSpec` from a spec, an architecture, a config path, a bundled name, or the library's."""
    from ..architecture import Architecture, ParentSpec

    if parent is None:
        if library is not None and getattr(library, "parent", None) is not None:
            return library.parent
        raise ConfigError("throughput at the batch that fits needs the parent's dimensions: the library records none; "
                          "pass parent= (a ParentSpec, a config.json or model folder, or 'super-49b' for "
                          "Llama-3.3-70B's; CLI: --parent CONFIG)")
    if isinstance(parent, ParentSpec):
        return parent
    if isinstance(parent, Architecture):
        return parent.parent
    if isinstance(parent, Mapping):
        return ParentSpec.from_hf_config(parent)
    if isinstance(parent, (str, os.PathLike)):
        from ..configs import BUILTIN_CONFIGS, builtin_config_path

        s = str(parent)
        path = builtin_config_path(s) if s in BUILTIN_CONFIGS else s
        if not os.path.exists(path):
            raise ConfigError(f"parent {s!r}: no such config.json or model folder (or one of {sorted(BUILTIN_CONFIGS)})")
        return ParentSpec.from_hf_config(path)
    raise ConfigError(f"parent must be a ParentSpec, an Architecture, a config path or a name, got {type(parent).__name__}")


@dataclass
class ArchitectureFit:
    """An architecture under a deployment: per batch its memory, runtime and throughput; where it serves best."""

    batch: int | None  # the batch of the best throughput among those that fit (None: fits none)
    tokens_per_s: float  # throughput at that batch (0 when nothing fits)
    runtime_ms: float | None
    memory_mib: float | None
    largest_batch: int | None  # the largest batch that fits
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.batch is not None

    def at(self, batch: int) -> dict[str, Any]:
        for r in self.rows:
            if r["batch"] == batch:
                return r
        raise ConfigError(f"batch {batch} is not one of the deployment's batches")


class FitCosts:
    """Per-batch runtime and memory of blocks under a deployment (cached per sub-block and batch)."""

    def __init__(self, spec: Any, deployment: Deployment, library: Any = None):
        from puzzlekit.profilers import PLAIN_MEMORY

        self.spec = spec
        self.dep = deployment
        self.hw = deployment.resolve_hardware()
        self.conv = deployment.memory or PLAIN_MEMORY
        self.library = library
        self.limit_mib = deployment.limit_mib(self.hw)
        self._sub: dict[tuple[Any, int], float] = {}
        self._mem: dict[tuple[Any, int], float] = {}
        self._nb: dict[int, tuple[float, float]] = {}
        self._cols: dict[tuple[int, tuple[Any, ...]], tuple[np.ndarray, np.ndarray]] = {}
        #: batch -> how its runtimes were obtained ("analytic", "measured" or both)
        self.sources: dict[int, set[str]] = {}

    def scenario(self, batch: int) -> Any:
        return self.dep.scenario(batch, self.hw.name)

    def _measured(self, block: Any, batch: int) -> float | None:
        lib = self.library
        if lib is None or not self.dep.measured:
            return None
        name = self.scenario(batch).name
        if name not in getattr(lib, "scenarios", {}):
            return None
        v = lib.costs.get(name, {}).get(block.key, {}).get(_RT)
        return None if v is None else float(v)

    def _sub_runtime(self, sub: Any, batch: int) -> float:
        key = (sub, batch)
        v = self._sub.get(key)
        if v is None:
            from puzzlekit.blocks import AttentionConfig
            from puzzlekit.profilers.analytic import attention_work, ffn_work, roofline_latency

            sc = self.scenario(batch)
            if isinstance(sub, AttentionConfig):
                wk = attention_work(self.spec, sub, sc, max_batched_tokens=self.hw.max_batched_tokens,
                                    concat_cache=self.hw.eager)
            else:
                wk = ffn_work(self.spec, sub, sc, max_batched_tokens=self.hw.max_batched_tokens)
            v = self._sub[key] = roofline_latency(wk, self.hw).runtime_ms
        return v

    def _sub_memory(self, sub: Any, batch: int) -> float:
        key = (sub, batch)
        v = self._mem.get(key)
        if v is None:
            from puzzlekit.profilers.analytic import subblock_memory_bytes

            m = subblock_memory_bytes(self.spec, sub, self.scenario(batch), self.conv)
            kv = m["kv_cache"]
            tokens = (batch + self.conv.prefill_queue) * self.dep.sequence_length
            if kv and self.dep.min_kv_tokens > tokens:
                kv *= self.dep.min_kv_tokens / tokens
            v = self._mem[key] = (m["weights"] + m["other"] + kv) / MIB
        return v

    def block(self, block: Any, batch: int) -> tuple[float, float]:
        """``(runtime_ms, memory_mib)`` of one block at ``batch``."""
        rt = self._measured(block, batch)
        self.sources.setdefault(batch, set()).add("analytic" if rt is None else "measured")
        if rt is None:
            rt = self._sub_runtime(block.attention, batch) + self._sub_runtime(block.ffn, batch)
        return rt, self._sub_memory(block.attention, batch) + self._sub_memory(block.ffn, batch)

    def non_block(self, batch: int) -> tuple[float, float]:
        """``(runtime_ms, memory_mib)`` of the embeddings, final norm and LM head at ``batch``."""
        v = self._nb.get(batch)
        if v is None:
            from puzzlekit.profilers import non_block_costs

            nb = non_block_costs(self.spec, self.scenario(batch), self.hw)
            rt = nb["runtime_ms"]
            meas = None
            if self.library is not None and self.dep.measured:
                meas = self.library.meta.get("non_block_costs", {}).get(self.scenario(batch).name, {}).get(_RT)
            if meas is not None and self.scenario(batch).name in self.library.scenarios:
                rt = float(meas)
            v = self._nb[batch] = (rt, nb["memory_mib"])
        return v

    def columns(self, blocks: Sequence[Any], batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Runtime and memory of each of ``blocks`` at ``batch`` (arrays, cached per batch and block list)."""
        key = (batch, tuple(blocks))
        v = self._cols.get(key)
        if v is None:
            rows = [self.block(b, batch) for b in blocks]
            v = self._cols[key] = (np.array([r[0] for r in rows], dtype=float),
                                   np.array([r[1] for r in rows], dtype=float))
        return v

    def monotone(self, blocks: Sequence[Any], batches: Sequence[int]) -> bool:
        """Whether every block's (and the non-block part's) runtime per sequence is non-increasing in the batch:
        then the best batch that fits is the largest that fits, for every architecture."""
        bs = sorted(batches)
        for b in [*blocks, None]:
            per = [(self.non_block(x)[0] if b is None else self.block(b, x)[0]) / x for x in bs]
            if any(q > p * (1 + 1e-9) + 1e-12 for p, q in zip(per, per[1:])):
                return False
        return True

    def evaluate(self, blocks: Sequence[Any], batches: Sequence[int] | None = None) -> ArchitectureFit:
        """Memory, runtime and throughput of an architecture (its blocks) at every batch; where it serves best."""
        S = self.dep.sequence_length
        uniq: dict[Any, int] = {}
        for b in blocks:
            uniq[b] = uniq.get(b, 0) + 1
        rows = []
        for bt in (batches or self.dep.batches):
            rt, mem = self.non_block(bt)
            for b, k in uniq.items():
                r, m = self.block(b, bt)
                rt += k * r
                mem += k * m
            fits = mem <= self.limit_mib * (1 + 1e-9)
            rows.append({"batch": bt, "fits": bool(fits), "runtime_ms": rt, "memory_mib": mem,
                         "tokens_per_s": 1000.0 * bt * S / rt})
        ok = [r for r in rows if r["fits"]]
        if not ok:
            return ArchitectureFit(None, 0.0, None, None, None, rows)
        best = max(ok, key=lambda r: (r["tokens_per_s"], r["batch"]))
        return ArchitectureFit(best["batch"], best["tokens_per_s"], best["runtime_ms"], best["memory_mib"],
                               max(r["batch"] for r in ok), rows)


def throughput_at_fit(arch: Any, deployment: Deployment | None = None, *, library: Any = None,
                      **kw: Any) -> ArchitectureFit:
    """Where ``arch`` (an :class:`~puzzlekit.Architecture`) serves best under a deployment, and its throughput there.

    ``kw`` builds the :class:`Deployment` when none is given (``hardware=``, ``dtype=``, ...).
    """
    dep = deployment or Deployment(**kw)
    return FitCosts(arch.parent, dep, library).evaluate(arch.blocks)
