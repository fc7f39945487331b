"""Write costs into a :class:`~puzzlekit.BlockLibrary` under a scenario.

``profile_library(lib, scenario)`` adds, for every distinct block of the
library, the costs of :func:`~puzzlekit.profilers.analytic.block_costs`
(``runtime_ms``, ``memory_mib``, ``num_params`` and their attention / FFN parts,
prefill / decode split, KV bytes per token, FLOPs, bytes moved) under
``scenario.name``, and records the non-block costs (embeddings, LM head) in
``lib.meta["non_block_costs"][scenario.name]``, which the search adds to every
architecture's totals (budgets and reported costs are whole-model figures).

``profile_library(lib, scenario, profiler="measured")`` times the real
sub-blocks with torch instead (:mod:`.measured`: the repeated-block method on
this machine's CPU or GPU) and the non-block part as a model of no-op layers of
the library's depth; parameter and memory counts are exact, as in the analytic
model.  Neither writes anything to disk: save the library (``lib.save``).

Given a search space instead of a library, it builds the library first: one
candidate per layer per block, no metrics yet (BLD and scoring add them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from puzzlekit.architecture import Architecture, ParentSpec, Scenario
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
from puzzlekit.errors import ConfigError, LibraryError
from puzzlekit.io import read_json
from puzzlekit.library import BlockLibrary

from .analytic import PLAIN_MEMORY, MemoryConvention, block_costs, non_block_costs
from .hardware import Hardware, resolve_hardware

__all__ = ["profile_library", "default_space", "parse_space", "library_from_space", "FFN_FRACTIONS"]

#: Puzzle's FFN widths as fractions of the parent's intermediate size (Puzzle, arXiv 2411.19146, search space:
#: 100, 87.5, 75, 50, 25, 20 and 10 %; NVIDIA's released Llama-3.3-70B block library has 100, 75, 62.5, 50, 25,
#: 19.6 and 9.8 %, i.e. widths 28672 ... 2816).
FFN_FRACTIONS = (1.0, 0.875, 0.75, 0.5, 0.25, 0.2, 0.1)


def _ffn_width(frac: float, parent: int) -> int:
    """A pruned FFN width: the parent's own at 100 %, else rounded to a multiple of 256 (8 for parents
    narrower than 4096) and never above the parent's."""
    if frac >= 1.0:
        return parent
    m = 256 if parent >= 4096 else 8
    return min(parent, max(m, int(round(frac * parent / m)) * m))


def default_space(spec: ParentSpec) -> list[BlockConfig]:
    """Puzzle's decoupled space: attention {parent KV heads, /2, /4, /8, linear, no-op} × FFN {100 … 10 %, linear, no-op}."""
    kvs = []
    k = spec.num_key_value_heads
    while k >= 1 and len(kvs) < 4:
        if spec.num_attention_heads % k == 0:
            kvs.append(k)
        if k % 2:
            break
        k //= 2
    atts = [AttentionConfig.gqa(k) for k in kvs] + [AttentionConfig.make_linear(), AttentionConfig.make_no_op()]
    sizes = sorted({_ffn_width(f, spec.intermediate_size) for f in FFN_FRACTIONS}, reverse=True)
    ffns = [FFNConfig.swiglu(i) for i in sizes] + [FFNConfig.make_linear(), FFNConfig.make_no_op()]
    return [BlockConfig(a, f) for a in atts for f in ffns]


def _parse_sub(kind: str, item: Any, spec: ParentSpec, where: str) -> AttentionConfig | FFNConfig:
    if isinstance(item, Mapping):
        return AttentionConfig.from_dict(item) if kind == "attention" else FFNConfig.from_dict(item)
    s = str(item).strip().lower()
    if s in ("linear", "no_op", "noop", "no-op"):
        lin = s == "linear"
        cls = AttentionConfig if kind == "attention" else FFNConfig
        return cls.make_linear() if lin else cls.make_no_op()
    try:
        if kind == "attention":
            return AttentionConfig.gqa(int(s.removeprefix("gqa:")))
        if s.endswith("%"):
            return FFNConfig.swiglu(_ffn_width(float(s[:-1]) / 100, spec.intermediate_size))
        return FFNConfig.swiglu(int(s.removeprefix("ffn:")))
    except ValueError:
        raise ConfigError(
            f"{where}: {kind} entry {item!r} is not understood; use e.g. "
            + ("'gqa:4', 'linear', 'no_op'" if kind == "attention" else "'ffn:14336', '50%', 'linear', 'no_op'")
        ) from None


def parse_space(space: Any, spec: ParentSpec, where: str = "space") -> list[BlockConfig]:
    """Blocks from a space description.

    Accepted: a list of :class:`BlockConfig` or block keys (``"attn=gqa:4|ffn=ffn:14336"``);
    a mapping ``{"attention": [...], "ffn": [...]}`` (the product; entries such as
    ``"gqa:4"``, ``"ffn:14336"``, ``"50%"``, ``"linear"``, ``"no_op"``); a path to a
    JSON file holding either; ``None`` or ``"default"`` for :func:`default_space`.
    """
    if space is None or space == "default":
        return default_space(spec)
    if isinstance(space, (str, os.PathLike)):
        path = Path(space)
        if not path.exists():
            raise ConfigError(f"{space}: no such space file; give a JSON file with "
                              "{\"attention\": [...], \"ffn\": [...]} or a list of block keys, or 'default'")
        return parse_space(read_json(path, what="search space"), spec, str(path))
    if isinstance(space, Mapping):
        if set(space) - {"attention", "ffn"} or not space:
            raise ConfigError(f"{where}: a space object has exactly the keys 'attention' and 'ffn', got {sorted(space)}")
        atts = [_parse_sub("attention", x, spec, where) for x in space.get("attention", [])]
        ffns = [_parse_sub("ffn", x, spec, where) for x in space.get("ffn", [])]
        if not atts or not ffns:
            raise ConfigError(f"{where}: both 'attention' and 'ffn' need at least one entry")
        blocks = [BlockConfig(a, f) for a in atts for f in ffns]
    elif isinstance(space, Iterable):
        blocks = [b if isinstance(b, BlockConfig) else BlockConfig.from_key(str(b)) for b in space]
    else:
        raise ConfigError(f"{where}: expected a list of blocks or an object with 'attention' and 'ffn'")
    for b in blocks:
        kv = b.attention.num_kv_heads
        if kv is not None and (kv > spec.num_attention_heads or spec.num_attention_heads % kv):
            raise ConfigError(f"{where}: {b.key}: num_kv_heads={kv} must divide num_attention_heads="
                              f"{spec.num_attention_heads}; allowed: {spec.kv_head_options}")
    return list(dict.fromkeys(blocks))


def library_from_space(spec: ParentSpec, blocks: Iterable[BlockConfig], num_layers: int | None = None) -> BlockLibrary:
    """A library with every block as a candidate for every layer (no metrics yet)."""
    n = num_layers or spec.num_hidden_layers
    lib = BlockLibrary(n, spec, meta={"created_by": "puzzlekit profile"})
    blocks = list(blocks)
    for layer in range(n):
        for b in blocks:
            lib.add(layer, b)
    return lib


def profile_library(
    library_or_space: BlockLibrary | Architecture | ParentSpec | Iterable[BlockConfig] | Mapping[str, Any] | str | None,
    scenario: Scenario,
    hardware: Hardware | str | None = None,
    *,
    parent: ParentSpec | None = None,
    memory: MemoryConvention = PLAIN_MEMORY,
    default: bool | None = None,
    profiler: str = "analytic",
    measure_options: Mapping[str, Any] | None = None,
) -> BlockLibrary:
    """Write the costs of every block into a library under ``scenario`` (returns the library).

    ``profiler="analytic"`` (default): the roofline model of ``hardware``.  ``profiler="measured"``:
    every distinct sub-block timed with torch on this machine (``scenario.dtype`` fp32 / bf16 / fp16,
    ``tp=1``; ``measure_options`` go to :func:`~puzzlekit.profilers.measured.time_subblock`:
    ``device``, ``threads``, ``warmup``, ``repeats``, ``n_lo``, ``n_hi``, ``seed``), the non-block part
    timed as a model of the library's depth in no-op layers; ``hardware`` is then only a label
    (default ``scenario.hardware``).  Both record ``lib.meta["non_block_costs"][scenario.name]``.
    The library object is changed; nothing is written to disk (``lib.save(path)``).

    ``library_or_space``: a :class:`BlockLibrary` (costs are added to it, in place);
    a parent :class:`ParentSpec` or :class:`Architecture` (the default Puzzle space
    over its layers); or a space (see :func:`parse_space`) together with ``parent``.
    ``hardware`` defaults to ``scenario.hardware`` (a catalogue name or a
    hardware-profile JSON path).  ``memory`` chooses what ``memory_mib`` includes
    (:data:`~puzzlekit.profilers.analytic.NVLABS_MEMORY` for NVIDIA's convention).
    """
    if profiler not in ("analytic", "measured"):
        raise ConfigError(f"profile_library: profiler must be 'analytic' or 'measured', got {profiler!r}")
    if measure_options and profiler != "measured":
        raise ConfigError("profile_library: measure_options are for profiler='measured'")
    hw = resolve_hardware(hardware if hardware is not None else scenario.hardware) if profiler == "analytic" else None
    if isinstance(library_or_space, BlockLibrary):
        lib = library_or_space
        spec = parent or lib.parent
        if spec is None:
            raise LibraryError("the library records no parent; pass parent=ParentSpec (CLI: the PARENT_CONFIG argument)")
        if lib.parent is None:
            lib.parent = spec
    elif isinstance(library_or_space, Architecture):
        spec = library_or_space.parent
        lib = library_from_space(spec, default_space(spec), library_or_space.num_layers)
    elif isinstance(library_or_space, ParentSpec):
        spec = library_or_space
        lib = library_from_space(spec, default_space(spec))
    else:
        if parent is None:
            raise ConfigError("profile_library: a space needs parent=ParentSpec")
        spec = parent
        lib = library_from_space(spec, parse_space(library_or_space, spec))
    for b in lib.blocks:
        kv = b.attention.num_kv_heads
        if kv is not None and spec.num_attention_heads % kv:
            raise LibraryError(f"block {b.key}: num_kv_heads={kv} does not divide the parent's "
                               f"{spec.num_attention_heads} query heads")
    if profiler == "measured":
        return _profile_measured(lib, spec, scenario, hardware, memory, default, dict(measure_options or {}))
    name = lib.add_scenario(scenario, default=default)
    for b in lib.blocks:
        lib.set_costs(name, b, block_costs(spec, b, scenario, hw, memory=memory))
    nb = lib.meta.setdefault("non_block_costs", {})
    nb[name] = non_block_costs(spec, scenario, hw)
    prof = lib.meta.setdefault("profiles", {})
    prof[name] = {"profiler": "analytic-roofline", "hardware": hw.to_dict(),
                  "memory_convention": {"prefill_queue": memory.prefill_queue, "prefill_query": memory.prefill_query}}
    return lib


_MEASURE_KEYS = frozenset({"device", "threads", "warmup", "repeats", "n_lo", "n_hi", "seed"})


def _counts(spec: ParentSpec, block: BlockConfig, scenario: Scenario, memory: MemoryConvention) -> dict[str, float]:
    """Exact parameter, memory and KV-cache counts of a block (no timing, no hardware)."""
    from puzzlekit.accounting import attention_params, block_kv_bytes_per_token, ffn_params

    from .analytic import subblock_memory_bytes

    att = subblock_memory_bytes(spec, block.attention, scenario, memory)
    ffn = subblock_memory_bytes(spec, block.ffn, scenario, memory)
    ap, fp = float(attention_params(spec, block.attention)), float(ffn_params(spec, block.ffn))
    return {"num_params": ap + fp, "attention_num_params": ap, "ffn_num_params": fp,
            "memory_mib": (att["total"] + ffn["total"]) / 2**20, "attention_memory_mib": att["total"] / 2**20,
            "ffn_memory_mib": ffn["total"] / 2**20, "kv_cache_mib": att["kv_cache"] / 2**20,
            "kv_bytes_per_token": float(block_kv_bytes_per_token(spec, block.attention, scenario.dtype))}


def _profile_measured(lib: BlockLibrary, spec: ParentSpec, scenario: Scenario, hardware: Any,
                      memory: MemoryConvention, default: bool | None, opts: dict[str, Any]) -> BlockLibrary:
    """``profile_library(..., profiler="measured")``: time every distinct sub-block and the non-block part."""
    from puzzlekit.accounting import non_block_params

    from .measured import measure_non_block, time_subblock

    bad = sorted(set(opts) - _MEASURE_KEYS)
    if bad:
        raise ConfigError(f"profile_library: unknown measure_options {bad}; known: {sorted(_MEASURE_KEYS)}")
    timings: dict[Any, Any] = {}
    for b in lib.blocks:
        for sub in (b.attention, b.ffn):
            if sub not in timings:
                timings[sub] = time_subblock(spec, sub, scenario, **opts)
    nb_opts = {k: v for k, v in opts.items() if k in ("device", "threads", "seed", "repeats", "warmup")}
    nb = measure_non_block(spec, scenario, layers=lib.num_layers, **nb_opts)
    name = lib.add_scenario(scenario, default=default)
    for b in lib.blocks:
        a, f = timings[b.attention], timings[b.ffn]
        lib.set_costs(name, b, {
            "runtime_ms": a.runtime_ms + f.runtime_ms, "prefill_ms": a.prefill_ms + f.prefill_ms,
            "decode_ms": a.decode_ms + f.decode_ms, "attention_runtime_ms": a.runtime_ms,
            "ffn_runtime_ms": f.runtime_ms, **_counts(spec, b, scenario, memory)})
    w = non_block_params(spec)
    from puzzlekit.accounting import dtype_bytes

    lib.meta.setdefault("non_block_costs", {})[name] = {
        "runtime_ms": nb.runtime_ms, "prefill_ms": nb.prefill_ms, "decode_ms": nb.decode_ms,
        "num_params": float(w), "memory_mib": w * dtype_bytes(scenario.dtype) / 2**20}
    lib.meta.setdefault("profiles", {})[name] = {
        "profiler": "measured", "hardware": str(hardware if hardware is not None else scenario.hardware),
        "non_block_layers": lib.num_layers, "options": {k: v for k, v in opts.items() if k != "device"},
        "memory_convention": {"prefill_queue": memory.prefill_queue, "prefill_query": memory.prefill_query}}
    return lib
