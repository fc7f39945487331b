"""The ``evaluate`` stage: the parent, the child and every baseline of every speed target, before and after
healing, on text no earlier stage read — the **test** documents of each domain (``data.domains``) — with
:mod:`puzzlekit.eval`:

* per domain: KL(parent ‖ model), perplexity and top-1 next-token agreement (:func:`evaluate_model`, the
  parent's side computed once, :class:`ParentReference`);
* the fixed chat prompts (:data:`puzzlekit.eval.CHAT_PROMPTS`): the share whose first ``chat_tokens``
  greedy tokens equal the parent's, a few answers side by side;
* parameters, and the measured / predicted speed-ups the ``child`` and ``baselines`` stages recorded;
* the rank correlation between summed replace-1-block scores and the realised KL (test rows) of several
  children assembled from the library: the searched children, the greedy and random baselines, children
  searched at other speed-ups and random architectures (:func:`puzzlekit.scoring.score_architectures`).

Each evaluated model is kept in ``stages/evaluate_parts.json``: a killed run resumes with the next one.
"""

from __future__ import annotations

from typing import Any

from ...io import atomic_write_json, read_json
from ..runner import Stage, stage_hash

__all__ = ["EVALUATE", "models_of_target"]


def models_of_target(ctx: Any) -> list[dict[str, Any]]:
    """The child and the baselines of the current target: name, recipe, measured / predicted speed-up,
    whether speed-matched."""
    child = ctx.child()
    out = [{"name": "child", "recipe": child["recipe"], "measured_speedup": child["measured"]["speedup"],
            "predicted_speedup": child["predicted_speedup"], "matched": True}]
    if ctx.has("baselines"):
        for n, b in ctx.result("baselines")["baselines"].items():
            out.append({"name": n, "recipe": b["recipe"], "measured_speedup": b["measured_speedup"],
                        "predicted_speedup": b["predicted_speedup"], "matched": bool(b["matched"]),
                        "note": b.get("note", "")})
    return out


def _evaluate_one(ctx: Any, model: Any, ref: Any, tok: Any, prompts: tuple[str, ...], parent_answers: list,
                  e: Any) -> dict[str, Any]:
    from ...eval import compare_answers, evaluate_model, greedy_answers

    res: dict[str, Any] = {"domains": evaluate_model(model, ref), "params": int(sum(p.numel() for p in model.parameters()))}
    if prompts:
        ans = greedy_answers(model, tok, prompts, max_new_tokens=e.chat_tokens, batch_size=e.batch)
        res["chat"] = compare_answers(parent_answers, ans, n=e.chat_tokens, tokenizer=tok, prompts=prompts,
                                      examples=e.examples)
    return res


def _rank_children(ctx: Any, e: Any) -> list[tuple[str, list[int]]]:
    """Library children for the rank correlation: per target the searched child and the library baselines,
    then children searched at other speed-ups and random architectures (``rank_children`` in all)."""
    from ...baselines import parent_choices
    from ...profilers.cost_model import cost_model
    from ...scoring.replace1 import random_choices
    from .search import _search_at

    out: list[tuple[str, list[int]]] = []
    targets = ctx.cfg.targets()
    for key, _ in targets:
        ctx.target = key
        try:
            out.append((f"child@{key}" if key else "child", list(ctx.result("child")["choices"])))
            if ctx.has("baselines"):
                for n, b in ctx.result("baselines")["baselines"].items():
                    if b["recipe"].get("choices") is not None:
                        out.append((f"{n}@{key}" if key else n, list(b["recipe"]["choices"])))
        finally:
            ctx.target = None
    lib = ctx.library()
    prof = ctx.result("profile")
    parent_pred = cost_model(prof, ctx.spec).runtime([lib.candidates[i].block for i in parent_choices(lib)])
    top = max(s for _, s in targets)
    n_search = e.rank_children // 2
    for k in range(n_search):
        s = 1.15 + (top + 0.5 - 1.15) * k / max(1, n_search - 1)
        out.append((f"searched@{s:.2f}x", list(_search_at(ctx, prof, parent_pred, s)["choices"])))
    for k, ch in enumerate(random_choices(lib, e.rank_children - n_search, seed=ctx.cfg.seed)):
        out.append((f"random-architecture-{k}", list(ch)))
    seen: set[tuple[int, ...]] = set()
    uniq = []
    for name, ch in out:
        if tuple(ch) not in seen:
            seen.add(tuple(ch))
            uniq.append((name, ch))
    return uniq


def _rank_correlation(ctx: Any, e: Any, rows: Any) -> dict[str, Any]:
    from ...scoring.replace1 import score_architectures, spearman

    lib = ctx.library()
    obj = ctx.cfg.search.objective
    kids = _rank_children(ctx, e)
    real = score_architectures(ctx.parent, lib, [ch for _, ch in kids], rows, eval_sequences=len(rows),
                               batch_size=e.batch)
    pred = [float(sum(lib.candidates[i].metrics[obj] for i in ch)) for _, ch in kids]
    got = [float(r[obj]) for r in real]
    rho = spearman(pred, got)
    return {"metric": obj, "tokens": int(rows.numel()), "spearman": rho if rho == rho else None,
            "children": [{"name": n, "summed": p, "realised": r} for (n, _), p, r in zip(kids, pred, got)]}


def run_evaluate(ctx: Any) -> dict[str, Any]:
    import torch

    from ...baselines import Recipe
    from ...corpus import DomainData
    from ...eval import CHAT_PROMPTS, ParentReference, greedy_answers
    from ...progress import progress as progress_bar

    e = ctx.cfg.evaluate
    path = ctx.out / "test.npz"
    test = DomainData.load(path).test
    rows = {k: torch.from_numpy(spaced_rows(v, e.test_sequences)).long() for k, v in test.items()}
    tok = ctx.tokenizer()
    prompts = tuple(CHAT_PROMPTS[: e.chat_prompts])
    parts_path = ctx.out / "stages" / "evaluate_parts.json"
    parts = read_json(parts_path, what="evaluation parts") if parts_path.exists() else {}
    key = stage_hash([ctx.identity("evaluate"), ctx.ids.get("heal", {}).get("id")])
    if parts.get("key") != key:
        parts = {"key": key, "models": {}}
    ref = ParentReference.build(ctx.parent, rows, batch_size=e.batch)
    parent_answers = (greedy_answers(ctx.parent, tok, prompts, max_new_tokens=e.chat_tokens, batch_size=e.batch)
                      if prompts else [])
    parent = {"domains": {k: dict(v) for k, v in ref.parent_metrics.items()},
              "params": int(sum(p.numel() for p in ctx.parent.parameters())),
              "chat_answers": [tok.decode(a, skip_special_tokens=True) for a in parent_answers]}
    jobs = []
    for tkey, speedup in ctx.cfg.targets():
        ctx.target = tkey
        try:
            for m in models_of_target(ctx):
                for state in ("before", "after") if ctx.has("heal") else ("before",):
                    jobs.append((tkey, speedup, m, state))
        finally:
            ctx.target = None
    for tkey, _, m, state in progress_bar(jobs, desc="evaluate (test text, chat prompts)", disable=not ctx.progress,
                                          unit="model"):
        name = f"{tkey or 'target'}/{m['name']}/{state}"
        if name in parts["models"]:
            continue
        ctx.target = tkey
        try:
            model = (ctx.build_model(Recipe.from_dict(m["recipe"])) if state == "before"
                     else ctx.load_model(f"heal/{m['name']}/model"))
            parts["models"][name] = _evaluate_one(ctx, model.eval(), ref, tok, prompts, parent_answers, e)
        finally:
            ctx.target = None
        del model
        atomic_write_json(parts_path, parts)
    targets: dict[str, Any] = {}
    for tkey, speedup in ctx.cfg.targets():
        ctx.target = tkey
        try:
            ms = models_of_target(ctx)
        finally:
            ctx.target = None
        targets[tkey or "target"] = {"speedup": speedup, "models": [
            {**{k: v for k, v in m.items() if k != "recipe"},
             **{s: parts["models"][f"{tkey or 'target'}/{m['name']}/{s}"] for s in ("before", "after")
                if f"{tkey or 'target'}/{m['name']}/{s}" in parts["models"]}} for m in ms]}
    rank = None
    if e.rank_children >= 0 and ctx.has("score"):
        rank_rows = torch.cat([r[: e.rank_sequences] for r in rows.values()])
        rank = _rank_correlation(ctx, e, rank_rows)
    return {"parent": parent, "targets": targets, "rank_correlation": rank,
            "test_tokens": {k: int(v.numel()) for k, v in rows.items()}, "chat_prompts": len(prompts),
            "chat_tokens": e.chat_tokens}


#: What each evaluation records (part of the stage's identity, so a run evaluated before re-evaluates).
METRICS = "kl, perplexity, top-1 per domain; KL per test row; rows evenly spaced over the test text"


def spaced_rows(rows: Any, n: int) -> Any:
    """``n`` of ``rows`` evenly spaced from the first to the last (all of them when there are no more), so a
    few rows of test text packed document after document stand on as many documents as they can."""
    import numpy as np

    if n >= len(rows):
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, n).round().astype(np.int64))]


def _settings(cfg: Any) -> dict[str, Any]:
    return {"evaluate": cfg.evaluate, "seed": cfg.seed, "metrics": METRICS}


EVALUATE = Stage("evaluate", run_evaluate, _settings,
                 "the parent, child and baselines before / after healing on each domain's test text: KL, "
                 "perplexity, top-1 agreement, chat prompts; rank correlation of summed scores and realised KL",
                 reads=("test.npz", "the child and baselines", "heal/<model>/model"),
                 writes=("stages/evaluate_parts.json",))
