"""Exact parameter, weight-byte and KV-cache accounting.

Counts follow the model definition (``puzzlekit.model``) tensor by tensor:

* GQA attention: ``q: H·n_h·d``, ``k, v: H·n_kv·d`` each, ``o: n_h·d·H``, its
  RMSNorm ``H`` (+ biases when the parent has them);
* linear attention / linear FFN: one ``H×H`` matrix and its RMSNorm ``H``;
* SwiGLU FFN: ``gate, up: H·I`` each, ``down: I·H``, its RMSNorm ``H``;
* a no-op sub-block has nothing, not even its norm;
* outside the blocks: embeddings ``V·H``, the final norm ``H``, the LM head
  ``V·H`` unless tied to the embeddings.

KV cache per token: ``2 · n_kv · d`` elements for each GQA layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .architecture import DTYPE_BYTES, Architecture, ParentSpec
from .blocks import AttentionConfig, BlockConfig, FFNConfig
from .errors import ConfigError

__all__ = [
    "attention_params",
    "ffn_params",
    "block_params",
    "non_block_params",
    "model_params",
    "dtype_bytes",
    "weight_bytes",
    "kv_bytes_per_token",
    "block_kv_bytes_per_token",
    "ModelCounts",
    "count",
]


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype`` (``bf16``, ``fp16``, ``fp8``, ``fp32``)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}") from None


def attention_params(spec: ParentSpec, att: AttentionConfig) -> int:
    """Parameters of an attention sub-block, its input RMSNorm included."""
    H, nh, d = spec.hidden_size, spec.num_attention_heads, spec.head_dim
    if att.no_op:
        return 0
    if att.linear:
        return H * H + H
    kv = att.num_kv_heads
    n = H * nh * d + 2 * H * kv * d + nh * d * H + H
    if spec.qkv_bias:
        n += nh * d + 2 * kv * d
    if spec.o_bias:
        n += H
    return n


def ffn_params(spec: ParentSpec, ffn: FFNConfig) -> int:
    """Parameters of an FFN sub-block, its RMSNorm included."""
    H = spec.hidden_size
    if ffn.no_op:
        return 0
    if ffn.linear:
        return H * H + H
    i = ffn.intermediate_size
    n = 3 * H * i + H
    if spec.mlp_bias:
        n += 2 * i + H
    return n


def block_params(spec: ParentSpec, block: BlockConfig) -> int:
    """Parameters of one layer."""
    return attention_params(spec, block.attention) + ffn_params(spec, block.ffn)


def non_block_params(spec: ParentSpec) -> int:
    """Embeddings, final norm and (unless tied) the LM head."""
    V, H = spec.vocab_size, spec.hidden_size
    return V * H + H + (0 if spec.tie_word_embeddings else V * H)


def model_params(arch: Architecture) -> int:
    """Total parameters of an architecture."""
    return non_block_params(arch.parent) + sum(block_params(arch.parent, b) for b in arch.blocks)


def weight_bytes(arch: Architecture, dtype: str = "bf16", non_block_dtype: str | None = None) -> float:
    """Bytes of all weights; ``non_block_dtype`` for embeddings / LM head (default: ``dtype``)."""
    nb = dtype_bytes(non_block_dtype or dtype)
    b = dtype_bytes(dtype)
    return non_block_params(arch.parent) * nb + sum(block_params(arch.parent, x) for x in arch.blocks) * b


def block_kv_bytes_per_token(spec: ParentSpec, att: AttentionConfig, dtype: str = "bf16") -> float:
    """KV-cache bytes one token costs in one layer (0 without GQA attention)."""
    if not att.has_kv_cache:
        return 0
    return 2 * att.num_kv_heads * spec.head_dim * dtype_bytes(dtype)


def kv_bytes_per_token(arch: Architecture, dtype: str = "bf16") -> float:
    """KV-cache bytes one token costs over all layers."""
    return sum(block_kv_bytes_per_token(arch.parent, b.attention, dtype) for b in arch.blocks)


@dataclass(frozen=True)
class ModelCounts:
    """Totals of an architecture at a dtype."""

    num_params: int
    block_params: int
    non_block_params: int
    weight_bytes: float
    kv_bytes_per_token: float


def count(arch: Architecture, dtype: str = "bf16") -> ModelCounts:
    """All totals at once."""
    bp = sum(block_params(arch.parent, b) for b in arch.blocks)
    nb = non_block_params(arch.parent)
    return ModelCounts(bp + nb, bp, nb, (bp + nb) * dtype_bytes(dtype), kv_bytes_per_token(arch, dtype))
