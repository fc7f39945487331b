"""The BLD search space: which attention and FFN variants each layer gets (pure Python)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..architecture import ParentSpec
from ..blocks import AttentionConfig, BlockConfig, FFNConfig
from ..errors import ConfigError

__all__ = ["SearchSpace", "default_search_space", "FFN_FRACTIONS"]

#: FFN widths of the Puzzle search space, as fractions of the parent's (Puzzle, arXiv 2411.19146, search space:
#: 100, 87.5, 75, 50, 25, 20 and 10 % of the parent's intermediate size, plus linear and no-op).
FFN_FRACTIONS = (1.0, 0.875, 0.75, 0.5, 0.25, 0.2, 0.1)


@dataclass(frozen=True)
class SearchSpace:
    """Attention and FFN variants, the same for every layer unless ``layers`` limits them.

    ``layers``: the parent layers that get candidates (default: all).
    """

    attention: tuple[AttentionConfig, ...]
    ffn: tuple[FFNConfig, ...]
    layers: tuple[int, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        att, ffn = tuple(self.attention), tuple(self.ffn)
        object.__setattr__(self, "attention", tuple(dict.fromkeys(att)))
        object.__setattr__(self, "ffn", tuple(dict.fromkeys(ffn)))
        if not att or not ffn:
            raise ConfigError("search space: give at least one attention and one FFN variant")
        for a in att:
            if not isinstance(a, AttentionConfig):
                raise ConfigError(f"search space: attention variants must be AttentionConfig, got {a!r}")
        for f in ffn:
            if not isinstance(f, FFNConfig):
                raise ConfigError(f"search space: FFN variants must be FFNConfig, got {f!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(sorted(set(int(i) for i in self.layers))))

    def check(self, spec: ParentSpec) -> None:
        """Raise a :class:`ConfigError` if a variant does not fit the parent."""
        for a in self.attention:
            if a.num_kv_heads is not None and a.num_kv_heads not in spec.kv_head_options:
                raise ConfigError(f"search space: num_kv_heads={a.num_kv_heads} must divide the parent's "
                                  f"{spec.num_attention_heads} query heads; allowed {spec.kv_head_options}")
        for i in self.layer_list(spec):
            if not 0 <= i < spec.num_hidden_layers:
                raise ConfigError(f"search space: layer {i} is outside the parent's {spec.num_hidden_layers} layers")

    def layer_list(self, spec: ParentSpec) -> list[int]:
        return list(self.layers) if self.layers is not None else list(range(spec.num_hidden_layers))

    def blocks(self) -> list[BlockConfig]:
        """Every (attention, FFN) combination, attention-major."""
        return [BlockConfig(a, f) for a in self.attention for f in self.ffn]

    def to_dict(self) -> dict[str, Any]:
        return {"attention": [a.to_dict() for a in self.attention], "ffn": [f.to_dict() for f in self.ffn],
                "layers": list(self.layers) if self.layers is not None else None}

    @classmethod
    def from_dict(cls, d: Any) -> SearchSpace:
        if not isinstance(d, Mapping) or "attention" not in d or "ffn" not in d:
            raise ConfigError("search space must be an object with 'attention' and 'ffn' lists")
        return cls(tuple(AttentionConfig.from_dict(a) for a in d["attention"]),
                   tuple(FFNConfig.from_dict(f) for f in d["ffn"]), d.get("layers"))


def default_search_space(
    spec: ParentSpec,
    *,
    ffn_fractions: Sequence[float] = FFN_FRACTIONS,
    kv_heads: Sequence[int] | None = None,
    linear: bool = True,
    no_op: bool = True,
    multiple_of: int = 8,
    layers: Sequence[int] | None = None,
) -> SearchSpace:
    """The Puzzle space scaled to ``spec``: GQA with the parent's KV heads halved down to 1,
    linear and no-op attention; FFN widths ``ffn_fractions`` of the parent's (rounded up to a
    multiple of ``multiple_of``), linear and no-op FFN."""
    if kv_heads is None:
        kv, opts = spec.num_key_value_heads, []
        while kv >= 1:
            if kv in spec.kv_head_options:
                opts.append(kv)
            kv //= 2
        kv_heads = opts
    att = [AttentionConfig.gqa(int(k)) for k in kv_heads]
    if linear:
        att.append(AttentionConfig.make_linear())
    if no_op:
        att.append(AttentionConfig.make_no_op())
    widths: list[int] = []
    for frac in ffn_fractions:
        if not 0 < frac <= 1:
            raise ConfigError(f"ffn_fractions: {frac} must be in (0, 1]")
        w = spec.intermediate_size if frac == 1 else min(
            spec.intermediate_size, multiple_of * math.ceil(frac * spec.intermediate_size / multiple_of))
        if w not in widths:
            widths.append(w)
    ffn = [FFNConfig.swiglu(w) for w in widths]
    if linear:
        ffn.append(FFNConfig.make_linear())
    if no_op:
        ffn.append(FFNConfig.make_no_op())
    return SearchSpace(tuple(att), tuple(ffn), tuple(layers) if layers is not None else None)
