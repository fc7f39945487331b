"""SFT with the reasoning toggle: one tiny model answers with ``<think>…</think>`` when the system
prompt says "detailed thinking on" and answers directly when it says "detailed thinking off".

Reads top to bottom: setup (tokenizer, model, paired data, staged mix) → train (TRL ``SFTTrainer``,
one run per stage, loss on the response only, warm-up + cosine) → evaluate (think-tag rate, format
and accuracy in each mode on held-out problems) → save (model, tokenizer, ``metrics.json``).

    python examples/sft_reasoning_toggle/recipe.py --config examples/sft_reasoning_toggle/config.yaml
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from puzzlekit.errors import ConfigError
from puzzlekit.io import atomic_write_json
from puzzlekit.post import (
    ARITHMETIC_ALPHABET,
    Stage,
    arithmetic_pairs,
    char_tokenizer,
    make_problems,
    staged_mix,
    tiny_llama,
    to_prompt_completion,
)
from puzzlekit.post import evaluate_toggle as evaluate
from puzzlekit.post.recipe_config import recipe_config_from_argv

logger = logging.getLogger("sft_reasoning_toggle")


@dataclass(frozen=True)
class Config:
    """Every knob of the recipe (the YAML beside it sets them)."""

    output_dir: str = "runs/sft_reasoning_toggle"
    seed: int = 0
    num_train_problems: int = 4000
    num_test_problems: int = 200
    max_digits: int = 2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    reasoning_stage_samples: int = 12000
    non_reasoning_stage_samples: int = 12000
    non_reasoning_stage_keep_reasoning: float = 0.3
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    max_steps_per_stage: int = -1
    eval_max_new_tokens: int = 40

    def __post_init__(self) -> None:
        if not 0.0 <= self.non_reasoning_stage_keep_reasoning < 1.0:
            raise ConfigError(f"non_reasoning_stage_keep_reasoning={self.non_reasoning_stage_keep_reasoning}: "
                              "use a fraction in [0, 1)")
        if min(self.num_train_problems, self.num_test_problems, self.batch_size) < 1:
            raise ConfigError("num_train_problems, num_test_problems and batch_size must be >= 1")


def main(config: Config) -> dict[str, Any]:
    """Run the recipe; return (and save) the metrics."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    out = Path(config.output_dir)
    torch.manual_seed(config.seed)

    # --- setup: tokenizer, model, held-out problems, paired samples, staged mix
    tok = char_tokenizer(ARITHMETIC_ALPHABET)
    model = tiny_llama(len(tok), hidden_size=config.hidden_size, num_layers=config.num_layers,
                       num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
                       intermediate_size=config.intermediate_size, seed=config.seed,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    test = make_problems(config.num_test_problems, seed=config.seed + 1, max_digits=config.max_digits)
    train = make_problems(config.num_train_problems, seed=config.seed, max_digits=config.max_digits,
                          exclude={p.question for p in test})
    pairs = [to_prompt_completion(s) for s in arithmetic_pairs(train)]
    sources = {"reasoning": [s for s in pairs if s["thinking"]],
               "non_reasoning": [s for s in pairs if not s["thinking"]]}
    keep = config.non_reasoning_stage_keep_reasoning
    stages = [Stage("reasoning", config.reasoning_stage_samples, {"reasoning": 1.0}),
              Stage("non_reasoning", config.non_reasoning_stage_samples,
                    {"non_reasoning": 1.0 - keep, "reasoning": keep})]
    stage_data = staged_mix(sources, stages, seed=config.seed)
    before = evaluate(model, tok, test[:20], config.eval_max_new_tokens)

    # --- train: one SFTTrainer run per stage, completion-only loss, linear warm-up + cosine decay
    history = []
    for stage, data in zip(stages, stage_data):
        ds = Dataset.from_list([{"prompt": s["prompt"], "completion": s["completion"]} for s in data])
        steps = len(ds) // config.batch_size
        args = SFTConfig(output_dir=str(out / "trainer" / stage.name), per_device_train_batch_size=config.batch_size,
                         num_train_epochs=1, max_steps=config.max_steps_per_stage,
                         learning_rate=config.learning_rate, lr_scheduler_type="cosine",
                         warmup_steps=max(1, int(config.warmup_fraction * steps)),
                         weight_decay=config.weight_decay, completion_only_loss=True, max_length=128,
                         logging_steps=max(1, steps // 10), save_strategy="no", report_to="none",
                         use_cpu=True, seed=config.seed, dataloader_num_workers=0, disable_tqdm=True,
                         eos_token=tok.eos_token, pad_token=tok.pad_token)
        tok.padding_side = "right"
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        result = trainer.train()
        logs = [r for r in trainer.state.log_history if "loss" in r]
        history.append({"stage": stage.name, "samples": len(ds), "steps": trainer.state.global_step,
                        "first_loss": logs[0]["loss"] if logs else None,
                        "last_loss": logs[-1]["loss"] if logs else None, "train_loss": result.training_loss})
        logger.info("stage %s: %s", stage.name, history[-1])

    # --- evaluate on held-out problems in both modes
    after = evaluate(model, tok, test, config.eval_max_new_tokens)

    # --- save
    model.save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    metrics = {"config": asdict(config), "stages": history, "before": before, "after": after,
               "wall_s": time.perf_counter() - t0}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    cfg = recipe_config_from_argv(__file__, __doc__, Config)
    torch.set_num_threads(2)
    m = main(cfg)
    for mode in ("on", "off"):
        r = m["after"][mode]
        print(f"thinking {mode:3s}: think tags {r['think_tag_rate']:.2f}  format {r['format']:.2f}  "
              f"accuracy {r['accuracy']:.2f}   e.g. {r['example']!r}")
    print(f"wall {m['wall_s']:.0f} s")
