"""Global knowledge distillation (GKD) and continued pre-training of an assembled child.

    from puzzlekit.distill import DistillConfig, GKDWeights, distill, match_layers
    result = distill(child, parent, train_tokens, DistillConfig(max_steps=200, output_dir="runs/gkd",
                     save_every=50, eval_every=50), eval_tokens=held_out)

Under FSDP2 (``DistillConfig(fsdp=True)``, launched with torchrun) child and parent are sharded per
layer and checkpoints are sharded (:mod:`puzzlekit.distill.fsdp`); :func:`full_model` gathers the
child at the end and :func:`load_sharded` builds a model straight into its shards.

See ``examples/gkd`` for the recipe and ``docs/downstream.md`` for the flow.  The package is also
callable as its :func:`distill` (``puzzlekit.distill(child, parent, tokens, config)``), so ``pk.distill``
works whether or not ``puzzlekit.distill`` was imported first.
"""

from __future__ import annotations

import sys as _sys
import types as _types

from .checkpoint import latest_checkpoint
from .fsdp import full_model, load_sharded
from .loss import (
           GKDWeights,
           gkd_loss,
           hidden_cosine_loss,
           kl_to_parent,
           layer_pairs_for,
           lm_loss,
           match_layers,
)
from .trainer import DistillConfig, DistillResult, distill, evaluate_kl, warmup_cosine

__all__ = ["GKDWeights", "gkd_loss", "hidden_cosine_loss", "kl_to_parent", "layer_pairs_for", "lm_loss",
           "match_layers", "DistillConfig", "DistillResult", "distill", "evaluate_kl", "latest_checkpoint",
           "warmup_cosine", "full_model", "load_sharded"]


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        return distill(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
