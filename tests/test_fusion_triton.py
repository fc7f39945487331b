"""The Triton wide-SwiGLU kernel against the torch reference, in Triton's CPU interpreter."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from puzzlekit.errors import ConfigError  # noqa: E402
from puzzlekit.fusion import triton_swiglu as ts  # noqa: E402


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    yield


# odd sizes exercise the masks on every edge; 1 token is the decode case
@pytest.mark.parametrize("shape", [(1, 48, 96), (7, 40, 70), (33, 64, 130), (2, 16, 16)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_kernel_matches_torch_reference(interpret, shape, dtype, tol):
    m, k, n = shape
    g = torch.Generator().manual_seed(m * 1000 + n)
    x = torch.randn(m, k, generator=g).to(dtype)
    wg = (torch.randn(n, k, generator=g) / k**0.5).to(dtype)
    wu = (torch.randn(n, k, generator=g) / k**0.5).to(dtype)
    out = ts.swiglu_gate_up(x, wg, wu)
    assert out.dtype == dtype and out.shape == (m, n)
    ref = ts.swiglu_reference(x.float(), wg.float(), wu.float())
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err <= tol, f"relative error {err:.2e} > {tol}"


def test_kernel_keeps_leading_dims_and_strides(interpret):
    x = torch.randn(2, 3, 32)
    wg_full = torch.randn(50, 64)
    wg = wg_full[:, :32]  # non-contiguous rows
    wu = torch.randn(50, 32)
    out = ts.swiglu_gate_up(x, wg, wu)
    assert out.shape == (2, 3, 50)
    torch.testing.assert_close(out, ts.swiglu_reference(x, wg, wu), rtol=1e-5, atol=1e-5)


def test_wide_swiglu_uses_torch_on_cpu_and_matches(interpret):
    x = torch.randn(4, 32)
    wg, wu, wd = torch.randn(64, 32), torch.randn(64, 32), torch.randn(32, 64)
    ref = torch.nn.functional.linear(ts.swiglu_reference(x, wg, wu), wd)
    torch.testing.assert_close(ts.wide_swiglu(x, wg, wu, wd), ref)
    torch.testing.assert_close(ts.wide_swiglu(x, wg, wu, wd, use_triton=True), ref, rtol=1e-4, atol=1e-4)


def test_kernel_refuses_bad_input(interpret):
    with pytest.raises(ConfigError, match="intermediate"):
        ts.swiglu_gate_up(torch.randn(2, 16), torch.randn(8, 16), torch.randn(8, 12))
    with pytest.raises(ConfigError, match="dtype"):
        ts.swiglu_gate_up(torch.randn(2, 16), torch.randn(8, 16).half(), torch.randn(8, 16).half())


def test_unavailable_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert not ts.triton_available("cpu")
    with pytest.raises(ConfigError, match="TRITON_INTERPRET"):
        ts.swiglu_gate_up(torch.randn(2, 16), torch.randn(8, 16), torch.randn(8, 16))


@pytest.mark.gpu
def test_kernel_on_gpu_bf16():
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("needs a CUDA GPU")
    x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16)
    wg = torch.randn(8192, 1024, device="cuda", dtype=torch.bfloat16) / 32
    wu = torch.randn(8192, 1024, device="cuda", dtype=torch.bfloat16) / 32
    out = ts.swiglu_gate_up(x, wg, wu)
    ref = ts.swiglu_reference(x.float(), wg.float(), wu.float())
    assert ((out.float() - ref).abs().max() / ref.abs().max()) < 2e-2
