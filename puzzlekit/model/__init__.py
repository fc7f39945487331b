"""The heterogeneous model: ``PuzzleForCausalLM`` (Nemotron-NAS compatible), parent loading,
child initialisation, assembly and block weights.  See ``docs/model-api.md``."""

from .assemble import BLOCK_FORMAT, assemble, load_block_weights, save_block_weights, save_model
from .init import FFN_METHODS, KV_METHODS, ffn_channel_scores, init_child_layer, normalized_mse
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
    "init_child_layer",
    "assemble",
    "save_block_weights",
    "load_block_weights",
    "save_model",
    "BLOCK_FORMAT",
    "ffn_channel_scores",
    "normalized_mse",
    "FFN_METHODS",
    "KV_METHODS",
    "causal_mask",
    "num_params",
    "flops_per_token",
]
