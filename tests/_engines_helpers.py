"""Shared helpers for the serving-engine tests: tiny children with every sub-block kind."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_llama_config

from puzzlekit import Architecture, AttentionConfig, BlockConfig, FFNConfig

A, F = AttentionConfig, FFNConfig

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and arrows "
        "of outrageous fortune, or to take arms against a sea of troubles and by opposing end them. 12 + 30 = 42; "
        "\"quotes\" and   spaces\n\nnew lines, tabs\tand UNICODE: café, naïve, 東京.") * 3


def tiny_arch(blocks, **over) -> Architecture:
    """A tiny Llama parent (hidden 64, 4 heads, 2 KV heads, FFN 512) with the given per-layer blocks."""
    cfg = tiny_llama_config(num_hidden_layers=len(blocks), intermediate_size=512, vocab_size=320, **over)
    return Architecture.from_config(cfg).with_blocks(blocks)


def tiny_model(blocks, seed: int = 0, scale: float = 0.08, **over):
    """A randomly initialised PuzzleForCausalLM of ``blocks`` (weights large enough to move the logits)."""
    import torch

    from puzzlekit.model import PuzzleForCausalLM

    torch.manual_seed(seed)
    m = PuzzleForCausalLM.from_architecture(tiny_arch(blocks, **over)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, scale)
            elif "norm" in name:
                p.uniform_(0.8, 1.2)
    return m


def demo_tokenizer(out: Path, vocab_size: int = 320):
    """The demo's tokenizer (puzzlekit.demo.teacher.train_tokenizer: byte-level BPE) trained on a little text."""
    from puzzlekit.demo.teacher import train_tokenizer

    return train_tokenizer([TEXT] * 4, vocab_size, out_dir=out)


ALL_KINDS = [
    BlockConfig(A.gqa(2), F.swiglu(512)),
    BlockConfig(A.make_no_op(), F.swiglu(256)),
    BlockConfig(A.gqa(1), F.make_linear()),
    BlockConfig(A.make_linear(), F.swiglu(100)),
    BlockConfig(A.gqa(4), F.make_no_op()),
    BlockConfig(A.make_no_op(), F.make_no_op()),
    BlockConfig(A.gqa(2), F.swiglu(768)),
]
