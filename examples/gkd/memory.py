"""Memory per GPU of GKD under FSDP2 for Llama-3.3-Nemotron-Super-49B (child) healed against
Llama-3.3-70B-Instruct (parent), bf16, on 8 and 16 GPUs -- computed from the two architectures
(``puzzlekit.distill.memory``; the child is the published Super-49B config shipped with puzzlekit).

    python examples/gkd/memory.py                       # micro-batch 1 x 4096 tokens per GPU
    python examples/gkd/memory.py --seq-len 8192 --gpus 8 16 32
"""

from __future__ import annotations

import argparse

from puzzlekit.accounting import model_params
from puzzlekit.architecture import Architecture
from puzzlekit.cli.common import builtin_config_path
from puzzlekit.distill.memory import fsdp_memory


def table(gpus: list[int], micro_batch: int, seq_len: int) -> str:
    child = Architecture.from_config(builtin_config_path("super-49b"))
    parent = Architecture.homogeneous(child.parent)  # Llama-3.3-70B: 80 x (GQA 8 KV heads, FFN 28672)
    cols = [(g, ac) for g in gpus for ac in (True, False)]
    mems = [fsdp_memory(child, parent, gpus=g, micro_batch=micro_batch, seq_len=seq_len, activation_checkpointing=ac)
            for g, ac in cols]
    head = " | ".join(f"{g} GPUs, {'AC' if ac else 'no AC'}" for g, ac in cols)
    lines = [f"child {model_params(child) / 1e9:.2f}B parameters, parent {model_params(parent) / 1e9:.2f}B; "
             f"micro-batch {micro_batch} x {seq_len} tokens per GPU; GiB per GPU (AC: activation checkpointing)",
             "", f"| | {head} |", "|---|" + "---|" * len(cols)]
    for i, (name, _) in enumerate(mems[0].rows()):
        vals = " | ".join(f"{m.rows()[i][1]:.1f}" for m in mems)
        lines.append(f"| {name} | {vals} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=4096)
    a = ap.parse_args()
    print(table(a.gpus, a.micro_batch, a.seq_len))
