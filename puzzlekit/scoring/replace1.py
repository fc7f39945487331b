"""Replace-1-block scoring and multi-replacement validation.

For each candidate at layer ``i``: the parent with exactly that layer swapped, compared
with the parent on held-out text.  Metrics (written into the library per candidate):

* ``kl_div``: mean over tokens of KL(parent ‖ child) of the next-token distributions;
* ``lm_loss``: the child's next-token cross-entropy;
* ``cosine_dist``: mean ``1 - cos`` of the final hidden states (after the final norm);
* ``top1_agree`` / ``top5_agree``: how often the parent's most likely token is the child's
  top-1 (no token strictly more likely; a tie agrees) / within the child's top 5.

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

from .. import _dist
from ..data import TokenData
from ..errors import PuzzlekitError
from ..library import BlockLibrary
from ..model.placement import device_of, follow
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

    paths = [resolve_inside(library.root, w, what=f"candidate {index} weights") for w in c.weight_files]
    for path in paths:
        if not path.exists():
            raise ScoringError(f"{path}: weights of candidate {index} ({c.block.key}, layer {c.first}) are missing; "
                               "re-run build-library")
    from ..model import PuzzleDecoderLayer, load_block_weights

    with torch.device("meta"):  # no random initialisation: load_block_weights materialises it
        layer = PuzzleDecoderLayer(spec, c.block, c.first)
    load_block_weights(layer, paths)  # checks the files' blocks and tensor names/shapes (ConfigError)
    p = next(player.parameters(), None)
    if p is not None:
        layer.to(device=p.device, dtype=p.dtype)
    return layer.eval().requires_grad_(False)


#: Tokens per chunk when comparing next-token distributions: the vocab-sized temporaries of a chunk
#: stay in cache, and no (batch, seq, vocab) tensor is materialised for a candidate.
CHUNK_TOKENS = 256
#: The parent's probabilities of a batch are kept (not recomputed per candidate) up to this size.
KEEP_PROBS_BYTES = 256 * 2**20


def _with_probs(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``logp`` and its probabilities, kept when small (else each chunk exponentiates its slice)."""
    return logp, (logp.exp() if logp.numel() * 4 <= KEEP_PROBS_BYTES else None)


class _Ref:
    """The parent's pass over one batch: every layer input, and (flattened over tokens) the parent's
    log-probs, probabilities, top-1 token and the per-token sums every candidate is compared with.

    ``keep_logits=False``: the ``(tokens, vocab)`` log-probs are not kept; :meth:`logits` recomputes
    them from the final hidden state (one head pass per layer and batch, shared by the layer's
    candidates).  ``offload=True``: the layer inputs are kept in host memory and :meth:`input` moves
    one to its layer's device when that layer is scored.  Both bound the memory of the kept passes
    (``score_library(ref_memory_gb=...)``) for parents whose activations and vocabulary are large.
    """

    def __init__(self, parent: Any, ids: torch.Tensor, *, keep_logits: bool = True, offload: bool = False):
        inner = parent.model
        self.parent = parent
        x = inner.embed_tokens(ids)
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        pe = inner.rotary_emb(x, pos)
        self.inputs, self.pes, self.devs = [], [], []  # each layer's input, rotary tables and device
        for layer in inner.layers:
            x, pe = follow(device_of(layer), x, pe)
            self.inputs.append(x.to("cpu") if offload and x.device.type != "cpu" else x)
            self.pes.append(pe)
            self.devs.append(x.device)
            x = layer(x, pe)
        self.ids = ids
        B, T = ids.shape
        x = follow(device_of(inner.norm), x)[0]
        ids = ids.to(x.device)  # the head's device, where every comparison runs
        self.hidden = inner.norm(x).reshape(B * T, -1)
        tgt = torch.full((B, T), -1, dtype=torch.long, device=ids.device)
        tgt[:, :-1] = ids[:, 1:]
        self.tgt = tgt.reshape(-1)
        self.n_ce = float(B * (T - 1))
        top1, negent, kept, ce = [], [], [], 0.0
        for c in range(0, B * T, CHUNK_TOKENS):  # one head pass: the per-token sums, and the log-probs if kept
            lp = self._logp(c)
            top1.append(lp.argmax(-1))
            # sum_v p log p per token: KL(p || q) = negent - p.log q, one dot product per token per candidate
            negent.append((lp.exp() * lp).sum(-1))
            t = self.tgt[c:c + CHUNK_TOKENS]
            ce = ce - (lp.gather(-1, t.clamp_min(0)[:, None]).squeeze(-1) * (t >= 0)).double().sum()
            if keep_logits:
                kept.append(lp)
        self.top1, self.negent, self.ce_sum = torch.cat(top1), torch.cat(negent), float(ce)
        self.logp = self.p = None
        if keep_logits:
            self.logp, self.p = _with_probs(torch.cat(kept))

    def _logp(self, c: int) -> torch.Tensor:
        return F.log_softmax(self.parent.lm_head(self.hidden[c:c + CHUNK_TOKENS]).float(), -1)

    def logits(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The parent's log-probs (kept, or computed now) and probabilities (None above
        ``KEEP_PROBS_BYTES``: each chunk then exponentiates its slice)."""
        if self.logp is not None:
            return self.logp, self.p
        return _with_probs(torch.cat([self._logp(c) for c in range(0, self.hidden.shape[0], CHUNK_TOKENS)]))

    def input(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s input, on the layer's device."""
        return self.inputs[layer].to(self.devs[layer], non_blocking=True)

    def parent_metrics(self) -> dict[str, float]:
        """The parent compared with itself (a candidate identical to the parent layer)."""
        n = float(self.tgt.numel())
        return {"kl_div": 0.0, "lm_loss": self.ce_sum, "cosine_dist": 0.0, "top1_agree": n, "top5_agree": n,
                "_n": n, "_n_ce": self.n_ce}


def _is_host(device: torch.device) -> bool:
    """Whether ``device`` is the CPU (metrics may then branch on data-dependent sizes at no cost)."""
    return device.type == "cpu"


def _compare(parent: Any, ref: _Ref, x: torch.Tensor,
             logits: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> dict[str, float]:
    """Sums over tokens (divided by the token count by the caller) of the metrics of the child whose last
    layer output is ``x``, against the parent's pass ``ref``; the head runs in chunks of tokens.

    The head's matrix product is most of the cost, so the metrics make few passes over a chunk's
    vocabulary-sized log-probs: one ``log_softmax``, one dot product with the parent's probabilities
    (``KL = sum p log p - p . log q``, the first sum kept per token by the parent's pass) and one max;
    the top-5 count runs only on the tokens whose top-1 differs from the parent's.
    """
    hidden = parent.model.norm(x.to(ref.hidden.device)).reshape(ref.hidden.shape)
    logp_all, p_all = logits if logits is not None else ref.logits()
    host = _is_host(hidden.device)  # on an accelerator: no host sync until the candidate's end
    kl: Any = 0.0
    ce: Any = 0.0
    top1: Any = 0.0
    top5: Any = 0.0
    for c in range(0, hidden.shape[0], CHUNK_TOKENS):
        sl = slice(c, c + CHUNK_TOKENS)
        logq = F.log_softmax(parent.lm_head(hidden[sl]).float(), -1)
        p = p_all[sl] if p_all is not None else logp_all[sl].exp()
        kl = kl + (ref.negent[sl] - torch.linalg.vecdot(p, logq)).clamp_min(0).double().sum()
        at = logq.gather(-1, ref.top1[sl, None]).squeeze(-1)
        # agreement: no token is strictly more likely under the child than the parent's top-1 (ties agree)
        if host:  # the top-5 count only where the top-1 differs (a data-dependent size: cheap on the CPU)
            off = (at < logq.amax(-1)).nonzero().squeeze(-1)
            top1 += at.shape[0] - off.numel()
            top5 += at.shape[0] - off.numel()
            if 4 * off.numel() > at.shape[0]:  # fewer than 5 tokens the child prefers to the parent's top-1
                top5 += int(((logq > at[:, None]).sum(-1, dtype=torch.int32)[off] < 5).sum())
            elif off.numel():  # few rows: count on those only
                top5 += int(((logq[off] > at[off, None]).sum(-1, dtype=torch.int32) < 5).sum())
        else:
            cnt = (logq > at[:, None]).sum(-1, dtype=torch.int32)
            top1 = top1 + (cnt == 0).sum()
            top5 = top5 + (cnt < 5).sum()
        tgt = ref.tgt[sl]
        ce = ce - (logq.gather(-1, tgt.clamp_min(0)[:, None]).squeeze(-1) * (tgt >= 0)).double().sum()
    cos = (1 - F.cosine_similarity(hidden.float(), ref.hidden.float(), dim=-1)).clamp_min(0).double().sum()
    # sums stay on the device (0-dim float64 tensors) until _finish: no host sync between candidates
    vals = [torch.as_tensor(v, dtype=torch.float64, device=hidden.device) for v in (kl, ce, cos, top1, top5)]
    return {"kl_div": vals[0], "lm_loss": vals[1], "cosine_dist": vals[2], "top1_agree": vals[3],
            "top5_agree": vals[4], "_n": float(hidden.shape[0]), "_n_ce": ref.n_ce}


def _finish(acc: dict[str, Any]) -> dict[str, float]:
    """Means over tokens (the sums may be device tensors: read here, once per candidate)."""
    n, nce = acc.pop("_n"), acc.pop("_n_ce")
    return {k: float(v) / (nce if k == "lm_loss" else n) for k, v in acc.items()}


def _add(acc: dict[str, Any], d: dict[str, Any]) -> None:
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
    suffix_tokens: int = 2048,
    ref_memory_gb: float | None = None,
    progress: bool = True,
    save: bool = True,
    decoupled: bool = False,
) -> BlockLibrary:
    """Replace-1-block scores of every single-layer candidate, written into ``library`` metrics.

    With ``run_dir`` each candidate's result is journaled (kind ``score``), a re-run skips
    finished ones, and (with ``save``) the library document is saved atomically after each layer:
    the ``library.json`` it was loaded from, else ``run_dir/library.json``.  Without ``run_dir``
    only the ``library`` object is changed (puzzlekit's rule: a function given a run directory
    persists there, a function given objects only does not; save with ``library.save(path)``).
    With ``prefix_reuse`` (default) each batch's layer inputs come from one parent pass and the candidates of a layer run stacked (up to
    ``suffix_tokens`` tokens at a time: larger stacks fall out of CPU caches and run slower there)
    through the parent's later layers, and the candidates that keep the parent's attention (tensor for
    tensor) share its output and run only their FFN; ``prefix_reuse=False`` runs the whole child per candidate
    (the naive baseline the benchmark compares against; same numbers up to float rounding).
    A candidate identical to the parent layer gets the parent's own numbers without a pass.

    The parent's passes over the held-out batches are kept for the whole run: every layer's input
    and the ``(tokens, vocab)`` log-probs.  ``ref_memory_gb`` bounds them (default: half the free
    memory of the parent's GPU, unbounded on the CPU): above it the log-probs are recomputed per
    layer and batch, and if the layer inputs alone do not fit they wait in host memory (the plan is
    logged).  The numbers do not change.
    ``top5_agree``: fewer than 5 tokens are more likely under the child than the parent's top-1.

    ``decoupled``: score only the candidates that keep the parent's attention or the parent's FFN
    (m + n per layer instead of m·n) and give every other pair ``(a, f)`` the sum of its two parts'
    changes, ``kl_div(a, f) = kl_div(a, parent FFN) + kl_div(parent attention, f)`` (likewise
    ``cosine_dist``; ``lm_loss`` and the agreements add their differences from the parent's), with
    ``composed = 1`` in its metrics.  It matches how decoupled BLD trains the pair's sub-blocks (each
    against the parent's other one); a pair whose parts are missing from the library is scored.

    Under ``accelerate launch`` / torchrun (``WORLD_SIZE > 1``) the layers are shared out over the
    processes (balanced by their candidates' suffix lengths; a layer's candidates stay together, so
    every number equals a one-process run's), each journals its candidates in ``run_dir`` (required
    then), and every process returns the whole library; process 0 saves it.
    """
    from ..model import load_parent
    from ..progress import progress as progress_bar

    if type(parent).__name__ != "PuzzleForCausalLM":
        parent = load_parent(parent)
    parent.eval().requires_grad_(False)
    run = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(run_dir)
    rank, world = _dist.setup()
    if world > 1 and run is None:
        raise ScoringError(f"scoring over {world} processes needs a run directory: the processes' results "
                           "meet in its journal; pass run_dir (CLI: --run)")
    if library.num_layers != len(parent.model.layers):
        raise ScoringError(f"the library covers {library.num_layers} layers but the parent has "
                           f"{len(parent.model.layers)}; score it with its own parent")
    batches = _eval_batches(data, eval_sequences, batch_size)
    done = {}
    if run is not None:
        done = {k: r for k, r in run.journal.states(KIND).items() if r.get("state") == State.COMPLETE.value}
    todo = [i for i, c in enumerate(library.candidates) if c.span == 1]
    composed = _composed(library, parent.model.layers[0].spec.parent_block(), todo) if decoupled else {}
    todo = [i for i in todo if i not in composed]
    pending = [i for i in todo if _item(library, i) not in done]
    for i in todo:
        if _item(library, i) in done:
            library.candidates[i].metrics.update(done[_item(library, i)]["metrics"])
    dev = parent.model.embed_tokens.weight.device
    keep_logits, offload = _ref_plan(parent, batches, ref_memory_gb)
    refs = [_Ref(parent, b.to(dev), keep_logits=keep_logits, offload=offload) for b in batches] if pending else []
    bar = progress_bar(total=len(pending), desc="scoring (replace-1-block)", disable=not progress, unit="cand")
    layers = parent.model.layers
    by_layer: dict[int, list[int]] = {}
    for i in pending:
        by_layer.setdefault(library.candidates[i].first, []).append(i)
    L = len(layers)
    if world > 1:
        by_layer = {li: by_layer[li] for li in _share_layers(by_layer, L, world)[rank]}
        bar.total = sum(len(v) for v in by_layer.values())
    doc = _library_document(library, run) if save and rank == 0 else None
    for li in sorted(by_layer):
        cands = [(ci, candidate_layer(parent, library, ci)) for ci in by_layer[li]]
        accs: dict[int, dict[str, float]] = {ci: {} for ci, _ in cands}
        same = {ci for ci, m in cands if _is_parent_layer(m, layers[li])}  # = the parent: no pass needed
        others = [(ci, m) for ci, m in cands if ci not in same]
        keep_attn = {ci for ci, m in others if _same_attention(m, layers[li])} if prefix_reuse else set()
        for ref in refs:
            for ci in same:
                _add(accs[ci], ref.parent_metrics())
            if not others:
                continue
            B = ref.ids.shape[0]
            step = max(1, int(suffix_tokens) // ref.ids.numel())
            logits = ref.logits()  # kept, or computed once for this layer's candidates
            if prefix_reuse:  # the candidates of layer li, stacked, through the parent's layers li+1..
                xin = ref.input(li)
                # candidates keeping the parent's attention share its output: only their FFN runs
                mid = (xin + layers[li].attn_delta(xin, ref.pes[li])) if keep_attn else None
                for g in range(0, len(others), step):
                    grp = others[g:g + step]
                    x = torch.cat([mid + m.ffn_delta(mid) if ci in keep_attn else m(xin, ref.pes[li])
                                   for ci, m in grp])
                    for j in range(li + 1, L):
                        x = layers[j](x.to(ref.devs[j]), ref.pes[j])
                    for k, (ci, _) in enumerate(grp):
                        _add(accs[ci], _compare(parent, ref, x[k * B:(k + 1) * B], logits))
            else:  # naive: the whole child, one candidate at a time
                for ci, m in others:
                    x = parent.model.embed_tokens(ref.ids)
                    for j in range(L):
                        x = (m if j == li else layers[j])(x.to(ref.devs[j]), ref.pes[j])
                    _add(accs[ci], _compare(parent, ref, x, logits))
            del logits
        for ci, _ in cands:
            metrics = _finish(accs[ci])
            library.candidates[ci].metrics.update(metrics)
            if run is not None:
                run.journal.set_state(KIND, _item(library, ci), State.COMPLETE, metrics=metrics,
                                      **({"rank": rank} if world > 1 else {}))
            bar.update(1)
            bar.set_postfix({"layer": li, "kl": f"{metrics['kl_div']:.4f}"}, refresh=False)
        if doc is not None and world == 1:
            library.save(doc)
    bar.close()
    if world > 1:  # every process takes the others' results from the journal
        _dist.barrier(world)
        done = {k: r for k, r in run.journal.states(KIND).items() if r.get("state") == State.COMPLETE.value}
        missing = [_item(library, i) for i in todo if _item(library, i) not in done]
        if missing:
            raise ScoringError(f"{run.path}: {len(missing)} candidates were not scored by any process "
                               f"(first: {missing[0]}); re-run the same command to finish them")
        for i in todo:
            library.candidates[i].metrics.update(done[_item(library, i)]["metrics"])
    if composed:
        base = _parent_metrics(refs) if refs else _parent_metrics(
            [_Ref(parent, b.to(dev), keep_logits=False) for b in batches])  # resumed: no passes kept
        for ci, (ia, iff) in composed.items():
            library.candidates[ci].metrics.update(_compose(library.candidates[ia].metrics,
                                                           library.candidates[iff].metrics, base))
    if doc is not None:
        library.save(doc)
    return library


def _composed(library: BlockLibrary, pblock: Any, todo: list[int]) -> dict[int, tuple[int, int]]:
    """Pairs changing both sub-blocks whose two parts (attention with the parent FFN, parent attention
    with the FFN) are candidates of the same layer: ``{pair: (attention part, FFN part)}``."""
    index = {(library.candidates[i].first, library.candidates[i].block): i for i in todo}
    out = {}
    for i in todo:
        c = library.candidates[i]
        a, f = c.block.attention, c.block.ffn
        if a == pblock.attention or f == pblock.ffn:
            continue
        ia = index.get((c.first, type(c.block)(a, pblock.ffn)))
        iff = index.get((c.first, type(c.block)(pblock.attention, f)))
        if ia is not None and iff is not None:
            out[i] = (ia, iff)
    return out


def _parent_metrics(refs: list[_Ref]) -> dict[str, float]:
    """The parent's own metrics over the kept passes (the base the composed pairs add changes to)."""
    acc: dict[str, Any] = {}
    for r in refs:
        _add(acc, r.parent_metrics())
    return _finish(acc)


def _compose(ma: dict[str, float], mf: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    out = {}
    for k in METRICS:
        if k in ma and k in mf:
            v = ma[k] + mf[k] - base[k]  # the parent's own value plus both parts' changes
            out[k] = max(0.0, v) if k in ("kl_div", "cosine_dist", "top1_agree", "top5_agree") else v
    out["composed"] = 1.0
    return out


def _library_document(library: BlockLibrary, run: RunDir | None) -> Path | None:
    """Where scoring keeps the library document current: nowhere without a run directory (functions given
    objects only change the objects); with one, the document the library was loaded from
    (``library.root / "library.json"``, e.g. the BLD run's), else ``run / "library.json"``."""
    if run is None:
        return None
    if library.root is not None and (Path(library.root) / "library.json").exists():
        return Path(library.root) / "library.json"
    return Path(run.path) / "library.json"


def _ref_plan(parent: Any, batches: list[torch.Tensor], ref_memory_gb: float | None) -> tuple[bool, bool]:
    """``(keep_logits, offload)`` for the kept parent passes under ``ref_memory_gb`` (see score_library)."""
    p = parent.model.embed_tokens.weight
    spec = parent.config.parent_spec
    tokens = sum(b.numel() for b in batches)
    inputs = tokens * spec.hidden_size * spec.num_hidden_layers * p.element_size()
    per_batch = max((b.numel() for b in batches), default=0) * spec.vocab_size * 4
    logits = sum(b.numel() * spec.vocab_size * 4 * (2 if b.numel() * spec.vocab_size * 4 <= KEEP_PROBS_BYTES else 1)
                 for b in batches)
    if ref_memory_gb is not None:
        if not ref_memory_gb > 0:
            raise ScoringError(f"ref_memory_gb={ref_memory_gb}: give a positive number of GiB")
        budget = float(ref_memory_gb) * 2**30
    elif p.device.type == "cuda":
        budget = 0.5 * torch.cuda.mem_get_info(p.device)[0]
    else:
        budget = math.inf
    keep = inputs + logits <= budget
    offload = not keep and inputs + per_batch > budget
    if not keep:
        logger.info("scoring plan: the parent's passes (layer inputs %.2f GiB, log-probs %.2f GiB) exceed %.2f GiB: "
                    "log-probs recomputed per layer and batch%s", inputs / 2**30, logits / 2**30, budget / 2**30,
                    "; layer inputs kept in host memory" if offload else "")
    return keep, offload


def _share_layers(by_layer: dict[int, list[int]], num_layers: int, world: int) -> list[list[int]]:
    """Layers per process, balanced greedily (largest first) by their candidates' work: a layer's
    candidates run through the ``num_layers - layer`` layers after it plus the head (~2 layers)."""
    work = {li: len(c) * (num_layers - li + 2) for li, c in by_layer.items()}
    shares: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for li in sorted(work, key=lambda k: (-work[k], k)):
        r = min(range(world), key=lambda k: (load[k], k))
        shares[r].append(li)
        load[r] += work[li]
    return shares


def _is_parent_layer(layer: Any, player: Any) -> bool:
    """Whether ``layer`` computes exactly what the parent layer does (same block, same tensors)."""
    if layer is player:
        return True
    if getattr(layer, "block", None) != player.block:
        return False
    a, b = layer.state_dict(), player.state_dict()
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _same_attention(layer: Any, player: Any) -> bool:
    """Whether ``layer``'s attention sub-block (norm included) is the parent layer's, tensor for tensor."""
    if layer is player or getattr(layer, "block", None) is None or layer.block.attention != player.block.attention:
        return False
    if layer.self_attn is None:  # a no-op attention: nothing to share
        return False
    a, b = layer.state_dict(), player.state_dict()
    keys = [k for k in b if k.startswith(("self_attn.", "input_layernorm."))]
    return all(k in a and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in keys) and \
        {k for k in a if k.startswith(("self_attn.", "input_layernorm."))} == set(keys)


def _item(library: BlockLibrary, i: int) -> str:
    c = library.candidates[i]
    return f"L{c.first:03d}/{c.block.key}"


@torch.no_grad()
def score_architectures(parent: Any, library: BlockLibrary, choices: Sequence[Sequence[int]],
                        data: TokenData | torch.Tensor, *, eval_sequences: int = 32,
                        batch_size: int = 8) -> list[dict[str, float]]:
    """The realised scores of whole children: ``choices[k][layer]`` is a candidate index per layer."""
    batches = _eval_batches(data, eval_sequences, batch_size)
    refs = [_Ref(parent, b.to(parent.model.embed_tokens.weight.device)) for b in batches]
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
            for li, m in enumerate(mods):
                x = m(x.to(ref.devs[li]), ref.pes[li])
            _add(acc, _compare(parent, ref, x))
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
