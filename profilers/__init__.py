"""Cost models and measurement: ``puzzlekit.profilers``.

* :mod:`.hardware` — the hardware catalogue (H100 SXM/PCIe, H200, A100, L40S,
  B200, and ``local-cpu`` measured by a micro-benchmark) with roofline factors.
* :mod:`.analytic` — parameters, weight / KV bytes, FLOPs and bytes moved per
  sub-block for prefill and each decode step; roofline latency with efficiency
  factors, per-kernel overhead and tensor-parallel all-reduce; memory.
* :mod:`.library` — :func:`profile_library` writes the costs into a block library.
* :mod:`.calibrate` — fits the factors to measurements (NVIDIA's H100 FP8
  runtimes, or local ones) and reports the error.
* :mod:`.measured` — times real sub-blocks of :mod:`puzzlekit.model` with torch
  (imported lazily: importing this package does not import torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from .analytic import (
    NVLABS_MEMORY,
    PLAIN_MEMORY,
    ArchitectureCost,
    Latency,
    MemoryConvention,
    architecture_cost,
    attention_work,
    block_costs,
    ffn_work,
    non_block_costs,
    roofline_latency,
    subblock_memory_bytes,
)
from .calibrate import CalibrationResult, Measurement, calibrate_nvlabs, fit_factors
from .hardware import (
    CATALOGUE,
    Hardware,
    get_hardware,
    load_hardware_profile,
    measure_local_cpu,
    resolve_hardware,
    save_hardware_profile,
)
from .library import default_space, parse_space, profile_library

_LAZY = {
    "MeasuredProfiler": "puzzlekit.profilers.measured",
    "time_subblock": "puzzlekit.profilers.measured",
    "measure_block": "puzzlekit.profilers.measured",
    "measure_model": "puzzlekit.profilers.measured",
}

__all__ = [
    "Hardware", "CATALOGUE", "get_hardware", "resolve_hardware", "measure_local_cpu",
    "save_hardware_profile", "load_hardware_profile",
    "attention_work", "ffn_work", "roofline_latency", "Latency", "block_costs", "non_block_costs",
    "subblock_memory_bytes", "MemoryConvention", "PLAIN_MEMORY", "NVLABS_MEMORY",
    "architecture_cost", "ArchitectureCost",
    "profile_library", "default_space", "parse_space",
    "Measurement", "CalibrationResult", "fit_factors", "calibrate_nvlabs",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'puzzlekit.profilers' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
