"""Block configurations: what one layer of a child model computes.

A layer is an attention sub-block followed by an FFN sub-block, each on the
residual stream (``x = x + attn(norm(x)); x = x + ffn(norm(x))``).  Each
sub-block is one of three kinds:

* attention: ``gqa`` (grouped-query attention with ``num_kv_heads`` KV heads),
  ``linear`` (one H×H matrix, no mixing across tokens), ``no_op`` (removed);
* FFN: ``swiglu`` (SwiGLU MLP with ``intermediate_size``; fused wide FFNs
  are SwiGLU FFNs too), ``linear`` (one H×H matrix), ``no_op`` (removed).

Configs are frozen, hashable and validated: an invalid value raises a
:class:`~puzzlekit.errors.ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["AttentionConfig", "FFNConfig", "BlockConfig"]


def _check_bool(obj: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{obj}.{name} must be true or false, got {value!r}")


def _check_pos_int(obj: str, name: str, value: Any, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{obj}.{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True, order=True)
class AttentionConfig:
    """The attention sub-block of a layer.

    Exactly one of: ``num_kv_heads`` (GQA), ``linear=True``, ``no_op=True``.
    """

    num_kv_heads: int | None = None
    linear: bool = False
    no_op: bool = False

    def __post_init__(self) -> None:
        _check_bool("attention", "linear", self.linear)
        _check_bool("attention", "no_op", self.no_op)
        if self.num_kv_heads is not None:
            _check_pos_int("attention", "num_kv_heads", self.num_kv_heads, "a positive integer (or null for linear / no_op)")
        chosen = (self.num_kv_heads is not None) + self.linear + self.no_op
        if chosen != 1:
            raise ConfigError(
                "attention: set exactly one of num_kv_heads (GQA), linear=true or no_op=true; "
                f"got num_kv_heads={self.num_kv_heads!r}, linear={self.linear}, no_op={self.no_op}"
            )

    @classmethod
    def gqa(cls, num_kv_heads: int) -> AttentionConfig:
        """Grouped-query attention with ``num_kv_heads`` KV heads."""
        return cls(num_kv_heads=num_kv_heads)

    @classmethod
    def make_linear(cls) -> AttentionConfig:
        """Attention replaced by one H×H linear layer (``W_o·W_v`` at init)."""
        return cls(linear=True)

    @classmethod
    def make_no_op(cls) -> AttentionConfig:
        """Attention removed (no norm, no weights, no KV cache)."""
        return cls(no_op=True)

    @property
    def kind(self) -> str:
        """``"gqa"``, ``"linear"`` or ``"no_op"``."""
        return "no_op" if self.no_op else "linear" if self.linear else "gqa"

    @property
    def has_kv_cache(self) -> bool:
        return self.kind == "gqa"

    def short(self) -> str:
        return f"gqa:{self.num_kv_heads}" if self.kind == "gqa" else self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_kv_heads": self.num_kv_heads}

    @classmethod
    def from_dict(cls, d: Any) -> AttentionConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"attention must be an object like {{'kind': 'gqa', 'num_kv_heads': 8}}, got {d!r}")
        kind = d.get("kind", "gqa" if d.get("num_kv_heads") is not None else None)
        if kind == "gqa":
            return cls(num_kv_heads=d.get("num_kv_heads"))
        if kind == "linear":
            return cls(linear=True)
        if kind == "no_op":
            return cls(no_op=True)
        raise ConfigError(f"attention.kind must be one of 'gqa', 'linear', 'no_op', got {kind!r}")


@dataclass(frozen=True, order=True)
class FFNConfig:
    """The FFN sub-block of a layer.

    Exactly one of: ``intermediate_size`` (SwiGLU), ``linear=True``, ``no_op=True``.
    """

    intermediate_size: int | None = None
    linear: bool = False
    no_op: bool = False

    def __post_init__(self) -> None:
        _check_bool("ffn", "linear", self.linear)
        _check_bool("ffn", "no_op", self.no_op)
        if self.intermediate_size is not None:
            _check_pos_int("ffn", "intermediate_size", self.intermediate_size, "a positive integer (or null for linear / no_op)")
        chosen = (self.intermediate_size is not None) + self.linear + self.no_op
        if chosen != 1:
            raise ConfigError(
                "ffn: set exactly one of intermediate_size (SwiGLU), linear=true or no_op=true; "
                f"got intermediate_size={self.intermediate_size!r}, linear={self.linear}, no_op={self.no_op}"
            )

    @classmethod
    def swiglu(cls, intermediate_size: int) -> FFNConfig:
        """A SwiGLU FFN with the given intermediate size."""
        return cls(intermediate_size=intermediate_size)

    @classmethod
    def make_linear(cls) -> FFNConfig:
        """FFN replaced by one H×H linear layer (``W_down·W_up`` at init)."""
        return cls(linear=True)

    @classmethod
    def make_no_op(cls) -> FFNConfig:
        """FFN removed (no norm, no weights)."""
        return cls(no_op=True)

    @property
    def kind(self) -> str:
        """``"swiglu"``, ``"linear"`` or ``"no_op"``."""
        return "no_op" if self.no_op else "linear" if self.linear else "swiglu"

    def short(self) -> str:
        return f"ffn:{self.intermediate_size}" if self.kind == "swiglu" else self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "intermediate_size": self.intermediate_size}

    @classmethod
    def from_dict(cls, d: Any) -> FFNConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"ffn must be an object like {{'kind': 'swiglu', 'intermediate_size': 14336}}, got {d!r}")
        kind = d.get("kind", "swiglu" if d.get("intermediate_size") is not None else None)
        if kind == "swiglu":
            return cls(intermediate_size=d.get("intermediate_size"))
        if kind == "linear":
            return cls(linear=True)
        if kind == "no_op":
            return cls(no_op=True)
        raise ConfigError(f"ffn.kind must be one of 'swiglu', 'linear', 'no_op', got {kind!r}")


@dataclass(frozen=True, order=True)
class BlockConfig:
    """One layer: an attention sub-block then an FFN sub-block."""

    attention: AttentionConfig
    ffn: FFNConfig

    def __post_init__(self) -> None:
        if not isinstance(self.attention, AttentionConfig):
            raise ConfigError(f"block.attention must be an AttentionConfig, got {type(self.attention).__name__}")
        if not isinstance(self.ffn, FFNConfig):
            raise ConfigError(f"block.ffn must be an FFNConfig, got {type(self.ffn).__name__}")

    @property
    def key(self) -> str:
        """A canonical string naming the block, e.g. ``"attn=gqa:8|ffn=ffn:14336"``."""
        return f"attn={self.attention.short()}|ffn={self.ffn.short()}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def from_key(cls, key: str) -> BlockConfig:
        """Parse :attr:`key` back into a block (a :class:`BlockConfig` is returned as it is)."""
        if isinstance(key, BlockConfig):
            return key
        try:
            a, f = key.split("|")
            a = a.removeprefix("attn=")
            f = f.removeprefix("ffn=")
            if a.startswith("gqa:"):
                att = AttentionConfig.gqa(int(a[4:]))
            elif a in ("linear", "no_op"):
                att = AttentionConfig(linear=a == "linear", no_op=a == "no_op")
            else:
                raise ValueError(a)
            if f.startswith("ffn:"):
                ffn = FFNConfig.swiglu(int(f[4:]))
            elif f in ("linear", "no_op"):
                ffn = FFNConfig(linear=f == "linear", no_op=f == "no_op")
            else:
                raise ValueError(f)
        except (ValueError, AttributeError):
            raise ConfigError(
                f"block key {key!r} is not of the form 'attn=gqa:N|ffn=ffn:N' (or linear / no_op for either part)"
            ) from None
        return cls(att, ffn)

    def to_dict(self) -> dict[str, Any]:
        return {"attention": self.attention.to_dict(), "ffn": self.ffn.to_dict()}

    @classmethod
    def from_dict(cls, d: Any) -> BlockConfig:
        if not isinstance(d, dict) or "attention" not in d or "ffn" not in d:
            raise ConfigError(f"block must be an object with 'attention' and 'ffn', got {d!r}")
        return cls(AttentionConfig.from_dict(d["attention"]), FFNConfig.from_dict(d["ffn"]))
