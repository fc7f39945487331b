"""``puzzlekit export CHILD --engine X [--format nemotron-nas|gguf] -o OUT``; ``puzzlekit engines``."""

from __future__ import annotations

import argparse

from .common import print_json, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a child for a serving engine (vLLM, SGLang, TensorRT-LLM, llama.cpp, transformers), checked first",
        description="Check that ENGINE serves every layer of CHILD (a model folder from `puzzlekit assemble`), then "
        "write it in the format ENGINE loads: a Nemotron-NAS folder (config.json with auto_map and "
        "configuration_decilm.py beside it, safetensors, tokenizer) or, for llama.cpp, a GGUF file. A child the "
        "engine does not serve is refused naming the layer, the sub-block and the engine; nothing is written.",
    )
    p.add_argument("child", metavar="CHILD_DIR",
                   help="the child model folder (Nemotron-NAS config + safetensors); with --check-only also a "
                        "config.json or a bundled name (super-49b, ultra-253b)")
    p.add_argument("--engine", required=True,
                   help="vllm, sglang, tensorrt-llm, llamacpp or transformers (`puzzlekit engines` shows the table)")
    p.add_argument("--format", dest="fmt", choices=["nemotron-nas", "gguf"],
                   help="default: what the engine loads (gguf for llamacpp, nemotron-nas otherwise)")
    p.add_argument("-o", "--out", metavar="OUT",
                   help="output folder (nemotron-nas; new or empty) or file ending in .gguf")
    p.add_argument("--tokenizer", metavar="DIR", help="folder of the Hugging Face tokenizer (default: CHILD_DIR)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="weights dtype (default: as stored; GGUF: fp32)")
    p.add_argument("--check-only", action="store_true", help="only check; write nothing")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)

    q = sub.add_parser("engines", help="the serving-engine compatibility table (sub-block kinds, widths, sources)")
    q.add_argument("--json", action="store_true", help="print the table as JSON")
    q.set_defaults(func=run_engines)


def run(args: argparse.Namespace) -> int:
    from ..architecture import Architecture
    from ..engines import get_engine
    from ..errors import ConfigError
    from ..export.nemotron_nas import check_export, export_model

    e = get_engine(args.engine)
    child = resolve_config(args.child)
    if not child.is_dir() and not args.check_only:
        raise ConfigError(f"{child}: not a model folder; give the child folder (puzzlekit assemble's --out), or check "
                          "a config alone with --check-only")
    arch = Architecture.from_config(child)
    tok = args.tokenizer or (str(child) if child.is_dir() else None)
    fmt = check_export(arch, e.name, args.fmt, tok, what=str(child), check_tokenizer=child.is_dir() or tok is not None)
    if not args.check_only and not args.out:
        raise ConfigError("export: give -o/--out (a new folder, or a .gguf file for llama.cpp), or --check-only")
    if args.check_only:
        out = None
    else:
        out = export_model(child, args.out, engine=e.name, fmt=fmt, tokenizer_dir=tok, dtype=args.dtype)
    summary = {"child": str(child), "engine": e.name, "format": fmt, "layers": arch.num_layers,
               "out": None if out is None else str(out), "served": True}
    if args.json:
        print_json(summary)
    elif out is None:
        note = "" if child.is_dir() or tok else "; no tokenizer checked (a config alone)"
        print(f"{child}: {e.title} serves all {arch.num_layers} layers ({fmt}){note}; nothing written (--check-only)")
    else:
        print(f"wrote {out} ({fmt}) for {e.title}: {arch.num_layers} layers, all served")
    return 0


def run_engines(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..engines import ENGINES, markdown_table

    if args.json:
        print_json({n: asdict(e) for n, e in ENGINES.items()})
        return 0
    print(markdown_table())
    for e in ENGINES.values():
        print(f"\n{e.title} ({e.name}, writes {e.format}):")
        for part, rules in (("attention", e.attention), ("ffn", e.ffn)):
            for kind, r in rules.items():
                print(f"  {part}.{kind}: {r.verdict} - {r.why} [{r.source}]")
        for label, r in (("widths", e.width_rule), ("attention bias", e.attention_bias), ("mlp bias", e.mlp_bias),
                         ("tokenizer", e.tokenizer)):
            if r is not None:
                print(f"  {label}: {r.verdict} - {r.why} [{r.source}]")
        if e.min_gqa_layers:
            print(f"  model: at least {e.min_gqa_layers} GQA layer [{e.min_gqa_source}]")
        for n in e.notes:
            print(f"  note: {n}")
    return 0
