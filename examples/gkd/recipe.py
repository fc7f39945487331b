"""Global knowledge distillation: heal an assembled child toward its parent, then continue pre-training.

Reads top to bottom: setup (the tiny trained teacher as parent, Shakespeare tokens, the child assembled
from the parent with the configured blocks) → GKD (cosine of layer-matched hidden states + KL to the
parent, resumable, KL evaluated on held-out text) → continued pre-training (LM loss, same loop) → save
(child as a Nemotron-NAS folder, ``metrics.json``).

    python examples/gkd/recipe.py --config examples/gkd/config.yaml
    torchrun --nproc_per_node 2 examples/gkd/recipe.py --config examples/gkd/config.yaml fsdp=true

With ``fsdp: true`` child and parent are sharded with FSDP2 over the processes (checkpoints sharded
too) and the child is gathered once, at the end, for the Nemotron-NAS save.  For models that do not
fit one process, load them straight into their shards instead: ``examples/gkd/cluster.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from puzzlekit.architecture import Architecture
from puzzlekit.blocks import BlockConfig
from puzzlekit.distill import DistillConfig, GKDWeights, distill, evaluate_kl, full_model, match_layers
from puzzlekit.errors import ConfigError
from puzzlekit.io import atomic_write_json
from puzzlekit.post.recipe_config import recipe_config_from_argv

logger = logging.getLogger("gkd")


@dataclass(frozen=True)
class Config:
    """Every knob of the recipe (the YAML beside it sets them)."""

    output_dir: str = "runs/gkd"
    teacher_dir: str = "runs/teacher_tiny"
    teacher_preset: str = "tiny"
    data_cache: str = "~/.cache/puzzlekit"
    seq_len: int = 64
    max_tokens: int = 200_000
    seed: int = 0
    child_blocks: tuple[str, ...] = ()
    calib_rows: int = 16
    gkd_steps: int = 200
    cosine_weight: float = 1.0
    kl_weight: float = 1.0
    lm_weight: float = 0.0
    batch_size: int = 8
    grad_accum_steps: int = 1
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    eval_every: int = 50
    save_every: int = 100
    eval_rows: int = 32
    cpt_steps: int = 50
    cpt_learning_rate: float = 3e-4
    fsdp: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for k in self.child_blocks:
            BlockConfig.from_key(k)  # raises ConfigError naming a bad key
        if self.gkd_steps < 1:
            raise ConfigError(f"gkd_steps={self.gkd_steps}: run at least one GKD step")


def main(config: Config, accelerator: Any = None) -> dict[str, Any]:
    """Run the recipe; return (and save) the metrics."""
    from accelerate import Accelerator

    from puzzlekit.data import build_token_data, shakespeare_texts
    from puzzlekit.demo.teacher import TEACHER_PRESETS, ensure_teacher
    from puzzlekit.model import assemble, load_parent, save_model

    t0 = time.perf_counter()
    out = Path(config.output_dir)
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())  # CPU-only: DDP over gloo
    torch.manual_seed(config.seed)

    # --- setup: the parent (a small Llama trained on Shakespeare here), tokens, the assembled child
    if config.teacher_preset not in TEACHER_PRESETS:
        raise ConfigError(f"teacher_preset={config.teacher_preset!r}: use one of {sorted(TEACHER_PRESETS)}")
    texts = shakespeare_texts(Path(config.data_cache).expanduser())
    with acc.main_process_first():
        ensure_teacher(config.teacher_dir, texts, TEACHER_PRESETS[config.teacher_preset], progress=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(config.teacher_dir)
    parent = load_parent(config.teacher_dir).eval()
    data = build_token_data(texts, tok, seq_len=config.seq_len, max_tokens=config.max_tokens, seed=config.seed,
                            min_heldout=config.eval_rows)
    train = torch.from_numpy(data.train).long()
    held = torch.from_numpy(data.heldout[:config.eval_rows]).long()
    parent_arch = parent.architecture
    blocks = [BlockConfig.from_key(k) for k in config.child_blocks] or list(parent_arch.blocks)
    if len(blocks) != parent_arch.num_layers:
        raise ConfigError(f"child_blocks has {len(blocks)} blocks; the parent in {config.teacher_dir} has "
                          f"{parent_arch.num_layers} layers (one block per parent layer)")
    child_arch = Architecture(parent_arch.parent, tuple(blocks))
    child = assemble(parent, child_arch, init={"calib_input_ids": train[:config.calib_rows]})
    pairs = match_layers(parent_arch.num_layers, child_arch.num_layers)
    n_child = sum(p.numel() for p in child.parameters())
    n_parent = sum(p.numel() for p in parent.parameters())
    start = evaluate_kl(child, parent, held, pairs=pairs)
    logger.info("child: %s (%.2fx the parent's parameters); KL before GKD %.4f",
                child_arch.summary() if hasattr(child_arch, "summary") else blocks, n_child / n_parent, start["kl"])

    # --- GKD: cosine of matched hidden states + KL(parent || child); resumable
    gkd_cfg = DistillConfig(max_steps=config.gkd_steps, batch_size=config.batch_size,
                            grad_accum_steps=config.grad_accum_steps, learning_rate=config.learning_rate,
                            warmup_steps=config.warmup_steps,
                            weights=GKDWeights(config.cosine_weight, config.kl_weight, config.lm_weight),
                            eval_every=config.eval_every, save_every=config.save_every,
                            output_dir=str(out / "gkd"), seed=config.seed, log_every=config.eval_every,
                            fsdp=config.fsdp, activation_checkpointing=config.activation_checkpointing)
    gkd = distill(child, parent, train, gkd_cfg, eval_tokens=held, pairs=pairs, accelerator=acc)
    child = acc.unwrap_model(child)

    # --- continued pre-training on raw text (LM loss only, no parent), the same loop
    cpt = None
    if config.cpt_steps > 0:
        cpt_cfg = dataclasses.replace(gkd_cfg, max_steps=config.cpt_steps, learning_rate=config.cpt_learning_rate,
                                      weights=GKDWeights(cosine=0, kl=0, lm=1), eval_every=0,
                                      output_dir=str(out / "cpt"), seed=config.seed + 1)
        cpt = distill(child, None, train, cpt_cfg, accelerator=acc)
        child = acc.unwrap_model(child)
    end = evaluate_kl(child, parent, held, pairs=pairs)

    # --- save
    metrics = {"config": asdict(config), "child_blocks": [b.key for b in blocks],
               "params_ratio": n_child / n_parent, "kl_start": start, "gkd_evals": gkd.evals,
               "after_gkd": gkd.evals[-1] if gkd.evals else None, "after_cpt": end,
               "cpt_lm_first_last": [cpt.history[0]["lm"], cpt.history[-1]["lm"]] if cpt and cpt.history else None,
               "parent_lm_loss": evaluate_kl(parent, parent, held)["lm_loss"], "wall_s": time.perf_counter() - t0}
    child = full_model(child)  # FSDP: gathered once, here (collective); rank 0 gets it. Else: the child itself
    if acc.is_main_process:
        model_dir = out / "child"
        if not model_dir.exists():
            save_model(child, model_dir, tokenizer_from=config.teacher_dir)
        atomic_write_json(out / "metrics.json", metrics)
    if accelerator is None:  # ours: tear the process group down before exit (gloo aborts otherwise)
        acc.wait_for_everyone()
        acc.end_training()
    return metrics


if __name__ == "__main__":
    cfg = recipe_config_from_argv(__file__, __doc__, Config)
    torch.set_num_threads(2)
    m = main(cfg)
    print(f"child/parent parameters {m['params_ratio']:.2f}")
    print("KL to parent: " + " -> ".join(f"{e['kl']:.4f}@{e['step']}" for e in m["gkd_evals"]))
    print(f"after continued pre-training: KL {m['after_cpt']['kl']:.4f}, LM loss {m['after_cpt']['lm_loss']:.3f} "
          f"(parent {m['parent_lm_loss']:.3f})")
    print(f"wall {m['wall_s']:.0f} s")
