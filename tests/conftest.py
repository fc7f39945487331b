"""Shared fixtures: paths to the reference data in ../shared (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PUZZLEKIT_SHARED", ROOT.parent / "shared"))
NVLABS_LIB = SHARED / "data" / "puzzle-llama-3.3-70b-block-library"
PUBLISHED = ROOT / "puzzlekit" / "configs"
SUPER_49B = PUBLISHED / "llama-3.3-nemotron-super-49b-v1.config.json"
ULTRA_253B = PUBLISHED / "llama-3.1-nemotron-ultra-253b-v1.config.json"


@pytest.fixture(scope="session")
def nvlabs_lib_path() -> Path:
    if not (NVLABS_LIB / "block_library.json").exists():
        pytest.skip(f"NVIDIA's block library not found at {NVLABS_LIB}")
    return NVLABS_LIB


@pytest.fixture(scope="session")
def nvlabs_library(nvlabs_lib_path):
    from puzzlekit.formats import import_nvlabs

    return import_nvlabs(nvlabs_lib_path)


def tiny_llama_config(**over) -> dict:
    """A tiny Llama config.json dict (used across tests)."""
    d = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 4,
        "vocab_size": 128,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    }
    d.update(over)
    return d
