"""Measured costs: time the real sub-blocks of :mod:`puzzlekit.model` with torch.

**What is timed.**  A sub-block (the attention or the FFN of a block, built
with :func:`puzzlekit.model.make_layer`) serving a :class:`~puzzlekit.Scenario`:
a prefill of ``batch × prefill`` tokens that fills its KV cache, then
``decode`` steps of ``batch`` tokens, each attending to the cache
(``attn_delta`` / ``ffn_delta`` with a transformers ``DynamicCache``).

**The repeated-block method.**  Timing one small sub-block alone mostly
measures the harness (Python, input set-up, synchronisation).  So the profiler
times a stack of ``n_hi`` independent copies (own weights, own cache slot) and
a stack of ``n_lo`` copies, and reports ``(t(n_hi) - t(n_lo)) / (n_hi - n_lo)``:
the harness overhead cancels.  Each time is the median of ``repeats`` runs
after ``warmup`` runs.  On CPU the thread count is pinned
(``torch.set_num_threads``) and time is ``time.perf_counter``; on CUDA it is
CUDA events around the run after a synchronisation.

**Memory** is measured too: the bytes of the sub-block's parameters and of
the KV cache it holds after the scenario (tensor sizes; on CUDA also the peak
allocated during the run).

:func:`measure_model` times a whole :class:`~puzzlekit.model.PuzzleForCausalLM`
the same way (prefill then decode with its cache), for the additivity check
(sum of blocks + non-block part against the whole model).

Timing results are written as a measurements JSON (:func:`save_measurements`)
that ``puzzlekit profile calibrate`` reads.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puzzlekit.architecture import Architecture, ParentSpec, Scenario
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
from puzzlekit.errors import ConfigError
from puzzlekit.io import atomic_write_json, read_json

from .calibrate import Measurement

__all__ = [
    "Timing",
    "MeasuredProfiler",
    "time_subblock",
    "measure_block",
    "measure_model",
    "measure_non_block",
    "save_measurements",
    "load_measurements",
    "MEASUREMENTS_FORMAT",
    "CacheSpill",
    "subblock_working_set_bytes",
    "non_block_working_set_bytes",
    "working_set_bytes",
    "measure_spill_gamma",
]

MEASUREMENTS_FORMAT = "puzzlekit.measurements"


@dataclass(frozen=True)
class Timing:
    """A measured latency (ms) of one sub-block (or model) over a scenario, and its memory."""

    prefill_ms: float
    decode_ms: float
    param_bytes: int = 0
    kv_cache_bytes: int = 0
    peak_bytes: int = 0

    @property
    def runtime_ms(self) -> float:
        return self.prefill_ms + self.decode_ms


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _median_time(run: Callable[[Any], None], setup: Callable[[], Any], device: Any, warmup: int,
                 repeats: int) -> float:
    """Median seconds of ``run(setup())`` (setup not timed)."""
    import torch

    cuda = getattr(device, "type", str(device)) == "cuda"
    for _ in range(warmup):
        run(setup())
    times = []
    for _ in range(repeats):
        state = setup()
        if cuda:
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(state)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            run(state)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)


class _Stack:
    """``n`` independent copies of a sub-block on the residual stream, each with its own cache slot."""

    def __init__(self, spec: ParentSpec, sub: AttentionConfig | FFNConfig, n: int, dtype: Any, device: Any):
        from puzzlekit.model import make_layer

        block = (BlockConfig(sub, FFNConfig.make_no_op()) if isinstance(sub, AttentionConfig)
                 else BlockConfig(AttentionConfig.make_no_op(), sub))
        self.is_attn = isinstance(sub, AttentionConfig)
        self.layers = [make_layer(spec, block, i, dtype=dtype, device=device).eval() for i in range(n)]

    def __call__(self, x: Any, pe: Any, cache: Any) -> Any:
        for i, layer in enumerate(self.layers):
            if self.is_attn:
                x = x + layer.attn_delta(x, pe, None, cache, cache_idx=i)
            else:
                x = x + layer.ffn_delta(x)
        return x


def _rope(spec: ParentSpec, device: Any, dtype: Any):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from puzzlekit.model.modeling import _rope_config

    rot = LlamaRotaryEmbedding(config=_rope_config(spec)).to(device)

    def pe(x: Any, start: int, length: int):
        import torch

        pos = torch.arange(start, start + length, device=device)[None]
        cos, sin = rot(x, pos)
        return cos.to(dtype), sin.to(dtype)

    return pe


def _time_stack(stack: _Stack, spec: ParentSpec, scenario: Scenario, device: Any, dtype: Any, warmup: int,
                repeats: int, gen: Any) -> tuple[float, float, int]:
    """(prefill seconds, decode seconds, KV-cache bytes) of one stack over the scenario."""
    import torch
    from transformers import DynamicCache

    B, P, D, H = scenario.batch, scenario.prefill, scenario.decode, spec.hidden_size
    pe = _rope(spec, device, dtype)
    x_pre = torch.randn(B, max(P, 1), H, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    x_dec = torch.randn(B, 1, H, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    pe_pre = pe(x_pre, 0, P) if P else None
    pe_dec = [pe(x_dec, P + s, 1) for s in range(D)]

    def prefill_state():
        return DynamicCache()

    def run_prefill(cache):
        if P:
            stack(x_pre, pe_pre, cache)

    def decode_state():
        cache = DynamicCache()
        run_prefill(cache)
        return cache

    def run_decode(cache):
        for s in range(D):
            stack(x_dec, pe_dec[s], cache)

    with torch.inference_mode():
        t_pre = _median_time(run_prefill, prefill_state, device, warmup, repeats) if P else 0.0
        t_dec = _median_time(run_decode, decode_state, device, warmup, repeats) if D else 0.0
        cache = decode_state()
        run_decode(cache)
        kv = 0
        for layer in getattr(cache, "layers", []):
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None and hasattr(t, "nbytes"):
                    kv += int(t.nbytes)
    return t_pre, t_dec, kv


def time_subblock(spec: ParentSpec, sub: AttentionConfig | FFNConfig, scenario: Scenario, *,
                  device: str | None = None, threads: int | None = None, n_lo: int = 1, n_hi: int = 4,
                  warmup: int = 2, repeats: int = 7, seed: int = 0) -> Timing:
    """Measure one sub-block over ``scenario`` with the repeated-block method (see the module doc).

    ``scenario.dtype`` must be a torch float type here (bf16 / fp16 / fp32; fp8 is
    not timed by eager torch).  No-op sub-blocks cost 0 by construction.
    """
    import torch

    if scenario.tp != 1:
        raise ConfigError("the measured profiler times one device (tp=1); model tensor parallelism analytically")
    dtype = _torch_dtype(scenario.dtype)
    if dtype is None:
        raise ConfigError(f"the measured profiler cannot time dtype {scenario.dtype!r}; use bf16, fp16 or fp32")
    if not 1 <= n_lo < n_hi:
        raise ConfigError(f"need 1 <= n_lo < n_hi, got n_lo={n_lo}, n_hi={n_hi}")
    if sub.no_op:
        return Timing(0.0, 0.0)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator().manual_seed(seed)
    with _threads(threads if dev.type == "cpu" else None):
        torch.manual_seed(seed)
        lo = _Stack(spec, sub, n_lo, dtype, dev)
        hi = _Stack(spec, sub, n_hi, dtype, dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        p_lo, d_lo, _ = _time_stack(lo, spec, scenario, dev, dtype, warmup, repeats, gen)
        p_hi, d_hi, kv_hi = _time_stack(hi, spec, scenario, dev, dtype, warmup, repeats, gen)
        peak = (torch.cuda.max_memory_allocated(dev) - base) // n_hi if dev.type == "cuda" else 0
    k = n_hi - n_lo
    params = sum(p.numel() * p.element_size() for p in hi.layers[0].parameters())
    return Timing(max(0.0, (p_hi - p_lo) / k) * 1e3, max(0.0, (d_hi - d_lo) / k) * 1e3,
                  param_bytes=int(params), kv_cache_bytes=kv_hi // n_hi, peak_bytes=int(peak))


def measure_block(spec: ParentSpec, block: BlockConfig, scenario: Scenario, **kw: Any) -> dict[str, Timing]:
    """``{"attention": Timing, "ffn": Timing}`` for one block (see :func:`time_subblock`)."""
    return {"attention": time_subblock(spec, block.attention, scenario, **kw),
            "ffn": time_subblock(spec, block.ffn, scenario, **kw)}


def measure_model(model_or_arch: Any, scenario: Scenario, *, device: str | None = None, threads: int | None = None,
                  warmup: int = 1, repeats: int = 5, seed: int = 0) -> Timing:
    """Time a whole model (``PuzzleForCausalLM`` or an :class:`Architecture` to build one): prefill + decode."""
    import torch
    from transformers import DynamicCache

    from puzzlekit.model import PuzzleForCausalLM

    dtype = _torch_dtype(scenario.dtype)
    if dtype is None:
        raise ConfigError(f"the measured profiler cannot time dtype {scenario.dtype!r}; use bf16, fp16 or fp32")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with _threads(threads if dev.type == "cpu" else None):
        torch.manual_seed(seed)
        model = (PuzzleForCausalLM.from_architecture(model_or_arch) if isinstance(model_or_arch, Architecture)
                 else model_or_arch)
        model = model.to(device=dev, dtype=dtype).eval()
        V = model.config.vocab_size
        gen = torch.Generator().manual_seed(seed)
        B, P, D = scenario.batch, scenario.prefill, scenario.decode
        ids_pre = torch.randint(0, V, (B, P), generator=gen).to(dev)
        ids_dec = torch.randint(0, V, (B, max(D, 1)), generator=gen).to(dev)

        def run_prefill(cache):
            model(input_ids=ids_pre, past_key_values=cache, use_cache=True, logits_to_keep=1)

        def decode_state():
            cache = DynamicCache()
            run_prefill(cache)
            return cache

        def run_decode(cache):
            for s in range(D):
                model(input_ids=ids_dec[:, s:s + 1], past_key_values=cache, use_cache=True)

        with torch.inference_mode():
            t_pre = _median_time(run_prefill, DynamicCache, dev, warmup, repeats) if P else 0.0
            t_dec = _median_time(run_decode, decode_state, dev, warmup, repeats) if D else 0.0
        params = sum(p.numel() * p.element_size() for p in model.parameters())
    return Timing(t_pre * 1e3, t_dec * 1e3, param_bytes=int(params))


def measure_non_block(spec: ParentSpec, scenario: Scenario, *, layers: int = 1, **kw: Any) -> Timing:
    """The part outside the blocks (embeddings, final norm, LM head, harness): a model of ``layers``
    all-no-op layers.  ``layers=spec.num_hidden_layers`` also counts the per-layer constant (the layer's
    Python call and its residual adds), which every model of that depth pays whatever its blocks."""
    if layers < 1:
        raise ConfigError(f"measure_non_block: layers must be >= 1, got {layers}")
    arch = Architecture(spec, (BlockConfig(AttentionConfig.make_no_op(), FFNConfig.make_no_op()),) * layers)
    return measure_model(arch, scenario, **kw)


class MeasuredProfiler:
    """Measure every distinct block of a space/library under a scenario and write measurements or costs.

    Typical use (what ``benchmarks/profile_hardware.py`` does)::

        prof = MeasuredProfiler(spec, scenario, threads=1)
        rows = prof.measure(blocks)              # {block key: {"attention": Timing, "ffn": Timing}}
        prof.save("measurements.json", rows)     # then: puzzlekit profile calibrate measurements.json
    """

    def __init__(self, spec: ParentSpec, scenario: Scenario, *, device: str | None = None,
                 threads: int | None = None, n_lo: int = 1, n_hi: int = 4, warmup: int = 2, repeats: int = 7):
        self.spec, self.scenario = spec, scenario
        self.kw = dict(device=device, threads=threads, n_lo=n_lo, n_hi=n_hi, warmup=warmup, repeats=repeats)

    def measure(self, blocks: Sequence[BlockConfig]) -> dict[str, dict[str, Timing]]:
        subs: dict[Any, Timing] = {}
        out = {}
        for b in blocks:
            for s in (b.attention, b.ffn):
                if s not in subs:
                    subs[s] = time_subblock(self.spec, s, self.scenario, **self.kw)
            out[b.key] = {"attention": subs[b.attention], "ffn": subs[b.ffn]}
        return out

    def costs(self, rows: dict[str, dict[str, Timing]]) -> dict[str, dict[str, float]]:
        """Library costs from measurements (``runtime_ms``, ``prefill_ms``, ``decode_ms`` and parts)."""
        out = {}
        for key, parts in rows.items():
            a, f = parts["attention"], parts["ffn"]
            out[key] = {"runtime_ms": a.runtime_ms + f.runtime_ms, "prefill_ms": a.prefill_ms + f.prefill_ms,
                        "decode_ms": a.decode_ms + f.decode_ms, "attention_runtime_ms": a.runtime_ms,
                        "ffn_runtime_ms": f.runtime_ms,
                        "measured_memory_mib": (a.param_bytes + a.kv_cache_bytes + f.param_bytes) / 2**20}
        return out

    def save(self, path: str | os.PathLike, rows: dict[str, dict[str, Timing]], hardware: str = "local-cpu") -> Path:
        return save_measurements(path, self.spec, self.scenario, rows, hardware)


def save_measurements(path: str | os.PathLike, spec: ParentSpec, scenario: Scenario,
                      rows: dict[str, dict[str, Timing]], hardware: str = "local-cpu") -> Path:
    """Write per-sub-block measurements as JSON (atomically) for ``puzzlekit profile calibrate``."""
    doc = {"format": MEASUREMENTS_FORMAT, "hardware": hardware, "parent": spec.to_dict(),
           "scenario": scenario.to_dict(), "rows": []}
    for key, parts in rows.items():
        for part, t in parts.items():
            doc["rows"].append({"block": key, "part": part, "runtime_ms": t.runtime_ms, "prefill_ms": t.prefill_ms,
                                "decode_ms": t.decode_ms, "param_bytes": t.param_bytes,
                                "kv_cache_bytes": t.kv_cache_bytes})
    atomic_write_json(Path(path), doc)
    return Path(path)


def load_measurements(path: str | os.PathLike) -> tuple[list[Measurement], str]:
    """Read a measurements JSON: the calibration :class:`Measurement` list and the hardware name.

    Reading needs no torch.  Rows of no-op sub-blocks (0 ms by construction) are skipped.
    """
    d = read_json(Path(path), what="measurements")
    if not isinstance(d, dict) or d.get("format") != MEASUREMENTS_FORMAT:
        raise ConfigError(f"{path}: not a puzzlekit measurements file (format {MEASUREMENTS_FORMAT!r}); "
                          "write one with benchmarks/profile_hardware.py")
    try:
        spec = ParentSpec.from_dict(d["parent"])
        sc = Scenario.from_dict(d["scenario"])
        out = []
        for i, r in enumerate(d["rows"]):
            block = BlockConfig.from_key(r["block"])
            part = r["part"]
            sub = block.attention if part == "attention" else block.ffn
            if sub.no_op:
                continue
            out.append(Measurement(spec, block, sc, float(r["runtime_ms"]), part, f"{sub.short()}[{part}]"))
            del i
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: malformed measurements ({e})") from None
    seen = set()
    uniq = []
    for m in out:  # one measurement per distinct sub-block
        k = (m.part, m.block.attention if m.part == "attention" else m.block.ffn)
        if k not in seen:
            seen.add(k)
            uniq.append(m)
    return uniq, str(d.get("hardware", "local-cpu"))


# ---- cache spill: the one non-additive effect of whole-model decode on a CPU ------------------------
#
# A sub-block timed with the repeated-block method runs in a stack of a few copies, whose working set
# (weights + KV cache) fits in the CPU's caches.  A whole model whose decode working set exceeds the
# cache streams the excess from DRAM on every decode step, so it decodes slower than its summed
# sub-blocks; a smaller model (a child) fits and is additive.  Measured on a 2-vCPU EPYC VM (demo
# parent, H=192, fp32, batch 8, prefill 128, decode 32): the parent decodes 15 % slower than its sum,
# a 2x child 2-4 % — so a plain sum under-predicts the child's speed-up.  The correction:
#     decode_extra = gamma * max(0, W(model) - capacity)
# with gamma (ms per byte beyond the cache, over the scenario's decode) measured by a stack too big for
# the cache, and capacity fitted on the parent (its measured whole-model decode).  Since max(0, .) is
# convex, "sum + extra <= T" is exactly two linear budgets, so the search stays a MIP.


@dataclass(frozen=True)
class CacheSpill:
    """``gamma_ms_per_byte * max(0, working_set - capacity_bytes)``: extra decode ms beyond the cache."""

    gamma_ms_per_byte: float
    capacity_bytes: float

    def extra_ms(self, working_set_bytes: float) -> float:
        return self.gamma_ms_per_byte * max(0.0, float(working_set_bytes) - self.capacity_bytes)

    def to_dict(self) -> dict[str, float]:
        return {"gamma_ms_per_mib": self.gamma_ms_per_byte * 2**20, "capacity_mib": self.capacity_bytes / 2**20}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> CacheSpill:
        return cls(float(d["gamma_ms_per_mib"]) / 2**20, float(d["capacity_mib"]) * 2**20)

    @classmethod
    def fit_capacity(cls, gamma_ms_per_byte: float, working_set_bytes: float, excess_ms: float) -> CacheSpill:
        """The capacity that explains a model's measured decode ``excess_ms`` over its summed sub-blocks."""
        if gamma_ms_per_byte <= 0 or excess_ms <= 0:
            return cls(max(gamma_ms_per_byte, 0.0), float(working_set_bytes))  # additive: no spill
        return cls(gamma_ms_per_byte, max(0.0, working_set_bytes - excess_ms / gamma_ms_per_byte))

    @classmethod
    def fit_two_points(cls, w_small: float, excess_small: float, w_large: float, excess_large: float) -> CacheSpill:
        """Slope and capacity through two whole models' measured decode excess over their summed sub-blocks
        (the smaller model's excess clamped at 0: below the capacity); no spill when the larger one's
        excess does not exceed the smaller one's (the slope is then not measurable: additive)."""
        if not w_large > w_small:
            raise ConfigError(f"CacheSpill.fit_two_points: the working sets must differ ({w_small} >= {w_large})")
        lo = max(0.0, excess_small)
        if excess_large <= lo:
            return cls(0.0, float(w_large))
        gamma = (excess_large - lo) / (w_large - w_small)
        return cls(gamma, max(0.0, w_large - excess_large / gamma))


def subblock_working_set_bytes(spec: ParentSpec, sub: AttentionConfig | FFNConfig, scenario: Scenario) -> float:
    """Bytes a decode step of one sub-block touches: its weights + its KV cache at the mean decode context."""
    from puzzlekit.accounting import attention_params, block_kv_bytes_per_token, dtype_bytes, ffn_params

    if sub.no_op:
        return 0.0
    w = dtype_bytes(scenario.dtype)
    if isinstance(sub, AttentionConfig):
        ctx = scenario.prefill + scenario.decode / 2
        return attention_params(spec, sub) * w + block_kv_bytes_per_token(spec, sub, scenario.dtype) * ctx * scenario.batch
    return ffn_params(spec, sub) * w


def non_block_working_set_bytes(spec: ParentSpec, scenario: Scenario) -> float:
    """Bytes of the non-block weights a decode step touches (the LM head; the embedding only if untied)."""
    from puzzlekit.accounting import dtype_bytes

    w = dtype_bytes(scenario.dtype)
    return (spec.vocab_size * spec.hidden_size + spec.hidden_size) * w


def working_set_bytes(arch: Architecture, scenario: Scenario) -> float:
    """Decode working set of a whole model: every sub-block's (see :func:`subblock_working_set_bytes`) + the LM head."""
    return non_block_working_set_bytes(arch.parent, scenario) + sum(
        subblock_working_set_bytes(arch.parent, s, scenario) for b in arch.blocks for s in (b.attention, b.ffn))


def measure_spill_gamma(spec: ParentSpec, scenario: Scenario, *, at_bytes: float, sub: FFNConfig | None = None,
                        device: str | None = None, threads: int | None = None, repeats: int = 3,
                        seed: int = 0) -> tuple[float, dict[str, float]]:
    """Extra decode ms per byte of working set: a sub-block's decode marginal in a stack whose working
    set is about ``at_bytes`` (pass the parent's: the slope is measured where the models live) minus its
    marginal in a small, cache-resident stack (1 and 4 copies), over its working set.

    The transition is gradual (measured, ffn:512 of the demo parent, 1.13 MiB a copy: 3.7 ms per copy
    up to ~5 MiB, ~4.4 ms at 9 MiB, ~6 ms at 13-18 MiB, 4-6 ms beyond 27 MiB, where prefetching DRAM
    streams catch up), so the correction linearises it around the parent's size.
    Returns (gamma in ms per byte, details).
    """
    sub = sub or FFNConfig.swiglu(spec.intermediate_size)
    ws = subblock_working_set_bytes(spec, sub, scenario)
    mid = min(64, max(6, int(round(at_bytes / max(ws, 1.0)))))
    n_lo, n_hi = max(4, mid - 4), mid + 4
    small = time_subblock(spec, sub, scenario, device=device, threads=threads, n_lo=1, n_hi=4, warmup=1,
                          repeats=repeats, seed=seed)
    big = time_subblock(spec, sub, scenario, device=device, threads=threads, n_lo=n_lo, n_hi=n_hi, warmup=1,
                        repeats=repeats, seed=seed)
    gamma = max(0.0, big.decode_ms - small.decode_ms) / ws
    return gamma, {"sub": sub.short(), "in_cache_decode_ms": small.decode_ms, "spilled_decode_ms": big.decode_ms,
                   "working_set_mib": ws / 2**20, "copies": [n_lo, n_hi], "at_mib": at_bytes / 2**20}
