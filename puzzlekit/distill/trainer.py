"""A resumable training loop for global KD and continued pre-training, on accelerate or FSDP2.

One loop serves both stages of LN-Ultra's healing: GKD (cosine + KL to the
parent) and continued pre-training (LM loss on raw text, ``weights =
GKDWeights(cosine=0, kl=0, lm=1)``, no parent needed).  It runs on two backends:

* accelerate (default): one device, or DDP under ``accelerate launch`` /
  ``torchrun`` (``examples/gkd/accelerate_ddp.yaml``);
* FSDP2 (``DistillConfig(fsdp=True)``, see :mod:`puzzlekit.distill.fsdp`):
  child and frozen parent sharded per decoder layer, bf16 mixed precision on
  GPUs, optional activation checkpointing, sharded DCP checkpoints that any
  number of processes can resume.

* Data: a 2-D LongTensor of token rows (packed sequences).  The batch order
  is a pure function of ``(seed, step)``, so a resumed run sees exactly the
  batches it would have seen; each process takes its slice of the global
  batch.  The logged losses are the global batch's (averaged over processes).
* Gradient accumulation (``no_sync`` on inner micro-steps under DDP), clipping,
  AdamW, linear warm-up + cosine decay, bf16 where the device supports it.
* Checkpoints (:mod:`puzzlekit.distill.checkpoint`): written under a temporary
  name and renamed, so a killed run resumes from the last complete checkpoint
  to the same weights as an uninterrupted run; a folder holding another
  model's run, or written with another global batch, is refused with a message.
* Periodic evaluation of the child's KL to the parent on held-out rows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, UnsafeInputError
from ..io import read_json
from .checkpoint import begin_checkpoint, check_fits, check_resume_state, commit_checkpoint, latest_checkpoint
from .loss import GKDWeights, gkd_loss, hidden_cosine_loss, kl_to_parent, lm_loss

__all__ = ["DistillConfig", "DistillResult", "distill", "evaluate_kl", "warmup_cosine", "latest_checkpoint"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Knobs of :func:`distill` (NVIDIA's BLD/GKD optimiser: AdamW, betas (0.9, 0.95), wd 0.1, clip 1).

    ``batch_size`` is rows per process and micro-step: the global batch is ``batch_size x
    grad_accum_steps x processes``.  ``fsdp``: shard child and parent with FSDP2 (launch with
    torchrun; :mod:`puzzlekit.distill.fsdp`).  ``activation_checkpointing``: recompute each decoder
    layer's forward in backward (either backend).
    """

    max_steps: int
    batch_size: int = 8
    grad_accum_steps: int = 1
    learning_rate: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0
    weights: GKDWeights = field(default_factory=GKDWeights)
    temperature: float = 1.0
    mixed_precision: str = "auto"
    eval_every: int = 0
    eval_batch_size: int = 8
    save_every: int = 0
    keep_checkpoints: int = 2
    output_dir: str | None = None
    seed: int = 0
    log_every: int = 10
    fsdp: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError(f"DistillConfig.max_steps={self.max_steps}: train at least 1 step")
        if self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ConfigError(f"DistillConfig: batch_size={self.batch_size}, grad_accum_steps="
                              f"{self.grad_accum_steps}; both must be >= 1")
        if not self.learning_rate > 0:
            raise ConfigError(f"DistillConfig.learning_rate={self.learning_rate}: use a positive rate")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"DistillConfig.mixed_precision={self.mixed_precision!r}: use auto, no, bf16 or fp16")
        if self.save_every and self.output_dir is None:
            raise ConfigError("DistillConfig: save_every > 0 needs output_dir for the checkpoints")
        if self.fsdp and self.mixed_precision == "fp16":
            raise ConfigError("DistillConfig(fsdp=True, mixed_precision='fp16'): fp16 needs loss scaling, which the "
                              "FSDP path does not do; use 'bf16' (or 'auto')")
        if self.temperature <= 0:
            raise ConfigError(f"DistillConfig.temperature={self.temperature}: use a positive temperature")


@dataclass
class DistillResult:
    """What :func:`distill` did: per-step training logs, evaluations, and the steps run in this call."""

    history: list[dict[str, float]]
    evals: list[dict[str, float]]
    start_step: int
    end_step: int
    wall_s: float


def warmup_cosine(step: int, *, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_tokens(tokens: Any, what: str) -> torch.Tensor:
    if type(tokens).__module__ == "numpy" and getattr(tokens, "dtype", None) is not None and tokens.dtype.kind in "iu":
        tokens = torch.from_numpy(tokens.astype("int64", copy=False))  # e.g. TokenData.train / .heldout
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"distill: {what} must be a 2-D integer tensor of token rows [rows, seq_len], got "
                          f"{type(tokens).__name__}{tuple(getattr(tokens, 'shape', ()))}")
    if tokens.shape[0] < 1 or tokens.shape[1] < 2:
        raise ConfigError(f"distill: {what} has shape {tuple(tokens.shape)}; need >= 1 row of >= 2 tokens")
    return tokens.long()


def _rows_for(step: int, micro: int, cfg: DistillConfig, n_rows: int, rank: int, world: int) -> torch.Tensor:
    """Row indices of this process's micro-batch ``micro`` of optimiser step ``step`` (pure function)."""
    per_step = cfg.batch_size * cfg.grad_accum_steps * world
    start = step * per_step + micro * cfg.batch_size * world + rank * cfg.batch_size
    idx = []
    for g in range(start, start + cfg.batch_size):
        epoch, off = divmod(g, n_rows)
        idx.append(int(_epoch_order(cfg.seed, epoch, n_rows)[off]))
    return torch.tensor(idx, dtype=torch.long)


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n_rows: int) -> torch.Tensor:
    """The row order of one epoch (seeded; cached: a batch needs at most two epochs)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=gen)


def _mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"  # CPU bf16 autocast works but is slower than fp32 on most CPUs


def _new_accelerator(mixed_precision: str) -> Any:
    """An ``Accelerator`` with ``mixed_precision``, even when an earlier trainer in this process
    (e.g. TRL's ``SFTTrainer``, bf16 by default) left accelerate's process-wide state set to
    another precision -- accelerate would raise.  Only the precision part of the state is reset;
    the process group (``PartialState``) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and str(AcceleratorState().mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision)


class _AccelerateBackend:
    """One device or DDP through an ``Accelerator``; checkpoints are the full state (safetensors +
    ``optimizer.pt``) written by the main process."""

    kind = "safetensors"

    def __init__(self, accelerator: Any) -> None:
        self.acc = accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process
        self.device = accelerator.device

    def setup(self, child: Any, parent: Any) -> tuple[Any, Any]:
        if parent is not None:
            parent = parent.to(self.device).eval().requires_grad_(False)
        return child, parent

    def prepare(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        return self.acc.prepare(model, optimizer)

    def micro_step(self, model: Any, sync: bool) -> Any:
        return contextlib.nullcontext() if sync else self.acc.no_sync(model)

    def autocast(self) -> Any:
        return self.acc.autocast()

    def forward(self) -> Any:
        return contextlib.nullcontext()

    def after_parent_forward(self, parent: Any) -> None:
        pass

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def clip(self, model: Any, max_norm: float) -> float:
        return float(self.acc.clip_grad_norm_(model.parameters(), max_norm))

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(t, reduction="sum") if self.world > 1 else t

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    def write(self, tmp: Path, model: Any, optimizer: Any) -> dict[str, Any]:
        from safetensors.torch import save_file

        state = self.acc.get_state_dict(model)  # every rank calls it (a collective under some wrappers)
        if self.is_main:
            save_file(_untied(state), str(tmp / "model.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        return {}

    def load(self, ckpt: Path, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
        if not (ckpt / "optimizer.pt").exists():  # written by accelerate's FSDP plugin before the FSDP2 path
            logger.warning("%s: no optimizer state; the optimizer restarts", ckpt)
            return
        try:
            opt_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses pickled objects other than tensors/containers
            raise UnsafeInputError(f"{ckpt / 'optimizer.pt'}: refused, not a plain tensor checkpoint ({e}); "
                                   "delete this checkpoint folder to resume from the previous one") from None
        optimizer.load_state_dict(opt_state)


def _unique(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with each tensor once: a tied weight (``lm_head.weight`` = ``model.embed_tokens.weight``)
    is kept under the first name it appears under."""
    out, seen = {}, set()
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`_unique` on the CPU: safetensors refuses to write shared storage twice; loading (``strict=False``)
    restores a tied weight through its first name."""
    return {k: v.detach().cpu().contiguous() for k, v in _unique(state).items()}


class _Single:
    """Evaluation context of one process (or of FSDP processes when no accelerator is given)."""

    def __init__(self, model: Any) -> None:
        from .fsdp import is_sharded

        self.rank, self.world = 0, 1
        if is_sharded(model):
            import torch.distributed as dist

            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = next(model.parameters()).device

    def autocast(self) -> Any:
        return contextlib.nullcontext()

    def forward(self) -> Any:
        from .fsdp import quiet_view_warning

        return quiet_view_warning()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t


@torch.no_grad()
def evaluate_kl(model: Any, parent: Any, tokens: torch.Tensor | Any, *, batch_size: int = 8,
                pairs: list[tuple[int, int]] | None = None, accelerator: Any = None,
                temperature: float = 1.0) -> dict[str, float]:
    """Mean per-token KL(parent ‖ child), LM loss and (with ``pairs``) cosine loss on ``tokens``.

    Under several processes (an ``accelerator``, or FSDP-sharded models) each evaluates its share of
    rows and the sums are reduced, so every process returns the same numbers.  ``tokens``: a torch
    tensor or a numpy array.
    """
    tokens = _check_tokens(tokens, "tokens")
    ctx = _AccelerateBackend(accelerator) if accelerator is not None else _Single(model)
    return _evaluate(model, parent, tokens, ctx, batch_size=batch_size, pairs=pairs, temperature=temperature)


def _evaluate(model: Any, parent: Any, tokens: torch.Tensor, ctx: Any, *, batch_size: int,
              pairs: list[tuple[int, int]] | None, temperature: float) -> dict[str, float]:
    from .fsdp import reshard

    was_training = model.training
    model.eval()
    rank, world, device = ctx.rank, ctx.world, ctx.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # kl·tok, lm·tok, cos·rows, tokens
    rows = list(range(rank, tokens.shape[0], world))
    n_batches = math.ceil(tokens.shape[0] / (batch_size * world))
    hidden = pairs is not None
    with torch.no_grad(), ctx.autocast(), ctx.forward():
        for b in range(n_batches):  # same number of forwards on every rank (FSDP needs it)
            sel = rows[b * batch_size:(b + 1) * batch_size] or rows[:1] or [0]
            ids = tokens[sel].to(device)
            weight = 1.0 if rows[b * batch_size:(b + 1) * batch_size] else 0.0
            co = model(input_ids=ids, output_hidden_states=hidden, use_cache=False)
            po = parent(input_ids=ids, output_hidden_states=hidden, use_cache=False)
            ntok = ids.numel()
            sums[0] += weight * float(kl_to_parent(co.logits, po.logits, None, temperature)) * ntok
            sums[1] += weight * float(lm_loss(co.logits, ids)) * ids.shape[0] * (ids.shape[1] - 1)
            if hidden:
                sums[2] += weight * float(hidden_cosine_loss(co.hidden_states, po.hidden_states, pairs)) * ntok
            sums[3] += weight * ntok
    reshard(model)
    reshard(parent)
    if world > 1:
        sums = ctx.sum(sums)
    model.train(was_training)
    ntok = float(sums[3])
    out = {"kl": float(sums[0]) / ntok,
           "lm_loss": float(sums[1]) / (ntok * (tokens.shape[1] - 1) / tokens.shape[1])}
    if hidden:
        out["cosine"] = float(sums[2]) / ntok
    return out


def _save_checkpoint(backend: Any, model: Any, optimizer: Any, out: Path, step: int, state: dict[str, Any],
                     keep: int) -> None:
    """Every process writes its part into the temporary folder; the main one commits it."""
    if backend.is_main:
        begin_checkpoint(out, step)
    backend.barrier()
    extra = backend.write(out / "checkpoints" / f".step_{step:08d}.tmp", model, optimizer)
    backend.barrier()
    if backend.is_main:
        commit_checkpoint(out, step, {**state, **extra}, keep)
    backend.barrier()


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    return d


def _adamw(model: Any, cfg: DistillConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate, betas=cfg.betas)


def _backend(cfg: DistillConfig, accelerator: Any) -> Any:
    if accelerator is not None and accelerator.distributed_type.name == "FSDP" and not cfg.fsdp:
        logger.info("accelerate's FSDP launch: distill takes its own FSDP2 path (child and parent sharded per "
                    "layer, sharded DCP checkpoints); the accelerate fsdp_config settings are not used")
        cfg = dataclass_replace(cfg, fsdp=True)
    if cfg.fsdp:
        from .fsdp import FSDPBackend

        return FSDPBackend(cfg.mixed_precision, accelerator), cfg
    return _AccelerateBackend(accelerator or _new_accelerator(_mixed_precision(cfg.mixed_precision))), cfg


def distill(child: Any, parent: Any | None, train_tokens: torch.Tensor | Any, config: DistillConfig, *,
            eval_tokens: torch.Tensor | Any | None = None, pairs: list[tuple[int, int]] | None = None,
            resume: bool = True, accelerator: Any = None, stop_after: int | None = None) -> DistillResult:
    """Train ``child`` toward ``parent`` (GKD) or on the LM loss (continued pre-training).

    ``train_tokens`` / ``eval_tokens``: 2-D integer token rows ``[rows, seq_len]``, a torch tensor or a
    numpy array (e.g. ``build_token_data(...).train`` / ``.heldout``).

    ``pairs``: the layer matching for the cosine term (default one-to-one by
    layer count, see :func:`puzzlekit.distill.match_layers`).  With
    ``resume`` and a checkpoint in ``config.output_dir`` the run continues
    from it; a run already at ``max_steps`` returns at once.  The child is
    trained in place (unwrap it from the accelerator with
    ``accelerator.unwrap_model`` if you pass your own accelerator).  Under
    ``config.fsdp`` child and parent are sharded in place (a second call
    reuses the shards); gather the child with
    :func:`puzzlekit.distill.fsdp.full_model` to save it.
    ``stop_after``: return after this optimiser step (a session of a longer
    run; the schedule still follows ``max_steps``; resume later).
    """
    from .loss import layer_pairs_for

    t0 = time.perf_counter()
    cfg = config
    train_tokens = _check_tokens(train_tokens, "train_tokens")
    if eval_tokens is not None:
        eval_tokens = _check_tokens(eval_tokens, "eval_tokens")
    if cfg.weights.needs_parent and parent is None:
        raise ConfigError("distill: the cosine / KL terms need a parent; pass one, or set "
                          "weights=GKDWeights(cosine=0, kl=0, lm=1) for continued pre-training")
    if cfg.weights.cosine > 0 and pairs is None:
        pairs = layer_pairs_for(child, parent)
    backend, cfg = _backend(cfg, accelerator)
    undo = None
    if cfg.activation_checkpointing:
        from .fsdp import enable_activation_checkpointing

        undo = enable_activation_checkpointing(child)
    try:
        return _train(backend, child, parent, train_tokens, cfg, eval_tokens, pairs, resume, stop_after, t0)
    finally:
        if undo is not None:
            undo()


def _train(backend: Any, child: Any, parent: Any, train_tokens: torch.Tensor, cfg: DistillConfig,
           eval_tokens: torch.Tensor | None, pairs: Any, resume: bool, stop_after: int | None,
           t0: float) -> DistillResult:
    out = Path(cfg.output_dir) if cfg.output_dir else None
    model, parent = backend.setup(child, parent)
    optimizer = _adamw(model, cfg)
    rank, world = backend.rank, backend.world
    global_batch = cfg.batch_size * cfg.grad_accum_steps * world

    start, history, evals = 0, [], []
    ckpt = latest_checkpoint(out) if (resume and out is not None) else None
    if ckpt is not None:
        st = read_json(ckpt / "state.json", what="checkpoint state")
        check_resume_state(ckpt, st, fmt=backend.kind, global_batch=global_batch, world=world,
                           batch_size=cfg.batch_size, grad_accum_steps=cfg.grad_accum_steps)
        state = model.state_dict()
        if backend.kind == "safetensors":  # a tied weight is stored once, under its first name (_untied)
            state = _unique(state)
        check_fits(ckpt, {k: tuple(v.shape) for k, v in state.items()}, out)
        backend.load(ckpt, model, optimizer, st)
        start, history, evals = int(st["step"]), list(st["history"]), list(st["evals"])
        logger.info("resuming from %s at step %d", ckpt, start)
    if start >= cfg.max_steps:
        return DistillResult(history, evals, start, start, time.perf_counter() - t0)

    for g in optimizer.param_groups:
        g.setdefault("initial_lr", cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total=cfg.max_steps, warmup=cfg.warmup_steps,
                                           min_ratio=cfg.min_lr_ratio), last_epoch=start - 1)
    model, optimizer = backend.prepare(model, optimizer)
    want_hidden = cfg.weights.cosine > 0

    def run_eval(step: int) -> None:
        if eval_tokens is None or parent is None:
            return
        r = _evaluate(model, parent, eval_tokens, backend, batch_size=cfg.eval_batch_size,
                      pairs=pairs if want_hidden else None, temperature=cfg.temperature)
        r["step"] = step
        evals.append(r)
        logger.info("eval step %d: %s", step, r)

    def save(step: int) -> None:
        state = {"step": step, "history": history, "evals": evals, "config": _jsonable(asdict(cfg)),
                 "world": world, "global_batch": global_batch}
        _save_checkpoint(backend, model, optimizer, out, step, state, cfg.keep_checkpoints)

    if start == 0 and cfg.eval_every:
        run_eval(0)
    model.train()
    end = cfg.max_steps if stop_after is None else max(start, min(cfg.max_steps, int(stop_after)))
    for step in range(start, end):
        parts_sum: dict[str, float] = {}
        for micro in range(cfg.grad_accum_steps):
            ids = train_tokens[_rows_for(step, micro, cfg, train_tokens.shape[0], rank, world)].to(backend.device)
            sync = micro == cfg.grad_accum_steps - 1
            with backend.micro_step(model, sync), backend.autocast(), backend.forward():
                child_out = model(input_ids=ids, output_hidden_states=want_hidden, use_cache=False)
                parent_out = None
                if cfg.weights.needs_parent:
                    with torch.no_grad():
                        parent_out = parent(input_ids=ids, output_hidden_states=want_hidden, use_cache=False)
                    backend.after_parent_forward(parent)
                loss, parts = gkd_loss(child_out, parent_out, ids, pairs=pairs or (), weights=cfg.weights,
                                       temperature=cfg.temperature)
                backend.backward(loss / cfg.grad_accum_steps)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.grad_accum_steps
        if world > 1:  # log the global batch's losses, not this process's share
            keys = sorted(parts_sum)
            t = backend.sum(torch.tensor([parts_sum[k] for k in keys], dtype=torch.float64, device=backend.device))
            parts_sum = {k: float(v) / world for k, v in zip(keys, t.tolist())}
        gnorm = backend.clip(model, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "lr": scheduler.get_last_lr()[0], **parts_sum}
        if gnorm is not None:
            rec["grad_norm"] = gnorm
        history.append(rec)
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            logger.info("step %d: %s", step + 1, rec)
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps):
            run_eval(step + 1)
        if out is not None and cfg.save_every and ((step + 1) % cfg.save_every == 0 or step + 1 == end):
            save(step + 1)
    model.eval()
    return DistillResult(history, evals, start, end, time.perf_counter() - t0)
