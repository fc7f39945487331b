"""The NVlabs Puzzle block-library format.

A folder (or a ``block_library.json`` file) with::

    block_library.json      {"layer_<i>": {"<description>": {"stats": {...}, "metrics": {...}}}}
    measurement_info.json   {"batch_size", "sequence_length", "gpu", "dtype"}   (optional)
    parent_block_stats.json (optional, ignored)

Blocks are taken from the stats (``num_kv_heads``, ``ffn_intermediate_size``;
0 means removed, or a linear replacement when the sub-block still has
parameters), never parsed from the description strings.  Every ``stats.*``
number becomes a cost under the measurement scenario, every ``metrics.*`` a
metric, under the same names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..architecture import ParentSpec, Scenario
from ..blocks import AttentionConfig, BlockConfig, FFNConfig
from ..errors import LibraryError
from ..io import atomic_write_json, read_json
from ..library import BlockLibrary

__all__ = ["import_nvlabs", "export_nvlabs", "scenario_from_measurement_info", "GPU_NAMES"]

#: GPU names as torch reports them -> the profilers' hardware catalogue names.
GPU_NAMES = {
    "NVIDIA H100 80GB HBM3": "h100-sxm",
    "NVIDIA H100 PCIe": "h100-pcie",
    "NVIDIA H200": "h200",
    "NVIDIA A100-SXM4-80GB": "a100-sxm-80gb",
    "NVIDIA L40S": "l40s",
    "NVIDIA B200": "b200",
}

_LAYER_RE = re.compile(r"^layer_(\d+)$")


def scenario_from_measurement_info(info: Mapping[str, Any], where: str = "measurement_info.json") -> Scenario:
    """The scenario NVIDIA's costs were measured under.

    ``sequence_length`` is split as 5/6 prefill and 1/6 decode (1200 -> 1000 + 200),
    the split of the Puzzle paper's throughput scenario, unless ``decode_length`` (written by
    :func:`export_nvlabs`) gives it.
    """
    try:
        gpu = info["gpu"]
        seq = int(info["sequence_length"])
        batch = int(info["batch_size"])
        dtype = str(info.get("dtype", "bf16"))
    except (KeyError, TypeError, ValueError) as e:
        raise LibraryError(f"{where}: needs gpu, sequence_length, batch_size ({e})") from None
    hw = GPU_NAMES.get(gpu) or re.sub(r"[^a-z0-9]+", "-", str(gpu).lower()).strip("-")
    decode = seq // 6
    if "decode_length" in info:  # written by export_nvlabs: the split NVlabs' own fields cannot hold
        decode = info["decode_length"]
        if isinstance(decode, bool) or not isinstance(decode, int) or not 0 <= decode <= seq:
            raise LibraryError(f"{where}: decode_length must be an integer in 0..sequence_length, got {decode!r}")
    return Scenario(hardware=hw, dtype=dtype, batch=batch, prefill=seq - decode, decode=decode)


def _block_from_stats(stats: Mapping[str, Any], where: str) -> BlockConfig:
    try:
        kv = int(stats["num_kv_heads"])
        inter = int(stats["ffn_intermediate_size"])
    except (KeyError, TypeError, ValueError):
        raise LibraryError(f"{where}: stats need integer 'num_kv_heads' and 'ffn_intermediate_size'") from None
    if kv > 0:
        att = AttentionConfig.gqa(kv)
    elif float(stats.get("attention_num_params", 0) or 0) > 0:
        att = AttentionConfig.make_linear()
    else:
        att = AttentionConfig.make_no_op()
    if inter > 0:
        ffn = FFNConfig.swiglu(inter)
    elif float(stats.get("ffn_num_params", 0) or 0) > 0:
        ffn = FFNConfig.make_linear()
    else:
        ffn = FFNConfig.make_no_op()
    return BlockConfig(att, ffn)


def import_nvlabs(
    source: str | os.PathLike,
    *,
    parent: ParentSpec | None = None,
    scenario: Scenario | None = None,
) -> BlockLibrary:
    """Read an NVlabs Puzzle block library (folder or ``block_library.json``)."""
    src = Path(source)
    folder = src if src.is_dir() else src.parent
    doc_path = src / "block_library.json" if src.is_dir() else src
    doc = read_json(doc_path, what="NVlabs block library")
    if not isinstance(doc, Mapping) or not doc:
        raise LibraryError(f"{doc_path}: expected an object of 'layer_<i>' -> variants")
    layers: dict[int, Mapping[str, Any]] = {}
    for k, v in doc.items():
        m = _LAYER_RE.match(str(k))
        if not m:
            raise LibraryError(f"{doc_path}: key {k!r} is not of the form 'layer_<i>'")
        if not isinstance(v, Mapping):
            raise LibraryError(f"{doc_path}: {k} must be an object of description -> {{stats, metrics}}")
        layers[int(m.group(1))] = v
    n = max(layers) + 1
    missing = sorted(set(range(n)) - set(layers))
    if missing:
        raise LibraryError(f"{doc_path}: layers {missing[:10]} are missing (found up to layer_{n - 1})")
    if scenario is None:
        info_path = folder / "measurement_info.json"
        if info_path.exists():
            scenario = scenario_from_measurement_info(read_json(info_path, what="measurement info"), str(info_path))
    lib = BlockLibrary(n, parent, meta={"imported_from": "nvlabs", "source": doc_path.name})
    if scenario is not None:
        lib.add_scenario(scenario, default=True)
    for i in range(n):
        for desc, entry in layers[i].items():
            where = f"{doc_path}: layer_{i} / {desc!r}"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("stats"), Mapping):
                raise LibraryError(f"{where}: needs a 'stats' object")
            stats = entry["stats"]
            block = _block_from_stats(stats, where)
            metrics = entry.get("metrics") or {}
            if not isinstance(metrics, Mapping):
                raise LibraryError(f"{where}: 'metrics' must be an object")
            clean = {}
            for mk, mv in metrics.items():
                if mv is None or isinstance(mv, bool) or not isinstance(mv, (int, float)):
                    raise LibraryError(f"{where}: metric {mk!r} must be a number, got {mv!r}")
                clean[mk] = float(mv)
            lib.add(i, block, clean, name=str(desc))
            if scenario is not None:
                costs = {}
                for sk, sv in stats.items():
                    if sk in ("num_kv_heads", "ffn_intermediate_size"):
                        continue
                    if isinstance(sv, bool) or not isinstance(sv, (int, float)):
                        raise LibraryError(f"{where}: stat {sk!r} must be a number, got {sv!r}")
                    costs[sk] = float(sv)
                prev = lib.costs[scenario.name].get(block.key)
                if prev is not None and prev != costs:
                    diff = sorted(k for k in set(prev) | set(costs) if prev.get(k) != costs.get(k))
                    raise LibraryError(
                        f"{where}: block {block.key} has different costs than at an earlier layer ({diff[:3]}); "
                        "costs must depend on the block only"
                    )
                lib.set_costs(scenario.name, block, costs)
    return lib


def _describe(block: BlockConfig, parent: ParentSpec | None) -> str:
    a, f = block.attention, block.ffn
    if a.kind == "gqa":
        pct = f" (parent * {round(100 * a.num_kv_heads / parent.num_key_value_heads)}%)" if parent else ""
        att = f"{a.num_kv_heads} kv heads{pct}"
    else:
        att = f"{a.kind}" + (" (parent * 0%)" if a.no_op else "")
    if f.kind == "swiglu":
        pct = f" (parent * {round(100 * f.intermediate_size / parent.intermediate_size)}%)" if parent else ""
        ffn = f"intermediate size {f.intermediate_size / 1000:.0f}e3{pct}"
    else:
        ffn = f"{f.kind}" + (" (parent * 0%)" if f.no_op else "")
    return f"attention = {att}\t&&\tffn = {ffn}"


def export_nvlabs(library: BlockLibrary, folder: str | os.PathLike, scenario: str | None = None) -> Path:
    """Write ``library`` as an NVlabs folder (``block_library.json`` + ``measurement_info.json``).

    Spanning candidates have no NVlabs equivalent and are refused.
    """
    folder = Path(folder)
    sc = library.resolve_scenario(scenario) if library.scenarios else None
    table = library.costs.get(sc, {}) if sc else {}
    doc: dict[str, dict[str, Any]] = {f"layer_{i}": {} for i in range(library.num_layers)}
    for c in library.candidates:
        if c.span != 1:
            raise LibraryError(
                f"candidate {c.block.key} spans layers {c.first}..{c.last}; the NVlabs format has one layer per candidate"
            )
        a, f = c.block.attention, c.block.ffn
        stats: dict[str, Any] = {
            "num_kv_heads": a.num_kv_heads or 0,
            "ffn_intermediate_size": f.intermediate_size or 0,
        }
        stats.update(table.get(c.block.key, {}))
        desc = c.name or _describe(c.block, library.parent)
        doc[f"layer_{c.first}"][desc] = {"stats": stats, "metrics": dict(c.metrics)}
    atomic_write_json(folder / "block_library.json", doc, indent=1)
    if sc:
        s = library.scenarios[sc]
        gpu = {v: k for k, v in GPU_NAMES.items()}.get(s.hardware, s.hardware)
        atomic_write_json(folder / "measurement_info.json", {
            "batch_size": s.batch, "sequence_length": s.prefill + s.decode, "gpu": gpu, "dtype": s.dtype,
            "decode_length": s.decode,  # our extension (NVlabs readers ignore it): keeps the prefill/decode split
        }, indent=4)
    return folder
