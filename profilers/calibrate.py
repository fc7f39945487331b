"""Fit the roofline's factors to measured latencies and report the error.

A :class:`Measurement` is one measured latency of a block (or of one of its
sub-blocks) under a scenario.  :func:`fit_factors` searches the named
:class:`~puzzlekit.profilers.hardware.Hardware` factors (at most three by
default, so the fit cannot memorise the data) by Nelder–Mead on their
logarithms, minimising the mean absolute percentage error (MAPE), and returns
the calibrated hardware with the error before and after.

:func:`calibrate_nvlabs` does this against NVIDIA's measured H100 FP8 runtimes
in an NVlabs block library (Llama-3.3-70B, batch 256, sequence 1200), fitting
``compute_efficiency``, ``attention_efficiency`` and ``kernel_overhead`` while
``memory_efficiency`` keeps its catalogue value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from puzzlekit.architecture import ParentSpec, Scenario
from puzzlekit.blocks import BlockConfig
from puzzlekit.errors import ConfigError, LibraryError
from puzzlekit.library import BlockLibrary

from .analytic import block_costs
from .hardware import Hardware, resolve_hardware

__all__ = [
    "Measurement",
    "CalibrationResult",
    "fit_factors",
    "predict",
    "mape",
    "calibrate_nvlabs",
    "measurements_from_library",
    "DEFAULT_FIT",
    "nelder_mead",
]

#: The factors fitted by default (three numbers).
DEFAULT_FIT = ("compute_efficiency", "attention_efficiency", "kernel_overhead")
# memory_efficiency may exceed 1: on a CPU the catalogue bandwidth is a DRAM copy, while the
# repeated-block stacks of a tiny model stay in cache, several times faster (the fit hit 1.5 before)
_FACTORS = {"compute_efficiency": (1e-3, 1.5), "memory_efficiency": (1e-3, 10.0),
            "attention_efficiency": (1e-3, 1.5), "kernel_overhead": (1e-9, 1e-2)}


@dataclass(frozen=True)
class Measurement:
    """A measured latency (ms) of ``block`` — or of its ``part`` (``attention`` / ``ffn``) — under ``scenario``."""

    spec: ParentSpec
    block: BlockConfig
    scenario: Scenario
    runtime_ms: float
    part: str = "block"
    label: str = ""

    def __post_init__(self) -> None:
        if self.part not in ("block", "attention", "ffn"):
            raise ConfigError(f"measurement part must be 'block', 'attention' or 'ffn', got {self.part!r}")
        if not (isinstance(self.runtime_ms, (int, float)) and math.isfinite(self.runtime_ms) and self.runtime_ms >= 0):
            raise ConfigError(f"measurement {self.label or self.block.key}: runtime_ms must be finite and >= 0")


def predict(measurements: Sequence[Measurement], hw: Hardware) -> np.ndarray:
    """The roofline's prediction (ms) for each measurement, on ``hw``."""
    cache: dict[tuple, dict[str, float]] = {}
    out = np.empty(len(measurements))
    for i, m in enumerate(measurements):
        key = (m.spec, m.block, m.scenario)
        if key not in cache:
            cache[key] = block_costs(m.spec, m.block, m.scenario, hw)
        c = cache[key]
        out[i] = c["runtime_ms"] if m.part == "block" else c[f"{m.part}_runtime_ms"]
    return out


def mape(pred: np.ndarray, meas: np.ndarray) -> float:
    """Mean absolute percentage error (as a fraction) over all points; a 0 measured and 0 predicted is exact."""
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    err = np.where(meas > 0, np.abs(pred - meas) / np.where(meas > 0, meas, 1.0), np.where(pred > 0, np.inf, 0.0))
    return float(err.mean()) if len(err) else 0.0


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, *, step: float = 0.5, iters: int = 800,
                tol: float = 1e-9) -> tuple[np.ndarray, float]:
    """Minimise ``f`` from ``x0`` with the Nelder–Mead simplex (no derivatives, no scipy)."""
    n = len(x0)
    pts = [np.asarray(x0, float)] + [np.asarray(x0, float) + step * np.eye(n)[i] for i in range(n)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts = [pts[i] for i in order]
        vals = [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol and np.max(np.abs(np.array(pts) - pts[0])) < 1e-6:
            break
        c = np.mean(pts[:-1], axis=0)
        xr = c + (c - pts[-1])
        fr = f(xr)
        if fr < vals[0]:
            xe = c + 2 * (c - pts[-1])
            fe = f(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = c + 0.5 * (pts[-1] - c)
            fc = f(xc)
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:
                for i in range(1, n + 1):
                    pts[i] = pts[0] + 0.5 * (pts[i] - pts[0])
                    vals[i] = f(pts[i])
    i = int(np.argmin(vals))
    return pts[i], float(vals[i])


@dataclass
class CalibrationResult:
    """The calibrated hardware and how well it explains the measurements."""

    hardware: Hardware
    fitted: dict[str, float]
    mape_before: float
    mape_after: float
    measured_ms: list[float]
    predicted_ms: list[float]
    labels: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_pct_error(self) -> float:
        m = np.asarray(self.measured_ms)
        p = np.asarray(self.predicted_ms)
        ok = m > 0
        return float(np.max(np.abs(p[ok] - m[ok]) / m[ok])) if ok.any() else 0.0

    def table(self) -> list[dict[str, Any]]:
        """One row per measurement: label, measured, predicted, error (%)."""
        return [{"label": lab, "measured_ms": m, "predicted_ms": p,
                 "error_pct": 100.0 * (p - m) / m if m > 0 else 0.0}
                for lab, m, p in zip(self.labels, self.measured_ms, self.predicted_ms)]

    def to_dict(self) -> dict[str, Any]:
        return {"hardware": self.hardware.to_dict(), "fitted": dict(self.fitted),
                "mape_before": self.mape_before, "mape_after": self.mape_after,
                "max_abs_pct_error": self.max_abs_pct_error, "rows": self.table(), "notes": list(self.notes)}


def fit_factors(measurements: Sequence[Measurement], hardware: Hardware | str,
                fit: Sequence[str] = DEFAULT_FIT, *, fixed: dict[str, float] | None = None) -> CalibrationResult:
    """Fit the hardware factors named in ``fit`` to ``measurements`` (MAPE); others stay as they are.

    ``fixed`` overrides factors before fitting (e.g. ``{"max_batched_tokens": 8192}``).
    """
    if not measurements:
        raise ConfigError("calibration needs at least one measurement")
    bad = [n for n in fit if n not in _FACTORS]
    if bad:
        raise ConfigError(f"cannot fit {bad[0]!r}; fittable factors: {sorted(_FACTORS)}")
    if len(set(fit)) != len(fit):
        raise ConfigError(f"fit names a factor twice: {list(fit)}")
    hw0 = resolve_hardware(hardware)
    if fixed:
        hw0 = hw0.with_factors(**fixed)
    meas = np.array([m.runtime_ms for m in measurements])
    before = mape(predict(measurements, hw0), meas)

    def make(x: np.ndarray) -> Hardware | None:
        kw = {}
        for n, v in zip(fit, x):
            lo, hi = _FACTORS[n]
            val = float(np.exp(v))
            if not lo <= val <= hi:
                return None
            kw[n] = val
        return hw0.with_factors(**kw)

    def loss(x: np.ndarray) -> float:
        hw = make(x)
        return 1e9 if hw is None else mape(predict(measurements, hw), meas)

    x0 = np.log([getattr(hw0, n) if getattr(hw0, n) > 0 else 1e-6 for n in fit])
    best_x, best = x0, loss(x0)
    for restart in range(3):  # restarts shake the simplex out of a flat start
        x, v = nelder_mead(loss, best_x, step=0.7 / (restart + 1))
        if v < best - 1e-12:
            best_x, best = x, v
    hw = make(best_x)
    assert hw is not None  # the loss only accepts in-bounds points
    hw = hw.with_factors(source=f"calibrated ({len(measurements)} measurements, MAPE {100 * best:.2f} %)")
    pred = predict(measurements, hw)
    return CalibrationResult(
        hardware=hw, fitted={n: getattr(hw, n) for n in fit}, mape_before=before, mape_after=mape(pred, meas),
        measured_ms=meas.tolist(), predicted_ms=pred.tolist(),
        labels=[m.label or f"{m.block.key}[{m.part}]" for m in measurements],
    )


def measurements_from_library(library: BlockLibrary, spec: ParentSpec, scenario: str | Scenario | None = None,
                              cost: str = "runtime_ms") -> list[Measurement]:
    """One :class:`Measurement` per distinct block of ``library`` (its measured ``cost`` under ``scenario``)."""
    name = library.resolve_scenario(scenario)
    sc = library.scenarios[name]
    out = []
    for b in library.blocks:
        c = library.costs.get(name, {}).get(b.key, {})
        if cost not in c:
            raise LibraryError(f"block {b.key} has no {cost!r} under scenario {name!r}; nothing to calibrate against")
        out.append(Measurement(spec, b, sc, c[cost], "block", b.key))
    return out


def _default_70b_parent() -> ParentSpec:
    from puzzlekit.configs import builtin_config_path

    # Super-49B keeps its parent's dimensions (Llama-3.3-70B: hidden 8192, 64 heads, head_dim 128,
    # intermediate 28672, vocab 128256, 80 layers); its widest block is the parent's.
    return ParentSpec.from_hf_config(builtin_config_path("super-49b"))


def calibrate_nvlabs(source: str | os.PathLike | BlockLibrary, *, parent: ParentSpec | None = None,
                     hardware: Hardware | str | None = None, fit: Sequence[str] = DEFAULT_FIT) -> CalibrationResult:
    """Calibrate against the runtimes measured in an NVlabs block library.

    ``parent`` defaults to the library's parent, else Llama-3.3-70B's dimensions;
    the parameter counts the library records must equal ours (checked), so a
    wrong parent is caught.  ``hardware`` defaults to the scenario's hardware.
    """
    from puzzlekit.formats.nvlabs import import_nvlabs

    lib = source if isinstance(source, BlockLibrary) else import_nvlabs(Path(source))
    spec = parent or lib.parent or _default_70b_parent()
    name = lib.resolve_scenario()
    sc = lib.scenarios[name]
    hw = resolve_hardware(hardware or sc.hardware)
    for b in lib.blocks:
        rec = lib.costs[name][b.key].get("num_params")
        if rec is not None:
            ours = block_costs(spec, b, sc, hw)["num_params"]
            if ours != rec:
                raise ConfigError(
                    f"block {b.key}: the library records {int(rec)} parameters, the parent spec gives {int(ours)}; "
                    "pass the right parent config (--parent)"
                )
    res = fit_factors(measurements_from_library(lib, spec, name), hw, fit)
    res.notes.append(f"scenario {name}; parent hidden {spec.hidden_size}, {spec.num_attention_heads} heads")
    return res
