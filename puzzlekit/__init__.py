"""puzzlekit: Puzzle-style architecture search that makes LLMs cheaper to serve.

The core (data model, block library, accounting, search front end) is pure
Python + numpy and imports no torch, so ``inspect`` and ``search`` start fast.
Names that need torch (the model, BLD, scoring, fusion, distillation) are
loaded lazily on first access.

Typical calls::

    import puzzlekit as pk
    arch = pk.Architecture.from_config("config.json")        # Llama / Qwen2 / Mistral / Nemotron-NAS
    lib = pk.import_nvlabs("puzzle-llama-3.3-70b-block-library/")
    sol = pk.search(lib, objective="kl_div", budgets={"memory_mib": (None, 80000)})
"""

from __future__ import annotations

import importlib
from typing import Any

from .accounting import (
    ModelCounts,
    block_kv_bytes_per_token,
    block_params,
    count,
    kv_bytes_per_token,
    model_params,
    weight_bytes,
)
from .architecture import Architecture, ParentSpec, Scenario
from .blocks import AttentionConfig, BlockConfig, FFNConfig
from .errors import (
    ConfigError,
    InfeasibleError,
    LibraryError,
    PuzzlekitError,
    SolverError,
    SolverUnavailableError,
    UnsafeInputError,
)
from .formats.modelopt import import_modelopt
from .formats.nvlabs import export_nvlabs, import_nvlabs
from .library import BlockLibrary, Candidate
from .nas import ffn_mult_to_intermediate_size, intermediate_size_to_ffn_mult

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access (PEP 562)
_LAZY: dict[str, str] = {
    "run_demo": "puzzlekit.demo",
    "PipelineConfig": "puzzlekit.pipeline",
    "run_bld": "puzzlekit.bld",
    "BLDConfig": "puzzlekit.bld",
    "SearchSpace": "puzzlekit.bld",
    "default_search_space": "puzzlekit.bld",
    "score_library": "puzzlekit.scoring",
    "validate_additivity": "puzzlekit.scoring",
    # Each subsystem adds its public names here as it lands, e.g.
    # "search": "puzzlekit.search",  "PuzzleForCausalLM": "puzzlekit.model".
    "find_fusable": "puzzlekit.fusion",
    "fuse_ffns": "puzzlekit.fusion",
    "FusionPlan": "puzzlekit.fusion",
    "make_plan": "puzzlekit.fusion",
    "find_ffn_runs": "puzzlekit.fusion",
    "fused_architecture": "puzzlekit.fusion",
    "dependency_matrix": "puzzlekit.fusion",
    "PuzzleConfig": "puzzlekit.model",
    "PuzzleForCausalLM": "puzzlekit.model",
    "load_parent": "puzzlekit.model",
    "assemble": "puzzlekit.model",
    "init_child_layer": "puzzlekit.model",
    "save_model": "puzzlekit.model",
    "save_block_weights": "puzzlekit.model",
    "load_block_weights": "puzzlekit.model",
    "build_token_data": "puzzlekit.data",
    "TokenData": "puzzlekit.data",
    "load_tokenizer": "puzzlekit.data",
    "profile_library": "puzzlekit.profilers",
    "architecture_cost": "puzzlekit.profilers",
    "block_costs": "puzzlekit.profilers",
    "get_hardware": "puzzlekit.profilers",
    "calibrate_nvlabs": "puzzlekit.profilers",
    # `puzzlekit.distill` is both the subpackage and, called, its distill() function (see its __init__)
    "distill": "puzzlekit.distill",
    "evaluate_kl": "puzzlekit.distill",
    "DistillConfig": "puzzlekit.distill",
    "GKDWeights": "puzzlekit.distill",
    "gkd_loss": "puzzlekit.distill",
    "match_layers": "puzzlekit.distill",
    "paired_samples": "puzzlekit.post",
    "staged_mix": "puzzlekit.post",
    "accuracy_reward": "puzzlekit.post",
    "format_reward": "puzzlekit.post",
    "estimate_pass_rates": "puzzlekit.post",
    "filter_by_pass_rate": "puzzlekit.post",
    "CurriculumSampler": "puzzlekit.post",
    "AdaptiveCurriculum": "puzzlekit.post",
}

__all__ = [
    "AttentionConfig",
    "FFNConfig",
    "BlockConfig",
    "ParentSpec",
    "Architecture",
    "Scenario",
    "BlockLibrary",
    "Candidate",
    "import_nvlabs",
    "import_modelopt",
    "export_nvlabs",
    "ffn_mult_to_intermediate_size",
    "intermediate_size_to_ffn_mult",
    "ModelCounts",
    "count",
    "model_params",
    "block_params",
    "weight_bytes",
    "kv_bytes_per_token",
    "block_kv_bytes_per_token",
    "PuzzlekitError",
    "ConfigError",
    "LibraryError",
    "InfeasibleError",
    "SolverError",
    "SolverUnavailableError",
    "UnsafeInputError",
    *_LAZY,
]


# The search front end is numpy-only and cheap to import.  It is bound eagerly because the
# function `puzzlekit.search` shares its name with the subpackage `puzzlekit.search`: bound
# lazily, any earlier `from puzzlekit.search import ...` would leave the attribute pointing at
# the module.  (`from puzzlekit.search import X` keeps working; it reads sys.modules.)
from .search import (  # noqa: E402
    Deployment,
    Problem,
    Solution,
    Status,
    max_throughput_at_fit,
    pareto_front,
    search,
    search_at_fit,
    search_diverse,
    sweep,
    throughput_at_fit,
)

__all__ += ["search", "search_diverse", "sweep", "pareto_front", "Problem", "Solution", "Status",
            "search_at_fit", "max_throughput_at_fit", "throughput_at_fit", "Deployment"]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'puzzlekit' has no attribute {name!r}")
    module = importlib.import_module(mod)
    # `distill` names a subpackage whose module is callable as its function: bind the module, so that
    # `pk.distill` is the same object whether or not `puzzlekit.distill` was imported first
    value = module if mod == f"puzzlekit.{name}" else getattr(module, name)
    globals()[name] = value
    return value


# Nemotron-NAS checkpoints load with transformers' Auto classes once `puzzlekit.model` is imported; so that
# `import puzzlekit` is enough, the classes are registered when transformers is imported (no torch now).
from ._autoregister import install as _install_autoregister  # noqa: E402

_install_autoregister()


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
