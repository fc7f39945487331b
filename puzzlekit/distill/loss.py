"""The global knowledge-distillation (GKD) loss that heals an assembled child.

    L = w_cos · Σ_l mean_t (1 − cos(h_child[l], h_parent[π(l)]))
      + w_kl  · mean_t KL(p_parent ‖ p_child)            (over the vocabulary, temperature T, scaled by T²)
      + w_lm  · mean_t CE(child logits, next token)       (optional; 0 by default)

Layers are matched through the architecture: child layer ``l`` covers
``spans[l]`` consecutive parent layers (1 for an ordinary or removed layer,
more for a many-to-one replacement), so its output sits on the residual
stream at the same position as the output of parent layer
``spans[0] + … + spans[l] − 1``.  Puzzle's finding (arXiv 2411.19146, global knowledge distillation):
cosine + KL, no LM loss (LM loss alone made validation KL rise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["GKDWeights", "match_layers", "layer_pairs_for", "kl_to_parent", "hidden_cosine_loss", "lm_loss",
           "gkd_loss"]


@dataclass(frozen=True)
class GKDWeights:
    """Weights of the three terms of the GKD loss (Puzzle: cosine 1, KL 1, LM 0)."""

    cosine: float = 1.0
    kl: float = 1.0
    lm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cosine", "kl", "lm"):
            v = getattr(self, name)
            if not (v >= 0.0) or v != v:
                raise ConfigError(f"GKDWeights.{name}={v}: weights must be finite and >= 0")
        if self.cosine == self.kl == self.lm == 0.0:
            raise ConfigError("GKDWeights: every weight is 0; set at least one of cosine, kl, lm")

    @property
    def needs_parent(self) -> bool:
        """Whether the loss needs the parent's outputs (cosine or KL term active)."""
        return self.cosine > 0 or self.kl > 0


def match_layers(num_parent_layers: int, num_child_layers: int | None = None,
                 spans: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``(child_hidden_index, parent_hidden_index)`` pairs in ``output_hidden_states`` indexing.

    Index 0 is the embedding output, index ``i`` the output of layer
    ``i − 1``.  ``spans[l]`` is how many parent layers child layer ``l``
    replaces (default all 1, i.e. one-to-one, removed layers included).
    """
    if spans is None:
        if num_child_layers is None:
            num_child_layers = num_parent_layers
        if num_child_layers != num_parent_layers:
            raise ConfigError(f"match_layers: the child has {num_child_layers} layers and the parent "
                              f"{num_parent_layers}; pass spans=[parent layers per child layer] to match "
                              "many-to-one replacements")
        spans = [1] * num_parent_layers
    spans = [int(s) for s in spans]
    if any(s < 1 for s in spans) or sum(spans) != num_parent_layers:
        raise ConfigError(f"match_layers: spans {spans} must be >= 1 each and sum to the parent's "
                          f"{num_parent_layers} layers")
    if num_child_layers is not None and len(spans) != num_child_layers:
        raise ConfigError(f"match_layers: {len(spans)} spans for a child with {num_child_layers} layers")
    pairs, pos = [], 0
    for i, s in enumerate(spans):
        pos += s
        pairs.append((i + 1, pos))
    return pairs


def layer_pairs_for(child: Any, parent: Any, spans: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Layer pairs for two transformers models, from their configs' ``num_hidden_layers``."""
    return match_layers(int(parent.config.num_hidden_layers), int(child.config.num_hidden_layers), spans)


def _mask(attention_mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(shape, device=device, dtype=torch.float32)
    return attention_mask.to(device=device, dtype=torch.float32)


def kl_to_parent(child_logits: torch.Tensor, parent_logits: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
    """Mean over (unmasked) tokens of KL(p_parent ‖ p_child), in fp32, scaled by T²."""
    if child_logits.shape != parent_logits.shape:
        raise ConfigError(f"kl_to_parent: child logits {tuple(child_logits.shape)} and parent logits "
                          f"{tuple(parent_logits.shape)} differ; child and parent must share the vocabulary")
    t = float(temperature)
    lc = F.log_softmax(child_logits.float() / t, dim=-1)
    lp = F.log_softmax(parent_logits.float() / t, dim=-1)
    kl = (lp.exp() * (lp - lc)).sum(-1)
    m = _mask(attention_mask, kl.shape, kl.device)
    return (kl * m).sum() / m.sum().clamp_min(1.0) * t * t


def hidden_cosine_loss(child_hidden: Sequence[torch.Tensor], parent_hidden: Sequence[torch.Tensor],
                       pairs: Sequence[tuple[int, int]], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over matched layers of mean over tokens of (1 − cosine similarity)."""
    total = child_hidden[0].new_zeros((), dtype=torch.float32)
    for ci, pi in pairs:
        if ci >= len(child_hidden) or pi >= len(parent_hidden):
            raise ConfigError(f"hidden_cosine_loss: pair ({ci}, {pi}) outside the {len(child_hidden)} child / "
                              f"{len(parent_hidden)} parent hidden states; check the layer matching")
        cos = F.cosine_similarity(child_hidden[ci].float(), parent_hidden[pi].float(), dim=-1, eps=1e-6)
        m = _mask(attention_mask, cos.shape, cos.device)
        total = total + ((1.0 - cos) * m).sum() / m.sum().clamp_min(1.0)
    return total


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy (fp32) on unmasked positions."""
    target = input_ids[:, 1:]
    lg = logits[:, :-1].float()
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1), reduction="none").view_as(target)
    m = _mask(None if attention_mask is None else attention_mask[:, 1:], ce.shape, ce.device)
    return (ce * m).sum() / m.sum().clamp_min(1.0)


def gkd_loss(child_out: Any, parent_out: Any | None, input_ids: torch.Tensor, *,
             pairs: Sequence[tuple[int, int]] = (), attention_mask: torch.Tensor | None = None,
             weights: GKDWeights = GKDWeights(), temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted GKD loss and its parts (as floats, for logging).

    ``child_out`` / ``parent_out`` are model outputs with ``logits`` and, when
    the cosine term is on, ``hidden_states`` (run the models with
    ``output_hidden_states=True``).  ``parent_out`` may be None when only the
    LM term is on (continued pre-training).
    """
    parts: dict[str, float] = {}
    loss = child_out.logits.new_zeros((), dtype=torch.float32)
    if weights.needs_parent and parent_out is None:
        raise ConfigError("gkd_loss: the cosine / KL terms need the parent's outputs; pass parent_out "
                          "or set weights to GKDWeights(cosine=0, kl=0, lm=1)")
    if weights.cosine > 0:
        if child_out.hidden_states is None or parent_out.hidden_states is None:
            raise ConfigError("gkd_loss: the cosine term needs hidden states; call the models with "
                              "output_hidden_states=True")
        if not pairs:
            raise ConfigError("gkd_loss: the cosine term needs layer pairs (see match_layers)")
        c = hidden_cosine_loss(child_out.hidden_states, parent_out.hidden_states, pairs, attention_mask)
        loss = loss + weights.cosine * c
        parts["cosine"] = float(c.detach())
    if weights.kl > 0:
        k = kl_to_parent(child_out.logits, parent_out.logits, attention_mask, temperature)
        loss = loss + weights.kl * k
        parts["kl"] = float(k.detach())
    if weights.lm > 0:
        lm = lm_loss(child_out.logits, input_ids, attention_mask)
        loss = loss + weights.lm * lm
        parts["lm"] = float(lm.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts
