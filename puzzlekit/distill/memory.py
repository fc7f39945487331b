"""Memory per GPU of GKD under FSDP2, computed from the child's and the parent's architectures.

What :func:`~puzzlekit.distill.distill` holds with ``fsdp=True`` on ``N`` GPUs, bf16 mixed precision:

* child: fp32 parameters, fp32 gradients and AdamW's two fp32 moments, each sharded ``1/N``
  (``4 + 4 + 8`` bytes per parameter / N);
* parent: frozen, sharded ``1/N`` in its own dtype (bf16 when loaded with ``dtype=torch.bfloat16``);
* gathered weights (transient): FSDP2 all-gathers one unit (a decoder layer, the embedding or the LM
  head) at a time in bf16; in the child's backward the unit being differentiated and the prefetched
  next one are whole, plus the unit's unsharded fp32 gradient before its reduce-scatter;
* activations of a micro-batch of ``n = micro_batch x seq_len`` tokens (per GPU).  Saved for backward,
  per token and layer (bf16 = 2 bytes; RMSNorm keeps its fp32 input; flash attention keeps q, k, v,
  its output and an fp32 log-sum-exp per head, not the T x T scores -- the accounting of Korthikanti
  et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", arXiv:2205.05198):
  GQA ``6H + 2(n_h d + 2 n_kv d) + 2 n_h d + 4 n_h``; SwiGLU ``6H + 8I``; linear sub-block ``6H + 2H``.
  With activation checkpointing only each layer's bf16 input is kept, plus one layer's full set while it
  is recomputed.  The parent's hidden states are kept for the cosine term (``L_p + 1`` of ``2H``);
* logits: the child's and the parent's (bf16) and four fp32 ``n x V`` tensors of the KL term.

Each line is that category's peak; the total adds them, so it is an upper bound (the categories do
not all peak at the same moment).  Memory the CUDA allocator fragments, NCCL buffers and the CUDA
context (a few GiB) come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..accounting import block_params, dtype_bytes
from ..architecture import Architecture, ParentSpec
from ..blocks import BlockConfig
from ..errors import ConfigError

__all__ = ["FSDPMemory", "fsdp_memory", "activation_bytes_per_token"]

GIB = 1024 ** 3


@dataclass(frozen=True)
class FSDPMemory:
    """Bytes per GPU, by category (see the module docstring)."""

    gpus: int
    tokens: int
    activation_checkpointing: bool
    child_params: float
    child_grads: float
    child_optimizer: float
    parent_params: float
    gathered: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return (self.child_params + self.child_grads + self.child_optimizer + self.parent_params + self.gathered
                + self.activations + self.logits)

    def rows(self) -> list[tuple[str, float]]:
        """``(category, GiB)`` lines, the total last."""
        return [("child parameters (fp32, 1/N)", self.child_params / GIB),
                ("child gradients (fp32, 1/N)", self.child_grads / GIB),
                ("child AdamW moments (2 x fp32, 1/N)", self.child_optimizer / GIB),
                ("parent parameters (bf16, 1/N)", self.parent_params / GIB),
                ("gathered units (transient)", self.gathered / GIB),
                ("activations", self.activations / GIB),
                ("logits and KL", self.logits / GIB),
                ("total (upper bound)", self.total / GIB)]


def activation_bytes_per_token(spec: ParentSpec, block: BlockConfig, act_bytes: float = 2.0) -> float:
    """Bytes one layer saves for backward per token (without checkpointing)."""
    H, nh, d = spec.hidden_size, spec.num_attention_heads, spec.head_dim
    norm = 4 * H + act_bytes * H  # RMSNorm: fp32 input and its output
    a, f = block.attention, block.ffn
    total = 0.0
    if a.linear:
        total += norm + act_bytes * H
    elif not a.no_op:
        kv = a.num_kv_heads
        total += norm + act_bytes * (nh * d + 2 * kv * d) + act_bytes * nh * d + 4 * nh
    if f.linear:
        total += norm + act_bytes * H
    elif not f.no_op:
        total += norm + 4 * act_bytes * f.intermediate_size  # gate, up, silu(gate), their product
    return total


def _units(arch: Architecture) -> list[int]:
    """Parameters of each FSDP unit: the decoder layers, the embedding and (untied) the LM head."""
    p = arch.parent
    units = [block_params(p, b) for b in arch.blocks]
    units.append(p.vocab_size * p.hidden_size)
    if not p.tie_word_embeddings:
        units.append(p.vocab_size * p.hidden_size)
    return units


def fsdp_memory(child: Architecture, parent: Architecture | None = None, *, gpus: int, micro_batch: int = 1,
                seq_len: int = 4096, activation_checkpointing: bool = True, parent_dtype: str = "bf16",
                compute_dtype: str = "bf16", cosine: bool = True) -> FSDPMemory:
    """Bytes per GPU for GKD of ``child`` toward ``parent`` (default: the homogeneous parent of the
    child's spec) on ``gpus`` GPUs, ``micro_batch`` rows of ``seq_len`` tokens per GPU."""
    if gpus < 1 or micro_batch < 1 or seq_len < 1:
        raise ConfigError(f"fsdp_memory: gpus={gpus}, micro_batch={micro_batch}, seq_len={seq_len}; all must be >= 1")
    parent = parent or Architecture.homogeneous(child.parent)
    spec, pspec = child.parent, parent.parent
    cb, pb = dtype_bytes(compute_dtype), dtype_bytes(parent_dtype)
    cu, pu = _units(child), _units(parent)
    pc = sum(cu) + spec.hidden_size  # + the final norm (in the root)
    pp = sum(pu) + pspec.hidden_size
    n = micro_batch * seq_len
    # child backward: the unit being differentiated and the prefetched one (bf16) + its fp32 gradient;
    # parent forward (no grad): one unit at a time
    gathered = max(max(cu) * (2 * cb + 4), max(pu) * pb)
    per_layer = [activation_bytes_per_token(spec, b, cb) for b in child.blocks]
    if activation_checkpointing:
        acts = n * (len(child.blocks) * cb * spec.hidden_size + max(per_layer))
    else:
        acts = n * sum(per_layer)
    if cosine:
        acts += n * (parent.num_layers + 1) * pb * pspec.hidden_size
    logits = n * spec.vocab_size * (cb + pb + 4 * 4)
    return FSDPMemory(gpus=gpus, tokens=n, activation_checkpointing=activation_checkpointing,
                      child_params=4 * pc / gpus, child_grads=4 * pc / gpus, child_optimizer=8 * pc / gpus,
                      parent_params=pb * pp / gpus, gathered=gathered, activations=acts, logits=logits)
