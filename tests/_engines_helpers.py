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
    cfg = tiny_llama_config(**{"num_hidden_layers": len(blocks), "intermediate_size": 512, "vocab_size": 320, **over})
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


TOKENIZER_CORPUS = [TEXT] * 8 + ["The year 2024 had 366 days; 1234567 is a number. It's we'll they've I'm."] * 8


def byte_level_tokenizer(kind: str, out: Path, vocab_size: int = 600):
    """A byte-level BPE with SmolLM2's pre-tokenizer (``kind="smollm"``: Digits + ByteLevel) or Llama-3's
    (``"llama3"``: its Split regex + ByteLevel without regex, BOS added), trained on a little text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from puzzlekit.export.gguf import _LLAMA3_SPLIT

    tok = Tokenizer(models.BPE())
    if kind == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|bos|>", "<|eos|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if kind == "llama3":
        tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                           special_tokens=[("<|bos|>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>")
    fast.save_pretrained(str(out))
    return fast


def sentencepiece_style_tokenizer(out: Path, vocab_size: int = 900):
    """A Llama-2-style BPE with byte fallback (``<0xNN>`` tokens, ``▁`` for spaces, BOS added), trained on
    words as SentencePiece trains (merges never cross a ``▁``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out))
    return fast
