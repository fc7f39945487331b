"""Blockwise local distillation (BLD): train every candidate sub-block from one parent pass per batch.

Call sequence (:func:`run_bld`)::

    plan units   (decoupled: one per attention variant and one per FFN variant per layer;
                  coupled: one per (attention, FFN) pair; hybrid: decoupled, keep the best
                  ``hybrid_keep`` of each per layer, then coupled on those pairs)
    shard units  over processes (``WORLD_SIZE`` / ``RANK`` from ``accelerate launch`` or torchrun; gloo)
    group layers so the activations and optimiser states fit ``max_memory_gb`` (the plan is logged)
    for each group, for each step:
        one parent pass (no grad) captures, per layer of the group, its input ``x``, the
        attention output ``h = x + attn(x)`` and the layer output ``y = h + ffn(h)``
        every unit of the group takes one AdamW step (fused) on normalized MSE against ``y``;
        its forward is :mod:`puzzlekit.bld.step` (norm folded into the first projections,
        parameter-free RMS inputs and the loss denominator shared by the layer's units)
    save each unit's weights (safetensors, atomic) and journal it COMPLETE
    rank 0 composes the library (``run/library.json``, weights under ``run/blocks/``)

Loss: ``MSE(out, y) / MSE(0, y)`` on the layer output (Puzzle, arXiv 2411.19146, BLD: normalized MSE between
the child block's and the parent block's outputs, the parent's activations as input), where ``out`` is
``x + attn_c(x)`` followed by the parent FFN (attention units), ``h + ffn_c(h)``
(FFN units) or the candidate layer itself (pairs).  No gradient reaches the parent.

Determinism and resumption: a unit's whole computation depends only on its own
initial weights (seeded from ``(seed, unit id)``), the batch of each step (a pure
function of ``(seed, step)``, see :func:`puzzlekit.data.batch_indices`) and its own
optimiser; the learning rate is a pure function of the step.  Every
``checkpoint_every`` steps the units of a layer group checkpoint their weights and
optimiser states together (one safetensors file, atomic, under ``bld/ckpt/``), so
a run killed at any point and started again with the same command
ends with bit-identical weights and metrics; so does a run sharded over any
number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .. import _dist
from ..blocks import BlockConfig
from ..data import TokenData, batch_indices
from ..errors import PuzzlekitError
from ..io import atomic_write_safetensors
from ..library import BlockLibrary
from ..model.placement import device_of, follow, moved
from ..rundir import RunDir, State
from .job import _ckpt_files, _ckpt_index, _Job
from .space import SearchSpace, default_search_space
from .step import FrozenFFN, LayerBatch, unit_output
from .units import (
    _NO_ATT,
    _NO_FFN,
    KIND,
    Unit,
    _hybrid_pairs,
    _safe_name,
    layer_devices,
    plan_groups,
    plan_units,
)

__all__ = ["BLDConfig", "Unit", "run_bld", "parent_activations", "plan_units", "plan_groups", "normalized_mse"]

logger = logging.getLogger(__name__)

STAGE = "bld"


class BLDError(PuzzlekitError):
    """BLD was given inputs it cannot use (or a run directory made with other settings)."""


@dataclass(frozen=True)
class BLDConfig:
    """BLD settings.  Optimiser defaults: AdamW lr 1e-4, betas (0.9, 0.95), weight decay 0.1, gradient
    clipping 1.0, linear warm-up then cosine decay to ``min_lr_fraction`` (10 %): the Llama recipe's AdamW
    settings (Llama 2, arXiv 2307.09288, §2.2) at a distillation learning rate."""

    mode: str = "decoupled"
    tokens: int = 1_000_000
    batch_size: int = 8
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    clip: float = 1.0
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.1
    hybrid_keep: int = 2
    eval_sequences: int = 8
    checkpoint_every: int = 25
    seed: int = 0
    ffn_init: str = "contribution"
    kv_init: str = "mean_pool"
    max_memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("decoupled", "coupled", "hybrid"):
            raise BLDError(f"mode must be 'decoupled', 'coupled' or 'hybrid', got {self.mode!r}")
        for name in ("tokens", "batch_size", "eval_sequences", "checkpoint_every", "hybrid_keep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BLDError(f"BLD {name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and 0 <= self.warmup_fraction < 1 and 0 <= self.min_lr_fraction <= 1):
            raise BLDError("BLD lr must be > 0, warmup_fraction in [0, 1), min_lr_fraction in [0, 1]")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def steps(self, seq_len: int) -> int:
        """Optimiser steps per unit for the token budget."""
        return max(1, math.ceil(self.tokens / (self.batch_size * seq_len)))

    def lr_at(self, step: int, total: int) -> float:
        """Warm-up + cosine learning rate of ``step`` (a pure function, so resumption is exact)."""
        warm = int(self.warmup_fraction * total)
        if step < warm:
            return self.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        lo = self.min_lr_fraction
        return self.lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def normalized_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``MSE(out, target) / MSE(0, target)``: Puzzle's BLD loss (arXiv 2411.19146)."""
    return (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


# ---- the parent pass ---------------------------------------------------------------------------
@torch.no_grad()
def parent_activations(parent: Any, input_ids: torch.Tensor, layers: Sequence[int]) -> tuple[Any, dict[int, tuple]]:
    """Run the parent up to ``max(layers)`` once; for each layer in ``layers`` return
    ``(x, h, y)``: its input, ``x + attn(x)`` and its output (on the layer's device).  Also returns
    the rotary ``position_embeddings`` (on the embedding's device: :func:`~puzzlekit.model.placement.follow`
    moves them to a layer's)."""
    inner = parent.model
    x = inner.embed_tokens(input_ids)
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    pe = inner.rotary_emb(x, pos)
    want = set(layers)
    out: dict[int, tuple] = {}
    for i in range(max(want) + 1):
        layer = inner.layers[i]
        x, pe = follow(device_of(layer), x, pe)  # a parent placed over devices: cross a boundary
        h = x + layer.attn_delta(x, pe)
        y = h + layer.ffn_delta(h)
        if i in want:
            out[i] = (x, h, y)
        x = y
    return pe, out


def _parent_block(parent: Any) -> BlockConfig:
    return parent.model.layers[0].spec.parent_block()


def _sub_state(layer: Any, kind: str) -> dict[str, torch.Tensor]:
    """The attention (``kind='attn'``), FFN (``'ffn'``) or whole (``'pair'``) part of a layer's state."""
    prefixes = {"attn": ("input_layernorm.", "self_attn."), "ffn": ("post_attention_layernorm.", "mlp.")}.get(kind, ("",))
    return {k: v.detach() for k, v in layer.state_dict().items() if k.startswith(prefixes)}


def _save_block(layer: Any, path: Path) -> Path:
    """Write a layer's weights (layer-relative names) atomically, readable by
    :func:`puzzlekit.model.load_block_weights` (the metadata names the block, which it checks).

    Not :func:`~puzzlekit.model.save_block_weights`: safetensors writes a metadata map of several keys in
    hash order, so its files differ byte-wise between processes; with the single ``block`` key a resumed
    or sharded run writes byte-identical files."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in layer.state_dict().items()}
    atomic_write_safetensors(path, tensors, metadata={"block": layer.block.key})
    return path


def _layer_from_state(spec: Any, block: BlockConfig, layer_idx: int, sd: dict[str, torch.Tensor]) -> Any:
    """A ``PuzzleDecoderLayer`` of ``block`` holding the tensors ``sd`` (no random initialisation)."""
    from ..model import PuzzleDecoderLayer

    with torch.device("meta"):
        layer = PuzzleDecoderLayer(spec, block, layer_idx)
    layer.load_state_dict(sd, strict=True, assign=True)
    return layer


def _is_parent_variant(unit: Unit, pblock: BlockConfig) -> bool:
    if unit.kind == "attn":
        return unit.block.attention == pblock.attention
    if unit.kind == "ffn":
        return unit.block.ffn == pblock.ffn
    return unit.block == pblock


def _has_params(block: BlockConfig) -> bool:
    return not (block.attention.no_op and block.ffn.no_op)


# ---- the run -------------------------------------------------------------------------------------
class _Runner:
    def __init__(self, parent: Any, data: TokenData, run: RunDir, space: SearchSpace, cfg: BLDConfig,
                 rank: int, world: int, progress: bool):
        self.parent, self.data, self.run, self.space, self.cfg = parent, data, run, space, cfg
        self.rank, self.world, self.progress = rank, world, progress
        self.spec = parent.model.layers[0].spec
        self.pblock = _parent_block(parent)
        self.train = data.torch("train")
        self.heldout = data.torch("heldout")[: cfg.eval_sequences]
        if len(self.heldout) == 0:
            raise BLDError("the token data has no held-out sequences; build it with heldout_fraction > 0")
        self.total = cfg.steps(data.seq_len)
        self.units_dir = run.file("blocks/units")
        self.ckpt_dir = run.file("bld/ckpt")

    # -- helpers
    def unit_path(self, u: Unit) -> Path:
        return self.units_dir / u.filename

    def _init_module(self, u: Unit, calib: tuple | None) -> torch.nn.Module | None:
        from ..model import init_child_layer

        if not _has_params(u.block):
            return None
        torch.manual_seed(u.seed(self.cfg.seed))
        players = self.parent.model.layers
        if u.kind == "pair" and self.cfg.mode == "hybrid":
            m = init_child_layer(players[u.layer], u.block, ffn_method="truncate", kv_method="first")
            attn = self.unit_path(Unit("attn", u.layer, BlockConfig(u.block.attention, _NO_FFN)))
            ffn = self.unit_path(Unit("ffn", u.layer, BlockConfig(_NO_ATT, u.block.ffn)))
            sd = {}
            for p in (attn, ffn):
                if p.exists():
                    sd.update(load_file(str(p)))
            m.load_state_dict(sd, strict=True)
            return m
        x, pe = calib if calib is not None else (None, None)
        return init_child_layer(players[u.layer], u.block, ffn_method=self.cfg.ffn_init,
                                kv_method=self.cfg.kv_init, calib_inputs=x, position_embeddings=pe,
                                seed=u.seed(self.cfg.seed))

    def _make_job(self, u: Unit, calib: tuple, ckpts: dict[str, tuple[Path, dict[str, Any]]]) -> _Job:
        is_parent = _is_parent_variant(u, self.pblock)
        trivial = is_parent or not _has_params(u.block)
        module = None if is_parent else self._init_module(u, calib)
        job = _Job(u, module, trainable=not trivial and module is not None, cfg=self.cfg, is_parent=is_parent)
        if job.trainable and u.id in ckpts:
            path, rec = ckpts[u.id]
            try:
                with safe_open(str(path), framework="pt") as f:
                    job.load_ckpt(f, rec["key"], rec)
            except Exception as e:  # a torn or foreign checkpoint: start the unit again
                logger.warning("%s: unreadable checkpoint of %s (%s); restarting this unit", path, u.id, e)
                job = _Job(u, self._init_module(u, calib), True, self.cfg)
        return job

    def _save_ckpt(self, path: Path, jobs: list[_Job]) -> None:
        """All unfinished units of the group in one safetensors file (one atomic write, one fsync)."""
        tensors: dict[str, torch.Tensor] = {}
        units: dict[str, Any] = {}
        for j in jobs:
            key = j.unit.filename[: -len(".safetensors")]
            tensors.update(j.ckpt_tensors(key))
            units[j.unit.id] = {**j.ckpt_meta(), "key": key}
        atomic_write_safetensors(path, tensors,
                                 metadata={"puzzlekit": json.dumps({"units": units}, sort_keys=True)})

    @torch.no_grad()
    def _eval(self, job: _Job, eval_acts: list) -> float:
        num = den = 0.0
        for pe, acts in eval_acts:
            a = acts[job.unit.layer]
            out = job.forward(self.parent.model.layers[job.unit.layer], a, moved(pe, a[0].device))
            y = a[2]
            num += float((out - y).double().pow(2).sum())
            den += float(y.double().pow(2).sum())
        return num / max(den, 1e-300)

    def _save_final(self, job: _Job) -> str | None:
        u = job.unit
        if not _has_params(u.block):
            return None
        layer = job.module
        if layer is None:  # the parent's own variant: its sub-block, as a layer of the unit's block
            layer = _layer_from_state(self.spec, u.block, u.layer, _sub_state(self.parent.model.layers[u.layer],
                                                                                u.kind))
        path = _save_block(layer, self.unit_path(u))
        return str(path.relative_to(self.run.path))

    # -- one group of layers
    def train_group(self, units: list[Unit], gi: int, ng: int) -> None:
        from ..progress import progress as progress_bar

        layers = sorted({u.layer for u in units})
        cfg = self.cfg
        dev = self.parent.model.embed_tokens.weight.device  # token rows stay on the CPU; each batch moves
        eval_acts = [parent_activations(self.parent, self.heldout[i:i + cfg.batch_size].to(dev), layers)
                     for i in range(0, len(self.heldout), cfg.batch_size)]
        calib_ids = self.train[torch.from_numpy(batch_indices(len(self.train), cfg.batch_size, 0, cfg.seed))].to(dev)
        cpe, cacts = parent_activations(self.parent, calib_ids, layers)
        jobs = []
        ckpts = _ckpt_index(self.ckpt_dir)
        ckpt_path = self.ckpt_dir / f"group-{zlib.crc32(' '.join(u.id for u in units).encode()):08x}.safetensors"
        for u in units:
            self.run.journal.set_state(KIND, u.id, State.RUNNING, rank=self.rank)
            x = cacts[u.layer][0]
            job = self._make_job(u, (x, moved(cpe, x.device)), ckpts)
            if job.nmse_init is None:
                job.nmse_init = self._eval(job, eval_acts)
            jobs.append(job)
        del cacts
        live = [j for j in jobs if j.trainable and j.step < self.total]
        start = min((j.step for j in live), default=self.total)
        bar = progress_bar(total=self.total, initial=start, disable=not self.progress, unit="step",
                   desc=f"BLD {cfg.mode} group {gi + 1}/{ng} (layers {layers[0]}-{layers[-1]}, {len(live)} units)")
        t0, c0, tokens = time.perf_counter(), time.process_time(), 0
        last_ckpt = time.monotonic()
        players = self.parent.model.layers
        # the parent FFN that attention units run through, as constants (prepared once per group)
        pffn = {i: FrozenFFN(players[i]) for i in {j.unit.layer for j in live if j.unit.kind == "attn"}}
        for step in range(start, self.total):
            ids = self.train[torch.from_numpy(batch_indices(len(self.train), cfg.batch_size, step, cfg.seed))].to(dev)
            pe, acts = parent_activations(self.parent, ids, layers)
            lbs = {i: LayerBatch(players[i], a, moved(pe, a[0].device), pffn.get(i)) for i, a in acts.items()}
            lr = cfg.lr_at(step, self.total)
            losses = []  # read after every unit's step is queued: no host sync between units (devices overlap)
            for j in live:
                if j.step != step:
                    continue
                for g in j.opt.param_groups:
                    g["lr"] = lr
                lb = lbs[j.unit.layer]
                loss = lb.loss(unit_output(j.unit.kind, j.module, lb))
                j.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(j.params, cfg.clip, foreach=True)
                j.opt.step()
                j.step += 1
                losses.append((j, loss.detach()))
            for j, loss in losses:
                j.recent = (j.recent + [float(loss)])[-10:]
            del lbs, acts, losses
            tokens += ids.numel()
            bar.update(1)
            if self.progress:
                post = {"tok/s": f"{tokens / max(time.perf_counter() - t0, 1e-9):.0f}"}
                for j in live[:8]:
                    post[j.unit.short] = f"{j.recent[-1]:.4f}" if j.recent else "-"
                if len(live) > 8:
                    post["mean"] = f"{sum(j.recent[-1] for j in live if j.recent) / len(live):.4f}"
                bar.set_postfix(post, refresh=False)
            if (step + 1) % cfg.checkpoint_every == 0 or time.monotonic() - last_ckpt > 120:
                # every unit of the group, finished ones too: a kill before they are journaled then
                # resumes them at their last step instead of retraining them
                self._save_ckpt(ckpt_path, live)
                last_ckpt = time.monotonic()
        bar.close()
        if start < self.total:
            secs = time.perf_counter() - t0
            logger.info("BLD group %d/%d: %d steps of %d units in %.2fs (%.0f tokens/s per unit)", gi + 1, ng,
                        self.total - start, len(live), secs, tokens / max(secs, 1e-9),
                        extra={"bld_loop": {"steps": self.total - start, "units": len(live), "seconds": secs,
                                            "cpu_seconds": time.process_time() - c0, "tokens": tokens}})
        for j in jobs:
            nmse = self._eval(j, eval_acts)
            rel = self._save_final(j)
            metrics = {"bld_nmse": nmse, "bld_nmse_init": j.nmse_init,
                       "bld_train_nmse": (sum(j.recent) / len(j.recent)) if j.recent else nmse,
                       "bld_steps": j.step, "bld_tokens": j.step * cfg.batch_size * self.data.seq_len}
            self.run.journal.set_state(KIND, j.unit.id, State.COMPLETE, metrics=metrics, weights=rel,
                                       rank=self.rank)
            logger.info("BLD %s: nmse %.5f (init %.5f)", j.unit.id, nmse, j.nmse_init)
        # checkpoints whose units are all finished now (this group's, or an earlier run's) are dropped
        done = {k for k, r in self.run.journal.states(KIND).items() if r.get("state") == State.COMPLETE.value}
        for path, recs in _ckpt_files(self.ckpt_dir).items():
            if set(recs) <= done:
                path.unlink(missing_ok=True)

    def train_units(self, units: list[Unit]) -> None:
        done = {k for k, r in self.run.journal.states(KIND).items() if r.get("state") == State.COMPLETE.value}
        mine = [u for i, u in enumerate(units) if i % self.world == self.rank and u.id not in done]
        if not mine:
            return
        groups = plan_groups(mine, self.spec, self.cfg, self.data.seq_len, layer_devices(self.parent))
        logger.info("BLD plan (rank %d/%d): %d units, %d steps each, %d group(s): %s", self.rank, self.world,
                    len(mine), self.total, len(groups), "; ".join(f"layers {g[0]}-{g[-1]}" for g in groups))
        for gi, g in enumerate(groups):
            gs = set(g)
            try:
                self.train_group([u for u in mine if u.layer in gs], gi, len(groups))
            except Exception as e:
                for u in mine:
                    if u.layer in gs:
                        self.run.journal.set_state(KIND, u.id, State.FAILED, error=f"{type(e).__name__}: {e}")
                raise


def _compose_library(run: RunDir, parent: Any, space: SearchSpace, cfg: BLDConfig,
                     pair_units: list[Unit] | None, meta: dict[str, Any]) -> BlockLibrary:
    spec = parent.model.layers[0].spec
    pblock = spec.parent_block()
    st = run.journal.states(KIND)
    layers = space.layer_list(spec)
    lib = BlockLibrary(spec.num_hidden_layers, parent=spec, root=run.path, meta=meta)

    def rec(u: Unit) -> dict[str, Any]:
        r = st.get(u.id)
        if r is None or r.get("state") != State.COMPLETE.value:
            raise BLDError(f"{run.path}: unit {u.id} is not complete; re-run build-library to finish it")
        return r

    for i in range(spec.num_hidden_layers):
        if i not in layers:
            rel = f"blocks/L{i:03d}/{_safe_name(pblock.key)}.safetensors"
            _save_block(parent.model.layers[i], run.path / rel)
            lib.add(i, pblock, {"bld_nmse": 0.0}, weights=rel)
            continue
        if pair_units is None:
            for a in space.attention:
                ra = rec(Unit("attn", i, BlockConfig(a, _NO_FFN)))
                for f in space.ffn:
                    rf = rec(Unit("ffn", i, BlockConfig(_NO_ATT, f)))
                    block = BlockConfig(a, f)
                    # the pair's weights are its two sub-block files, shared with the layer's other pairs
                    files = [r["weights"] for r in (ra, rf) if r.get("weights")]
                    rel = files[0] if len(files) == 1 else (files or None)
                    lib.add(i, block, {"bld_nmse_attn": ra["metrics"]["bld_nmse"],
                                       "bld_nmse_ffn": rf["metrics"]["bld_nmse"],
                                       "bld_nmse_attn_init": ra["metrics"]["bld_nmse_init"],
                                       "bld_nmse_ffn_init": rf["metrics"]["bld_nmse_init"]}, weights=rel)
        else:
            for u in pair_units:
                if u.layer != i:
                    continue
                r = rec(u)
                m = r["metrics"]
                lib.add(i, u.block, {"bld_nmse": m["bld_nmse"], "bld_nmse_init": m["bld_nmse_init"]},
                        weights=r.get("weights"))
    return lib


#: Bytes of a tensor hashed at a time (moved to the CPU chunk by chunk: no full copy of a GPU tensor).
_FINGERPRINT_CHUNK = 1 << 26


def fingerprint_parent(parent: Any) -> str:
    """SHA-256 of the parent's whole state: every tensor's name, dtype, shape and every byte, streamed in
    chunks of :data:`_FINGERPRINT_CHUNK` bytes.  A parent that differs anywhere (not only in its first
    values) gives another fingerprint, so a run directory never reuses BLD made from another parent."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(parent.state_dict().items()):
        t = v.detach()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1)
        step = max(1, _FINGERPRINT_CHUNK // max(1, t.element_size()))
        for i in range(0, flat.numel(), step):
            h.update(flat[i:i + step].contiguous().cpu().view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def run_bld(
    parent: Any,
    data: TokenData,
    run_dir: str | os.PathLike | RunDir,
    space: SearchSpace | None = None,
    config: BLDConfig | None = None,
    *,
    progress: bool = True,
) -> BlockLibrary:
    """Build a block library by blockwise local distillation; resumable, shardable, deterministic.

    ``parent``: a ``PuzzleForCausalLM`` or anything :func:`puzzlekit.model.load_parent` reads.
    ``space``: the variants (default :func:`default_search_space`).  Writes ``run/library.json``
    and ``run/blocks/``; a finished run with the same settings returns the saved library.
    Under ``accelerate launch`` / torchrun (``WORLD_SIZE > 1``) units are sharded over the
    processes and rank 0 writes the library; every rank returns it.
    """
    from ..model import load_parent

    cfg = config or BLDConfig()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not hasattr(parent, "model") or not hasattr(getattr(parent, "model", None), "layers"):
        parent = load_parent(parent)
    elif type(parent).__name__ != "PuzzleForCausalLM":
        parent = load_parent(parent)
    parent.eval()
    parent.requires_grad_(False)
    spec = parent.model.layers[0].spec
    space = space or default_search_space(spec)
    space.check(spec)
    if len(data.train) < cfg.batch_size:
        raise BLDError(f"batch_size={cfg.batch_size} is larger than the {len(data.train)} training sequences")
    settings = {"bld": cfg.to_dict(), "space": space.to_dict(), "data": data.fingerprint,
                "seq_len": data.seq_len, "parent": fingerprint_parent(parent)}
    info = run.stage_info(STAGE)
    lib_path = run.path / "library.json"
    if info.get("state") == State.COMPLETE.value and info.get("config") == settings and lib_path.exists():
        logger.info("BLD already complete in %s; reusing the library", run.path)
        return BlockLibrary.load(lib_path)
    if info.get("config") not in (None, settings):
        raise BLDError(f"{run.path}: this run directory holds a BLD run made with other settings (parent, data, "
                       "space or BLD options); use a new run directory or delete its bld/ and journal.jsonl")
    rank, world = _dist.setup()
    if rank == 0:
        run.set_stage(STAGE, State.RUNNING, config=settings)
    runner = _Runner(parent, data, run, space, cfg, rank, world, progress)
    layers = space.layer_list(spec)
    units = plan_units(space, runner.pblock, cfg.mode, layers)
    runner.train_units(units)
    _dist.barrier(world)
    pairs: list[Unit] | None = None
    if cfg.mode == "hybrid":
        pairs = _hybrid_pairs(run, layers, space, cfg.hybrid_keep)
        runner.train_units(pairs)
        _dist.barrier(world)
    elif cfg.mode == "coupled":
        pairs = units
    if rank == 0:
        meta = {"bld": settings, "stage": "bld"}
        lib = _compose_library(run, parent, space, cfg, pairs, meta)
        lib.save(lib_path)
        run.set_stage(STAGE, State.COMPLETE, config=settings, num_units=len(units) + len(pairs or []) * (
            cfg.mode == "hybrid"), world_size=world)
    _dist.barrier(world)
    return BlockLibrary.load(lib_path)


def unit_results(run_dir: str | os.PathLike | RunDir) -> dict[str, dict[str, Any]]:
    """The journaled result of every finished unit: ``{unit id: metrics}``."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir, create=False)
    return {k: dict(r.get("metrics", {})) for k, r in run.journal.states(KIND).items()
            if r.get("state") == State.COMPLETE.value}
