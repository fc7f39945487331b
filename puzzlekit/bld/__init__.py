"""Blockwise local distillation: train a library of candidate sub-blocks from one parent pass per batch.

See :func:`run_bld` and ``docs/bld.md``.
"""

from .engine import (
    BLDConfig,
    Unit,
    normalized_mse,
    parent_activations,
    plan_groups,
    plan_units,
    run_bld,
    unit_results,
)
from .space import FFN_FRACTIONS, SearchSpace, default_search_space

__all__ = [
    "BLDConfig",
    "SearchSpace",
    "Unit",
    "FFN_FRACTIONS",
    "default_search_space",
    "normalized_mse",
    "parent_activations",
    "plan_groups",
    "plan_units",
    "run_bld",
    "unit_results",
]
