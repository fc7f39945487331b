"""BLD's units of work and their planning: one :class:`Unit` per trained sub-block (or pair) of a layer,
the units of a mode (:func:`plan_units`), layer groups that fit a memory budget (:func:`plan_groups`),
and the hybrid mode's second phase (the best sub-blocks of phase 1, paired)."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..blocks import AttentionConfig, BlockConfig, FFNConfig
from ..model.placement import device_of
from ..rundir import RunDir
from .space import SearchSpace

__all__ = ["Unit", "KIND", "plan_units", "plan_groups", "layer_memory", "layer_devices"]

#: The journal kind of a unit's records.
KIND = "bld-unit"
_NO_ATT = AttentionConfig.make_no_op()
_NO_FFN = FFNConfig.make_no_op()


@dataclass(frozen=True)
class Unit:
    """One training job: a sub-block (or pair) of one layer.

    ``kind`` is ``"attn"`` (block = variant + no-op FFN), ``"ffn"`` (no-op attention + variant)
    or ``"pair"`` (the whole candidate layer).
    """

    kind: str
    layer: int
    block: BlockConfig

    @property
    def id(self) -> str:
        return f"L{self.layer:03d}/{self.kind}/{self.variant_key}"

    @property
    def variant_key(self) -> str:
        if self.kind == "attn":
            return f"attn={self.block.attention.short()}"
        if self.kind == "ffn":
            return f"ffn={self.block.ffn.short()}"
        return self.block.key

    @property
    def short(self) -> str:
        """A compact label for progress bars (``3a:gqa1``, ``3f:ffn64``)."""
        v = self.variant_key.replace("attn=", "a:").replace("ffn=ffn:", "f").replace("ffn=", "f:").replace("|", "")
        return f"{self.layer}{v.replace('gqa:', 'gqa')}"

    @property
    def filename(self) -> str:
        return _safe_name(f"L{self.layer:03d}-{self.kind}-{self.variant_key}") + ".safetensors"

    def seed(self, base: int) -> int:
        return (zlib.crc32(self.id.encode()) ^ (int(base) * 0x9E3779B1)) & 0x7FFFFFFF


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s.replace("|", "__").replace("=", "-").replace(":", ""))


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s.replace("|", "__").replace("=", "-").replace(":", ""))


# ---- planning -----------------------------------------------------------------------------------
def layer_devices(parent: Any) -> dict[int, Any]:
    """Layer index -> the device of its parameters (a parent placed over several devices)."""
    return {i: device_of(layer) for i, layer in enumerate(parent.model.layers)}


def plan_units(space: SearchSpace, parent_block: BlockConfig, mode: str, layers: Sequence[int]) -> list[Unit]:
    """The phase-1 units of ``mode`` (hybrid: its decoupled phase)."""
    units: list[Unit] = []
    for i in layers:
        if mode in ("decoupled", "hybrid"):
            units += [Unit("attn", i, BlockConfig(a, _NO_FFN)) for a in space.attention]
            units += [Unit("ffn", i, BlockConfig(_NO_ATT, f)) for f in space.ffn]
        else:
            units += [Unit("pair", i, b) for b in space.blocks()]
    return units


def _unit_params(unit: Unit, spec: Any) -> int:
    from ..accounting import attention_params, ffn_params

    return attention_params(spec, unit.block.attention) + ffn_params(spec, unit.block.ffn)


def layer_memory(units: Sequence[Unit], spec: Any, cfg: Any, seq_len: int) -> dict[int, float]:
    """Estimated bytes per layer while its units train: the parent's ``x, h, y`` for a training batch
    and the held-out set, and per unit its weights, gradients and two AdamW moments plus its backward
    activations."""
    H = spec.hidden_size
    tok = cfg.batch_size * seq_len
    per_layer: dict[int, float] = {}
    for i in sorted({u.layer for u in units}):
        b = 3 * (tok + cfg.eval_sequences * seq_len) * H * 4
        for u in units:
            if u.layer == i:
                width = (u.block.ffn.intermediate_size or H) + H * 4
                b += 16 * _unit_params(u, spec) + tok * width * 4 * 3
        per_layer[i] = b
    return per_layer


def plan_groups(units: Sequence[Unit], spec: Any, cfg: Any, seq_len: int,
                devices: Mapping[int, Any] | None = None) -> list[list[int]]:
    """Layers trained together, so that activations + unit states (:func:`layer_memory`) fit
    ``cfg.max_memory_gb``.  ``devices`` (layer -> device, a parent placed over several): the budget
    holds per device."""
    layers = sorted({u.layer for u in units})
    if cfg.max_memory_gb is None:
        return [layers] if layers else []
    per_layer = layer_memory(units, spec, cfg, seq_len)
    budget = cfg.max_memory_gb * 2**30
    groups: list[list[int]] = []
    cur: list[int] = []
    used: dict[str, float] = {}
    for i in layers:
        d = str((devices or {}).get(i))
        if cur and used.get(d, 0.0) + per_layer[i] > budget:
            groups.append(cur)
            cur, used = [], {}
        cur.append(i)
        used[d] = used.get(d, 0.0) + per_layer[i]
    if cur:
        groups.append(cur)
    return groups


def _hybrid_pairs(run: RunDir, layers: list[int], space: SearchSpace, keep: int) -> list[Unit]:
    st = run.journal.states(KIND)
    pairs: list[Unit] = []
    for i in layers:
        def best(kind: str, variants: Sequence[Any], key: Any, i: int = i) -> list[Any]:
            scored = []
            for v in variants:
                u = Unit(kind, i, key(v))
                rec = st.get(u.id, {})
                scored.append((float(rec.get("metrics", {}).get("bld_nmse", math.inf)), str(v), v))
            return [v for _, _, v in sorted(scored)[:keep]]

        atts = best("attn", space.attention, lambda a: BlockConfig(a, _NO_FFN))
        ffns = best("ffn", space.ffn, lambda f: BlockConfig(_NO_ATT, f))
        pairs += [Unit("pair", i, BlockConfig(a, f)) for a in atts for f in ffns]
    return pairs


