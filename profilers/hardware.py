"""The hardware catalogue: datasheet peaks, memory, interconnect and roofline efficiency factors.

Figures are vendor datasheet numbers, dense (no sparsity): NVIDIA's H100 Tensor Core GPU datasheet (SXM and
PCIe), H200 datasheet, A100 80GB datasheet, L40S datasheet and the DGX B200 / Blackwell datasheet (per GPU):

=============  ============  ===========  ========  =======  ==============
GPU            bf16 TFLOP/s  fp8 TFLOP/s  HBM TB/s  memory   NVLink (1 dir)
=============  ============  ===========  ========  =======  ==============
h100-sxm       989           1979         3.35      80 GB    450 GB/s
h100-pcie      756           1513         2.0       80 GB    300 GB/s
h200           989           1979         4.8       141 GB   450 GB/s
a100-sxm-80gb  312           (none)       2.04      80 GB    300 GB/s
l40s           362           733          0.864     48 GB    32 GB/s (PCIe 4)
b200           2250          4500         8.0       180 GB   900 GB/s
=============  ============  ===========  ========  =======  ==============

A :class:`Hardware` also carries the roofline's efficiency factors (the
fraction of the peak that real kernels reach) and a per-kernel overhead.
Their defaults are typical values; :mod:`puzzlekit.profilers.calibrate` fits
them to measurements and :func:`save_hardware_profile` stores the result, so
``--hardware my-box.json`` reuses a calibrated profile.

``local-cpu`` has no datasheet: :func:`measure_local_cpu` times a matmul and a
large copy with torch (the same library the measured profiler uses) and caches
the result under ``$PUZZLEKIT_CACHE_DIR`` (default ``~/.cache/puzzlekit``).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from puzzlekit.errors import ConfigError, did_you_mean
from puzzlekit.io import atomic_write_json, read_json

__all__ = [
    "Hardware",
    "CATALOGUE",
    "get_hardware",
    "resolve_hardware",
    "measure_local_cpu",
    "save_hardware_profile",
    "load_hardware_profile",
    "cache_dir",
    "HARDWARE_PROFILE_FORMAT",
]

log = logging.getLogger(__name__)

HARDWARE_PROFILE_FORMAT = "puzzlekit.hardware-profile"
_GB = 1e9
_T = 1e12


@dataclass(frozen=True)
class Hardware:
    """One accelerator (or the local CPU) as the roofline sees it.

    ``peak_flops`` maps a dtype (``bf16``, ``fp16``, ``fp8``, ``fp32``) to dense
    FLOP/s; a dtype missing there runs at the fastest supported dtype wider than
    it (fp8 on an A100 runs at bf16 speed).  ``memory_bandwidth`` is bytes/s of
    device memory; ``memory_bytes`` the usable capacity (what the driver reports,
    e.g. 81559 MiB for an H100 80GB); ``link_bandwidth`` bytes/s one way per GPU
    for tensor-parallel all-reduce, ``link_latency`` seconds per all-reduce.

    Roofline factors: ``compute_efficiency`` and ``memory_efficiency`` (fractions
    of the peaks reached by real kernels), ``attention_efficiency`` (a further
    factor on both roofs for the attention core: FMHA / decode-attention kernels
    reach less of the peaks than GEMMs), ``kernel_overhead`` (seconds added per
    kernel launch), ``max_batched_tokens`` (tokens one prefill pass processes;
    the engine chunks longer prefills), ``eager`` (kernels are not fused: the
    per-kernel overhead is paid per eager PyTorch operator, as on ``local-cpu``).
    """

    name: str
    peak_flops: Mapping[str, float]
    memory_bandwidth: float
    memory_bytes: float
    link_bandwidth: float = 0.0
    link_latency: float = 10e-6
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.75
    attention_efficiency: float = 0.5
    kernel_overhead: float = 5e-6
    max_batched_tokens: int = 8192
    eager: bool = False
    description: str = ""
    source: str = "datasheet"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.peak_flops:
            raise ConfigError(f"hardware {self.name!r}: peak_flops must name at least one dtype")
        for k, v in self.peak_flops.items():
            if not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"hardware {self.name!r}: peak_flops[{k!r}] must be a positive number, got {v!r}")
        for n in ("memory_bandwidth", "memory_bytes"):
            v = getattr(self, n)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"hardware {self.name!r}: {n} must be a positive number, got {v!r}")
        # memory_efficiency may exceed 1 (up to 10): on a CPU the bandwidth is a DRAM copy's, and a
        # tiny model's sub-blocks read their weights from cache
        for n, top in (("compute_efficiency", 1.5), ("memory_efficiency", 10.0), ("attention_efficiency", 1.5)):
            v = getattr(self, n)
            if not (isinstance(v, (int, float)) and 0 < v <= top):
                raise ConfigError(f"hardware {self.name!r}: {n} must be in (0, {top}], got {v!r}")
        if not (isinstance(self.kernel_overhead, (int, float)) and self.kernel_overhead >= 0):
            raise ConfigError(f"hardware {self.name!r}: kernel_overhead must be >= 0 seconds, got {self.kernel_overhead!r}")
        if isinstance(self.max_batched_tokens, bool) or not isinstance(self.max_batched_tokens, int) \
                or self.max_batched_tokens < 1:
            raise ConfigError(f"hardware {self.name!r}: max_batched_tokens must be a positive integer")

    # dtype order from narrow to wide: a dtype without a peak runs at the next wider one
    _ORDER = ("fp8", "fp16", "bf16", "fp32")

    def flops(self, dtype: str) -> float:
        """Peak dense FLOP/s for matmuls in ``dtype``."""
        if dtype in self.peak_flops:
            return float(self.peak_flops[dtype])
        if dtype == "fp16" and "bf16" in self.peak_flops:
            return float(self.peak_flops["bf16"])
        order = self._ORDER
        if dtype not in order:
            raise ConfigError(f"hardware {self.name!r}: unknown dtype {dtype!r}; one of {list(order)}")
        for wider in order[order.index(dtype) + 1:]:
            if wider in self.peak_flops:
                return float(self.peak_flops[wider])
        return float(max(self.peak_flops.values()))

    def with_factors(self, **factors: Any) -> Hardware:
        """A copy with other roofline factors (``compute_efficiency=...`` etc.)."""
        return replace(self, **factors)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_flops"] = dict(self.peak_flops)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "hardware profile") -> Hardware:
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: a hardware profile must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known - {"format"}
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(f"{where}: unknown field {name!r}; {did_you_mean(name, known)}")
        try:
            return cls(**{k: v for k, v in d.items() if k != "format"})
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None


def _gpu(name: str, bf16: float, fp8: float | None, tbs: float, mem_bytes: float, link_gbs: float,
         desc: str) -> Hardware:
    peaks = {"bf16": bf16 * _T, "fp32": bf16 * _T / 2}  # fp32 matmuls via TF32 tensor cores ~ half of bf16
    if fp8:
        peaks["fp8"] = fp8 * _T
    return Hardware(name=name, peak_flops=peaks, memory_bandwidth=tbs * 1e12, memory_bytes=mem_bytes,
                    link_bandwidth=link_gbs * _GB, description=desc)


_MIB = 2**20
#: Datasheet entries.  Usable memory is what the driver reports (nvidia-smi), not the marketing GB.
CATALOGUE: dict[str, Hardware] = {
    h.name: h
    for h in (
        _gpu("h100-sxm", 989, 1979, 3.35, 81559 * _MIB, 450, "NVIDIA H100 SXM5 80GB HBM3"),
        _gpu("h100-pcie", 756, 1513, 2.0, 81559 * _MIB, 300, "NVIDIA H100 PCIe 80GB"),
        _gpu("h200", 989, 1979, 4.8, 143771 * _MIB, 450, "NVIDIA H200 SXM 141GB HBM3e"),
        _gpu("a100-sxm-80gb", 312, None, 2.039, 81920 * _MIB, 300, "NVIDIA A100 SXM4 80GB"),
        _gpu("l40s", 362, 733, 0.864, 46068 * _MIB, 32, "NVIDIA L40S 48GB GDDR6 (no NVLink: PCIe 4.0)"),
        _gpu("b200", 2250, 4500, 8.0, 183359 * _MIB, 900, "NVIDIA B200 180GB HBM3e"),
    )
}
_ALIASES = {"h100": "h100-sxm", "a100": "a100-sxm-80gb", "a100-sxm": "a100-sxm-80gb", "cpu": "local-cpu"}


def cache_dir() -> Path:
    """Where measured hardware profiles are cached (``$PUZZLEKIT_CACHE_DIR`` or ``~/.cache/puzzlekit``)."""
    return Path(os.environ.get("PUZZLEKIT_CACHE_DIR", Path.home() / ".cache" / "puzzlekit"))


def _local_cpu_cache_path(threads: int) -> Path:
    tag = f"{platform.node()}-{platform.machine()}-t{threads}".replace(os.sep, "_")
    return cache_dir() / "hardware" / f"local-cpu-{tag}.json"


def measure_local_cpu(*, threads: int | None = None, refresh: bool = False, cache: bool = True,
                      repeats: int = 7) -> Hardware:
    """Measure the local CPU's matmul FLOP/s (fp32, bf16) and memory bandwidth with torch.

    Peak compute: the median time of a 1024×1024×1024 fp32 matmul (and bf16 where
    the CPU has it); bandwidth: the median time of copying a 64 MiB tensor (read +
    write).  Medians over ``repeats`` runs after a warm-up, on ``threads`` threads
    (default: torch's current setting).  The result is cached per host and thread
    count; ``refresh=True`` measures again.
    """
    import torch

    n_threads = threads or torch.get_num_threads()
    path = _local_cpu_cache_path(n_threads)
    if cache and not refresh and path.exists():
        try:
            return load_hardware_profile(path)
        except ConfigError:
            log.warning("ignoring an unreadable cached CPU profile at %s", path)
    old = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        def median_time(fn, reps: int) -> float:
            fn()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            ts.sort()
            return ts[len(ts) // 2]

        peaks: dict[str, float] = {}
        n = 1024
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a = torch.randn(n, n, dtype=dt)
            b = torch.randn(n, n, dtype=dt)
            t = median_time(lambda a=a, b=b: torch.mm(a, b), repeats)
            peaks[name] = 2 * n**3 / t
        if peaks["bf16"] < peaks["fp32"]:  # no native bf16: matmuls run faster in fp32
            peaks["bf16"] = peaks["fp32"]
        peaks["fp16"] = peaks["bf16"]
        src = torch.empty(16 * 2**20, dtype=torch.float32).fill_(1.0)  # 64 MiB
        dst = torch.empty_like(src)
        t = median_time(lambda: dst.copy_(src), repeats)
        bw = 2 * src.numel() * 4 / t
        try:
            import psutil  # optional

            mem = float(psutil.virtual_memory().total)
        except ImportError:
            mem = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    finally:
        torch.set_num_threads(old)
    hw = Hardware(
        name="local-cpu", peak_flops=peaks, memory_bandwidth=bw, memory_bytes=mem,
        # CPU kernels reach most of a measured (not datasheet) peak; eager-mode op overhead is ~10 µs
        compute_efficiency=1.0, memory_efficiency=1.0, attention_efficiency=1.0, kernel_overhead=10e-6, max_batched_tokens=1 << 30, eager=True,
        description=f"{platform.processor() or platform.machine()} ({n_threads} threads, torch {torch.__version__})",
        source="micro-benchmark", extra={"threads": n_threads, "host": platform.node()},
    )
    if cache:
        save_hardware_profile(hw, path)
    return hw


def save_hardware_profile(hw: Hardware, path: str | os.PathLike) -> Path:
    """Write ``hw`` as a JSON hardware profile (atomically)."""
    path = Path(path)
    atomic_write_json(path, {"format": HARDWARE_PROFILE_FORMAT, **hw.to_dict()}, indent=1)
    return path


def load_hardware_profile(path: str | os.PathLike) -> Hardware:
    """Read a hardware profile written by :func:`save_hardware_profile` (or by hand)."""
    d = read_json(Path(path), what="hardware profile")
    if isinstance(d, Mapping) and d.get("format") not in (None, HARDWARE_PROFILE_FORMAT):
        raise ConfigError(f"{path}: format {d.get('format')!r} is not a puzzlekit hardware profile")
    return Hardware.from_dict(d, where=str(path))


def get_hardware(name: str) -> Hardware:
    """A catalogue entry by name (``h100-sxm``, ``h200``, ``b200``, ..., ``local-cpu``)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "local-cpu":
        return measure_local_cpu()
    try:
        return CATALOGUE[key]
    except KeyError:
        raise ConfigError(
            f"unknown hardware {name!r}; {did_you_mean(key, [*CATALOGUE, 'local-cpu'])} "
            "(or pass a hardware-profile JSON file)"
        ) from None


def resolve_hardware(hardware: str | os.PathLike | Hardware) -> Hardware:
    """A :class:`Hardware` from itself, a catalogue name, or a profile JSON path."""
    if isinstance(hardware, Hardware):
        return hardware
    s = str(hardware)
    if s.endswith(".json") or os.sep in s:
        if not Path(s).exists():
            raise ConfigError(f"{s}: no such hardware profile; give a catalogue name ({', '.join(CATALOGUE)}, "
                              "local-cpu) or a profile written by `puzzlekit profile calibrate`")
        return load_hardware_profile(s)
    return get_hardware(s)
