"""Replace-1-block scoring and multi-replacement validation.

For each candidate at layer ``i``: the parent with exactly that layer swapped, compared
with the parent on held-out text.  Metrics (written into the library per candidate):

* ``kl_div``: mean over tokens of KL(parent ‖ child) of the next-token distributions;
* ``lm_loss``: the child's next-token cross-entropy;
* ``cosine_dist``: mean ``1 - cos`` of the final hidden states (after the final norm);
* ``top1_agree`` / ``top5_agree``: how often the parent's most likely token is the child's
  top-1 / within the child's top 5.

Prefix reuse: one parent pass per batch gives every layer's input and the parent's
log-probabilities; a candidate at layer ``i`` runs only itself and the parent's layers
``i+1..L-1``.  Progress is journaled per candidate, so a killed scoring run resumes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import TokenData
from ..errors import PuzzlekitError
from ..library import BlockLibrary
from ..rundir import RunDir, State

__all__ = ["METRICS", "score_library", "score_architectures", "validate_additivity", "random_choices",
           "spearman", "candidate_layer"]

logger = logging.getLogger(__name__)

#: The metrics replace-1-block scoring writes (lower is better for the first three).
METRICS = ("kl_div", "lm_loss", "cosine_dist", "top1_agree", "top5_agree")
KIND = "score"


class ScoringError(PuzzlekitError):
    """Scoring was given inputs it cannot use."""


def candidate_layer(parent: Any, library: BlockLibrary, index: int) -> Any:
    """The trained layer of candidate ``index`` (its safetensors weights), or one initialised from
    the parent when the candidate has no weights (and is not a no-op)."""
    from ..model import make_layer

    c = library.candidates[index]
    spec = parent.model.layers[0].spec
    if c.span != 1:
        raise ScoringError(f"candidate {index} spans layers {c.first}..{c.last}; replace-1-block scoring "
                           "handles single-layer candidates")
    player = parent.model.layers[c.first]
    if c.block == spec.parent_block() and c.weights is None:
        return player
    if c.weights is None:
        if c.block.attention.no_op and c.block.ffn.no_op:
            return make_layer(spec, c.block, c.first)
        from ..model import init_child_layer

        return init_child_layer(player, c.block, ffn_method="truncate")
    if library.root is None:
        raise ScoringError("the library has weight paths but no folder; load it with BlockLibrary.load")
    from ..io import resolve_inside

    path = resolve_inside(library.root, c.weights, what=f"candidate {index} weights")
    if not path.exists():
        raise ScoringError(f"{path}: weights of candidate {index} ({c.block.key}, layer {c.first}) are missing; "
                           "re-run build-library")
    from ..model import PuzzleDecoderLayer, load_block_weights

    with torch.device("meta"):  # no random initialisation: load_block_weights materialises it
        layer = PuzzleDecoderLayer(spec, c.block, c.first)
    load_block_weights(layer, path)  # checks the file's block and tensor names/shapes (ConfigError)
    p = next(player.parameters(), None)
    if p is not None:
        layer.to(device=p.device, dtype=p.dtype)
    return layer.eval().requires_grad_(False)


class _Ref:
    """The parent's pass over one batch: every layer input, log-probs, final hidden state."""

    def __init__(self, parent: Any, ids: torch.Tensor):
        inner = parent.model
        x = inner.embed_tokens(ids)
        pos = torch.arange(ids.shape[1])[None]
        self.pe = inner.rotary_emb(x, pos)
        self.inputs = []
        for layer in inner.layers:
            self.inputs.append(x)
            x = layer(x, self.pe)
        self.hidden = inner.norm(x)
        self.logp = F.log_softmax(parent.lm_head(self.hidden).float(), -1)
        self.top1 = self.logp.argmax(-1)
        self.ids = ids


def _head(parent: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = parent.model.norm(x)
    return h, F.log_softmax(parent.lm_head(h).float(), -1)


def _compare(ref: _Ref, hidden: torch.Tensor, logp: torch.Tensor) -> dict[str, float]:
    """Sums over tokens (divided by the token count by the caller)."""
    p = ref.logp.exp()
    kl = (p * (ref.logp - logp)).sum(-1).clamp_min(0)
    tgt = ref.ids[:, 1:]
    ce = -logp[:, :-1].gather(-1, tgt[..., None]).squeeze(-1)
    cos = (1 - F.cosine_similarity(hidden.float(), ref.hidden.float(), dim=-1)).clamp_min(0)
    top5 = logp.topk(5, -1).indices
    return {"kl_div": float(kl.double().sum()), "lm_loss": float(ce.double().sum()),
            "cosine_dist": float(cos.double().sum()), "top1_agree": float((logp.argmax(-1) == ref.top1).sum()),
            "top5_agree": float((top5 == ref.top1[..., None]).any(-1).sum()), "_n": float(kl.numel()),
            "_n_ce": float(ce.numel())}


def _finish(acc: dict[str, float]) -> dict[str, float]:
    n, nce = acc.pop("_n"), acc.pop("_n_ce")
    return {k: v / (nce if k == "lm_loss" else n) for k, v in acc.items()}


def _add(acc: dict[str, float], d: dict[str, float]) -> None:
    for k, v in d.items():
        acc[k] = acc.get(k, 0.0) + v


def _eval_batches(data: TokenData | torch.Tensor, eval_sequences: int, batch_size: int) -> list[torch.Tensor]:
    rows = data.torch("heldout") if isinstance(data, TokenData) else data
    rows = rows[:eval_sequences]
    if len(rows) == 0:
        raise ScoringError("no held-out sequences to score on; build the token data with heldout_fraction > 0")
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


@torch.no_grad()
def score_library(
    parent: Any,
    library: BlockLibrary,
    data: TokenData | torch.Tensor,
    run_dir: str | os.PathLike | RunDir | None = None,
    *,
    eval_sequences: int = 32,
    batch_size: int = 8,
    prefix_reuse: bool = True,
    progress: bool = True,
    save: bool = True,
) -> BlockLibrary:
    """Replace-1-block scores of every single-layer candidate, written into ``library`` metrics.

    With ``run_dir`` each candidate's result is journaled (kind ``score``) and a re-run skips
    finished ones; the library document is saved (atomically) after each layer when
    ``save`` and the library has a folder.  ``prefix_reuse=False`` runs the whole model per
    candidate (the naive baseline the benchmark compares against; same numbers).
    """
    from tqdm.auto import tqdm

    from ..model import load_parent

    if type(parent).__name__ != "PuzzleForCausalLM":
        parent = load_parent(parent)
    parent.eval().requires_grad_(False)
    run = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(run_dir)
    if library.num_layers != len(parent.model.layers):
        raise ScoringError(f"the library covers {library.num_layers} layers but the parent has "
                           f"{len(parent.model.layers)}; score it with its own parent")
    batches = _eval_batches(data, eval_sequences, batch_size)
    done = {}
    if run is not None:
        done = {k: r for k, r in run.journal.states(KIND).items() if r.get("state") == State.COMPLETE.value}
    todo = [i for i, c in enumerate(library.candidates) if c.span == 1]
    pending = [i for i in todo if _item(library, i) not in done]
    for i in todo:
        if _item(library, i) in done:
            library.candidates[i].metrics.update(done[_item(library, i)]["metrics"])
    refs = [_Ref(parent, b) for b in batches] if pending else []
    bar = tqdm(total=len(pending), desc="scoring (replace-1-block)", disable=not progress, unit="cand")
    layers = parent.model.layers
    by_layer: dict[int, list[int]] = {}
    for i in pending:
        by_layer.setdefault(library.candidates[i].first, []).append(i)
    for li in sorted(by_layer):
        for ci in by_layer[li]:
            layer = candidate_layer(parent, library, ci)
            acc: dict[str, float] = {}
            for ref in refs:
                if prefix_reuse:
                    x = layer(ref.inputs[li], ref.pe)
                else:
                    x = parent.model.embed_tokens(ref.ids)
                    for j in range(li):
                        x = layers[j](x, ref.pe)
                    x = layer(x, ref.pe)
                for j in range(li + 1, len(layers)):
                    x = layers[j](x, ref.pe)
                hidden, logp = _head(parent, x)
                _add(acc, _compare(ref, hidden, logp))
            metrics = _finish(acc)
            library.candidates[ci].metrics.update(metrics)
            if run is not None:
                run.journal.set_state(KIND, _item(library, ci), State.COMPLETE, metrics=metrics)
            bar.update(1)
            bar.set_postfix({"layer": li, "kl": f"{metrics['kl_div']:.4f}"}, refresh=False)
        if save and library.root is not None and (Path(library.root) / "library.json").exists():
            library.save(Path(library.root) / "library.json")
    bar.close()
    if save and library.root is not None and (Path(library.root) / "library.json").exists():
        library.save(Path(library.root) / "library.json")
    return library


def _item(library: BlockLibrary, i: int) -> str:
    c = library.candidates[i]
    return f"L{c.first:03d}/{c.block.key}"


@torch.no_grad()
def score_architectures(parent: Any, library: BlockLibrary, choices: Sequence[Sequence[int]],
                        data: TokenData | torch.Tensor, *, eval_sequences: int = 32,
                        batch_size: int = 8) -> list[dict[str, float]]:
    """The realised scores of whole children: ``choices[k][layer]`` is a candidate index per layer."""
    batches = _eval_batches(data, eval_sequences, batch_size)
    refs = [_Ref(parent, b) for b in batches]
    out = []
    cache: dict[int, Any] = {}
    for ch in choices:
        if len(ch) != library.num_layers:
            raise ScoringError(f"a choice lists {len(ch)} candidates; the library has {library.num_layers} layers")
        for li, ci in enumerate(ch):
            if library.candidates[ci].first != li:
                raise ScoringError(f"candidate {ci} is for layer {library.candidates[ci].first}, chosen at layer {li}")
        mods = [cache.setdefault(ci, candidate_layer(parent, library, ci)) for ci in ch]
        acc: dict[str, float] = {}
        for ref in refs:
            x = parent.model.embed_tokens(ref.ids)
            for m in mods:
                x = m(x, ref.pe)
            hidden, logp = _head(parent, x)
            _add(acc, _compare(ref, hidden, logp))
        out.append(_finish(acc))
    return out


def random_choices(library: BlockLibrary, n: int, seed: int = 0, *, max_replaced: int | None = None) -> list[list[int]]:
    """``n`` random architectures (one candidate per layer), each replacing up to ``max_replaced`` layers."""
    rng = np.random.default_rng(seed)
    table = library.layer_table()
    spec = library.parent
    parent_idx = []
    for li, cands in enumerate(table):
        if not cands:
            raise ScoringError(f"layer {li} has no candidate")
        pi = [ci for ci in cands if spec is not None and library.candidates[ci].block == spec.parent_block()]
        parent_idx.append(pi[0] if pi else cands[0])
    out = []
    for _ in range(n):
        k = int(rng.integers(1, (max_replaced or library.num_layers) + 1))
        layers = rng.choice(library.num_layers, size=min(k, library.num_layers), replace=False)
        ch = list(parent_idx)
        for li in layers:
            ch[li] = int(rng.choice(table[li]))
        out.append(ch)
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v: Sequence[float]) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):
            m = v == val
            r[m] = r[m].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def validate_additivity(parent: Any, library: BlockLibrary, data: TokenData | torch.Tensor,
                        choices: Sequence[Sequence[int]] | None = None, *, metric: str = "kl_div",
                        n: int = 12, seed: int = 0, eval_sequences: int = 32,
                        batch_size: int = 8) -> dict[str, Any]:
    """Compare summed replace-1-block scores with the realised score of whole children.

    Returns ``{"predicted": [...], "realised": [...], "spearman": rho, "choices": [...]}``.
    """
    if metric not in METRICS:
        raise ScoringError(f"metric must be one of {METRICS}, got {metric!r}")
    missing = [i for i, c in enumerate(library.candidates) if metric not in c.metrics]
    if missing:
        raise ScoringError(f"{len(missing)} candidates have no {metric!r}; run score_library first")
    choices = [list(c) for c in (choices or random_choices(library, n, seed))]
    pred = [sum(library.candidates[ci].metrics[metric] for ci in ch) for ch in choices]
    real = [r[metric] for r in score_architectures(parent, library, choices, data,
                                                   eval_sequences=eval_sequences, batch_size=batch_size)]
    rho = spearman(pred, real)
    logger.info("multi-replacement validation: Spearman %.3f over %d architectures", rho, len(choices))
    return {"metric": metric, "predicted": pred, "realised": real, "spearman": rho if math.isfinite(rho) else None,
            "choices": choices}
