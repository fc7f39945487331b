"""A Triton kernel for the wide SwiGLU of a fused FFN: ``silu(x·Wgᵀ) ⊙ (x·Wuᵀ)`` in one pass.

A fused FFN is wide (Ultra-253B: 425,984 intermediate channels in one layer),
so its gate and up GEMMs dominate.  The kernel computes both products for a
tile of tokens × channels from the same loaded ``x`` tile, accumulates in fp32,
applies SiLU and the product in registers and writes the intermediate
activation once (the unfused torch path writes gate, up, silu(gate) and the
product: four tensors of that width).  The down projection stays a cuBLAS GEMM.

* :func:`swiglu_gate_up` runs the kernel (CUDA, or Triton's interpreter when
  ``TRITON_INTERPRET=1``; ``tl.dot`` on bf16 is wrong in the interpreter, so test
  it there with fp32 / fp16 only).
* :func:`swiglu_reference` is the torch reference.
* :func:`wide_swiglu` picks the kernel automatically on CUDA when Triton can
  run, and torch otherwise.
* :func:`triton_available` says whether the kernel can run on a device.

The kernel is decorated lazily, on first use, so setting ``TRITON_INTERPRET``
after import still takes effect.
"""

import functools
import os

import torch
import torch.nn.functional as F

from ..errors import ConfigError

try:  # the kernel is defined only where triton is installed
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is an optional extra
    import types

    triton = None
    tl = types.SimpleNamespace(constexpr=None)  # lets the kernel's signature parse; it never runs

__all__ = ["triton_available", "swiglu_gate_up", "swiglu_reference", "wide_swiglu"]


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernel can run on ``device`` (CUDA with triton installed, or the interpreter)."""
    if triton is None:
        return False
    if _interpret():
        return True
    dev = torch.device(device) if device is not None else None
    return torch.cuda.is_available() and (dev is None or dev.type == "cuda")


def _gate_up_kernel_src(x_ptr, wg_ptr, wu_ptr, out_ptr, M, N, K,
                    stride_xm, stride_xk, stride_gn, stride_gk, stride_un, stride_uk, stride_om, stride_on,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # tl.full, not tl.zeros: only builtins work when TRITON_INTERPRET is set after triton was imported
    acc_g = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc_u = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (kk[None, :] < K), other=0.0)
        wmask = (kk[:, None] < K) & (offs_n[None, :] < N)
        wg = tl.load(wg_ptr + offs_n[None, :] * stride_gn + kk[:, None] * stride_gk, mask=wmask, other=0.0)
        wu = tl.load(wu_ptr + offs_n[None, :] * stride_un + kk[:, None] * stride_uk, mask=wmask, other=0.0)
        if IEEE:
            acc_g = tl.dot(x, wg, acc_g, input_precision="ieee")
            acc_u = tl.dot(x, wu, acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(x, wg, acc_g)
            acc_u = tl.dot(x, wu, acc_u)
    # silu(g) = g / (1 + exp(-g)); written out (tl.sigmoid is itself a jit function)
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    omask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             h.to(out_ptr.dtype.element_ty), mask=omask)


@functools.lru_cache(maxsize=2)
def _compiled(interpret: bool):
    # decorated here, not at import, so TRITON_INTERPRET set after import is honoured
    return triton.jit(_gate_up_kernel_src), triton


def _blocks(M: int, N: int, K: int) -> tuple[int, int, int]:
    bm = 16 if M <= 16 else 32 if M <= 32 else 64
    bn = 64 if N <= 64 else 128
    bk = 32 if K <= 32 else 64
    if _interpret():  # smaller tiles: the interpreter is numpy, one program at a time
        bm, bn, bk = min(bm, 32), min(bn, 32), min(bk, 32)
    return bm, bn, bk


def swiglu_gate_up(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor) -> torch.Tensor:
    """``silu(x @ gate_weightᵀ) * (x @ up_weightᵀ)`` with the Triton kernel.

    ``x``: ``(..., K)``; weights: ``(N, K)``; returns ``(..., N)`` in ``x``'s dtype.
    Accumulates in fp32 (IEEE fp32 products for fp32 inputs unless TF32 matmul is
    enabled in torch).  Raises :class:`ConfigError` when Triton cannot run here.
    """
    if not triton_available(x.device):
        raise ConfigError(
            f"the Triton SwiGLU kernel cannot run on {x.device}: it needs a CUDA GPU with triton installed "
            "(or TRITON_INTERPRET=1 for the CPU interpreter); use swiglu_reference / wide_swiglu instead"
        )
    if gate_weight.shape != up_weight.shape or gate_weight.shape[-1] != x.shape[-1]:
        raise ConfigError(
            f"swiglu_gate_up: gate {tuple(gate_weight.shape)} and up {tuple(up_weight.shape)} must both be "
            f"(intermediate, {x.shape[-1]}) for input {tuple(x.shape)}"
        )
    if gate_weight.dtype != x.dtype or up_weight.dtype != x.dtype:
        raise ConfigError(f"swiglu_gate_up: weights ({gate_weight.dtype}) and input ({x.dtype}) must share a dtype")
    kernel, triton = _compiled(_interpret())
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    M, K = x2.shape
    N = gate_weight.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out.reshape(*lead, N)
    bm, bn, bk = _blocks(M, N, K)
    ieee = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    kernel[grid](x2, gate_weight, up_weight, out, M, N, K,
                 x2.stride(0), x2.stride(1), gate_weight.stride(0), gate_weight.stride(1),
                 up_weight.stride(0), up_weight.stride(1),
                 out.stride(0), out.stride(1),
                 BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, IEEE=ieee)
    return out.reshape(*lead, N)


def swiglu_reference(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor) -> torch.Tensor:
    """The torch reference: ``silu(x @ gate_weightᵀ) * (x @ up_weightᵀ)``."""
    return F.silu(F.linear(x, gate_weight)) * F.linear(x, up_weight)


def wide_swiglu(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor,
                down_weight: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """A SwiGLU FFN without norm: ``down(silu(gate(x)) * up(x))``.

    ``use_triton=None`` uses the Triton kernel on CUDA when it can run (not under
    autograd: the kernel has no backward) and torch elsewhere.
    """
    if use_triton is None:
        use_triton = (x.is_cuda and triton_available(x.device) and not _interpret()
                      and not (torch.is_grad_enabled() and (x.requires_grad or gate_weight.requires_grad)))
    h = swiglu_gate_up(x, gate_weight, up_weight) if use_triton else swiglu_reference(x, gate_weight, up_weight)
    return F.linear(h, down_weight)
