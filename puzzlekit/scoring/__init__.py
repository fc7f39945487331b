"""Replace-1-block scoring (KL, LM loss, cosine distance, top-k agreement) with prefix reuse,
and multi-replacement validation of the summed scores.  See ``docs/bld.md``."""

from .importance import LayerImportance, layer_importance
from .replace1 import (
    METRICS,
    ScoringError,
    candidate_layer,
    random_choices,
    score_architectures,
    score_library,
    spearman,
    validate_additivity,
)

__all__ = ["LayerImportance", "layer_importance", "METRICS", "ScoringError", "candidate_layer", "random_choices", "score_architectures", "score_library", "spearman",
           "validate_additivity"]
