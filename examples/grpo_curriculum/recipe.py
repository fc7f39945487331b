"""GRPO with a pass-rate curriculum: accuracy + format rewards, prompts the model already solves (or never
solves) dropped, and batches ordered from easy to hard (static) or by the policy's tracked competence
(adaptive) — compared with random ordering on the same budget, over several seeds.

Reads top to bottom: setup (the SFT'd model, prompts in both thinking modes, held-out problems) → pass
rates (k samples per prompt) → filter (keep ``min_pass_rate`` ≤ rate < ``max_pass_rate``: at or above 0.75
the model already solves the prompt, below one success in k a GRPO group has the same reward everywhere
and so no gradient) → for each seed and each ordering: order the prompts (static curriculum, random, or
adaptive: ``AdaptiveCurriculum`` draws each batch during training from pass rates it updates with the
rewards of every GRPO group, retiring the prompts that become solved), train
with TRL ``GRPOTrainer`` from the same SFT weights (the same steps, prompts and generations), evaluate
held-out greedy accuracy / format and sampled accuracy in both modes → save ``metrics.json``.

    python examples/grpo_curriculum/recipe.py --config examples/grpo_curriculum/config.yaml
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from puzzlekit.errors import ConfigError
from puzzlekit.io import atomic_write_json
from puzzlekit.post import (
    AdaptiveCurriculum,
    CurriculumSampler,
    accuracy_reward,
    build_messages,
    estimate_pass_rates,
    filter_by_pass_rate,
    format_reward,
    hf_generator,
    make_problems,
    render_chat,
)
from puzzlekit.post import evaluate_toggle as evaluate  # held-out greedy evaluation, both modes
from puzzlekit.post.recipe_config import recipe_config_from_argv

logger = logging.getLogger("grpo_curriculum")

ORDERINGS = ("curriculum", "random", "adaptive")


@dataclass(frozen=True)
class Config:
    """Every knob of the recipe (the YAML beside it sets them)."""

    sft_model_dir: str = "runs/sft_reasoning_toggle/model"
    output_dir: str = "runs/grpo_curriculum"
    seed: int = 0
    train_seeds: tuple[int, ...] = (0, 1, 2)
    num_prompts: int = 512
    thinking_on_fraction: float = 0.5
    num_eval_problems: int = 200
    eval_samples: int = 4
    max_digits: int = 2
    pass_rate_samples: int = 8
    min_pass_rate: float = 0.125
    max_pass_rate: float = 0.75
    curriculum_sigma: float = 0.15
    curriculum_replacement: bool = True
    adaptive_decay: float = 0.5
    adaptive_sharpness: float = 1.0
    adaptive_max_rate: float = 0.75  # what runs saved before this key existed used (config.yaml: 1.0)
    orderings: tuple[str, ...] = ("curriculum", "random")
    max_steps: int = 100
    prompts_per_step: int = 4
    num_generations: int = 8
    max_completion_length: int = 32
    temperature: float = 1.0
    learning_rate: float = 5e-5
    beta: float = 0.0
    eval_every: int = 50
    num_threads: int = 1

    def __post_init__(self) -> None:
        bad = set(self.orderings) - set(ORDERINGS)
        if bad or not self.orderings:
            raise ConfigError(f"orderings={list(self.orderings)}: use any of {list(ORDERINGS)}")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations={self.num_generations}: GRPO needs >= 2 samples per prompt")
        if not self.train_seeds:
            raise ConfigError("train_seeds=[]: give at least one seed, e.g. train_seeds=[0]")
        if not 0.0 <= self.thinking_on_fraction <= 1.0:
            raise ConfigError(f"thinking_on_fraction={self.thinking_on_fraction}: use a value in [0, 1]")


def prompt_text(question: str, thinking: bool) -> str:
    """The rendered chat prompt (system toggle + user question + assistant tag)."""
    return render_chat(build_messages(question, "", "x", thinking)[:2], add_generation_prompt=True)


def load_sft(path: str) -> tuple[Any, Any]:
    """The SFT'd model and tokenizer (safetensors)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    p = Path(path)
    if not (p / "model.safetensors").exists():
        raise ConfigError(f"sft_model_dir={path}: no model.safetensors there; run "
                          "examples/sft_reasoning_toggle/recipe.py first or point sft_model_dir at its output")
    tok = AutoTokenizer.from_pretrained(p)
    model = LlamaForCausalLM.from_pretrained(p, use_safetensors=True)
    return model, tok


def both_rewards(completions: Any, answer: Any, thinking: Any, **kw: Any) -> list[float]:
    """1 when the answer is right *and* the format matches the toggle (what a pass means here)."""
    a = accuracy_reward(completions=completions, answer=answer)
    f = format_reward(completions=completions, thinking=thinking)
    return [x * y for x, y in zip(a, f)]


def held_out(model: Any, tok: Any, evals: list[Any], config: Config, seed: int) -> dict[str, float]:
    """Greedy accuracy / format per mode, and sampled accuracy (temperature 1, ``eval_samples`` per problem)."""
    greedy = evaluate(model, tok, evals, config.max_completion_length)
    res = {f"{m}_{k}": greedy[m][k] for m in ("on", "off") for k in ("accuracy", "format")}
    gen = hf_generator(model, tok, max_new_tokens=config.max_completion_length, temperature=config.temperature)
    torch.manual_seed(seed)
    for mode, th in (("on", True), ("off", False)):
        rates = estimate_pass_rates([prompt_text(p.question, th) for p in evals], gen, k=config.eval_samples,
                                    reward=both_rewards, answer=[p.answer for p in evals],
                                    thinking=[th] * len(evals))
        res[f"{mode}_sampled"] = sum(rates) / len(rates)
    model.train()
    return res


def pool_pass_rate(model: Any, tok: Any, pool: list[dict[str, Any]], config: Config, seed: int) -> float:
    """Mean pass rate over the training prompts (``pass_rate_samples`` fresh samples each)."""
    gen = hf_generator(model, tok, max_new_tokens=config.max_completion_length, temperature=config.temperature)
    torch.manual_seed(seed)
    rates = estimate_pass_rates([r["prompt"] for r in pool], gen, k=config.pass_rate_samples, reward=both_rewards,
                                answer=[r["answer"] for r in pool], thinking=[r["thinking"] for r in pool])
    model.train()
    return sum(rates) / len(rates)


def eval_callback(policy: Any, tok: Any, evals: list[Any], config: Config, curve: list[dict[str, float]],
                  name: str, seed: int) -> Any:
    """A trainer callback that appends the held-out metrics to ``curve`` every ``eval_every`` steps."""
    from transformers import TrainerCallback

    class EvalCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % config.eval_every == 0 or state.global_step == config.max_steps:
                curve.append({"step": state.global_step, **held_out(policy, tok, evals, config, seed)})
                logger.info("%s step %d: %s", name, state.global_step, curve[-1])

    return EvalCallback()


def run_key(cfg: dict[str, Any], ordering: str) -> dict[str, Any]:
    """The config keys one run of ``ordering`` depends on (resume reuses a finished run when they match).

    Keys a saved config lacks (added to the recipe later) take their default, the value such a run used.
    """
    cfg = {**json.loads(json.dumps(asdict(Config()))), **cfg}
    skip = {"orderings"}
    if ordering != "curriculum":
        skip |= {"curriculum_sigma", "curriculum_replacement"}
    if ordering != "adaptive":
        skip |= {k for k in cfg if k.startswith("adaptive_")}
    return {k: v for k, v in cfg.items() if k not in skip}


def window(xs: list[float], frac: float = 0.2) -> tuple[float, float]:
    """Mean of the first and of the last ``frac`` of a trajectory (a smoothed first-vs-last comparison)."""
    k = max(1, int(len(xs) * frac))
    return sum(xs[:k]) / k, sum(xs[-k:]) / k


def main(config: Config) -> dict[str, Any]:
    """Run the recipe; return (and save) the metrics."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    t0 = time.perf_counter()
    out = Path(config.output_dir)
    rng = random.Random(config.seed)

    # --- setup: prompts in both modes (fresh problems), held-out evaluation problems
    model, tok = load_sft(config.sft_model_dir)
    evals = make_problems(config.num_eval_problems, seed=config.seed + 101, max_digits=config.max_digits)
    probs = make_problems(config.num_prompts, seed=config.seed + 202, max_digits=config.max_digits,
                          exclude={p.question for p in evals})
    rows = [{"prompt": prompt_text(p.question, th), "answer": p.answer, "thinking": th}
            for p in probs for th in (rng.random() < config.thinking_on_fraction,)]

    # --- pass rates: k samples per prompt at the training temperature, a pass = right answer in the right format
    gen = hf_generator(model, tok, max_new_tokens=config.max_completion_length, temperature=config.temperature)
    torch.manual_seed(config.seed)
    rates = estimate_pass_rates([r["prompt"] for r in rows], gen, k=config.pass_rate_samples, reward=both_rewards,
                                answer=[r["answer"] for r in rows], thinking=[r["thinking"] for r in rows])

    # --- filter: drop the solved (>= max) and the never-solved (< min: no GRPO signal) prompts
    keep = filter_by_pass_rate(rates, max_rate=config.max_pass_rate, min_rate=config.min_pass_rate)
    pool = [dict(rows[i], pass_rate=rates[i]) for i in keep]
    logger.info("pass rates: %d prompts, %d kept in [%.3f, %.2f)", len(rows), len(pool), config.min_pass_rate,
                config.max_pass_rate)
    if len(pool) < config.prompts_per_step:
        raise ConfigError(f"only {len(pool)} prompts with pass rate in [{config.min_pass_rate}, "
                          f"{config.max_pass_rate}); raise num_prompts or widen the range")
    n_needed = config.max_steps * config.prompts_per_step
    before = held_out(model, tok, evals, config, config.seed)
    # the kept prompts' pass rates were selected on the first estimate (biased low): re-measure them with fresh
    # samples, so that "pool pass rate before vs after training" compares like with like
    before["pool_pass_rate"] = pool_pass_rate(model, tok, pool, config, config.seed + 1)
    logger.info("before GRPO: %s", before)

    # resume: the runs an earlier invocation finished are kept when every config key they depend on is the
    # same (everything is seeded; adding an ordering to `orderings` reuses the runs of the others)
    partial = out / "metrics.partial.json"
    cfg_json = json.loads(json.dumps(asdict(config)))
    runs: list[dict[str, Any]] = []
    if partial.exists():
        old = json.loads(partial.read_text())
        runs = [r for r in old["runs"] if r["ordering"] in config.orderings and r["seed"] in config.train_seeds
                and run_key(old["config"], r["ordering"]) == run_key(cfg_json, r["ordering"])]
        logger.info("resuming: %d finished runs in %s", len(runs), partial)
    for seed in config.train_seeds:
        for ordering in config.orderings:
            if any(r["ordering"] == ordering and r["seed"] == seed for r in runs):
                continue
            # --- order the prompts: Gaussian curriculum over pass rate (easy → hard) or random
            cur, reward_funcs = None, [accuracy_reward, format_reward]
            if ordering == "adaptive":
                # drawn during training: the trainer pulls each batch from the curriculum, whose pass rates
                # are updated from the accuracy rewards of every group (attached below)
                cur = AdaptiveCurriculum([r["pass_rate"] for r in pool], batch_size=config.prompts_per_step,
                                         num_batches=config.max_steps, prior_strength=config.pass_rate_samples,
                                         decay=config.adaptive_decay, max_rate=config.adaptive_max_rate,
                                         sharpness=config.adaptive_sharpness, seed=seed)
                reward_funcs = [cur.reward_func(accuracy_reward), format_reward]
                order = []
            elif ordering == "curriculum":
                order = CurriculumSampler([r["pass_rate"] for r in pool], batch_size=config.prompts_per_step,
                                          num_batches=config.max_steps, sigma=config.curriculum_sigma,
                                          seed=seed, replacement=config.curriculum_replacement).order()
            else:
                srng, order = random.Random(seed), []
                while len(order) < n_needed:
                    perm = list(range(len(pool)))
                    srng.shuffle(perm)
                    order += perm
                order = order[:n_needed]
            if cur is not None:
                ds = Dataset.from_list([dict(r, prompt_index=i) for i, r in enumerate(pool)])
            else:
                ds = Dataset.from_list([pool[i] for i in order])

            # --- train: the same SFT'd weights, steps, prompts per step and generations for every run
            policy, tok = load_sft(config.sft_model_dir)
            curve: list[dict[str, float]] = []
            name = f"{ordering}/seed{seed}"
            args = GRPOConfig(output_dir=str(out / "trainer" / f"{ordering}_seed{seed}"), max_steps=config.max_steps,
                              per_device_train_batch_size=config.prompts_per_step * config.num_generations,
                              num_generations=config.num_generations,
                              max_completion_length=config.max_completion_length, temperature=config.temperature,
                              learning_rate=config.learning_rate, beta=config.beta, shuffle_dataset=False,
                              logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=seed,
                              disable_tqdm=True, lr_scheduler_type="constant")
            trainer = GRPOTrainer(model=policy, reward_funcs=reward_funcs, args=args,
                                  train_dataset=ds, processing_class=tok,
                                  callbacks=[eval_callback(policy, tok, evals, config, curve, name, seed)])
            trainer.remove_callback(PrinterCallback)  # per-step logs are kept in metrics.json, not printed
            if cur is not None:
                cur.attach(trainer)
            t_run = time.perf_counter()
            trainer.train()
            logs = [r for r in trainer.state.log_history if "reward" in r]
            extra: dict[str, Any] = {}
            if cur is not None:
                # batch t of the draws is step t's (the loader prefetches one batch past the last step)
                order = [i for b in cur.draws[:config.max_steps] for i in b]
                extra = {"retired": len(cur.retired), "distinct_prompts": len(set(order)),
                         "draws_thinking_on": statistics.fmean(pool[i]["thinking"] for i in order),
                         "pool_thinking_on": statistics.fmean(r["thinking"] for r in pool),
                         "mean_estimate": [r.get("curriculum/mean_estimate", float("nan")) for r in logs],
                         "live": [r.get("curriculum/live", float("nan")) for r in logs],
                         "final_estimates": cur.estimates}
            batch_rate = [statistics.fmean(pool[i]["pass_rate"] for i in order[s * config.prompts_per_step:
                                                                                (s + 1) * config.prompts_per_step])
                          for s in range(config.max_steps)]
            runs.append({"ordering": ordering, "seed": seed, "train_s": time.perf_counter() - t_run,
                         "pool_pass_rate": pool_pass_rate(policy, tok, pool, config, config.seed + 1),
                         "train_reward": [r["reward"] for r in logs],
                         "train_accuracy": [r["rewards/accuracy_reward/mean"] for r in logs],
                         "frac_reward_zero_std": [r.get("frac_reward_zero_std", float("nan")) for r in logs],
                         "batch_pass_rate": batch_rate, "eval_curve": curve, **extra})
            # what is finished is kept if a later run is killed
            atomic_write_json(partial, {"config": asdict(config), "before": before, "runs": runs})

    metrics = {"config": asdict(config), "num_prompts": len(rows), "kept": len(pool),
               "pass_rate_histogram": {f"{v:.3f}": sum(1 for r in rates if r == v) for v in sorted(set(rates))},
               "kept_thinking_on": sum(1 for r in pool if r["thinking"]),
               "before": before, "runs": runs, "wall_s": time.perf_counter() - t0}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def summary(m: dict[str, Any]) -> str:
    """Per run: smoothed first-vs-last training accuracy, and held-out metrics before → after; then per ordering."""
    b = m["before"]
    keys = ("on_accuracy", "off_accuracy", "on_sampled", "off_sampled")
    lines = [f"prompts {m['num_prompts']}, kept {m['kept']} ({m['kept_thinking_on']} thinking on); "
             f"pass-rate histogram {m['pass_rate_histogram']}",
             "before GRPO: " + " ".join(f"{k} {b[k]:.3f}" for k in keys)]
    per: dict[str, list[dict[str, float]]] = {}
    for r in m["runs"]:
        acc0, acc1 = window(r["train_accuracy"])
        b0, b1 = window(r["batch_pass_rate"])
        last = r["eval_curve"][-1]
        row = {"train_acc_first": acc0, "train_acc_last": acc1, "pool": r["pool_pass_rate"],
               **{k: last[k] for k in keys}}
        per.setdefault(r["ordering"], []).append(row)
        lines.append(f"{r['ordering']:10s} seed {r['seed']}: train accuracy first 20% {acc0:.3f} -> last 20% "
                     f"{acc1:.3f} (batches' estimated pass rate {b0:.3f} -> {b1:.3f}); training-pool pass rate "
                     f"{b['pool_pass_rate']:.3f} -> {r['pool_pass_rate']:.3f}; held-out "
                     + " ".join(f"{k} {last[k]:.3f}" for k in keys) + f"; {r['train_s']:.0f} s")
        if "retired" in r:
            lines.append(f"{'':10s} adaptive: {r['retired']} of {m['kept']} prompts retired, "
                         f"{r['distinct_prompts']} distinct drawn, thinking-on share of draws "
                         f"{r['draws_thinking_on']:.3f} (pool {r['pool_thinking_on']:.3f}), mean online estimate "
                         f"{r['mean_estimate'][0]:.3f} -> {r['mean_estimate'][-1]:.3f}")
    for name in per:  # the per-step trajectory in 10 windows, mean over seeds
        rs = [r for r in m["runs"] if r["ordering"] == name]
        n = min(len(r["train_accuracy"]) for r in rs)
        w = max(1, n // 10)
        for key in ("train_reward", "train_accuracy", "batch_pass_rate"):
            traj = [statistics.fmean(statistics.fmean(r[key][s:s + w]) for r in rs) for s in range(0, n - w + 1, w)]
            lines.append(f"{name:10s} {key} per {w} steps: " + " ".join(f"{x:.3f}" for x in traj))
    for name, rows in per.items():
        mean = {k: statistics.fmean(x[k] for x in rows) for k in rows[0]}
        sd = {k: statistics.stdev(x[k] for x in rows) if len(rows) > 1 else 0.0 for k in rows[0]}
        lines.append(f"{name:10s} mean±sd over {len(rows)} seeds: " + " ".join(
            f"{k} {mean[k]:.3f}±{sd[k]:.3f}" for k in rows[0]))
    return "\n".join(lines)


if __name__ == "__main__":
    cfg = recipe_config_from_argv(__file__, __doc__, Config)
    torch.set_num_threads(cfg.num_threads)
    m = main(cfg)
    print(summary(m))
    print(f"wall {m['wall_s']:.0f} s")
