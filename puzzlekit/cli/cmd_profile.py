"""``puzzlekit profile``: analytic block costs for a scenario, and ``profile calibrate``.

::

    puzzlekit profile PARENT_CONFIG --hardware h100-sxm --dtype fp8 --batch 256 \\
        --prefill 1000 --decode 200 [--tp 1] [--space SPACE | --library LIB.json] -o LIB.json
    puzzlekit profile calibrate NVLABS_FOLDER|MEASUREMENTS.json [--hardware h100-sxm] [-o PROFILE.json]
    puzzlekit profile PARENT_CONFIG --profiler measured --hardware local-cpu --dtype fp32 -o LIB.json
    puzzlekit profile PARENT_CONFIG --engine llamacpp --dtype fp16 --batch 1 --prefill 128 --decode 32 -o LIB.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..architecture import ParentSpec, Scenario
from ..engines import get_engine
from ..errors import ConfigError
from .common import fmt_bytes, print_json, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="write analytic block costs (latency, memory, params) for a scenario into a library; or calibrate",
        description="`profile PARENT_CONFIG ... -o LIB.json`: cost every block of a search space (or of --library) "
        "under a scenario with the roofline model and write a block library. "
        "`profile calibrate SOURCE`: fit the roofline's factors to measured runtimes (an NVlabs block library "
        "folder, or a measurements JSON from benchmarks/profile_hardware.py) and report the error.",
    )
    p.add_argument("targets", nargs="+", metavar="PARENT_CONFIG | calibrate SOURCE",
                   help="a parent config.json / model folder / built-in name; or 'calibrate' and its source")
    p.add_argument("--hardware", help="catalogue name (h100-sxm, h100-pcie, h200, a100-sxm-80gb, l40s, b200, "
                   "local-cpu) or a hardware-profile JSON (default for calibrate: the source's hardware)")
    p.add_argument("--dtype", choices=["bf16", "fp8", "fp16", "fp32"], default="bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prefill", type=int, default=1024, help="prompt tokens per sequence")
    p.add_argument("--decode", type=int, default=128, help="generated tokens per sequence")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--space", help="search space: JSON file ({'attention': [...], 'ffn': [...]} or block keys) "
                   "or 'default' (Puzzle's space)")
    p.add_argument("--library", metavar="LIB.json", help="add the costs to this existing library instead")
    p.add_argument("--memory-convention", choices=["plain", "nvlabs"], default="plain",
                   help="memory_mib = weights + KV cache of the batch (plain), or NVIDIA's Puzzle convention")
    p.add_argument("--profiler", choices=["analytic", "measured"], default="analytic",
                   help="analytic roofline of --hardware (default), or time the sub-blocks with torch on this "
                        "machine (--dtype fp32/bf16/fp16, --tp 1; --hardware is then a label, e.g. local-cpu)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="measured: torch's CPU threads (default: torch's); llamacpp: llama.cpp threads (default 1: "
                        "stable on a shared machine)")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="timings per sub-block, median (measured: default 7); timed runs per model (llamacpp: default 5)")
    p.add_argument("--parent", metavar="CONFIG", help="calibrate: the parent's config (default: Llama-3.3-70B dims)")
    p.add_argument("--fit", default="compute_efficiency,attention_efficiency,kernel_overhead",
                   help="calibrate: comma-separated factors to fit (at most three recommended)")
    p.add_argument("-o", "--output", help="profile: the library to write; calibrate: the hardware profile to write")
    p.add_argument("--engine", help="keep only blocks this serving engine serves (vllm, sglang, tensorrt-llm, llamacpp, "
                   "transformers); with llamacpp, time every sub-block in llama.cpp on this CPU instead of the roofline")
    p.add_argument("--copies", default="2,10", metavar="LO,HI",
                   help="llamacpp: layers per timing model for the repeated-block method (default 2,10)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="llamacpp: time by the process's CPU time (default; leaves out other processes' turns on a "
                        "shared machine; one thread) or by elapsed time")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.targets[0] == "calibrate":
        return run_calibrate(args)
    if len(args.targets) != 1:
        raise ConfigError(f"profile takes one PARENT_CONFIG, got {args.targets}; for calibration: profile calibrate SOURCE")
    return run_profile(args)


def run_profile(args: argparse.Namespace) -> int:
    from ..library import BlockLibrary
    from ..profilers.analytic import NVLABS_MEMORY, PLAIN_MEMORY
    from ..profilers.library import library_from_space, parse_space, profile_library

    if not args.output:
        raise ConfigError("profile: -o/--output LIB.json is required")
    if args.engine and get_engine(args.engine).name == "llamacpp":
        if args.profiler == "measured":
            raise ConfigError("profile: --engine llamacpp already measures (in llama.cpp); --profiler measured times "
                              "torch sub-blocks instead: give one of them")
        return run_profile_llamacpp(args)
    if not args.hardware:
        raise ConfigError("profile: --hardware is required (e.g. h100-sxm, local-cpu, or a profile JSON)")
    if args.space and args.library:
        raise ConfigError("profile: give --space or --library, not both")
    spec = ParentSpec.from_hf_config(resolve_config(args.targets[0]))
    hw_name = Path(args.hardware).stem if args.hardware.endswith(".json") else args.hardware
    sc = Scenario(hardware=hw_name, dtype=args.dtype, batch=args.batch, prefill=args.prefill,
                  decode=args.decode, tp=args.tp)
    if spec.num_attention_heads % args.tp:
        raise ConfigError(f"--tp {args.tp} must divide the parent's {spec.num_attention_heads} attention heads")
    memory = NVLABS_MEMORY if args.memory_convention == "nvlabs" else PLAIN_MEMORY
    if args.library:
        lib = BlockLibrary.load(args.library)
        if lib.parent is None:
            lib.parent = spec
    else:
        lib = library_from_space(spec, _served(parse_space(args.space, spec), args.engine))
    if args.profiler == "measured":
        repeats = 7 if args.repeats is None else args.repeats
        if repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {repeats}")
        opts = {"repeats": repeats, **({"threads": args.threads} if args.threads else {})}
        lib = profile_library(lib, sc, args.hardware, parent=spec, memory=memory, profiler="measured",
                              measure_options=opts)
    else:
        lib = profile_library(lib, sc, args.hardware, parent=spec, memory=memory)
    lib.save(args.output)
    table = lib.costs[sc.name]
    if args.json:
        print_json({"scenario": sc.name, "output": args.output, "non_block": lib.meta["non_block_costs"][sc.name],
                    "blocks": {k: v for k, v in table.items()}})
        return 0
    print(f"{args.output}: {len(lib.blocks)} blocks costed under {sc.name} ({len(lib)} candidates, "
          f"{lib.num_layers} layers)")
    print(f"{'block':<34} {'runtime_ms':>11} {'prefill_ms':>11} {'decode_ms':>10} {'memory':>11} {'params':>12}")
    for b in lib.blocks:
        c = table[b.key]
        print(f"{b.key:<34} {c['runtime_ms']:>11.3f} {c['prefill_ms']:>11.3f} {c['decode_ms']:>10.3f} "
              f"{fmt_bytes(c['memory_mib'] * 2**20):>11} {int(c['num_params']):>12,}")
    nb = lib.meta["non_block_costs"][sc.name]
    print(f"non-block (embeddings, LM head): runtime {nb['runtime_ms']:.3f} ms, {fmt_bytes(nb['memory_mib'] * 2**20)}")
    return 0


def _served(blocks: list, engine: str | None) -> list:
    """The blocks ``engine`` serves (all without an engine); says how many were dropped."""
    if not engine:
        return blocks
    from ..engines import block_served

    kept = [b for b in blocks if block_served(engine, b)]
    if len(kept) < len(blocks):
        print(f"note: {len(blocks) - len(kept)} block(s) of the space dropped: {get_engine(engine).title} does not serve "
              "them (puzzlekit engines)", file=sys.stderr)
    if not kept:
        raise ConfigError(f"no block of the space is served by {get_engine(engine).title}")
    return kept


def run_profile_llamacpp(args: argparse.Namespace) -> int:
    from ..library import BlockLibrary
    from ..profilers.library import library_from_space, parse_space
    from ..profilers.llamacpp import LlamaCppProfiler

    if args.dtype not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"--engine llamacpp times fp32, fp16 or bf16 GGUF weights, not {args.dtype}")
    if args.tp != 1:
        raise ConfigError("--engine llamacpp times one CPU process (--tp 1)")
    try:
        lo, hi = (int(x) for x in args.copies.split(","))
    except ValueError:
        raise ConfigError(f"--copies {args.copies!r}: give LO,HI layer counts, e.g. 2,10") from None
    spec = ParentSpec.from_hf_config(resolve_config(args.targets[0]))
    sc = Scenario(hardware=args.hardware or "llamacpp-cpu", dtype=args.dtype, batch=args.batch, prefill=args.prefill,
                  decode=args.decode)
    if args.library:
        lib = BlockLibrary.load(args.library)
        if lib.parent is None:
            lib.parent = spec
    else:
        lib = library_from_space(spec, _served(parse_space(args.space, spec), "llamacpp"))
    if args.threads is None:
        args.threads = 1
    if args.repeats is None:
        args.repeats = 5
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    if args.clock == "cpu" and args.threads != 1:
        raise ConfigError("--clock cpu needs --threads 1 (llama.cpp's worker threads spin while they wait); "
                          "use --clock wall with more threads")
    prof = LlamaCppProfiler(spec, [sc], dtype=args.dtype, threads=args.threads, n_lo=lo, n_hi=hi,
                            repeats=args.repeats, clock=args.clock, log=None if args.json else print)
    if not args.json:
        print(f"timing {len({s for b in lib.blocks for s in (b.attention, b.ffn)})} sub-blocks in llama.cpp under "
              f"{sc.name} ({args.threads} thread(s), {lo} and {hi} copies, {args.repeats} repeats)")
    prof.profile_library(lib)
    lib.save(args.output)
    nb = lib.meta["non_block_costs"][sc.name]
    if args.json:
        print_json({"scenario": sc.name, "output": args.output, "non_block": nb,
                    "blocks": dict(lib.costs[sc.name])})
        return 0
    print(f"{args.output}: {len(lib.blocks)} blocks costed under {sc.name} (llama.cpp, measured); non-block "
          f"{nb['runtime_ms']:.2f} ms (prefill {nb['prefill_ms']:.2f}, decode {nb['decode_ms']:.2f})")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from ..profilers.calibrate import calibrate_nvlabs, fit_factors
    from ..profilers.hardware import save_hardware_profile

    if len(args.targets) != 2:
        raise ConfigError("usage: puzzlekit profile calibrate SOURCE (an NVlabs library folder or a measurements JSON)")
    src = Path(args.targets[1])
    if not src.exists():
        raise ConfigError(f"{src}: no such file or folder")
    fit = tuple(x.strip() for x in args.fit.split(",") if x.strip())
    parent = ParentSpec.from_hf_config(resolve_config(args.parent)) if args.parent else None
    if src.is_dir() or src.name == "block_library.json":
        res = calibrate_nvlabs(src, parent=parent, hardware=args.hardware, fit=fit)
    else:
        from ..profilers.measured import load_measurements  # imports no torch for JSON reading

        ms, hw_default = load_measurements(src)
        res = fit_factors(ms, args.hardware or hw_default, fit)
    if args.output:
        save_hardware_profile(res.hardware, args.output)
    if args.json:
        print_json(res.to_dict())
        return 0
    for row in res.table():
        print(f"{row['label']:<44} measured {row['measured_ms']:>10.3f} ms  predicted {row['predicted_ms']:>10.3f} ms"
              f"  {row['error_pct']:+6.1f} %")
    fitted = ", ".join(f"{k}={v:.4g}" for k, v in res.fitted.items())
    print(f"fitted: {fitted}")
    print(f"MAPE: {100 * res.mape_before:.2f} % before, {100 * res.mape_after:.2f} % after "
          f"(max {100 * res.max_abs_pct_error:.2f} %) over {len(res.labels)} measurements")
    if args.output:
        print(f"hardware profile -> {args.output} (use it as --hardware {args.output})")
    return 0
