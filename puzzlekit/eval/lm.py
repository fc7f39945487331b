"""A child against its parent on held-out text, per domain: KL, perplexity, top-1 agreement.

The parent's side is computed once and reused for every model compared with it
(:class:`ParentReference`): its final hidden states (after the final norm; ``tokens × hidden``
floats) rather than its ``tokens × vocab`` log-probabilities, so the reference of a 49K-vocabulary
parent over 64K tokens takes 150 MB, not 12 GB; the head is re-applied in chunks when a model is
compared (for a small parent with a large vocabulary, e.g. SmolLM2-135M, the head is about a fifth
of a forward pass, so a reference saves about four fifths of the parent's cost per comparison).

Metrics per domain (means over next-token positions):

* ``kl``: KL(parent ‖ model) of the next-token distributions;
* ``lm_loss`` and ``perplexity`` (= exp(lm_loss)): the model's cross-entropy on the text;
* ``top1_agree``: the model's most likely token is the parent's;
* ``kl_rows``: the KL per row (a mean over its positions), for paired comparisons of two models on the same
  rows (:func:`paired_difference`: the standard error over rows, which counts a row's correlated tokens once).

The parent's own ``lm_loss`` / ``perplexity`` are in :attr:`ParentReference.parent_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["ParentReference", "evaluate_model", "paired_difference"]

#: Tokens per chunk for the head and the vocabulary-sized temporaries.
CHUNK = 256


def _rows(tokens: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(tokens)) if not isinstance(tokens, torch.Tensor) else tokens
    if t.dim() != 2 or t.shape[1] < 2 or t.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"evaluation tokens must be integer rows (N, T >= 2), got {tuple(t.shape)} {t.dtype}")
    return t.long()


@torch.no_grad()
def _final_hidden(model: Any, ids: torch.Tensor) -> torch.Tensor:
    dev = model.model.embed_tokens.weight.device
    return model.model(input_ids=ids.to(dev), use_cache=False).last_hidden_state


def _head_logp(model: Any, h: torch.Tensor) -> torch.Tensor:
    head = model.lm_head
    return F.log_softmax(head(h.to(head.weight.device, head.weight.dtype)).float(), -1)


@dataclass
class ParentReference:
    """The parent's final hidden states on each domain's rows (computed once, reused per model)."""

    parent: Any
    tokens: dict[str, torch.Tensor]
    hidden: dict[str, list[torch.Tensor]] = field(default_factory=dict, repr=False)
    parent_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    batch_size: int = 8

    @classmethod
    @torch.no_grad()
    def build(cls, parent: Any, domains: Mapping[str, Any], *, batch_size: int = 8) -> ParentReference:
        """``domains``: name -> ``(N, T)`` token rows (e.g. :attr:`puzzlekit.corpus.DomainData.test`)."""
        if not domains:
            raise ConfigError("ParentReference: give at least one domain of token rows")
        ref = cls(parent.eval(), {k: _rows(v) for k, v in domains.items()}, batch_size=batch_size)
        for name, rows in ref.tokens.items():
            ref.hidden[name] = [_final_hidden(parent, rows[b:b + batch_size]).cpu()
                                for b in range(0, len(rows), batch_size)]
            ce = n = 0.0
            for b, h in zip(range(0, len(rows), batch_size), ref.hidden[name]):
                ids = rows[b:b + batch_size]
                for s in _chunks(h, ids):
                    lp = _head_logp(parent, s[0])
                    ce += float(-(lp.gather(-1, s[1][:, None]).squeeze(-1)).double().sum())
                    n += s[1].numel()
            ref.parent_metrics[name] = {"lm_loss": ce / n, "perplexity": math.exp(ce / n), "tokens": int(n)}
        return ref


def _chunks(h: torch.Tensor, ids: torch.Tensor):
    """``(hidden, next_token)`` chunks over the predicting positions (the last position has no target)."""
    hs = h[:, :-1].reshape(-1, h.shape[-1])
    tg = ids[:, 1:].reshape(-1).to(hs.device)
    for c in range(0, hs.shape[0], CHUNK):
        yield hs[c:c + CHUNK], tg[c:c + CHUNK]


@torch.no_grad()
def evaluate_model(model: Any, ref: ParentReference) -> dict[str, dict[str, float]]:
    """Per domain: ``kl``, ``lm_loss``, ``perplexity``, ``top1_agree`` of ``model`` against the parent."""
    was = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {}
    for name, rows in ref.tokens.items():
        kl = ce = agree = n = 0.0
        per_row = torch.zeros(len(rows), dtype=torch.float64)
        steps = rows.shape[1] - 1  # predicting positions per row
        for b, hp in zip(range(0, len(rows), ref.batch_size), ref.hidden[name]):
            ids = rows[b:b + ref.batch_size]
            hm = _final_hidden(model, ids)
            pos = 0
            for (sp, tgt), (sm, _) in zip(_chunks(hp, ids), _chunks(hm, ids)):
                lp = _head_logp(ref.parent, sp)
                lq = _head_logp(model, sm).to(lp.device)
                k = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0).double().cpu()
                per_row.index_add_(0, b + torch.arange(pos, pos + len(k)) // steps, k)
                pos += len(k)
                kl += float(k.sum())
                ce += float(-(lq.gather(-1, tgt.to(lq.device)[:, None]).squeeze(-1)).double().sum())
                agree += float((lq.argmax(-1) == lp.argmax(-1)).sum())
                n += tgt.numel()
        out[name] = {"kl": kl / n, "lm_loss": ce / n, "perplexity": math.exp(ce / n), "top1_agree": agree / n,
                     "tokens": int(n), "kl_rows": (per_row / steps).tolist()}
    model.train(was)
    return out


def paired_difference(a: Any, b: Any) -> dict[str, float]:
    """``mean(a - b)`` over paired rows (e.g. two models' ``kl_rows`` on the same rows), its standard error
    (the rows' sample standard deviation / sqrt(rows)) and ``z`` = mean / standard error (inf when every
    row differs by the same amount; 0 when none differs)."""
    if len(a) != len(b) or len(a) < 2:
        raise ConfigError(f"paired_difference: give two equal-length lists of at least 2 rows, got {len(a)} and "
                          f"{len(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    z = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {"mean": mean, "se": se, "z": z, "rows": int(len(d))}
