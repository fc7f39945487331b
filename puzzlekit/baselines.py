"""Simple-compression baselines, each matched to the Puzzle child's *measured* speed.

Every baseline is a recipe (:class:`Recipe`): either candidate choices in the block
library or a plain :class:`~puzzlekit.Architecture` initialised from the parent, so
the same model can be rebuilt deterministically when a run resumes.  Each has one
knob that trades quality for speed; :func:`match_speed` turns the knob until the
baseline's measured speed-up is within a tolerance of the child's (measure,
correct the predicted target by the measured/predicted ratio, re-measure).

* ``uniform-ffn`` (Minitron-like width pruning): the same FFN width in every layer,
  channels kept by their contribution on calibration text (:func:`puzzlekit.model.init_child_layer`).
* ``drop-attention``: remove the attention sub-block of the least important layers
  (the library's replace-1-block KL of "no attention, parent FFN"); when removing
  every attention is not fast enough, whole FFNs are removed next (least important
  first); the last FFN on that list is narrowed (contribution pruning) to fine-tune the speed.
* ``drop-layers`` (ShortGPT-like): remove whole layers (attention and FFN), those with the lowest Block
  Influence first (:class:`puzzlekit.scoring.importance.LayerImportance`); the next layer's FFN is
  narrowed (contribution pruning) to fine-tune the speed.
* ``greedy``: per-layer greedy on the same library: best KL increase per runtime saved first.
* ``random``: a random architecture of the library whose predicted runtime meets the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .blocks import AttentionConfig, BlockConfig, FFNConfig
from .errors import PuzzlekitError
from .library import BlockLibrary

#: Below this relative difference two measured speeds count as equal (the timer's resolution on a
#: shared machine), when a baseline must be "at least as fast" as the child.
RESOLUTION = 0.01

__all__ = ["Recipe", "RESOLUTION", "parent_choices", "greedy_choices", "random_choices_at", "uniform_ffn_recipe",
           "uniform_width_for", "drop_order", "drop_recipe", "drop_knob_for", "layers_recipe", "layers_knob_for", "match_speed"]


@dataclass
class Recipe:
    """How to build one model from the parent: ``choices`` in the library, or an ``architecture``."""

    name: str
    choices: list[int] | None = None
    architecture: list[dict[str, Any]] | None = None
    knob: float | None = None
    fusion: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "choices": self.choices, "architecture": self.architecture,
                "knob": self.knob, "fusion": self.fusion}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        return cls(d["name"], d.get("choices"), d.get("architecture"), d.get("knob"), list(d.get("fusion") or []))

    def blocks(self, library: BlockLibrary | None = None) -> list[BlockConfig]:
        """The recipe's blocks in layer order (``library`` is needed for choices)."""
        if self.choices is not None:
            if library is None:
                raise PuzzlekitError(f"recipe {self.name!r} picks library candidates; pass the library")
            return [library.candidates[c].block for c in self.choices]
        return [BlockConfig.from_dict(b) for b in self.architecture or []]


def _table(library: BlockLibrary, metric: str, cost: str, scenario: str) -> tuple[np.ndarray, np.ndarray]:
    kl = library.metric_vector(metric)
    rt = library.cost_matrix([cost], scenario)[:, 0]
    return kl, rt


def parent_choices(library: BlockLibrary) -> list[int]:
    """The parent block's candidate on every layer of ``library``."""
    pb = library.parent.parent_block()
    out = []
    for li, cands in enumerate(library.layer_table()):
        pi = [c for c in cands if library.candidates[c].block == pb]
        if not pi:
            raise PuzzlekitError(f"layer {li} has no parent candidate in the library")
        out.append(pi[0])
    return out


def greedy_choices(library: BlockLibrary, budget_ms: float, *, scenario: str, metric: str = "kl_div",
                   cost: str = "runtime_ms") -> list[int]:
    """Per-layer greedy: from the parent, repeatedly take the swap with the least metric increase
    per ms saved until the summed block runtime is at most ``budget_ms``."""
    kl, rt = _table(library, metric, cost, scenario)
    table = library.layer_table()
    cur = parent_choices(library)
    total = float(sum(rt[c] for c in cur))
    while total > budget_ms + 1e-12:
        best, best_r = None, math.inf
        for li, cands in enumerate(table):
            c0 = cur[li]
            for c in cands:
                saved = rt[c0] - rt[c]
                if saved <= 1e-12:
                    continue
                r = max(kl[c] - kl[c0], 0.0) / saved
                if r < best_r:
                    best, best_r = (li, c), r
        if best is None:
            break
        li, c = best
        total += rt[c] - rt[cur[li]]
        cur[li] = c
    return cur


def random_choices_at(library: BlockLibrary, budget_ms: float, *, scenario: str, seed: int = 0,
                      window: float = 0.03, cost: str = "runtime_ms", draws: int = 200_000) -> list[int]:
    """A uniformly random architecture of the library whose summed block runtime lies in
    ``[budget·(1-window), budget]`` (rejection sampling; the window widens if none is found)."""
    rt = library.cost_matrix([cost], scenario)[:, 0]
    table = [np.asarray(c) for c in library.layer_table()]
    rng = np.random.default_rng(seed)
    picks = np.stack([t[rng.integers(0, len(t), draws)] for t in table], 1)
    tot = rt[picks].sum(1)
    w = window
    while w < 1.0:
        ok = np.nonzero((tot <= budget_ms) & (tot >= budget_ms * (1 - w)))[0]
        if len(ok):
            return [int(c) for c in picks[ok[0]]]
        w *= 2
    ok = np.nonzero(tot <= budget_ms)[0]
    if not len(ok):
        raise PuzzlekitError(f"no random architecture of the library meets a block runtime of {budget_ms:.3f} ms")
    return [int(c) for c in picks[ok[np.argmax(tot[ok])]]]


def uniform_ffn_recipe(spec: Any, width: float, multiple_of: int = 8) -> Recipe:
    """Every layer: the parent's attention and a SwiGLU of ``width`` (no-op at width 0).

    The knob is made finer below the narrowest width ``multiple_of``, where the next step (every FFN
    removed) would jump the speed: a knob ``0 < width < multiple_of`` keeps ``multiple_of`` channels
    in ``round(L * width / multiple_of)`` layers and removes the FFN of the others (the last layers
    first), so the width stays uniform wherever an FFN is kept.
    """
    pb = spec.parent_block()
    L = spec.num_hidden_layers
    if width >= multiple_of or width <= 0:
        w = int(width)
        ffns = [FFNConfig.make_no_op() if w <= 0 else FFNConfig.swiglu(w)] * L
    else:
        kept = int(round(L * width / multiple_of))
        ffns = [FFNConfig.swiglu(multiple_of)] * kept + [FFNConfig.make_no_op()] * (L - kept)
    return Recipe("uniform-ffn", architecture=[BlockConfig(pb.attention, f).to_dict() for f in ffns],
                  knob=float(width))


def uniform_width_for(spec: Any, cm: Any, target_ms: float, multiple_of: int = 8) -> float:
    """The widest uniform-FFN knob (see :func:`uniform_ffn_recipe`) whose predicted whole-model
    runtime is at most ``target_ms``: widths in steps of ``multiple_of``, then layer by layer removed."""
    L = spec.num_hidden_layers
    knobs = [float(w) for w in range(spec.intermediate_size, multiple_of - 1, -multiple_of)]
    knobs += [multiple_of * k / L for k in range(L - 1, -1, -1)]
    for k in knobs:
        if cm.runtime(uniform_ffn_recipe(spec, k, multiple_of).blocks()) <= target_ms:
            return k
    return 0.0


def drop_order(library: BlockLibrary, metric: str = "kl_div") -> list[tuple[str, int]]:
    """Sub-blocks to remove, least important first: every attention, then every FFN, each ranked by
    the library's replace-1-block ``metric`` of removing it alone."""
    pb = library.parent.parent_block()
    no_att = BlockConfig(AttentionConfig.make_no_op(), pb.ffn)
    no_ffn = BlockConfig(pb.attention, FFNConfig.make_no_op())
    att, ffn = [], []
    for li, cands in enumerate(library.layer_table()):
        for c in cands:
            b = library.candidates[c].block
            if b == no_att:
                att.append((library.candidates[c].metrics.get(metric, math.inf), li))
            elif b == no_ffn:
                ffn.append((library.candidates[c].metrics.get(metric, math.inf), li))
    if len(att) != library.num_layers:  # no such candidates: drop the last layers first
        att = [(-li, li) for li in range(library.num_layers)]
    if len(ffn) != library.num_layers:
        ffn = [(-li, li) for li in range(library.num_layers)]
    return [("attention", li) for _, li in sorted(att)] + [("ffn", li) for _, li in sorted(ffn)]


def drop_recipe(spec: Any, order: Sequence[tuple[str, int]], t: float, multiple_of: int = 8) -> Recipe:
    """Remove the first ``floor(t)`` sub-blocks of ``order``; when the next one is an FFN, narrow it
    to ``1 - frac(t)`` of its width (the speed knob's fine part)."""
    pb = spec.parent_block()
    att = [pb.attention] * spec.num_hidden_layers
    ffn = [pb.ffn] * spec.num_hidden_layers
    k = int(math.floor(t))
    for kind, li in order[:k]:
        if kind == "attention":
            att[li] = AttentionConfig.make_no_op()
        else:
            ffn[li] = FFNConfig.make_no_op()
    frac = t - k
    if k < len(order) and frac > 0 and order[k][0] == "ffn":
        li = order[k][1]
        w = int(multiple_of * round((1 - frac) * spec.intermediate_size / multiple_of))
        ffn[li] = FFNConfig.make_no_op() if w <= 0 else FFNConfig.swiglu(min(w, spec.intermediate_size))
    return Recipe("drop-attention", architecture=[BlockConfig(a, f).to_dict() for a, f in zip(att, ffn)], knob=t)


def drop_knob_for(spec: Any, order: Sequence[tuple[str, int]], cm: Any, target_ms: float) -> float:
    """The smallest knob (by steps of 1/16 inside FFN items) whose predicted runtime is at most ``target_ms``."""
    grid = []
    for k, (kind, _) in enumerate(order):
        grid.append(float(k))
        if kind == "ffn":
            grid += [k + j / 16 for j in range(1, 16)]
    grid.append(float(len(order)))
    for t in grid:
        if cm.runtime(drop_recipe(spec, order, t).blocks()) <= target_ms:
            return t
    return float(len(order))


def layers_recipe(spec: Any, order: Sequence[int], t: float, multiple_of: int = 8) -> Recipe:
    """Remove the whole layers ``order[:floor(t)]`` (attention and FFN); narrow the FFN of the next one,
    ``order[floor(t)]``, to ``1 - frac(t)`` of its width (the knob's fine part; its attention stays)."""
    pb = spec.parent_block()
    att = [pb.attention] * spec.num_hidden_layers
    ffn = [pb.ffn] * spec.num_hidden_layers
    k = int(math.floor(t))
    for li in order[:k]:
        att[li], ffn[li] = AttentionConfig.make_no_op(), FFNConfig.make_no_op()
    frac = t - k
    if k < len(order) and frac > 0:
        li = order[k]
        w = int(multiple_of * round((1 - frac) * spec.intermediate_size / multiple_of))
        ffn[li] = FFNConfig.make_no_op() if w <= 0 else FFNConfig.swiglu(min(w, spec.intermediate_size))
    return Recipe("drop-layers", architecture=[BlockConfig(a, f).to_dict() for a, f in zip(att, ffn)], knob=t)


def layers_knob_for(spec: Any, order: Sequence[int], cm: Any, target_ms: float) -> float:
    """The smallest knob of :func:`layers_recipe` (steps of 1/16 of a layer's FFN) whose predicted runtime is
    at most ``target_ms``."""
    grid = [k + j / 16 for k in range(len(order)) for j in range(16)] + [float(len(order))]
    for t in grid:
        if cm.runtime(layers_recipe(spec, order, t).blocks()) <= target_ms:
            return t
    return float(len(order))


def match_speed(make: Callable[[float], tuple[Recipe, float]], measure: Callable[[Recipe], float],
                target_speedup: float, predicted_over_measured: float, *, tol: float = 0.05,
                max_iters: int = 4, at_least: bool = False) -> tuple[Recipe, float, list[dict[str, float]]]:
    """Turn a baseline's knob until its measured speed-up is within ``tol`` of ``target_speedup``.

    ``make(predicted_speedup)`` returns the recipe whose predicted speed-up best meets the
    requested one (and that prediction); ``measure(recipe)`` its measured speed-up.  The
    request starts at ``target · predicted_over_measured`` (the child's own calibration)
    and is corrected by the measured miss each round.  Returns the closest recipe found,
    its measured speed-up and the trace.  ``at_least``: only a model at least as fast as the
    target counts as matched (``target·(1 - RESOLUTION) <= s <= target·(1 + tol)``): a baseline is never given a
    speed advantage over the model it is compared with; among unmatched tries the closest wins.
    """

    def miss_of(s: float) -> float:
        r = s / target_speedup - 1
        if at_least and r < -RESOLUTION:
            return tol + abs(r)  # slower than the target: never matched, ranked after any match
        return abs(r)

    want = target_speedup * predicted_over_measured
    best: tuple[float, Recipe, float] | None = None
    trace: list[dict[str, float]] = []
    seen: dict[str, float] = {}
    for _ in range(max_iters):
        recipe, pred = make(want)
        key = repr((recipe.choices, recipe.architecture, recipe.fusion))  # the model, not the knob
        if key in seen:  # the knob cannot reach another model: measuring it again only samples noise
            break
        s = measure(recipe)
        seen[key] = s
        trace.append({"requested_predicted": want, "predicted": pred, "measured": s, "knob": recipe.knob or 0.0})
        miss = miss_of(s)
        if best is None or miss < best[0]:
            best = (miss, recipe, s)
        if miss <= tol:
            break
        # next request: interpolate between the closest measurements on either side of the target
        # (in log speed-up) once there are some, else correct by the measured miss
        below = [t for t in trace if t["measured"] < target_speedup]
        above = [t for t in trace if t["measured"] > target_speedup]
        if below and above:
            lo = max(below, key=lambda t: t["measured"])
            hi = min(above, key=lambda t: t["measured"])
            f = (math.log(target_speedup) - math.log(lo["measured"])) / (
                math.log(hi["measured"]) - math.log(lo["measured"]))
            nxt = math.exp(math.log(lo["predicted"]) + f * (math.log(hi["predicted"]) - math.log(lo["predicted"])))
            want = nxt
        else:
            want *= target_speedup / s
    if best is None:
        raise PuzzlekitError("match_speed: max_iters must be at least 1")
    return best[1], best[2], trace
