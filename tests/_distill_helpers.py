"""Tiny parent/child pairs for the distillation tests (a real FFN pruning of a real Llama)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_parent(seed: int = 0, layers: int = 2, vocab: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg)
    # make the parent's distribution peaked so the child has something to learn
    with torch.no_grad():
        m.lm_head.weight.mul_(8.0)
    return m.eval()


def pruned_child(parent: LlamaForCausalLM, keep: int = 24, reinit_ffn: bool = False) -> LlamaForCausalLM:
    """The parent with every FFN cut to its first ``keep`` channels (weights copied; re-drawn at random
    with ``reinit_ffn``, as a child whose FFNs start untrained)."""
    cfg = LlamaConfig(**{**parent.config.to_dict(), "intermediate_size": keep})
    child = LlamaForCausalLM(cfg)
    sd = {}
    for k, v in parent.state_dict().items():
        if k.endswith(("gate_proj.weight", "up_proj.weight")):
            v = v[:keep]
        elif k.endswith("down_proj.weight"):
            v = v[:, :keep]
        if reinit_ffn and ".mlp." in k:
            v = torch.randn_like(v) * 0.05
        sd[k] = v.clone()
    child.load_state_dict(sd)
    return child


def token_rows(n: int, seq: int, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq), generator=g)
