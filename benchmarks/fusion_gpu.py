"""GPU: the Triton wide-SwiGLU kernel against torch, and a fused layer against its unfused FFNs.

Ready to run on a CUDA machine (skips cleanly without one):

    python benchmarks/fusion_gpu.py                 # bf16, Super/Ultra-like widths
    python benchmarks/fusion_gpu.py --hidden 8192 --json

For each (tokens, intermediate size): ``silu(x·Wgᵀ)⊙(x·Wuᵀ)`` by the Triton kernel vs
torch (two cuBLAS GEMMs + SiLU + multiply), correctness checked first, then
timed with ``triton.testing.do_bench`` (median); ratios printed.  Then a run of
``--run`` FFNs of width ``--intermediate`` is timed sequentially (unfused) and as
one fused wide FFN (torch and Triton): the FFN Fusion speed-up on this GPU.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--intermediates", default="7168,28672,57344", help="comma-separated widths")
    ap.add_argument("--tokens", default="1,16,128,1024,4096", help="comma-separated token counts")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--run", type=int, default=8, help="FFNs in the fused-vs-unfused comparison")
    ap.add_argument("--intermediate", type=int, default=7168, help="width of each FFN of that run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("fusion_gpu: no CUDA device; nothing to measure (run this on a GPU machine)")
        return 0
    try:
        import triton.testing
    except ImportError:
        print("fusion_gpu: triton is not installed (pip install 'puzzlekit[triton]')")
        return 0
    from puzzlekit.fusion.triton_swiglu import swiglu_gate_up, swiglu_reference

    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    H = args.hidden
    rows = []
    for inter in (int(s) for s in args.intermediates.split(",")):
        wg = torch.randn(inter, H, device="cuda", dtype=dt) / H**0.5
        wu = torch.randn(inter, H, device="cuda", dtype=dt) / H**0.5
        for T in (int(s) for s in args.tokens.split(",")):
            x = torch.randn(T, H, device="cuda", dtype=dt)
            ref = swiglu_reference(x.float(), wg.float(), wu.float())
            err = float((swiglu_gate_up(x, wg, wu).float() - ref).norm() / ref.norm())
            t_tr = triton.testing.do_bench(lambda x=x, wg=wg, wu=wu: swiglu_gate_up(x, wg, wu))
            t_th = triton.testing.do_bench(lambda x=x, wg=wg, wu=wu: swiglu_reference(x, wg, wu))
            rows.append({"tokens": T, "intermediate": inter, "triton_ms": t_tr, "torch_ms": t_th,
                         "speedup": t_th / t_tr, "rel_error": err})
        del wg, wu

    # a run of FFNs: sequential (unfused) vs one wide FFN (torch, Triton)
    n, inter = args.run, args.intermediate
    ws = [(torch.randn(inter, H, device="cuda", dtype=dt) / H**0.5, torch.randn(inter, H, device="cuda", dtype=dt) / H**0.5,
           torch.randn(H, inter, device="cuda", dtype=dt) / inter**0.5) for _ in range(n)]
    wg = torch.cat([w[0] for w in ws]); wu = torch.cat([w[1] for w in ws]); wd = torch.cat([w[2] for w in ws], 1)  # noqa: E702

    def rms(x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype)

    def unfused(x):
        for g, u, d in ws:
            x = x + F.linear(F.silu(F.linear(rms(x), g)) * F.linear(rms(x), u), d)
        return x

    def fused_torch(x):
        h = rms(x)
        return x + F.linear(swiglu_reference(h, wg, wu), wd)

    def fused_triton(x):
        h = rms(x)
        return x + F.linear(swiglu_gate_up(h, wg, wu), wd)

    run_rows = []
    for T in (int(s) for s in args.tokens.split(",")):
        x = torch.randn(T, H, device="cuda", dtype=dt)
        t_u = triton.testing.do_bench(lambda x=x: unfused(x))
        t_ft = triton.testing.do_bench(lambda x=x: fused_torch(x))
        t_fk = triton.testing.do_bench(lambda x=x: fused_triton(x))
        run_rows.append({"tokens": T, "unfused_ms": t_u, "fused_torch_ms": t_ft, "fused_triton_ms": t_fk,
                         "speedup_fused_torch": t_u / t_ft, "speedup_fused_triton": t_u / t_fk})
    res = {"device": torch.cuda.get_device_name(), "dtype": args.dtype, "hidden": H, "kernel": rows,
           "run": {"ffns": n, "intermediate": inter, "rows": run_rows}}
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{res['device']}, {args.dtype}, hidden {H}")
    print(f"{'tokens':>7} {'width':>7} {'triton ms':>10} {'torch ms':>9} {'ratio':>6} {'rel err':>8}")
    for r in rows:
        print(f"{r['tokens']:>7} {r['intermediate']:>7} {r['triton_ms']:>10.4f} {r['torch_ms']:>9.4f} "
              f"{r['speedup']:>6.2f} {r['rel_error']:>8.1e}")
    print(f"run of {n} FFNs x {inter}: unfused vs one fused FFN of {n * inter}")
    for r in run_rows:
        print(f"{r['tokens']:>7} tokens: unfused {r['unfused_ms']:.4f} ms, fused torch {r['fused_torch_ms']:.4f} ms "
              f"({r['speedup_fused_torch']:.2f}x), fused triton {r['fused_triton_ms']:.4f} ms "
              f"({r['speedup_fused_triton']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
