"""Parent specs, child architectures and deployment scenarios (pure Python)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .blocks import AttentionConfig, BlockConfig, FFNConfig
from .errors import ConfigError

__all__ = ["ParentSpec", "Architecture", "Scenario", "DTYPE_BYTES", "load_config_dict", "BlockFormat",
           "register_block_format"]

#: Bytes per element of each supported dtype.
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}

_SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "nemotron-nas", "deci", "puzzle")


@dataclass(frozen=True)
class BlockFormat:
    """A config format that describes each layer's block (Nemotron-NAS ``block_configs``).

    The data model does not import its formats: the module implementing one registers it with
    :func:`register_block_format` when imported (``puzzlekit.nas`` does; ``import puzzlekit`` imports it).
    ``block_dims(d, src)``: the largest KV-head count and intermediate size over the blocks (the parent's
    dimensions); ``read(d, src)``: the :class:`Architecture`; ``write(arch)``: the ``config.json`` dict."""

    name: str
    model_types: tuple[str, ...]
    block_dims: Callable[[Mapping[str, Any], str], tuple[int, int]]
    read: Callable[[Mapping[str, Any], str], Architecture]
    write: Callable[[Architecture], dict[str, Any]]


_BLOCK_FORMAT: list[BlockFormat] = []


def register_block_format(fmt: BlockFormat) -> None:
    """Make ``fmt`` the format :meth:`Architecture.from_config` reads and :meth:`Architecture.save_config` writes."""
    _BLOCK_FORMAT[:] = [fmt]


def _block_format() -> BlockFormat:
    if not _BLOCK_FORMAT:
        raise ConfigError("no per-layer config format is registered; import puzzlekit (it registers Nemotron-NAS)")
    return _BLOCK_FORMAT[0]


def load_config_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A ``config.json`` as a dict, from a dict, a file, or a model folder holding one; a ``.gguf``
    file (or a folder holding one) gives the config in its metadata (nothing dequantized)."""
    from .io import read_json

    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.suffix.lower() == ".gguf" or (path.is_dir() and not (path / "config.json").exists()
                                          and any(path.glob("*.gguf"))):
        from .model.gguf import gguf_config_dict

        return gguf_config_dict(path)
    if path.is_dir():
        path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"{source}: folder has no config.json; pass a model folder or a config.json file")
    d = read_json(path, max_bytes=16 * 1024 * 1024, what="model config.json")
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a config.json must hold a JSON object, got {type(d).__name__}")
    return d


def _rope_scaling_from_parameters(rope_params: Mapping[str, Any]) -> dict[str, Any] | None:
    """transformers >= 5 keeps RoPE scaling in ``rope_parameters`` (with ``rope_theta``); older
    configs in ``rope_scaling``.  Returns the scaling part, or None for plain RoPE."""
    if not rope_params or rope_params.get("rope_type", "default") == "default":
        return None
    return {k: v for k, v in rope_params.items() if k != "rope_theta"}


def _req(d: Mapping[str, Any], key: str, src: str, kind: type = int) -> Any:
    if key not in d or d[key] is None:
        raise ConfigError(f"{src}: missing '{key}'; a Llama-family config.json has it")
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
        raise ConfigError(f"{src}: '{key}' must be a positive integer, got {v!r}")
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
        raise ConfigError(f"{src}: '{key}' must be a positive number, got {v!r}")
    return v


@dataclass(frozen=True)
class ParentSpec:
    """The dimensions of the parent model, read from a Hugging Face ``config.json``.

    ``num_key_value_heads`` and ``intermediate_size`` are the parent's (for a
    Nemotron-NAS config, whose blocks differ, they are the largest found).
    """

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_hidden_layers: int
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    model_type: str = "llama"
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                     "intermediate_size", "vocab_size", "num_hidden_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"parent.{name} must be a positive integer, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"parent.num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name, kinds in (("tie_word_embeddings", bool), ("qkv_bias", bool), ("o_bias", bool), ("mlp_bias", bool),
                            ("model_type", str), ("hidden_act", str)):
            if not isinstance(getattr(self, name), kinds):
                raise ConfigError(f"parent.{name} must be a {kinds.__name__}, got {getattr(self, name)!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < float("inf")):
                raise ConfigError(f"parent.{name} must be a positive number, got {v!r}")
        mpe = self.max_position_embeddings
        if isinstance(mpe, bool) or not isinstance(mpe, int) or mpe <= 0:
            raise ConfigError(f"parent.max_position_embeddings must be a positive integer, got {mpe!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, Mapping):
            raise ConfigError(f"parent.rope_scaling must be an object or null, got {self.rope_scaling!r}")
        sw = self.sliding_window
        if sw is not None and (isinstance(sw, bool) or not isinstance(sw, int) or sw <= 0):
            raise ConfigError(f"parent.sliding_window must be a positive integer or null, got {sw!r}")
        if self.hidden_act != "silu":
            raise ConfigError(f"parent.hidden_act must be 'silu' (SwiGLU FFNs), got {self.hidden_act!r}")

    @property
    def kv_head_options(self) -> list[int]:
        """KV-head counts a GQA block may have: divisors of the query heads."""
        n = self.num_attention_heads
        return [k for k in range(1, n + 1) if n % k == 0]

    @classmethod
    def from_hf_config(cls, source: str | os.PathLike | Mapping[str, Any]) -> ParentSpec:
        """Read a Llama, Mistral, Qwen2 (or Nemotron-NAS) ``config.json`` (dict, file or folder)."""
        src = str(source) if not isinstance(source, Mapping) else "config"
        d = load_config_dict(source)
        mt = d.get("model_type")
        if mt not in _SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{src}: model_type {mt!r} is not supported; puzzlekit reads "
                + ", ".join(repr(m) for m in _SUPPORTED_MODEL_TYPES)
            )
        hidden = _req(d, "hidden_size", src)
        heads = _req(d, "num_attention_heads", src)
        head_dim = d.get("head_dim") or hidden // heads
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
            raise ConfigError(f"{src}: 'head_dim' must be a positive integer, got {head_dim!r}")
        if mt in ("nemotron-nas", "deci", "puzzle"):
            kv, inter = _block_format().block_dims(d, src)
        else:
            kv = d.get("num_key_value_heads") or heads
            inter = _req(d, "intermediate_size", src)
        act = d.get("hidden_act", "silu")
        if mt == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = d.get("attention_bias", False)
        sliding = d.get("sliding_window") if d.get("use_sliding_window", mt == "mistral") else None
        rope_params = d.get("rope_parameters") if isinstance(d.get("rope_parameters"), Mapping) else {}
        try:
            return cls(
                hidden_size=hidden,
                num_attention_heads=heads,
                num_key_value_heads=kv,
                head_dim=head_dim,
                intermediate_size=inter,
                vocab_size=_req(d, "vocab_size", src),
                num_hidden_layers=_req(d, "num_hidden_layers", src),
                tie_word_embeddings=d.get("tie_word_embeddings", False),
                rms_norm_eps=d.get("rms_norm_eps", 1e-5),
                rope_theta=rope_params.get("rope_theta", d.get("rope_theta", 10000.0)),
                rope_scaling=d.get("rope_scaling") or _rope_scaling_from_parameters(rope_params),
                max_position_embeddings=d.get("max_position_embeddings", 4096),
                qkv_bias=qkv_bias,
                o_bias=o_bias,
                mlp_bias=d.get("mlp_bias", False),
                hidden_act=act,
                model_type=mt,
                sliding_window=sliding,
            )
        except ConfigError as e:
            raise ConfigError(f"{src}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "num_hidden_layers": self.num_hidden_layers,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "qkv_bias": self.qkv_bias,
            "o_bias": self.o_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": self.hidden_act,
            "model_type": self.model_type,
            "sliding_window": self.sliding_window,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParentSpec:
        if not isinstance(d, Mapping):
            raise ConfigError(f"parent must be an object, got {d!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            from .errors import did_you_mean

            name = sorted(unknown)[0]
            raise ConfigError(f"parent: unknown field {name!r}; {did_you_mean(name, known)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"parent: {e}") from None

    def parent_block(self) -> BlockConfig:
        """The parent's own (homogeneous) block."""
        return BlockConfig(AttentionConfig.gqa(self.num_key_value_heads), FFNConfig.swiglu(self.intermediate_size))


@dataclass(frozen=True)
class Architecture:
    """A child (or parent) model: one :class:`BlockConfig` per layer plus the parent spec.

    ``extra_config`` keeps the top-level fields of the ``config.json`` it was
    read from, so writing it back preserves fields puzzlekit does not model.
    """

    parent: ParentSpec
    blocks: tuple[BlockConfig, ...]
    extra_config: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.parent, ParentSpec):
            raise ConfigError(f"architecture.parent must be a ParentSpec, got {type(self.parent).__name__}")
        blocks = tuple(self.blocks)
        object.__setattr__(self, "blocks", blocks)
        if not blocks:
            raise ConfigError("architecture must have at least one layer")
        heads = self.parent.num_attention_heads
        for i, b in enumerate(blocks):
            if not isinstance(b, BlockConfig):
                raise ConfigError(f"layer {i}: expected a BlockConfig, got {type(b).__name__}")
            kv = b.attention.num_kv_heads
            if kv is not None and (kv > heads or heads % kv):
                raise ConfigError(
                    f"layer {i}: attention.num_kv_heads={kv} must divide num_attention_heads={heads}; "
                    f"allowed: {self.parent.kv_head_options}"
                )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def homogeneous(cls, parent: ParentSpec, num_layers: int | None = None) -> Architecture:
        """The parent itself: its block repeated ``num_hidden_layers`` times."""
        n = parent.num_hidden_layers if num_layers is None else num_layers
        return cls(parent, (parent.parent_block(),) * n)

    @classmethod
    def from_config(cls, source: str | os.PathLike | Mapping[str, Any]) -> Architecture:
        """Read a Nemotron-NAS / DeciLM config or a plain Llama / Qwen2 / Mistral one (homogeneous)."""
        d = load_config_dict(source)
        if "block_configs" in d:
            return _block_format().read(d, str(source) if not isinstance(source, Mapping) else "config")
        parent = ParentSpec.from_hf_config(d)
        return replace(cls.homogeneous(parent), extra_config=d)

    def with_blocks(self, blocks: Iterable[BlockConfig]) -> Architecture:
        return Architecture(self.parent, tuple(blocks), self.extra_config)

    # ---- views -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> BlockConfig:
        return self.blocks[i]

    def attention_free_runs(self) -> list[tuple[int, int]]:
        """Maximal runs ``(first, last)`` of consecutive layers whose attention is removed."""
        return _runs([b.attention.no_op for b in self.blocks])

    def ffn_runs(self, min_length: int = 2) -> list[tuple[int, int]]:
        """Maximal runs of consecutive FFNs with no attention (GQA or linear) between them.

        A run starts at a layer with an FFN and continues through following layers
        whose attention is removed; no-op FFNs inside a run are skipped over.
        Returned as ``(first_layer, last_layer)`` of layers holding an active FFN.
        """
        runs: list[tuple[int, int]] = []
        cur: list[int] = []
        for i, b in enumerate(self.blocks):
            if not b.attention.no_op and cur:
                if len(cur) >= min_length:
                    runs.append((cur[0], cur[-1]))
                cur = []
            if not b.ffn.no_op:
                cur.append(i)
        if len(cur) >= min_length:
            runs.append((cur[0], cur[-1]))
        return runs

    def to_nemotron_nas(self) -> dict[str, Any]:
        """This architecture as a Nemotron-NAS ``config.json`` dict."""
        return _block_format().write(self)

    def save_config(self, path: str | os.PathLike) -> None:
        """Write the Nemotron-NAS ``config.json`` (atomically)."""
        from .io import atomic_write_json

        atomic_write_json(path, self.to_nemotron_nas(), indent=2)

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent.to_dict(), "blocks": [b.to_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Architecture:
        if not isinstance(d, Mapping) or "parent" not in d or "blocks" not in d:
            raise ConfigError("architecture must be an object with 'parent' and 'blocks'")
        blocks = d["blocks"]
        if not isinstance(blocks, Sequence):
            raise ConfigError("architecture.blocks must be a list")
        return cls(ParentSpec.from_dict(d["parent"]), tuple(BlockConfig.from_dict(b) for b in blocks))

    def summary(self) -> str:
        return json.dumps([b.key for b in self.blocks])


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, f in enumerate(flags):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(flags) - 1))
    return runs


@dataclass(frozen=True)
class Scenario:
    """A deployment point: where and how the child will be served.

    ``prefill`` and ``decode`` are tokens per sequence; ``batch`` sequences run
    together; ``tp`` is the tensor-parallel degree.  ``hardware`` names an entry
    of the profilers' hardware catalogue (e.g. ``"h100-sxm"``, ``"local-cpu"``).
    """

    hardware: str
    dtype: str = "bf16"
    batch: int = 1
    prefill: int = 1024
    decode: int = 128
    tp: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.hardware, str) or not self.hardware:
            raise ConfigError(f"scenario.hardware must be a non-empty name, got {self.hardware!r}")
        if self.dtype not in DTYPE_BYTES:
            raise ConfigError(f"scenario.dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        for name, lo in (("batch", 1), ("prefill", 0), ("decode", 0), ("tp", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"scenario.{name} must be an integer >= {lo}, got {v!r}")
        if self.prefill + self.decode == 0:
            raise ConfigError("scenario: prefill + decode must be at least 1 token")

    @property
    def name(self) -> str:
        """A canonical name, e.g. ``"h100-sxm/fp8/b256/p1000/d200/tp1"``."""
        return f"{self.hardware}/{self.dtype}/b{self.batch}/p{self.prefill}/d{self.decode}/tp{self.tp}"

    @property
    def sequence_length(self) -> int:
        return self.prefill + self.decode

    def to_dict(self) -> dict[str, Any]:
        return {"hardware": self.hardware, "dtype": self.dtype, "batch": self.batch,
                "prefill": self.prefill, "decode": self.decode, "tp": self.tp}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scenario:
        if not isinstance(d, Mapping):
            raise ConfigError(f"scenario must be an object, got {d!r}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            from .errors import did_you_mean

            name = sorted(unknown)[0]
            raise ConfigError(f"scenario: unknown field {name!r}; {did_you_mean(name, cls.__dataclass_fields__)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"scenario: {e}") from None
