"""Fit the summed cost model on whole models: time sampled architectures end to end and correct each
sub-block's cost (and the non-block part) by least squares, so predictions hold for whole models.

Why.  The measured profile times each sub-block in a small stack of copies (:mod:`.measured`), adds
them up and corrects the sum for the decode cache spill (:class:`~.measured.CacheSpill`).  On
SmolLM2-135M-Instruct (batch 1, prefill 64, decode 8, fp32, one thread) that model predicted 24
random architectures of its library 10.1 % too fast on average (up to 26 %): a stack of small
sub-blocks (FFN 192 or 384 wide, a linear attention or FFN) stays in the CPU cache and pays less per
call than the same sub-block between 29 others in a 500 MB model, and a search that minimises KL under
that model spends its budget where the model is most wrong.  Regressing the residual of whole-model
timings on the count of each sub-block kind (one coefficient per kind, plus an intercept) brought the
leave-one-out error to 1.0 % (max 4.0 %) on the same 24.

Model.  ``corrected(arch) = summed(arch) + c0 + Σ_layers δ[attention] + δ[ffn]``: additive per
block, so "corrected ≤ T" stays a linear budget and the search an exact MIP; FFN widths that were not
sampled take ``δ`` interpolated in width.  The targets are the parent's measured runtime divided by
each architecture's measured speed-up over it (timed interleaved with the parent, so the drift of a
shared machine cancels); the parent itself is a row with speed-up 1.  A small ridge keeps the
coefficients of rarely sampled kinds near 0 (the stack's own value).

    prof = measure_profile(parent, library, scenario, whole=24)   # calls fit_on_whole_models
    prof["whole_fit"]["loo_error"], prof["whole_fit"]["summed_error"]   # the fit's accuracy
    cost_model(prof, spec).runtime(blocks)                          # corrected prediction
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from puzzlekit.architecture import Architecture, Scenario
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
from puzzlekit.errors import ConfigError

__all__ = ["sample_architectures", "axis_architectures", "time_against_parent", "fit_corrections",
           "confirmed_fit", "fit_on_whole_models", "fit_summary", "WHOLE_METHOD", "HUBER", "SURPRISE"]

#: Recorded with a profile that was fitted on whole models (part of a pipeline stage's identity).
WHOLE_METHOD = ("per-kind corrections (one per sub-block kind + intercept, ridge) fitted robustly (Huber) on "
                "sampled whole architectures timed between parent runs, surprising ones timed again")

#: The same with ``fit_corrections(robust=False)``: plain least squares.
WHOLE_METHOD_PLAIN = WHOLE_METHOD.replace(" robustly (Huber)", "")

#: A sample whose leave-one-out prediction misses its measured speed-up by more than this is timed again
#: (twice, the median kept) before the final fit: one timing that a burst of load slowed by 20 % is common on
#: a shared machine, and a sample alone in its corner of the space (an axis shape) steers the fit to it.
SURPRISE = 0.08

#: Huber's constant (in robust standard deviations of the relative residuals): 95 % efficiency on Gaussian noise.
HUBER = 1.345


def sample_architectures(spec: Any, attention: Sequence[AttentionConfig], ffn: Sequence[FFNConfig], n: int,
                         seed: int = 0, concentration: float = 0.6) -> list[Architecture]:
    """``n`` architectures of ``spec``'s depth whose layers draw from ``attention`` × ``ffn``.

    Each architecture has its own mixture over the attention kinds and over the FFN kinds (Dirichlet with
    ``concentration`` < 1: some mostly one kind, some mixed), so the counts of the kinds vary widely and
    independently across samples, which is what a regression on them needs."""
    if n < 1:
        raise ConfigError(f"sample_architectures: n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    attention, ffn = list(attention), list(ffn)
    out = []
    for _ in range(n):
        pa = rng.dirichlet([concentration] * len(attention))
        pf = rng.dirichlet([concentration] * len(ffn))
        blocks = tuple(BlockConfig(attention[rng.choice(len(attention), p=pa)], ffn[rng.choice(len(ffn), p=pf)])
                       for _ in range(spec.num_hidden_layers))
        out.append(Architecture(spec, blocks))
    return out


def axis_architectures(spec: Any, attention: Sequence[AttentionConfig], ffn: Sequence[FFNConfig]) -> list[Architecture]:
    """One architecture per sub-block kind that is not the parent's: that kind on every layer, the parent's
    sub-block in the other slot (every FFN 768 wide; every attention removed; ...).

    These are the ends of the count space that random mixtures rarely reach and the shapes the simple
    compressions produce (uniform FFN width, attention or KV heads cut everywhere): with them in the fit the
    cost model is anchored where a search that trades attention against FFN width needs it to be right."""
    pb = spec.parent_block()
    L = spec.num_hidden_layers
    out = [Architecture(spec, (BlockConfig(a, pb.ffn),) * L) for a in dict.fromkeys(attention) if a != pb.attention]
    out += [Architecture(spec, (BlockConfig(pb.attention, f),) * L) for f in dict.fromkeys(ffn) if f != pb.ffn]
    return out


def time_against_parent(parent: Any, archs: Sequence[Architecture], scenario: Scenario, *, threads: int | None = 1,
                        repeats: int = 3, group: int = 3, seed: int = 0, progress: Any = None) -> dict[str, Any]:
    """Measured speed-up of each architecture (randomly initialised: the time does not depend on the
    weights) over ``parent``: the parent is timed before the first and after every ``group``
    architectures, and each architecture's speed-up is the mean of its two neighbouring parent times
    over its own.  Returns ``{"speedups": [...], "model_ms": [...], "parent_ms": [...]}``."""
    from puzzlekit.model import PuzzleForCausalLM

    from .measured import measure_model

    def ms(model: Any, k: int) -> float:
        return measure_model(model, scenario, threads=threads, repeats=repeats, warmup=1, seed=seed + k).runtime_ms

    parent_ms = [ms(parent, 0)]
    model_ms: list[float] = []
    before: list[int] = []  # the parent timing just before each architecture (the next one follows its group)
    for i, arch in enumerate(archs):
        before.append(len(parent_ms) - 1)
        model = PuzzleForCausalLM.from_architecture(arch).eval()
        model_ms.append(ms(model, i + 1))
        del model
        if (i + 1) % group == 0 or i == len(archs) - 1:
            parent_ms.append(ms(parent, i + 1))
        if progress is not None:
            progress.update(1)
    speedups = [0.5 * (parent_ms[b] + parent_ms[b + 1]) / t for b, t in zip(before, model_ms)]
    return {"speedups": speedups, "model_ms": model_ms, "parent_ms": parent_ms}


def _kinds(blocks: Sequence[BlockConfig]) -> list[AttentionConfig | FFNConfig]:
    return [s for b in blocks for s in (b.attention, b.ffn) if not s.no_op]


def fit_corrections(base: Any, parent_blocks: Sequence[BlockConfig], parent_ms: float,
                    archs: Sequence[Sequence[BlockConfig]], speedups: Sequence[float], *,
                    ridge: float = 1e-3, robust: bool = True) -> dict[str, Any]:
    """Least-squares corrections of ``base`` (a :class:`~.cost_model.CostModel` without them) so that it
    predicts ``parent_ms / speedup`` for each of ``archs`` and ``parent_ms`` for the parent.

    Features: an intercept and the count of each sub-block kind.  ``ridge`` (relative to the mean squared
    count) pulls every kind's coefficient towards 0; the intercept is not penalised.  ``robust``: Huber's
    M-estimate (iteratively reweighted, :data:`HUBER` robust standard deviations of the relative residuals)
    instead of plain least squares, so a timing that a burst of load on a shared machine slowed by 20 %
    weighs like a 2-sigma one rather than pulling every coefficient towards it; the parent's row (a median of
    all its timings) keeps weight 1.  Returns the ``whole_fit`` record: ``intercept_ms``, ``subblocks``
    ({sub-block key: ms per use}), the speed-up errors before (``summed_error``) and after (leave-one-out,
    ``loo_error``): mean and max absolute, and the samples the robust fit down-weighted (``downweighted``:
    index -> weight, below 0.5).  The corrections are ``adopted`` only when their leave-one-out error is
    below the plain sum's; otherwise they are 0 (and the fitted values are kept under ``fitted``)."""
    from .cost_model import subkey

    if len(archs) != len(speedups):
        raise ConfigError(f"fit_corrections: {len(archs)} architectures but {len(speedups)} speed-ups")
    rows = [list(parent_blocks), *[list(a) for a in archs]]
    kinds: list[Any] = []
    for r in rows:
        for s in _kinds(r):
            if s not in kinds:
                kinds.append(s)
    if len(rows) < len(kinds) + 3:
        raise ConfigError(f"fitting the cost model on whole models needs at least {len(kinds) + 2} sampled "
                          f"architectures for {len(kinds)} sub-block kinds, got {len(archs)}; raise "
                          "profile.whole")
    X = np.zeros((len(rows), len(kinds)))
    for i, r in enumerate(rows):
        for s in _kinds(r):
            X[i, kinds.index(s)] += 1
    target = np.array([parent_ms, *[parent_ms / s for s in speedups]], float)
    summed = np.array([base.runtime(r) for r in rows], float)
    y = target - summed
    F = np.c_[np.ones(len(rows)), X]
    pen = np.diag([0.0] + [ridge * float(np.mean(X**2, axis=0).mean() or 1.0) * len(rows)] * len(kinds))

    def solve(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The coefficients fitted on rows ``m`` and each row's weight (1 unless robust down-weights it)."""
        wt = np.ones(len(rows))
        for _ in range(100 if robust else 1):
            A, sw = F[m], wt[m]
            beta = np.linalg.solve(A.T @ (A * sw[:, None]) + pen + 1e-12 * np.eye(F.shape[1]), A.T @ (sw * y[m]))
            if not robust:
                break
            rel = (y - F @ beta) / target
            # the noise scale: the residuals' median absolute deviation, floored at 0.5 % (a timing's resolution)
            scale = max(1.4826 * float(np.median(np.abs(rel[m][1:]))), 0.005)
            new = np.minimum(1.0, HUBER * scale / np.maximum(np.abs(rel), 1e-12))
            new[0] = 1.0
            if np.max(np.abs(new - wt)) < 1e-6:
                break
            wt = new
        return beta, wt

    def err(pred: np.ndarray, i: int) -> float:  # |predicted speed-up / measured - 1|
        return abs((pred[0] / pred[i]) / (target[0] / target[i]) - 1)

    w, weights = solve(np.ones(len(rows), bool))
    loo = []
    for i in range(1, len(rows)):  # each sampled architecture predicted by a fit without it
        m = np.ones(len(rows), bool)
        m[i] = False
        loo.append(err(summed + F @ solve(m)[0], i))
    before = [err(summed, i) for i in range(1, len(rows))]
    after = [err(summed + F @ w, i) for i in range(1, len(rows))]
    # adopted only where it predicts the architectures it was not fitted on better than the plain sum (a few
    # noisy timings of a tiny model can fit worse than no correction at all)
    adopted = bool(np.mean(loo) < np.mean(before))
    fitted = {"intercept_ms": float(w[0]), "subblocks": {subkey(s): float(c) for s, c in zip(kinds, w[1:])}}
    return {"method": WHOLE_METHOD if robust else WHOLE_METHOD_PLAIN,
            "samples": len(archs), "adopted": adopted,
            **(fitted if adopted else {"intercept_ms": 0.0, "subblocks": {}}), "fitted": fitted,
            "summed_error": {"mean": float(np.mean(before)), "max": float(np.max(before))},
            "loo_error": {"mean": float(np.mean(loo)), "max": float(np.max(loo))}, "loo_errors": [float(x) for x in loo],
            "fit_error": {"mean": float(np.mean(after)), "max": float(np.max(after))},
            "ridge": ridge, "robust": robust,
            "downweighted": {str(i - 1): round(float(x), 3) for i, x in enumerate(weights) if i and x < 0.5}}


def confirmed_fit(fit_on: Callable[[list[float]], dict[str, Any]], runs: list[list[float]],
                  retime: Callable[[list[int]], list[list[float]]] | None) -> tuple[dict[str, Any], list[int]]:
    """Fit on the median of each sample's speed-ups (``runs``, extended in place); with ``retime`` (sample
    indices -> more speed-ups of each), the samples whose leave-one-out error exceeds :data:`SURPRISE` are timed
    again and the fit made once more.  Returns the fit and the indices timed again."""
    fit = fit_on([float(np.median(r)) for r in runs])
    again = [i for i, e in enumerate(fit["loo_errors"]) if e > SURPRISE] if retime is not None else []
    if again:
        for i, extra in zip(again, retime(again)):
            runs[i].extend(extra)
        fit = fit_on([float(np.median(r)) for r in runs])
    return fit, again


def fit_on_whole_models(parent: Any, library: Any, prof: dict[str, Any], scenario: Scenario, n: int, *,
                        threads: int | None = 1, repeats: int = 3, seed: int = 0, axes: bool = False,
                        confirm: bool = True, progress: bool = False) -> dict[str, Any]:
    """Time ``n`` architectures made of ``library``'s sub-blocks against ``parent`` and fit the corrections of
    the profile ``prof`` (without any): the ``whole_fit`` record, with the samples.  With ``axes`` the first
    are :func:`axis_architectures` (one per sub-block kind), the rest sampled (:func:`sample_architectures`).
    With ``confirm`` the samples whose leave-one-out prediction misses by more than :data:`SURPRISE` are timed
    twice more and the fit is made again on the median of each one's timings (``retimed``: index -> the three)."""
    from puzzlekit.progress import progress as progress_bar

    from .cost_model import cost_model

    spec = parent.config.parent_spec
    attention = list(dict.fromkeys(b.attention for b in library.blocks))
    ffn = list(dict.fromkeys(b.ffn for b in library.blocks))
    archs = axis_architectures(spec, attention, ffn) if axes else []
    if len(archs) >= n:
        raise ConfigError(f"profile.whole={n} with whole_axes: the library has {len(archs)} sub-block kinds besides "
                          f"the parent's, each timed on every layer, so give more than {len(archs)} (the rest are "
                          "sampled mixtures; 24 or more is a good start)")
    n_axes = len(archs)
    archs += sample_architectures(spec, attention, ffn, n - n_axes, seed=seed)
    bar = progress_bar(total=n, desc=f"profile: {n} whole architectures", disable=not progress, unit="model")
    timed = time_against_parent(parent, archs, scenario, threads=threads, repeats=repeats, seed=seed, progress=bar)
    bar.close()
    base = cost_model({k: v for k, v in prof.items() if k != "whole_fit"}, spec)
    runs = [[s] for s in timed["speedups"]]

    def fit_on(speedups: list[float]) -> dict[str, Any]:
        return fit_corrections(base, parent.architecture.blocks, float(prof["parent_measured_ms"]),
                               [a.blocks for a in archs], speedups)

    def retime(idx: list[int]) -> list[list[float]]:  # each twice more, in two passes over them
        more = time_against_parent(parent, [archs[i] for i in idx] * 2, scenario, threads=threads,
                                   repeats=repeats, seed=seed + n)["speedups"]
        return [[more[k], more[k + len(idx)]] for k in range(len(idx))]

    fit, again = confirmed_fit(fit_on, runs, retime if confirm else None)
    fit["axes"] = n_axes
    fit["retimed"] = {str(i): runs[i] for i in again}
    fit["samples_detail"] = [{"blocks": [b.key for b in a.blocks], "speedup": float(np.median(r)), "speedups": r,
                              "model_ms": t} for a, r, t in zip(archs, runs, timed["model_ms"])]
    fit["parent_ms"] = timed["parent_ms"]
    return fit


def fit_summary(fit: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ``whole_fit`` record without its per-sample timings (what a library or a report keeps)."""
    return {k: v for k, v in fit.items() if k not in ("samples_detail", "parent_ms", "loo_errors")} if fit else None
