"""GRPO with a pass-rate curriculum: accuracy + format rewards, prompts the model already solves
dropped, and batches ordered from easy to hard — compared with random ordering on the same budget.

Reads top to bottom: setup (the SFT'd model, prompts in both modes, held-out problems) → pass rates
(k samples per prompt) → filter (≥ 0.75 dropped) → for each ordering: order the prompts (curriculum
or random), train with TRL ``GRPOTrainer`` (the same steps, prompts and generations), evaluate
greedy accuracy and format on held-out problems during training → save ``metrics.json``.

    python examples/grpo_curriculum/recipe.py --config examples/grpo_curriculum/config.yaml
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from puzzlekit.errors import ConfigError
from puzzlekit.io import atomic_write_json
from puzzlekit.post import (
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
from puzzlekit.post.recipe_config import load_recipe_config, parse_overrides

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sft_reasoning_toggle"))
from recipe import evaluate  # noqa: E402  (the SFT recipe's held-out evaluation, both modes)

logger = logging.getLogger("grpo_curriculum")


@dataclass(frozen=True)
class Config:
    """Every knob of the recipe (the YAML beside it sets them)."""

    sft_model_dir: str = "runs/sft_reasoning_toggle/model"
    output_dir: str = "runs/grpo_curriculum"
    seed: int = 0
    num_prompts: int = 384
    num_eval_problems: int = 100
    max_digits: int = 2
    pass_rate_samples: int = 8
    max_pass_rate: float = 0.75
    curriculum_sigma: float = 0.15
    orderings: tuple[str, ...] = ("curriculum", "random")
    max_steps: int = 60
    prompts_per_step: int = 4
    num_generations: int = 8
    max_completion_length: int = 32
    temperature: float = 1.0
    learning_rate: float = 2e-5
    beta: float = 0.0
    eval_every: int = 10

    def __post_init__(self) -> None:
        bad = set(self.orderings) - {"curriculum", "random"}
        if bad or not self.orderings:
            raise ConfigError(f"orderings={list(self.orderings)}: use 'curriculum' and/or 'random'")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations={self.num_generations}: GRPO needs >= 2 samples per prompt")


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


def eval_callback(policy: Any, tok: Any, evals: list[Any], config: Config, curve: list[dict[str, float]],
                  name: str) -> Any:
    """A trainer callback that appends held-out greedy accuracy / format (both modes) to ``curve``."""
    from transformers import TrainerCallback

    class EvalCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % config.eval_every == 0 or state.global_step == config.max_steps:
                r = evaluate(policy, tok, evals, config.max_completion_length)
                policy.train()
                curve.append({"step": state.global_step, **{f"{m}_{k}": r[m][k] for m in ("on", "off")
                                                           for k in ("accuracy", "format")}})
                logger.info("%s step %d: %s", name, state.global_step, curve[-1])

    return EvalCallback()


def main(config: Config) -> dict[str, Any]:
    """Run the recipe; return (and save) the metrics."""
    from datasets import Dataset
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
            for p in probs for th in (rng.random() < 0.5,)]

    # --- pass rates: k samples per prompt at temperature 1, scored by accuracy and format together
    gen = hf_generator(model, tok, max_new_tokens=config.max_completion_length, temperature=1.0)

    def both(prompts: Any, completions: Any, answer: Any, thinking: Any, **kw: Any) -> list[float]:
        a = accuracy_reward(completions=completions, answer=answer)
        f = format_reward(completions=completions, thinking=thinking)
        return [x * y for x, y in zip(a, f)]

    torch.manual_seed(config.seed)
    rates = estimate_pass_rates([r["prompt"] for r in rows], gen, k=config.pass_rate_samples, reward=both,
                                answer=[r["answer"] for r in rows], thinking=[r["thinking"] for r in rows])
    keep = filter_by_pass_rate(rates, max_rate=config.max_pass_rate)
    pool = [dict(rows[i], pass_rate=rates[i]) for i in keep]
    logger.info("pass rates: %d prompts, %d kept below %.2f", len(rows), len(pool), config.max_pass_rate)
    n_needed = config.max_steps * config.prompts_per_step
    if len(pool) < config.prompts_per_step:
        raise ConfigError(f"only {len(pool)} prompts below pass rate {config.max_pass_rate}; "
                          "raise num_prompts or max_digits")

    results: dict[str, Any] = {}
    before = evaluate(model, tok, evals, config.max_completion_length)
    for ordering in config.orderings:
        # --- order the prompts: Gaussian curriculum over pass rate (easy → hard) or random
        if ordering == "curriculum":
            order = CurriculumSampler([r["pass_rate"] for r in pool], batch_size=config.prompts_per_step,
                                      num_batches=config.max_steps, sigma=config.curriculum_sigma,
                                      seed=config.seed).order()
        else:
            order = []
            while len(order) < n_needed:
                perm = list(range(len(pool)))
                rng.shuffle(perm)
                order += perm
            order = order[:n_needed]
        ds = Dataset.from_list([pool[i] for i in order])

        # --- train: the same SFT'd weights, steps, prompts per step and generations for every ordering
        policy, tok = load_sft(config.sft_model_dir)
        curve: list[dict[str, float]] = []

        args = GRPOConfig(output_dir=str(out / "trainer" / ordering), max_steps=config.max_steps,
                          per_device_train_batch_size=config.prompts_per_step * config.num_generations,
                          num_generations=config.num_generations, max_completion_length=config.max_completion_length,
                          temperature=config.temperature, learning_rate=config.learning_rate, beta=config.beta,
                          shuffle_dataset=False, logging_steps=1, save_strategy="no", report_to="none",
                          use_cpu=True, seed=config.seed, disable_tqdm=True, lr_scheduler_type="constant")
        trainer = GRPOTrainer(model=policy, reward_funcs=[accuracy_reward, format_reward], args=args,
                              train_dataset=ds, processing_class=tok, callbacks=[eval_callback(policy, tok, evals, config, curve, ordering)])
        trainer.train()
        logs = [r for r in trainer.state.log_history if "reward" in r]
        batch_rate = [sum(pool[i]["pass_rate"] for i in order[s * config.prompts_per_step:(s + 1) *
                                                             config.prompts_per_step]) / config.prompts_per_step
                      for s in range(config.max_steps)]
        results[ordering] = {"train_reward": [r["reward"] for r in logs], "eval_curve": curve,
                             "batch_pass_rate": batch_rate}

    metrics = {"config": asdict(config), "num_prompts": len(rows), "kept": len(pool),
               "pass_rate_histogram": [sum(1 for r in rates if lo <= r < lo + 0.125 or (lo == 0.875 and r == 1.0))
                                       for lo in [i / 8 for i in range(8)]],
               "before": before, "runs": results, "wall_s": time.perf_counter() - t0}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def summary(m: dict[str, Any]) -> str:
    """A few lines comparing the orderings."""
    lines = [f"prompts {m['num_prompts']}, kept below pass rate: {m['kept']}"]
    b = m["before"]
    lines.append(f"before GRPO: on acc {b['on']['accuracy']:.2f} fmt {b['on']['format']:.2f} | "
                 f"off acc {b['off']['accuracy']:.2f} fmt {b['off']['format']:.2f}")
    for name, r in m["runs"].items():
        tr = r["train_reward"]
        k = max(1, len(tr) // 5)
        last = r["eval_curve"][-1] if r["eval_curve"] else {}
        lines.append(f"{name:10s}: train reward first {k} steps {sum(tr[:k]) / k:.3f} -> last {k} "
                     f"{sum(tr[-k:]) / k:.3f}; held-out on acc {last.get('on_accuracy', float('nan')):.2f} "
                     f"off acc {last.get('off_accuracy', float('nan')):.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).with_name("config.yaml")))
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    m = main(load_recipe_config(a.config, Config, parse_overrides(a.overrides)))
    print(summary(m))
    print(f"wall {m['wall_s']:.0f} s")
