"""A tiny trained teacher: a byte-level BPE tokenizer and a small Llama trained on real text.

The demo pipeline (``puzzlekit run demo``: its ``parent`` stage with ``source: teacher``) and the
BLD / scoring benchmarks need a parent that has
actually learned something (a random model has no structure for BLD to
distil).  :func:`ensure_teacher` trains one on CPU in seconds (``tiny``) or a
few minutes (``demo``) and saves it as a normal Hugging Face folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``) that
:func:`puzzlekit.model.load_parent` reads; a folder holding a teacher made
with the same settings is reused instead of retrained.

    from puzzlekit.data import shakespeare_texts
    from puzzlekit.demo.teacher import ensure_teacher, TEACHER_PRESETS
    texts = shakespeare_texts("~/.cache/puzzlekit")
    info = ensure_teacher("runs/teacher", texts, TEACHER_PRESETS["demo"])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import batch_indices, build_token_data
from ..errors import PuzzlekitError
from ..io import atomic_write_json, read_json

__all__ = ["TeacherConfig", "TEACHER_PRESETS", "train_tokenizer", "train_teacher", "ensure_teacher"]

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass(frozen=True)
class TeacherConfig:
    """Sizes and training budget of the teacher (all literal numbers; see :data:`TEACHER_PRESETS`)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 768
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 1200
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    max_seconds: float | None = None
    max_text_chars: int | None = None
    heldout_fraction: float = 0.02
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: ``tiny``: seconds, for tests; ``fast``: about a minute (demo --fast); ``demo``: a few minutes.
TEACHER_PRESETS: dict[str, TeacherConfig] = {
    "tiny": TeacherConfig(vocab_size=512, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                          intermediate_size=192, seq_len=64, batch_size=8, steps=150, lr=5e-3, warmup=10,
                          max_text_chars=400_000),
    "fast": TeacherConfig(vocab_size=2048, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                          intermediate_size=384, seq_len=128, batch_size=16, steps=400, lr=4e-3, warmup=30),
    "demo": TeacherConfig(),
}


def train_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: str | os.PathLike | None = None) -> Any:
    """Train a byte-level BPE tokenizer (HF ``tokenizers``) and wrap it as a ``PreTrainedTokenizerFast``.

    ``<|endoftext|>`` is the BOS/EOS token and ``<|pad|>`` the padding token.  Saved with
    ``save_pretrained`` into ``out_dir`` when given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise PuzzlekitError(f"vocab_size={vocab_size} is too small for byte-level BPE (256 bytes + merges); use >= 300")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def _lr(step: int, cfg: TeacherConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _eval_loss(model: Any, rows: Any, batch: int = 16) -> float:
    import torch

    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            x = rows[i:i + batch]
            out = model(input_ids=x, labels=x)
            tot += float(out.loss) * len(x)
            n += len(x)
    model.train()
    return tot / max(1, n)


def train_teacher(out_dir: str | os.PathLike, texts: Sequence[str], cfg: TeacherConfig,
                  *, progress: bool = True) -> dict[str, Any]:
    """Train tokenizer + ``LlamaForCausalLM`` on ``texts`` and save both in ``out_dir``.

    Returns the training record (also written to ``out_dir/teacher.json``): held-out loss,
    training throughput (tokens/s, measured) and the settings.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..progress import progress as progress_bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.max_text_chars is not None:
        kept, n = [], 0
        for t in texts:
            if n >= cfg.max_text_chars:
                break
            kept.append(t[: cfg.max_text_chars - n])
            n += len(kept[-1])
        texts = kept
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    data = build_token_data(list(texts), tokenizer, seq_len=cfg.seq_len, heldout_fraction=cfg.heldout_fraction,
                            seed=cfg.seed)
    mcfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=max(256, cfg.seq_len), rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, hidden_act="silu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(mcfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    train = data.torch("train")
    held = data.torch("heldout")
    bar = progress_bar(total=cfg.steps, desc="teacher", disable=not progress, unit="step")
    t0 = time.perf_counter()
    tokens = 0
    step = 0
    loss_val = float("nan")
    for step in range(cfg.steps):
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            break
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        idx = torch.from_numpy(batch_indices(len(train), cfg.batch_size, step, cfg.seed))
        x = train[idx]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += x.numel()
        loss_val = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
    else:
        step = cfg.steps
    bar.close()
    elapsed = time.perf_counter() - t0
    val = _eval_loss(model, held)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    record = {
        "settings": cfg.to_dict(),
        "steps_done": int(step),
        "train_tokens": int(tokens),
        "train_loss": loss_val,
        "val_loss": val,
        "train_tokens_per_s": tokens / max(elapsed, 1e-9),
        "train_seconds": elapsed,
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "data": {"train_sequences": int(len(data.train)), "heldout_sequences": int(len(data.heldout)),
                 "fingerprint": data.fingerprint},
    }
    atomic_write_json(out / "teacher.json", record)
    logger.info("teacher: val_loss %.3f after %d steps (%.0f tok/s) -> %s", val, step, record["train_tokens_per_s"], out)
    return record


def ensure_teacher(out_dir: str | os.PathLike, texts: Sequence[str] | None, cfg: TeacherConfig,
                   *, progress: bool = True) -> dict[str, Any]:
    """The teacher in ``out_dir`` if one trained with ``cfg`` is there, else train it (``texts`` needed)."""
    out = Path(out_dir)
    rec_path = out / "teacher.json"
    if rec_path.exists() and (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        rec = read_json(rec_path, what="teacher record")
        if isinstance(rec, dict) and rec.get("settings") == cfg.to_dict():
            logger.info("reusing the teacher in %s", out)
            return rec
    if texts is None:
        raise PuzzlekitError(f"{out}: no teacher trained with these settings here, and no text to train one")
    return train_teacher(out, texts, cfg, progress=progress)

