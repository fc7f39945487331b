"""The heterogeneous model: ``PuzzleForCausalLM`` (Nemotron-NAS compatible), parent loading,
child initialisation, assembly and block weights.  See ``docs/model-api.md``."""

from .modeling import (
    PuzzleConfig,
    PuzzleDecoderLayer,
    PuzzleForCausalLM,
    PuzzleModel,
    causal_mask,
    flops_per_token,
    make_layer,
    num_params,
)
from .parent import load_parent

__all__ = [
    "PuzzleConfig",
    "PuzzleForCausalLM",
    "PuzzleModel",
    "PuzzleDecoderLayer",
    "make_layer",
    "load_parent",
    "causal_mask",
    "num_params",
    "flops_per_token",
]
