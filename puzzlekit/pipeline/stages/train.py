"""``heal`` (GKD toward the parent: cosine of hidden states + KL over the vocabulary, the child and every
baseline with the same budget) and ``cpt`` (continued pre-training, LM loss), both
:func:`puzzlekit.distill.distill`, checkpointed (a killed run resumes, a changed config starts afresh)
and data-parallel under ``torchrun`` / ``accelerate launch``.

``heal.fsdp`` / ``cpt.fsdp``: FSDP2 (:mod:`puzzlekit.distill.fsdp`) shards the model and the parent in
place, so the model is gathered (:func:`puzzlekit.distill.fsdp.full_model`, every process takes part) before
process 0 saves it, and the parent is re-read unsharded for the next model."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

from ...io import atomic_write_json, read_json
from ..runner import Stage, stage_hash

__all__ = ["HEAL", "CPT", "latest_model"]


def _accelerator(mixed_precision: str) -> Any:
    """An ``Accelerator`` on this process's device (several CPU processes run as MULTI_CPU), even when an
    earlier trainer in this process left accelerate's process-wide state at another precision."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mp = mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if AcceleratorState._shared_state and str(AcceleratorState().mixed_precision) != mp:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp)


def _steps(steps: int, tokens: float, rows: int, seq_len: int) -> int:
    return steps if steps > 0 else max(1, math.ceil(float(tokens) / (rows * seq_len)))


def train_model(ctx: Any, model: Any, out: Path, *, steps: int, batch: int, lr: float, kd: bool, seed: int,
                warmup_fraction: float, saves: int, evals: int, keep: int, acc: Any, fsdp: bool = False,
                mixed_precision: str = "no") -> dict[str, Any]:
    """GKD (``kd``) or LM-loss training of ``model`` in place, checkpointed in ``out``; KL / LM loss on the
    held-out rows before and after.  ``fsdp``: sharded in place with FSDP2 (gather it with
    :func:`save_trained` before saving)."""
    from ...distill import DistillConfig, GKDWeights, distill
    from ...model import num_params

    eval_every = max(1, steps // evals) if (kd and evals) else 0
    dcfg = DistillConfig(max_steps=steps, batch_size=batch, learning_rate=lr,
                         warmup_steps=max(1, int(steps * warmup_fraction)),
                         weights=GKDWeights(1.0, 1.0, 0.0) if kd else GKDWeights(cosine=0, kl=0, lm=1),
                         eval_every=eval_every, save_every=max(1, steps // saves), keep_checkpoints=keep,
                         output_dir=str(out), seed=seed, log_every=max(1, steps // evals) if evals else 0,
                         **({"fsdp": True, "mixed_precision": mixed_precision} if fsdp else {}))
    before = ctx.kl(model)
    t0 = time.perf_counter()
    res = distill(model, ctx.parent if kd else None, ctx.train_ids(), dcfg,
                  eval_tokens=ctx.heldout() if eval_every else None, accelerator=acc)
    secs = time.perf_counter() - t0
    model = acc.unwrap_model(model).eval()
    after = ctx.kl(model)
    return {"steps": steps, "processes": acc.num_processes, "tokens": steps * batch * acc.num_processes
            * ctx.data.seq_len, "kl_before": before["kl"], "kl_after": after["kl"], "before": before, "after": after,
            "evals": res.evals, "num_params": int(num_params(model)), "heal_seconds": secs,
            "lm_first_last": [res.history[0].get("lm"), res.history[-1].get("lm")] if res.history else None,
            "blocks": [b.key for b in model.architecture.blocks]}


def save_trained(ctx: Any, model: Any, rel: str, acc: Any, fsdp: bool) -> None:
    """Save a trained model at ``rel`` on process 0; an FSDP-sharded one is gathered first (collective: every
    process calls this) and the sharded parent dropped, so the next model starts from an unsharded one."""
    if fsdp:
        from ...distill.fsdp import full_model

        whole = full_model(model)
        if whole is not None:
            ctx.save_model(whole, rel)
        ctx._parent = None
        return
    if acc.is_main_process:
        ctx.save_model(acc.unwrap_model(model), rel)


def latest_model(ctx: Any, before: str) -> str:
    """The run-directory folder of the newest model the stages before ``before`` wrote."""
    for stage, rel in (("rl", "rl/model"), ("sft", "sft/model"), ("cpt", "cpt/model"), ("heal", "heal/child/model")):
        if ctx.has(stage) and ctx.cfg.stages.index(stage) < ctx.cfg.stages.index(before):
            return rel
    return "fused" if ctx.has("fuse") and ctx.result("fuse")["fusion"]["adopted"] else "child"


def run_heal(ctx: Any) -> dict[str, Any]:
    from ...baselines import Recipe
    from ...progress import progress as progress_bar

    h = ctx.cfg.heal
    jobs = [("child", Recipe.from_dict(ctx.child()["recipe"]))]
    if ctx.has("baselines"):
        base = ctx.result("baselines")["baselines"]
        jobs += [(n, Recipe.from_dict(b["recipe"])) for n, b in base.items()]
    acc = _accelerator(h.mixed_precision)
    steps = _steps(h.steps, h.tokens, h.batch * acc.num_processes, ctx.data.seq_len)
    ident = ctx.identity("heal")
    # each healed model is kept, so a run killed in this stage resumes with the next one
    done_path = ctx.path("stages/heal_parts.json")
    done = read_json(done_path, what="healing parts") if done_path.exists() else {}
    key = stage_hash([ident, [(n, r.to_dict()) for n, r in jobs]])
    if done.get("key") != key:
        done = {"key": key, "models": {}}
    for name, recipe in progress_bar(jobs, desc=f"healing (GKD, {steps} steps each)", disable=not ctx.progress,
                                     unit="model"):
        if name in done["models"] and ctx.path(f"heal/{name}/model/config.json").exists():
            continue  # healed and saved (a model whose folder was removed is healed again)
        acc = _accelerator(h.mixed_precision)
        model = ctx.build_model(recipe)
        # one checkpoint folder per (model, settings): a changed recipe never resumes another's weights
        out = ctx.path(f"heal/{name}") / f"ckpt-{stage_hash([recipe.to_dict(), ident])[:10]}"
        r = train_model(ctx, model, out, steps=steps, batch=h.batch, lr=h.lr, kd=True, seed=ctx.cfg.seed,
                        warmup_fraction=h.warmup_fraction, saves=h.saves, evals=h.evals, keep=h.keep_checkpoints,
                        acc=acc, fsdp=h.fsdp, mixed_precision=h.mixed_precision)
        save_trained(ctx, model, f"heal/{name}/model", acc, h.fsdp)
        done["models"][name] = r
        if acc.is_main_process:
            atomic_write_json(done_path, done)
            # the healed model is saved and recorded: its resume checkpoints (weights + optimizer state,
            # ~1.3 GB for SmolLM2-135M) are no longer needed
            shutil.rmtree(out, ignore_errors=True)
    parent_lm = ctx.kl(ctx.parent)["lm_loss"]
    acc.wait_for_everyone()  # tear the process group down before exit (gloo aborts otherwise)
    acc.end_training()
    return {"models": done["models"], "parent_lm_loss": parent_lm, "steps": steps}


HEAL = Stage("heal", run_heal, lambda cfg: {"heal": cfg.heal, "eval_sequences": cfg.data.eval_sequences,
                                           "seed": cfg.seed},
             "GKD of the child (and of every baseline: the same budget each), checkpointed",
             reads=("the child", "the baselines' recipes", "tokens.npz"), writes=("heal/<model>/model",),
             multi_process=True, per_target=True)


def run_cpt(ctx: Any) -> dict[str, Any]:
    """Continued pre-training of the healed child on raw text (LM loss), as LN-Ultra did after KD."""
    c = ctx.cfg.cpt
    acc = _accelerator("no")
    model = ctx.load_model(latest_model(ctx, "cpt"))
    steps = _steps(0, c.tokens, c.batch * acc.num_processes, ctx.data.seq_len)
    out = ctx.out / "cpt" / f"ckpt-{ctx.identity('cpt')[:10]}"
    r = train_model(ctx, model, out, steps=steps, batch=c.batch, lr=c.lr, kd=False, seed=ctx.cfg.seed + 1,
                    warmup_fraction=0.05, saves=4, evals=4, keep=2, acc=acc, fsdp=c.fsdp)
    save_trained(ctx, model, "cpt/model", acc, c.fsdp)
    r["parent_lm_loss"] = ctx.kl(ctx.parent)["lm_loss"]
    acc.wait_for_everyone()
    acc.end_training()
    return r


CPT = Stage("cpt", run_cpt, lambda cfg: {"cpt": cfg.cpt, "eval_sequences": cfg.data.eval_sequences,
                                         "seed": cfg.seed},
            "continued pre-training of the healed child (LM loss), checkpointed", reads=("heal/child/model",),
            writes=("cpt/model",), multi_process=True)
