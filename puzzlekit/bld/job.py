"""A BLD unit's training state (:class:`_Job`: its module, AdamW and progress) and the group checkpoints
(one safetensors file per layer group, weights and optimiser moments of every unit, atomic)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .units import Unit

logger = logging.getLogger("puzzlekit.bld.engine")


# ---- a unit's training state ---------------------------------------------------------------------
class _Job:
    def __init__(self, unit: Unit, module: torch.nn.Module | None, trainable: bool, cfg: Any,
                 is_parent: bool = False):
        self.unit = unit
        self.is_parent = is_parent
        self.module = module
        self.trainable = trainable
        self.step = 0
        self.nmse_init: float | None = None
        self.recent: list[float] = []
        self.opt: torch.optim.Optimizer | None = None
        if trainable and module is not None:
            self.params = list(module.parameters())
            decay = [p for _, p in module.named_parameters() if p.ndim >= 2]
            other = [p for _, p in module.named_parameters() if p.ndim < 2]
            groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                      {"params": other, "weight_decay": 0.0}]
            # one fused kernel per step where torch has it (CPU / CUDA floats), else the foreach path
            fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in decay + other)
            self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas,
                                         **({"fused": True} if fused else {"foreach": True}))

    def forward(self, parent_layer: Any, acts: tuple, pe: Any) -> torch.Tensor:
        x, h, _ = acts
        m, kind = self.module, self.unit.kind
        if m is None:  # the parent's own variant, or a no-op without weights
            m = parent_layer if self.is_parent else None
        if kind == "attn":
            o = x + m.attn_delta(x, pe) if m is not None else x
            return o + parent_layer.ffn_delta(o)
        if kind == "ffn":
            return h + m.ffn_delta(h) if m is not None else h
        return m(x, pe) if m is not None else x

    # checkpoint: module weights + AdamW moments (tensors under ``key::``), progress in the metadata
    def ckpt_tensors(self, key: str) -> dict[str, torch.Tensor]:
        tensors = {f"{key}::param::{k}": v.detach().contiguous() for k, v in self.module.state_dict().items()}
        for pid, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"{key}::opt::{pid}::{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
        return tensors

    def ckpt_meta(self) -> dict[str, Any]:
        return {"step": self.step, "nmse_init": self.nmse_init, "recent": self.recent}

    def load_ckpt(self, f: Any, key: str, meta: dict[str, Any]) -> None:
        """Restore from an open ``safe_open`` handle ``f`` holding this unit's tensors under ``key``."""
        params, state = {}, {}
        for name in f.keys():
            if not name.startswith(key + "::"):
                continue
            parts = name[len(key) + 2:].split("::")
            if parts[0] == "param":
                params[parts[1]] = f.get_tensor(name)
            elif parts[0] == "opt":
                state.setdefault(int(parts[1]), {})[parts[2]] = f.get_tensor(name)
        self.module.load_state_dict(params, strict=True)
        self.opt.load_state_dict({"state": state, "param_groups": self.opt.state_dict()["param_groups"]})
        self.step, self.nmse_init, self.recent = int(meta["step"]), meta["nmse_init"], list(meta["recent"])


def _ckpt_files(ckpt_dir: Path) -> dict[Path, dict[str, dict[str, Any]]]:
    """Every readable group checkpoint: file -> {unit id: record}."""
    out: dict[Path, dict[str, dict[str, Any]]] = {}
    if not ckpt_dir.is_dir():
        return out
    for path in sorted(ckpt_dir.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                out[path] = dict(json.loads((f.metadata() or {})["puzzlekit"])["units"])
        except Exception as e:  # a torn or foreign file: its units start again
            logger.warning("%s: unreadable BLD checkpoint (%s); ignoring it", path, e)
    return out


def _ckpt_index(ckpt_dir: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Unit id -> (checkpoint file, its record) over every readable group checkpoint (latest step wins)."""
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, units in _ckpt_files(ckpt_dir).items():
        for uid, rec in units.items():
            if uid not in out or int(rec["step"]) > int(out[uid][1]["step"]):
                out[uid] = (path, rec)
    return out
