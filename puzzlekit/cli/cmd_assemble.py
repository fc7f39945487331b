"""``puzzlekit assemble``: build the child model folder from the parent and an architecture."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import print_json, resolve_parent_arg

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "assemble",
        help="assemble a child model (Hugging Face folder, Nemotron-NAS config) from the parent",
        description="Build the child from a parent folder (Llama / Qwen2 / Mistral / Nemotron-NAS, safetensors) "
        "or a .gguf file, and either a child config.json (--config; every layer initialised from the parent layer) or a block "
        "library with the search's choices (--library with --solution or --choices; trained candidate weights "
        "are used, the rest initialised from the parent). Writes OUT atomically.",
    )
    p.add_argument("parent", metavar="PARENT_DIR|FILE.gguf",
                   help="the parent's model folder, or a .gguf file (dequantized once into $PUZZLEKIT_CACHE/gguf)")
    p.add_argument("--config", metavar="CONFIG", help="child config.json (Nemotron-NAS) or model folder")
    p.add_argument("--library", metavar="LIB.json", help="block library holding the chosen candidates")
    p.add_argument("--solution", metavar="SOLUTION.json",
                   help="search result: an object with 'choices' [{'candidate': i}, ...] or a list of indices")
    p.add_argument("--choices", metavar="I,J,...", help="candidate indices in layer order (instead of --solution)")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="new (or empty) output folder")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="weights dtype (default: the parent's)")
    p.add_argument("--ffn-init", choices=["contribution", "truncate", "random"], default=None,
                   help="FFN pruning (default: contribution with --calib-text, else truncate)")
    p.add_argument("--kv-init", choices=["mean_pool", "first", "random"], default="mean_pool")
    p.add_argument("--calib-text", metavar="FILE",
                   help="text for contribution pruning, tokenized with the parent folder's tokenizer")
    p.add_argument("--calib-tokens", type=int, default=2048, help="calibration tokens to use (default 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", metavar="ENGINE",
                   help="refuse (before writing anything) a child this serving engine does not serve: vllm, sglang, "
                        "tensorrt-llm, llamacpp, transformers (for llama.cpp, then `puzzlekit export --format gguf`)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def _read_choices(args: argparse.Namespace) -> list[int]:
    if args.choices:
        try:
            return [int(c) for c in args.choices.split(",") if c.strip()]
        except ValueError:
            raise ConfigError(f"--choices {args.choices!r}: give comma-separated candidate indices") from None
    if not args.solution:
        raise ConfigError("--library needs --solution SOLUTION.json or --choices I,J,...")
    from ..io import read_json

    doc = read_json(args.solution, what="search solution")
    items = doc.get("choices") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{args.solution}: expected 'choices' (a list of {{'candidate': i}} or of indices)")
    out = []
    for k, c in enumerate(items):
        v = c.get("candidate") if isinstance(c, dict) else c
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{args.solution}: choices[{k}] has no integer candidate index")
        out.append(v)
    return out


def _calib_ids(args: argparse.Namespace):
    import torch

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.parent, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{args.parent}: no usable tokenizer for --calib-text ({e}); "
                          "add tokenizer files to the parent folder or use --ffn-init truncate") from None
    text = Path(args.calib_text).read_text(encoding="utf-8", errors="replace")
    ids = tok(text, return_tensors="pt").input_ids[0][: args.calib_tokens]
    if ids.numel() < 16:
        raise ConfigError(f"{args.calib_text}: only {ids.numel()} tokens; give at least a few hundred")
    seq = 256 if ids.numel() >= 256 else ids.numel()
    return ids[: (ids.numel() // seq) * seq].view(-1, seq).to(torch.long)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..architecture import Architecture
    from ..library import BlockLibrary
    from ..model import assemble, load_parent, save_model
    from .common import resolve_config

    if not args.config and not args.library:
        raise ConfigError("give the child as --config CONFIG, or --library LIB.json with --solution / --choices")
    dtype = getattr(torch, _DTYPES[args.dtype]) if args.dtype else None
    args.parent = resolve_parent_arg(args.parent)
    arch = Architecture.from_config(resolve_config(args.config)) if args.config else None
    library = choices = None
    if args.library:
        library = BlockLibrary.load(args.library)
        choices = _read_choices(args)
    if args.engine:  # before the parent is loaded and anything is written
        from ..engines import require_servable

        planned = arch
        if planned is None:
            from ..architecture import ParentSpec

            planned = library.architecture(choices, parent=library.parent or ParentSpec.from_hf_config(args.parent))
        require_servable(planned, args.engine, what=f"child for {args.out}")
    parent = load_parent(args.parent, dtype=dtype)
    init: dict = {"kv_method": args.kv_init, "seed": args.seed}
    if args.calib_text:
        init["calib_input_ids"] = _calib_ids(args)
    if args.ffn_init:
        init["ffn_method"] = args.ffn_init
    child = assemble(parent, arch, library, choices, init)
    if args.engine:
        from ..engines import require_servable

        require_servable(child.architecture, args.engine, what=f"child for {args.out}")
    out = save_model(child, args.out, tokenizer_from=args.parent)
    n = sum(p.numel() for p in child.parameters())
    summary = {"out": str(out), "num_layers": len(child.model.layers), "num_params": n,
               "parent_params": sum(p.numel() for p in parent.parameters())}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {out}: {summary['num_layers']} layers, {n:,} params "
              f"({n / summary['parent_params']:.1%} of the parent)")
    return 0
