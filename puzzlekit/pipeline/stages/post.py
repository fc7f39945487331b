"""``sft`` (SFT with the reasoning toggle, staged mix, TRL's ``SFTTrainer``) and ``rl`` (GRPO with accuracy +
format rewards and a pass-rate curriculum, TRL's ``GRPOTrainer``); data pieces from :mod:`puzzlekit.post`,
evaluated with :func:`puzzlekit.post.evaluate_toggle` (think-tag rate, format and accuracy per mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..runner import Stage
from .train import latest_model

__all__ = ["SFT", "RL"]


def _eval_problems(cfg: Any, n: int) -> list[Any]:
    from ...post import make_problems

    return make_problems(n, seed=cfg.seed + 101, max_digits=2)


def run_sft(ctx: Any) -> dict[str, Any]:
    """SFT with the reasoning toggle on the healed child: the samples of ``sft.data`` (JSONL, one ``source``
    per row) or, without it, paired thinking-on / off samples of a verifiable task (arithmetic made in code,
    the evaluation problems excluded); staged in ``sft.stages`` order with Llama-Nemotron's mixing weights
    (a stage whose own source has no data, e.g. ``chat`` without ``sft.data``, is reported as skipped),
    the loss on the response only, linear warm-up + cosine decay per stage."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from ...post import (
        DEFAULT_STAGES,
        Stage,
        arithmetic_pairs,
        evaluate_toggle,
        make_problems,
        read_sft_data,
        staged_mix,
        to_prompt_completion,
    )

    cfg, s = ctx.cfg, ctx.cfg.sft
    model = ctx.load_model(latest_model(ctx, "sft"))
    tok = ctx.tokenizer()
    test = _eval_problems(cfg, s.eval_problems)
    if s.data:
        sources = read_sft_data(Path(s.data).expanduser())
    else:
        train = make_problems(s.problems, seed=cfg.seed + 11, max_digits=2, exclude={p.question for p in test})
        pairs = [to_prompt_completion(x) for x in arithmetic_pairs(train)]
        sources = {"reasoning": [x for x in pairs if x["thinking"]],
                   "non_reasoning": [x for x in pairs if not x["thinking"]]}
    mixes = dict(DEFAULT_STAGES)
    stages, skipped = [], []
    for name in s.stages:
        if name not in mixes:
            raise ConfigError(f"sft.stages: unknown stage {name!r}; use {', '.join(mixes)}")
        w = {k: v for k, v in mixes[name].items() if k in sources}
        if name not in sources:  # the stage's own data (chat, tool calling) is not generated here
            skipped.append(name)
            continue
        stages.append(Stage(name, s.samples_per_stage, w))
    before = evaluate_toggle(model, tok, test, s.max_completion_length)
    history = []
    for stage, data in zip(stages, staged_mix(sources, stages, seed=cfg.seed)):
        ds = Dataset.from_list([{"prompt": x["prompt"], "completion": x["completion"]} for x in data])
        steps = max(1, len(ds) // s.batch)
        args = SFTConfig(output_dir=str(ctx.out / "sft" / "trainer" / stage.name), per_device_train_batch_size=s.batch,
                         num_train_epochs=1, learning_rate=s.lr, lr_scheduler_type="cosine",
                         warmup_steps=max(1, steps // 20), completion_only_loss=True,
                         max_length=max(128, cfg.data.seq_len), logging_steps=max(1, steps // 5), save_strategy="no",
                         report_to="none", use_cpu=not torch.cuda.is_available(), seed=cfg.seed,
                         dataloader_num_workers=0, disable_tqdm=True, eos_token=tok.eos_token,
                         pad_token=tok.pad_token, bf16=torch.cuda.is_available(), gradient_checkpointing=False)
        tok.padding_side = "right"
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        trainer.remove_callback(PrinterCallback)  # the per-step logs go to stages/sft.json, not stdout
        result = trainer.train()
        logs = [r for r in trainer.state.log_history if "loss" in r]
        history.append({"stage": stage.name, "samples": len(ds), "steps": trainer.state.global_step,
                        "first_loss": logs[0]["loss"] if logs else None, "last_loss": logs[-1]["loss"] if logs else None,
                        "train_loss": result.training_loss})
    after = evaluate_toggle(model, tok, test, s.max_completion_length)
    ctx.save_model(model, "sft/model")
    return {"stages": history, "skipped_stages": skipped, "before": before, "after": after}


SFT = Stage("sft", run_sft, lambda cfg: {"sft": cfg.sft, "seed": cfg.seed, "seq_len": cfg.data.seq_len},
            "SFT with the reasoning toggle, staged mix (TRL SFTTrainer)", reads=("the healed child",),
            writes=("sft/model",))


def run_rl(ctx: Any) -> dict[str, Any]:
    """GRPO on the SFT'd child: prompts in both modes, pass rates from k samples, the solved ones
    (>= ``rl.max_pass_rate``) dropped, batches ordered by the Gaussian pass-rate curriculum, TRL's
    GRPOTrainer with the accuracy and format rewards; held-out accuracy before / after."""
    import random

    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from ...post import (
        CurriculumSampler,
        accuracy_reward,
        build_messages,
        estimate_pass_rates,
        evaluate_toggle,
        filter_by_pass_rate,
        format_reward,
        hf_generator,
        make_problems,
        read_jsonl,
        render_chat,
    )

    cfg, r = ctx.cfg, ctx.cfg.rl
    model = ctx.load_model(latest_model(ctx, "rl"))
    tok = ctx.tokenizer()
    test = _eval_problems(cfg, r.eval_problems)
    rng = random.Random(cfg.seed)
    if r.data:
        qa = read_jsonl(Path(r.data).expanduser(), ("question", "answer"))[: r.prompts]
    else:
        qa = [{"question": p.question, "answer": p.answer}
              for p in make_problems(r.prompts, seed=cfg.seed + 202, max_digits=2, exclude={p.question for p in test})]
    rows = []
    for q in qa:
        th = rng.random() < 0.5
        rows.append({"prompt": render_chat(build_messages(str(q["question"]), "", "x", th)[:2],
                                           add_generation_prompt=True), "answer": str(q["answer"]), "thinking": th})

    def passed(completions: Any, answer: Any, thinking: Any, **kw: Any) -> list[float]:
        a = accuracy_reward(completions=completions, answer=answer)
        f = format_reward(completions=completions, thinking=thinking)
        return [x * y for x, y in zip(a, f)]

    tok.padding_side = "left"
    gen = hf_generator(model, tok, max_new_tokens=r.max_completion_length, temperature=1.0)
    torch.manual_seed(cfg.seed)
    rates = estimate_pass_rates([x["prompt"] for x in rows], gen, k=r.generations, reward=passed,
                                answer=[x["answer"] for x in rows], thinking=[x["thinking"] for x in rows])
    keep = filter_by_pass_rate(rates, max_rate=r.max_pass_rate)
    if len(keep) < r.prompts_per_step:
        raise ConfigError(f"rl: only {len(keep)} of {len(rows)} prompts have a pass rate below "
                          f"{r.max_pass_rate}; raise rl.prompts or rl.max_pass_rate")
    pool = [dict(rows[i], pass_rate=rates[i]) for i in keep]
    order = CurriculumSampler([x["pass_rate"] for x in pool], batch_size=r.prompts_per_step,
                              num_batches=r.steps, seed=cfg.seed).order()
    before = evaluate_toggle(model, tok, test, r.max_completion_length)
    args = GRPOConfig(output_dir=str(ctx.out / "rl" / "trainer"), max_steps=r.steps,
                      per_device_train_batch_size=r.prompts_per_step * r.generations,
                      num_generations=r.generations, max_completion_length=r.max_completion_length,
                      learning_rate=r.lr, beta=0.0, shuffle_dataset=False, logging_steps=1, save_strategy="no",
                      report_to="none", use_cpu=not torch.cuda.is_available(), seed=cfg.seed, disable_tqdm=True,
                      bf16=torch.cuda.is_available(), gradient_checkpointing=False)
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward, format_reward], args=args,
                          train_dataset=Dataset.from_list([pool[i] for i in order]), processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [x for x in trainer.state.log_history if "reward" in x]
    after = evaluate_toggle(model, tok, test, r.max_completion_length)
    ctx.save_model(model, "rl/model")
    return {"prompts": len(rows), "kept": len(pool), "steps": trainer.state.global_step,
            "reward": [x["reward"] for x in logs], "before": before, "after": after}


RL = Stage("rl", run_rl, lambda cfg: {"rl": cfg.rl, "seed": cfg.seed},
           "GRPO with accuracy + format rewards and a pass-rate curriculum (TRL GRPOTrainer)",
           reads=("sft/model",), writes=("rl/model",))
