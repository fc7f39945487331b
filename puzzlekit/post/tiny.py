"""Tiny models and tokenizers built in code (no hub), for examples, tests and CPU runs.

:func:`char_tokenizer` is a real ``transformers.PreTrainedTokenizerFast``
(backed by ``tokenizers``) with one token per character plus whole tokens for
the chat tags and ``<think>``/``</think>``, so TRL's trainers take it as they
take any tokenizer. :func:`tiny_llama` is a real ``LlamaForCausalLM``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["char_tokenizer", "tiny_llama", "CHAT_TAGS"]

#: Tags that are single tokens (not special: decoding keeps them).
CHAT_TAGS = ("<think>", "</think>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


def char_tokenizer(alphabet: str, *, model_max_length: int = 256) -> Any:
    """A character-level fast tokenizer over ``alphabet`` plus the chat tags.

    ``<|end|>`` is the end-of-sequence token (generation stops there),
    ``<pad>`` pads and ``<unk>`` stands for characters outside the alphabet.
    """
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import AddedToken, PreTrainedTokenizerFast

    chars = sorted(set(alphabet))
    if not chars:
        raise ConfigError("char_tokenizer: the alphabet is empty; pass the characters the data uses")
    vocab = {"<pad>": 0, "<unk>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                   pad_token="<pad>", unk_token="<unk>")
    fast.add_tokens([AddedToken(t, normalized=False, special=False) for t in CHAT_TAGS])
    fast.eos_token = "<|end|>"
    fast.padding_side = "left"  # generation pads on the left
    return fast


def tiny_llama(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               num_kv_heads: int = 2, intermediate_size: int = 192, max_position_embeddings: int = 256,
               seed: int = 0, pad_token_id: int | None = 0, eos_token_id: int | None = None) -> Any:
    """A randomly initialised ``transformers.LlamaForCausalLM`` of the given tiny size (fp32, CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                      tie_word_embeddings=False, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                      bos_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)
