"""Analytic costs of sub-blocks: parameters, bytes, KV cache, FLOPs, bytes moved, roofline latency.

Everything here is pure Python + numpy.  Parameter counts come from
:mod:`puzzlekit.accounting` (one source of truth); this module adds the work
a sub-block does when a :class:`~puzzlekit.Scenario` is served.

**The scenario.**  ``batch`` sequences each prefill ``prefill`` tokens, then
decode ``decode`` tokens one step at a time.  The engine processes the
``batch·prefill`` prompt tokens in passes of at most ``hw.max_batched_tokens``
tokens (chunked prefill), then runs ``decode`` steps of ``batch`` tokens; in
step ``s`` (1-based) every sequence attends to ``prefill + s`` cached tokens.
A cost such as ``runtime_ms`` is the time a sub-block takes over the whole
scenario (prefill + all decode steps), the quantity NVIDIA's block libraries
record and the Puzzle MIP sums (``throughput = batch·(prefill+decode) / Σ runtime``).

**Kernels** (per pass of ``T`` tokens; ``H`` hidden, ``n_q``/``n_kv`` heads of size ``d``,
``I`` intermediate; FLOPs of a matmul are ``2·m·n·k``):

* GQA attention: RMSNorm; QKV projection ``2·T·H·(n_q+2n_kv)·d``; RoPE + cache append;
  attention core ``4·n_q·d·Σ context`` (``QKᵀ`` and ``PV``; causal prefill:
  ``Σ context = P(P+1)/2`` per sequence) reading the KV cache; output projection
  ``2·T·n_q·d·H``.
* SwiGLU FFN (of any width: a fused FFN is a wide SwiGLU): RMSNorm; gate+up
  ``4·T·H·I``; SiLU·mul; down ``2·T·I·H``.
* linear attention / linear FFN: RMSNorm; one ``H×H`` matmul.  No-op: nothing.

Bytes moved per kernel: its weights (read once per pass) plus its activations
in and out (bf16; fp32 for fp32 scenarios) plus, for the attention core, the
KV cache it reads and writes.  Latency of a kernel (the roofline):
``max(flops / (η_c·peak_flops), bytes / (η_m·bandwidth)) + overhead``, with the
hardware's efficiency factors ``η_c``, ``η_m`` and per-kernel overhead.  Matmuls
run at the scenario's dtype peak; the attention core runs at bf16 (fp8
weights and KV cache are dequantised for it).

**Tensor parallelism** (``tp > 1``): matmul weights, heads, FLOPs and the KV
cache are split ``tp`` ways (KV heads are replicated when ``n_kv < tp``); norms
are replicated; each active attention / FFN sub-block ends with an all-reduce of
``T·H`` activations: ``link_latency + 2(tp-1)/tp · bytes / link_bandwidth`` (ring).
A fused FFN therefore saves both kernels and all-reduces.

**Memory** (:func:`subblock_memory_bytes`): weights plus, for GQA attention,
the KV cache of ``(batch + prefill_queue) × (prefill + decode)`` tokens, plus an
optional prefill-query buffer of ``(prefill+decode)·H`` elements — the formula of
NVIDIA's Puzzle tooling (``calculate_attention_memory``), whose Llama-3.3-70B
library is reproduced exactly by :data:`NVLABS_MEMORY`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from puzzlekit.accounting import (
    attention_params,
    block_kv_bytes_per_token,
    dtype_bytes,
    ffn_params,
    non_block_params,
)
from puzzlekit.architecture import Architecture, ParentSpec, Scenario
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
from puzzlekit.errors import ConfigError

from .hardware import Hardware, resolve_hardware

__all__ = [
    "Kernel",
    "SubBlockWork",
    "Latency",
    "MemoryConvention",
    "PLAIN_MEMORY",
    "NVLABS_MEMORY",
    "attention_work",
    "ffn_work",
    "non_block_work",
    "roofline_latency",
    "subblock_memory_bytes",
    "block_costs",
    "non_block_costs",
    "ArchitectureCost",
    "architecture_cost",
    "act_bytes",
    "MIB",
]

MIB = float(2**20)


def act_bytes(dtype: str) -> float:
    """Bytes per activation element: bf16 activations, fp32 only in fp32 scenarios."""
    return 4.0 if dtype == "fp32" else 2.0


def _attn_core_dtype(dtype: str) -> str:
    return "fp32" if dtype == "fp32" else "bf16"


@dataclass
class Kernel:
    """One kernel of a sub-block, over ``n`` passes (arrays of length ``n``)."""

    name: str
    flops: np.ndarray
    bytes: np.ndarray
    dtype: str

    @property
    def eager_launches(self) -> int:
        """Operator launches this kernel takes in eager PyTorch (``puzzlekit.model``), where nothing is fused."""
        return _EAGER_LAUNCHES.get(self.name, 1)

    def scaled(self, flops_div: float = 1.0, bytes_div: float = 1.0) -> Kernel:
        return Kernel(self.name, self.flops / flops_div, self.bytes / bytes_div, self.dtype)


#: Eager-mode op counts of the fused kernels a serving engine runs (RMSNorm: cast, pow, mean, add,
#: rsqrt, mul, cast, mul; q/k/v: three matmuls; RoPE: two rotate_half (2 slices, neg, cat) and
#: mul/mul/add each, plus the two cache concatenations; attention: SDPA and the head reshape copy;
#: SwiGLU: gate and up matmuls, then SiLU and multiply; residual adds are counted with the norm).
_EAGER_LAUNCHES = {"input_norm": 9, "post_attention_norm": 9, "final_norm": 8, "qkv_proj": 3,
                   "rope_cache": 16, "attention": 2, "gate_up_proj": 2, "silu_mul": 2}


@dataclass
class SubBlockWork:
    """The work of one sub-block in a scenario: kernels for the prefill passes and the decode steps.

    ``allreduce_bytes`` is the payload of the all-reduce at the end of each pass
    (0 without tensor parallelism or for a no-op sub-block).
    """

    kind: str
    params: int
    weight_bytes: float
    kv_bytes_per_token: float
    prefill: list[Kernel] = field(default_factory=list)
    decode: list[Kernel] = field(default_factory=list)
    prefill_passes: int = 0
    decode_steps: int = 0
    prefill_allreduce_bytes: float = 0.0
    decode_allreduce_bytes: float = 0.0
    tp: int = 1

    @property
    def num_kernels(self) -> int:
        """Kernels launched per pass."""
        return len(self.decode) or len(self.prefill)

    @property
    def prefill_flops(self) -> float:
        return float(sum(k.flops.sum() for k in self.prefill))

    @property
    def prefill_bytes(self) -> float:
        return float(sum(k.bytes.sum() for k in self.prefill))

    @property
    def decode_flops(self) -> float:
        """FLOPs of all decode steps together (per GPU under tensor parallelism)."""
        return float(sum(k.flops.sum() for k in self.decode))

    @property
    def decode_bytes(self) -> float:
        return float(sum(k.bytes.sum() for k in self.decode))

    def decode_step(self, step: int) -> tuple[float, float]:
        """``(flops, bytes)`` of decode step ``step`` (1-based): attention grows with the context."""
        if not 1 <= step <= self.decode_steps:
            raise ConfigError(f"decode step must be in 1..{self.decode_steps}, got {step}")
        return (float(sum(k.flops[step - 1] for k in self.decode)),
                float(sum(k.bytes[step - 1] for k in self.decode)))


def _passes(scenario: Scenario, hw_chunk: int) -> tuple[int, float]:
    """Number of prefill passes and tokens per pass."""
    total = scenario.batch * scenario.prefill
    if total == 0:
        return 0, 0.0
    n = max(1, math.ceil(total / hw_chunk))
    return n, total / n


def _arr(x: float | np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, dtype=float), (n,)).astype(float)


def _norm_kernel(name: str, T: float, H: int, a: float, n: int) -> Kernel:
    # read x, write y, read the weight; ~4 flops per element (square, sum, rsqrt-mul, mul)
    return Kernel(name, _arr(4.0 * T * H, n), _arr(2.0 * T * H * a + H * a, n), "fp32")


def _gemm(name: str, T: float, k: int, n_out: int, w: float, a: float, n: int, dtype: str) -> Kernel:
    return Kernel(name, _arr(2.0 * T * k * n_out, n), _arr(k * n_out * w + T * (k + n_out) * a, n), dtype)


def _tp_split(kernels: list[Kernel], tp: int) -> list[Kernel]:
    if tp == 1:
        return kernels
    out = []
    for k in kernels:
        if k.name.endswith("norm"):
            out.append(k)
        else:
            out.append(k.scaled(tp, tp))
    return out


def attention_work(spec: ParentSpec, att: AttentionConfig, scenario: Scenario, *,
                   max_batched_tokens: int = 8192, concat_cache: bool = False) -> SubBlockWork:
    """The work of an attention sub-block (GQA with any KV heads, linear, or no-op).

    ``concat_cache``: the KV cache grows by concatenation (eager PyTorch with a transformers
    ``DynamicCache``: ``torch.cat`` each decode step), so every step also reads the old cache and
    writes the new one (2 more passes over it) besides attention's read; a serving engine's paged
    cache appends in place (``False``).
    """
    dt = scenario.dtype
    w, a = dtype_bytes(dt), act_bytes(dt)
    H, nq, d = spec.hidden_size, spec.num_attention_heads, spec.head_dim
    params = attention_params(spec, att)
    kvpt = block_kv_bytes_per_token(spec, att, dt)
    work = SubBlockWork(att.kind, params, params * w, kvpt, tp=scenario.tp)
    if att.no_op:
        return work
    n_p, Tp = _passes(scenario, max_batched_tokens)
    D, B, P = scenario.decode, scenario.batch, scenario.prefill
    work.prefill_passes, work.decode_steps = n_p, D
    tp = scenario.tp
    if att.linear:
        for phase, n, T in (("prefill", n_p, Tp), ("decode", D, float(B))):
            if n == 0:
                continue
            ks = [_norm_kernel("input_norm", T, H, a, n), _gemm("linear", T, H, H, w, a, n, dt)]
            setattr(work, phase, _tp_split(ks, tp))
        if tp > 1:
            work.prefill_allreduce_bytes = Tp * H * a
            work.decode_allreduce_bytes = B * H * a
        return work

    nkv = att.num_kv_heads
    qkv_out = (nq + 2 * nkv) * d
    core_dt = _attn_core_dtype(dt)
    # KV heads per GPU: replicated when there are fewer KV heads than GPUs
    kv_share = max(1.0, nkv / tp) / nkv
    kv_tok = kvpt  # bytes one token's K and V take in this layer (all KV heads)
    # ---- prefill: causal attention over each sequence's own prompt
    if n_p:
        ctx_sum = B * P * (P + 1) / 2.0
        core_flops = 4.0 * nq * d * ctx_sum / n_p
        core_bytes = (2.0 * B * P * kv_tok + B * P * 2 * nq * d * a) / n_p  # write+read KV once; Q in, O out
        ks = [
            _norm_kernel("input_norm", Tp, H, a, n_p),
            _gemm("qkv_proj", Tp, H, qkv_out, w, a, n_p, dt),
            Kernel("rope_cache", _arr(6.0 * Tp * (nq + nkv) * d, n_p), _arr(2.0 * Tp * qkv_out * a, n_p), "fp32"),
            Kernel("attention", _arr(core_flops, n_p), _arr(core_bytes, n_p), core_dt),
            _gemm("o_proj", Tp, nq * d, H, w, a, n_p, dt),
        ]
        ks = _tp_split(ks, tp)
        if tp > 1:  # the KV share differs from the 1/tp split when KV heads are replicated
            ks[3] = Kernel("attention", ks[3].flops,
                           _arr((2.0 * B * P * kv_tok * kv_share + B * P * 2 * nq * d * a / tp) / n_p, n_p), core_dt)
            work.prefill_allreduce_bytes = Tp * H * a
        work.prefill = ks
    # ---- decode: step s attends to P + s cached tokens (its own included)
    if D:
        T = float(B)
        ctx = P + np.arange(1, D + 1, dtype=float)
        core_flops = 4.0 * nq * d * B * ctx
        core_bytes = B * ctx * kv_tok + B * kv_tok + B * 2 * nq * d * a
        if concat_cache:
            core_bytes = core_bytes + 2.0 * B * ctx * kv_tok
        ks = [
            _norm_kernel("input_norm", T, H, a, D),
            _gemm("qkv_proj", T, H, qkv_out, w, a, D, dt),
            Kernel("rope_cache", _arr(6.0 * T * (nq + nkv) * d, D), _arr(2.0 * T * qkv_out * a, D), "fp32"),
            Kernel("attention", core_flops, core_bytes, core_dt),
            _gemm("o_proj", T, nq * d, H, w, a, D, dt),
        ]
        ks = _tp_split(ks, tp)
        if tp > 1:
            ks[3] = Kernel("attention", ks[3].flops,
                           B * ctx * kv_tok * kv_share + B * kv_tok * kv_share + B * 2 * nq * d * a / tp, core_dt)
            work.decode_allreduce_bytes = T * H * a
        work.decode = ks
    return work


def ffn_work(spec: ParentSpec, ffn: FFNConfig, scenario: Scenario, *, max_batched_tokens: int = 8192) -> SubBlockWork:
    """The work of an FFN sub-block (SwiGLU of any width — fused FFNs included —, linear, or no-op)."""
    dt = scenario.dtype
    w, a = dtype_bytes(dt), act_bytes(dt)
    H = spec.hidden_size
    params = ffn_params(spec, ffn)
    work = SubBlockWork(ffn.kind, params, params * w, 0.0, tp=scenario.tp)
    if ffn.no_op:
        return work
    n_p, Tp = _passes(scenario, max_batched_tokens)
    D, B = scenario.decode, scenario.batch
    work.prefill_passes, work.decode_steps = n_p, D
    tp = scenario.tp
    for phase, n, T in (("prefill", n_p, Tp), ("decode", D, float(B))):
        if n == 0:
            continue
        if ffn.linear:
            ks = [_norm_kernel("post_attention_norm", T, H, a, n), _gemm("linear", T, H, H, w, a, n, dt)]
        else:
            inter = ffn.intermediate_size
            ks = [
                _norm_kernel("post_attention_norm", T, H, a, n),
                _gemm("gate_up_proj", T, H, 2 * inter, w, a, n, dt),
                Kernel("silu_mul", _arr(4.0 * T * inter, n), _arr(3.0 * T * inter * a, n), "fp32"),
                _gemm("down_proj", T, inter, H, w, a, n, dt),
            ]
        setattr(work, phase, _tp_split(ks, tp))
    if tp > 1:
        work.prefill_allreduce_bytes = Tp * H * a
        work.decode_allreduce_bytes = B * H * a
    return work


def non_block_work(spec: ParentSpec, scenario: Scenario, *, max_batched_tokens: int = 8192) -> SubBlockWork:
    """Embeddings, final norm and LM head.

    Logits are computed for the last prompt token of each sequence in prefill and
    for every decode step; the LM head is split ``tp`` ways (vocabulary-parallel).
    """
    dt = scenario.dtype
    w, a = dtype_bytes(dt), act_bytes(dt)
    H, V = spec.hidden_size, spec.vocab_size
    params = non_block_params(spec)
    work = SubBlockWork("non_block", params, params * w, 0.0, tp=scenario.tp)
    n_p, Tp = _passes(scenario, max_batched_tokens)
    D, B = scenario.decode, scenario.batch
    work.prefill_passes, work.decode_steps = n_p, D
    for phase, n, T, T_logits in (("prefill", n_p, Tp, B / max(n_p, 1)), ("decode", D, float(B), float(B))):
        if n == 0:
            continue
        ks = [
            Kernel("embed", _arr(0.0, n), _arr(T * H * (w + a), n), "fp32"),
            _norm_kernel("final_norm", T_logits, H, a, n),
            _gemm("lm_head", T_logits, H, V, w, a, n, dt),
        ]
        setattr(work, phase, _tp_split(ks, scenario.tp))
    return work


@dataclass(frozen=True)
class Latency:
    """Predicted time of one sub-block over a scenario, in milliseconds."""

    prefill_ms: float
    decode_ms: float
    compute_ms: float
    memory_ms: float
    overhead_ms: float
    allreduce_ms: float

    @property
    def runtime_ms(self) -> float:
        return self.prefill_ms + self.decode_ms

    def __add__(self, other: Latency) -> Latency:
        return Latency(*(x + y for x, y in zip(self._tuple(), other._tuple())))

    def _tuple(self) -> tuple[float, ...]:
        return (self.prefill_ms, self.decode_ms, self.compute_ms, self.memory_ms, self.overhead_ms, self.allreduce_ms)


ZERO_LATENCY = Latency(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _allreduce_s(nbytes: float, tp: int, hw: Hardware) -> float:
    if tp == 1 or nbytes == 0:
        return 0.0
    if hw.link_bandwidth <= 0:
        raise ConfigError(f"hardware {hw.name!r} has no link_bandwidth; tensor parallelism (tp={tp}) needs one")
    return hw.link_latency + 2.0 * (tp - 1) / tp * nbytes / hw.link_bandwidth


def roofline_latency(work: SubBlockWork, hw: Hardware) -> Latency:
    """The roofline latency of ``work`` on ``hw`` (efficiency factors and overhead included)."""
    bw = hw.memory_efficiency * hw.memory_bandwidth
    out = {"prefill": 0.0, "decode": 0.0}
    comp = mem = ovh = ar = 0.0
    for phase, kernels, n, ar_bytes in (("prefill", work.prefill, work.prefill_passes, work.prefill_allreduce_bytes),
                                        ("decode", work.decode, work.decode_steps, work.decode_allreduce_bytes)):
        t = 0.0
        for k in kernels:
            eff = hw.attention_efficiency if k.name == "attention" else 1.0
            tc = k.flops / (eff * hw.compute_efficiency * hw.flops(k.dtype))
            tm = k.bytes / (eff * bw)
            roof = np.maximum(tc, tm)
            launches = (k.eager_launches if hw.eager else 1) * len(k.flops)
            t += float(roof.sum()) + hw.kernel_overhead * launches
            comp += float(tc.sum())
            mem += float(tm.sum())
            ovh += hw.kernel_overhead * launches
        if kernels and work.tp > 1:
            a = _allreduce_s(ar_bytes, work.tp, hw) * n
            t += a
            ar += a
        out[phase] = t
    return Latency(out["prefill"] * 1e3, out["decode"] * 1e3, comp * 1e3, mem * 1e3, ovh * 1e3, ar * 1e3)


@dataclass(frozen=True)
class MemoryConvention:
    """What a sub-block's memory cost includes beyond its weights.

    ``prefill_queue``: sequences waiting for prefill whose KV cache is also
    allocated (the KV cache holds ``batch + prefill_queue`` sequences);
    ``prefill_query``: a buffer of ``(prefill+decode)·H`` elements per attention
    layer for the prefill query (engines with a fused Wqkv keep it).
    """

    prefill_queue: int = 0
    prefill_query: bool = False


#: Weights + the KV cache of exactly ``batch`` sequences.
PLAIN_MEMORY = MemoryConvention()
#: NVIDIA's Llama-3.3-70B library (Puzzle tooling, infery-llm style): reproduces all 16 ``memory_mib`` exactly.
#: (``prefill_queue=9, prefill_query=False`` also does for that library, which has one KV-head count only.)
NVLABS_MEMORY = MemoryConvention(prefill_queue=5, prefill_query=True)


def subblock_memory_bytes(spec: ParentSpec, sub: AttentionConfig | FFNConfig, scenario: Scenario,
                          convention: MemoryConvention = PLAIN_MEMORY) -> dict[str, float]:
    """Memory of one sub-block: ``{"weights", "kv_cache", "other", "total"}`` in bytes (per GPU under TP)."""
    dt = scenario.dtype
    w = dtype_bytes(dt)
    tp = scenario.tp
    if isinstance(sub, AttentionConfig):
        params = attention_params(spec, sub)
        kv = 0.0
        other = 0.0
        if sub.has_kv_cache:
            seq = scenario.prefill + scenario.decode
            share = max(1.0, sub.num_kv_heads / tp) / sub.num_kv_heads
            kv = block_kv_bytes_per_token(spec, sub, dt) * seq * (scenario.batch + convention.prefill_queue) * share
            if convention.prefill_query:
                other = seq * spec.hidden_size * w / tp
    elif isinstance(sub, FFNConfig):
        params, kv, other = ffn_params(spec, sub), 0.0, 0.0
    else:
        raise ConfigError(f"expected an AttentionConfig or FFNConfig, got {type(sub).__name__}")
    weights = params * w / tp if params else 0.0
    return {"weights": weights, "kv_cache": kv, "other": other, "total": weights + kv + other}


def block_costs(spec: ParentSpec, block: BlockConfig, scenario: Scenario, hardware: Hardware | str,
                *, memory: MemoryConvention = PLAIN_MEMORY) -> dict[str, float]:
    """Every cost of one block under a scenario, named as in NVIDIA's block libraries (plus more).

    NVIDIA's names: ``num_params``, ``memory_mib``, ``runtime_ms`` and their
    ``attention_*`` / ``ffn_*`` parts.  Added: ``prefill_ms``, ``decode_ms``,
    ``kv_bytes_per_token``, ``kv_cache_mib``, ``weight_bytes``, ``prefill_flops``,
    ``decode_flops``, ``prefill_bytes``, ``decode_bytes``, ``num_kernels``.
    """
    hw = resolve_hardware(hardware)
    out: dict[str, float] = {}
    tot = ZERO_LATENCY
    works = []
    for part, sub, fn in (("attention", block.attention, attention_work), ("ffn", block.ffn, ffn_work)):
        extra = {"concat_cache": hw.eager} if fn is attention_work else {}
        wk = fn(spec, sub, scenario, max_batched_tokens=hw.max_batched_tokens, **extra)
        works.append(wk)
        lat = roofline_latency(wk, hw)
        mem = subblock_memory_bytes(spec, sub, scenario, memory)
        out[f"{part}_num_params"] = float(wk.params)
        out[f"{part}_memory_mib"] = mem["total"] / MIB
        out[f"{part}_runtime_ms"] = lat.runtime_ms
        out[f"{part}_prefill_ms"] = lat.prefill_ms
        out[f"{part}_decode_ms"] = lat.decode_ms
        if part == "attention":
            out["kv_cache_mib"] = mem["kv_cache"] / MIB
        tot = tot + lat
    out["num_params"] = out["attention_num_params"] + out["ffn_num_params"]
    out["memory_mib"] = out["attention_memory_mib"] + out["ffn_memory_mib"]
    out["runtime_ms"] = tot.runtime_ms
    out["prefill_ms"] = tot.prefill_ms
    out["decode_ms"] = tot.decode_ms
    out["kv_bytes_per_token"] = float(works[0].kv_bytes_per_token)
    out["weight_bytes"] = float(sum(wk.weight_bytes for wk in works))
    out["prefill_flops"] = sum(wk.prefill_flops for wk in works)
    out["decode_flops"] = sum(wk.decode_flops for wk in works)
    out["prefill_bytes"] = sum(wk.prefill_bytes for wk in works)
    out["decode_bytes"] = sum(wk.decode_bytes for wk in works)
    out["num_kernels"] = float(sum(wk.num_kernels for wk in works))
    return out


def non_block_costs(spec: ParentSpec, scenario: Scenario, hardware: Hardware | str) -> dict[str, float]:
    """Costs outside the blocks (embeddings, final norm, LM head) under a scenario."""
    hw = resolve_hardware(hardware)
    wk = non_block_work(spec, scenario, max_batched_tokens=hw.max_batched_tokens)
    lat = roofline_latency(wk, hw)
    return {
        "num_params": float(wk.params),
        "memory_mib": wk.weight_bytes / scenario.tp / MIB,
        "runtime_ms": lat.runtime_ms,
        "prefill_ms": lat.prefill_ms,
        "decode_ms": lat.decode_ms,
        "weight_bytes": wk.weight_bytes,
    }


@dataclass(frozen=True)
class ArchitectureCost:
    """Whole-model prediction: the sum of the blocks plus the non-block part."""

    runtime_ms: float
    prefill_ms: float
    decode_ms: float
    blocks_runtime_ms: float
    non_block_runtime_ms: float
    memory_bytes: float
    weight_bytes: float
    kv_cache_bytes: float
    num_params: int
    kv_bytes_per_token: float
    sequential_subblocks: int
    allreduces_per_pass: int
    per_layer_ms: tuple[float, ...]

    def tokens_per_s(self, scenario: Scenario) -> float:
        """Generated + prompt tokens per second: ``batch·(prefill+decode) / runtime``."""
        return scenario.batch * (scenario.prefill + scenario.decode) / (self.runtime_ms / 1e3)

    def fits(self, hw: Hardware) -> bool:
        """Whether weights + KV cache fit the hardware's memory (per GPU)."""
        return self.memory_bytes <= hw.memory_bytes


def architecture_cost(arch: Architecture | Sequence[BlockConfig], scenario: Scenario, hardware: Hardware | str,
                      *, parent: ParentSpec | None = None, kv_tokens: int | None = None,
                      memory: MemoryConvention = PLAIN_MEMORY) -> ArchitectureCost:
    """Predict a whole architecture: latency (blocks + non-block), memory, sequential steps, all-reduces.

    ``kv_tokens`` sizes the KV cache by a token count instead of the scenario's
    ``batch × (prefill + decode)`` (e.g. 300_000 cached tokens for LN-Super).
    """
    hw = resolve_hardware(hardware)
    if isinstance(arch, Architecture):
        spec, blocks = arch.parent, list(arch.blocks)
    else:
        if parent is None:
            raise ConfigError("architecture_cost: pass an Architecture, or blocks together with parent=ParentSpec")
        spec, blocks = parent, list(arch)
    cache: dict[BlockConfig, dict[str, float]] = {}
    per_layer = []
    mem = weights = kv = 0.0
    kvpt = 0.0
    seqsub = ars = 0
    params = non_block_params(spec)
    tp = scenario.tp
    for b in blocks:
        if b not in cache:
            cache[b] = block_costs(spec, b, scenario, hw, memory=memory)
        c = cache[b]
        per_layer.append(c["runtime_ms"])
        params += int(c["num_params"])
        kvpt += c["kv_bytes_per_token"]
        for sub in (b.attention, b.ffn):
            if not sub.no_op:
                seqsub += 1
                ars += 1 if tp > 1 else 0
    nb = non_block_costs(spec, scenario, hw)
    w_el = dtype_bytes(scenario.dtype)
    weights = params * w_el / tp
    if kv_tokens is None:
        for b in blocks:
            m = subblock_memory_bytes(spec, b.attention, scenario, memory)
            kv += m["kv_cache"] + m["other"]
    else:
        kv = 0.0
        for b in blocks:
            if b.attention.has_kv_cache:
                share = max(1.0, b.attention.num_kv_heads / tp) / b.attention.num_kv_heads
                kv += kv_tokens * block_kv_bytes_per_token(spec, b.attention, scenario.dtype) * share
    mem = weights + kv
    blocks_ms = float(sum(per_layer))
    prefill = sum(cache[b]["prefill_ms"] for b in blocks) + nb["prefill_ms"]
    decode = sum(cache[b]["decode_ms"] for b in blocks) + nb["decode_ms"]
    return ArchitectureCost(
        runtime_ms=blocks_ms + nb["runtime_ms"], prefill_ms=prefill, decode_ms=decode,
        blocks_runtime_ms=blocks_ms, non_block_runtime_ms=nb["runtime_ms"], memory_bytes=mem,
        weight_bytes=weights, kv_cache_bytes=kv, num_params=params, kv_bytes_per_token=kvpt,
        sequential_subblocks=seqsub, allreduces_per_pass=ars, per_layer_ms=tuple(per_layer),
    )
