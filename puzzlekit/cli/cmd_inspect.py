"""``puzzlekit inspect``: an architecture's layers, totals and attention-free runs."""

from __future__ import annotations

import argparse

from ..accounting import attention_params, block_kv_bytes_per_token, count, ffn_params
from ..architecture import Architecture
from .common import BUILTIN_CONFIGS, fmt_bytes, fmt_num, print_json, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show an architecture: per-layer blocks, totals, attention-free runs",
        description="Read a config.json (Llama, Qwen2, Mistral or Nemotron-NAS), a model folder, or a built-in "
        f"name ({', '.join(BUILTIN_CONFIGS)}) and print its per-layer table and totals.",
    )
    p.add_argument("config", metavar="CONFIG_OR_DIR")
    p.add_argument("--dtype", choices=["bf16", "fp8", "fp16", "fp32"], default="bf16",
                   help="dtype for weight bytes and KV bytes (default bf16)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def describe(arch: Architecture, dtype: str) -> dict:
    """The ``inspect --json`` object."""
    c = count(arch, dtype)
    spec = arch.parent
    layers = []
    for i, b in enumerate(arch.blocks):
        layers.append({
            "layer": i,
            "attention": {"kind": b.attention.kind, "num_kv_heads": b.attention.num_kv_heads},
            "ffn": {"kind": b.ffn.kind, "intermediate_size": b.ffn.intermediate_size},
            "params": attention_params(spec, b.attention) + ffn_params(spec, b.ffn),
            "kv_bytes_per_token": block_kv_bytes_per_token(spec, b.attention, dtype),
        })
    return {
        "num_layers": arch.num_layers,
        "num_params": c.num_params,
        "block_params": c.block_params,
        "non_block_params": c.non_block_params,
        "dtype": dtype,
        "weight_bytes": c.weight_bytes,
        "kv_bytes_per_token": c.kv_bytes_per_token,
        "attention_free_runs": [list(r) for r in arch.attention_free_runs()],
        "ffn_runs": [list(r) for r in arch.ffn_runs()],
        "hidden_size": spec.hidden_size,
        "num_attention_heads": spec.num_attention_heads,
        "vocab_size": spec.vocab_size,
        "layers": layers,
    }


def run(args: argparse.Namespace) -> int:
    arch = Architecture.from_config(resolve_config(args.config))
    d = describe(arch, args.dtype)
    if args.json:
        print_json(d)
        return 0
    print(f"{args.config}: {d['num_layers']} layers, hidden {d['hidden_size']}, "
          f"{d['num_attention_heads']} query heads, vocab {d['vocab_size']}")
    print(f"{'layer':>5}  {'attention':<12} {'ffn':<16} {'params':>10}")
    for row in d["layers"]:
        a, f = row["attention"], row["ffn"]
        att = f"gqa kv={a['num_kv_heads']}" if a["kind"] == "gqa" else a["kind"]
        ffn = f"swiglu {f['intermediate_size']}" if f["kind"] == "swiglu" else f["kind"]
        print(f"{row['layer']:>5}  {att:<12} {ffn:<16} {fmt_num(row['params']):>10}")
    print(f"params: {fmt_num(d['num_params'])} ({d['num_params']:,}); weights at {args.dtype}: "
          f"{fmt_bytes(d['weight_bytes'])}; KV cache per token: {fmt_bytes(d['kv_bytes_per_token'])}")
    runs = d["attention_free_runs"]
    print("attention-free runs: " + (", ".join(f"{a}-{b}" for a, b in runs) if runs else "none"))
    return 0
