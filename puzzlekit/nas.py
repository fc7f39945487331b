"""Nemotron-NAS (DeciLM) ``config.json`` interop.

The format (used by Llama-Nemotron Super/Ultra; read by vLLM, TensorRT-LLM, SGLang and
llama.cpp's converter) describes each layer in ``block_configs``:

* ``attention``: ``n_heads_in_group`` (query heads per KV head), ``no_op``,
  ``replace_with_linear``, and sparse / sink fields we keep at their defaults;
* ``ffn``: ``ffn_mult``, ``no_op``, ``replace_with_linear``, ``sparsify``.

``ffn_mult`` maps to an intermediate size with the serving engines' rounding:
``int(2 * ffn_mult * hidden / 3)`` rounded up to a multiple of 256.  Export writes
``ffn_mult`` whenever it reproduces the size exactly (every multiple of 256).  A width that is
not a multiple of 256 has no ``ffn_mult``: it is written as ``intermediate_size`` *instead of*
``ffn_mult`` (no ``"ffn_mult": null`` beside it).  Only vLLM reads it, and only when the FFN
object has no ``ffn_mult`` attribute (``DeciLMDecoderLayer.__init__`` in vLLM's
``nemotron_nas.py``); SGLang, TensorRT-LLM and llama.cpp's ``convert_hf_to_gguf.py`` read
``ffn_mult`` only (``puzzlekit.engines`` has the table).  Nothing is silently rounded.  No-op and
linear FFNs keep ``"ffn_mult": null`` as NVIDIA's configs do (llama.cpp's converter indexes that key).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .architecture import Architecture, BlockFormat, ParentSpec, register_block_format
from .blocks import AttentionConfig, BlockConfig, FFNConfig
from .errors import ConfigError

__all__ = [
    "ffn_mult_to_intermediate_size",
    "intermediate_size_to_ffn_mult",
    "read_nemotron_nas",
    "write_nemotron_nas",
    "NonMultipleWarning",
]

_ATT_DEFAULTS = {
    "n_heads_in_group": None,
    "no_op": False,
    "num_sink_tokens": None,
    "replace_with_linear": False,
    "sparsify": None,
    "unshifted_sink": False,
    "use_prefill_window_in_sink_attention": False,
    "window_length": None,
}
_FFN_DEFAULTS = {"ffn_mult": None, "no_op": False, "replace_with_linear": False, "sparsify": None}
#: ``auto_map`` of an exported checkpoint: our config class, written beside ``config.json``
#: (``puzzlekit/export/configuration_decilm.py``); puzzlekit's own loaders never import it.
AUTO_MAP = {"AutoConfig": "configuration_decilm.DeciLMConfig"}
_UNSUPPORTED_ATT = ("num_sink_tokens", "sparsify", "window_length", "unshifted_sink",
                    "use_prefill_window_in_sink_attention")


class NonMultipleWarning(UserWarning):
    """An intermediate size has no exact ``ffn_mult``; ``intermediate_size`` was written instead."""


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """The serving engines' rounding: ``int(2·ffn_mult·hidden/3)`` up to a multiple of 256."""
    return _find_multiple(int(2 * ffn_mult * hidden_size / 3), 256)


def intermediate_size_to_ffn_mult(intermediate_size: int, hidden_size: int) -> float | None:
    """The shortest decimal ``ffn_mult`` reproducing ``intermediate_size`` exactly, or None."""
    if intermediate_size % 256:
        return None
    exact = 1.5 * intermediate_size / hidden_size
    for digits in range(0, 12):
        m = round(exact, digits)
        if m > 0 and ffn_mult_to_intermediate_size(m, hidden_size) == intermediate_size:
            return m
    if ffn_mult_to_intermediate_size(exact, hidden_size) == intermediate_size:
        return exact
    return None


def _as_bool(v: Any, where: str) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ConfigError(f"{where} must be true or false, got {v!r}")
    return v


def _read_attention(a: Mapping[str, Any], heads: int, where: str) -> AttentionConfig:
    if not isinstance(a, Mapping):
        raise ConfigError(f"{where} must be an object, got {a!r}")
    for k in _UNSUPPORTED_ATT:
        if a.get(k) not in (None, False):
            raise ConfigError(
                f"{where}.{k}={a[k]!r}: sparse / windowed / sink attention is not supported; "
                "puzzlekit models full attention only"
            )
    if _as_bool(a.get("no_op"), f"{where}.no_op"):
        return AttentionConfig.make_no_op()
    if _as_bool(a.get("replace_with_linear"), f"{where}.replace_with_linear"):
        return AttentionConfig.make_linear()
    kv = a.get("num_key_value_heads")
    g = a.get("n_heads_in_group")
    if kv is None:
        if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or heads % g:
            raise ConfigError(
                f"{where}.n_heads_in_group must be a positive divisor of num_attention_heads={heads}, got {g!r}"
            )
        kv = heads // g
    return AttentionConfig.gqa(kv)


def _read_ffn(f: Mapping[str, Any], hidden: int, where: str) -> FFNConfig:
    if not isinstance(f, Mapping):
        raise ConfigError(f"{where} must be an object, got {f!r}")
    if f.get("sparsify") not in (None, False):
        raise ConfigError(f"{where}.sparsify={f['sparsify']!r}: sparse FFNs are not supported")
    if _as_bool(f.get("no_op"), f"{where}.no_op"):
        return FFNConfig.make_no_op()
    if _as_bool(f.get("replace_with_linear"), f"{where}.replace_with_linear"):
        return FFNConfig.make_linear()
    if f.get("intermediate_size") is not None:
        size = f["intermediate_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigError(f"{where}.intermediate_size must be a positive integer, got {size!r}")
        return FFNConfig.swiglu(size)
    m = f.get("ffn_mult")
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0 or m != m or m == float("inf"):
        raise ConfigError(f"{where}.ffn_mult must be a positive number (or set intermediate_size), got {m!r}")
    return FFNConfig.swiglu(ffn_mult_to_intermediate_size(float(m), hidden))


def _block_configs(d: Mapping[str, Any], src: str) -> list:
    bcs = d.get("block_configs")
    if not isinstance(bcs, list) or not bcs:
        raise ConfigError(f"{src}: 'block_configs' must be a non-empty list of {{attention, ffn}} objects")
    return bcs


def nas_blocks(d: Mapping[str, Any], src: str = "config") -> list[BlockConfig]:
    """The per-layer blocks of a Nemotron-NAS config dict."""
    hidden, heads = d.get("hidden_size"), d.get("num_attention_heads")
    for name, v in (("hidden_size", hidden), ("num_attention_heads", heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"{src}: '{name}' must be a positive integer, got {v!r}")
    out = []
    for i, bc in enumerate(_block_configs(d, src)):
        where = f"{src}: block_configs[{i}]"
        if not isinstance(bc, Mapping) or "attention" not in bc or "ffn" not in bc:
            raise ConfigError(f"{where} must be an object with 'attention' and 'ffn'")
        out.append(BlockConfig(_read_attention(bc["attention"], heads, where + ".attention"),
                               _read_ffn(bc["ffn"], hidden, where + ".ffn")))
    return out


def nas_block_dims(d: Mapping[str, Any], src: str = "config") -> tuple[int, int]:
    """Largest KV-head count and intermediate size over a Nemotron-NAS config's blocks.

    Used as the ``ParentSpec`` of a model whose parent is not given; a config
    with no GQA block or no SwiGLU FFN falls back to the query heads / 4·hidden.
    """
    blocks = nas_blocks(d, src)
    kvs = [b.attention.num_kv_heads for b in blocks if b.attention.num_kv_heads]
    sizes = [b.ffn.intermediate_size for b in blocks if b.ffn.intermediate_size]
    heads = d["num_attention_heads"]
    kv = max(kvs) if kvs else heads
    # the parent KV count must divide the query heads; the largest block value always does
    return kv, max(sizes) if sizes else 4 * d["hidden_size"]


def read_nemotron_nas(d: Mapping[str, Any], source: str = "config") -> Architecture:
    """A Nemotron-NAS / DeciLM config dict as an :class:`~puzzlekit.Architecture`."""
    blocks = nas_blocks(d, source)
    n = d.get("num_hidden_layers")
    if n is not None and n != len(blocks):
        raise ConfigError(f"{source}: num_hidden_layers={n} but block_configs has {len(blocks)} entries; make them agree")
    parent = ParentSpec.from_hf_config(d)
    return Architecture(parent, tuple(blocks), extra_config=dict(d))


def write_nemotron_nas(arch) -> dict[str, Any]:
    """An architecture as a Nemotron-NAS ``config.json`` dict.

    Top-level fields of the config it was read from are preserved; the fields
    puzzlekit owns (dimensions, ``block_configs``, ``model_type``…) are rewritten.
    Sizes with no exact ``ffn_mult`` are written as ``intermediate_size`` and the
    layers are named in a :class:`NonMultipleWarning`.
    """
    p = arch.parent
    out: dict[str, Any] = dict(arch.extra_config)
    out.update(
        {
            "architectures": ["DeciLMForCausalLM"],
            "model_type": "nemotron-nas",
            "hidden_size": p.hidden_size,
            "num_attention_heads": p.num_attention_heads,
            "num_hidden_layers": arch.num_layers,
            "vocab_size": p.vocab_size,
            "intermediate_size": None,
            "num_key_value_heads": None,
            "hidden_act": p.hidden_act,
            "rms_norm_eps": p.rms_norm_eps,
            "rope_theta": p.rope_theta,
            "rope_scaling": dict(p.rope_scaling) if p.rope_scaling else None,
            "max_position_embeddings": p.max_position_embeddings,
            "tie_word_embeddings": p.tie_word_embeddings,
            "attention_bias": p.qkv_bias,
            "mlp_bias": p.mlp_bias,
        }
    )
    if p.head_dim != p.hidden_size // p.num_attention_heads:
        out["head_dim"] = p.head_dim
    if p.qkv_bias != p.o_bias:
        raise ConfigError(
            "Nemotron-NAS has one 'attention_bias' flag for q/k/v/o; a parent with bias on q/k/v only "
            f"(model_type {p.model_type!r}, e.g. Qwen2) cannot be exported to it"
        )
    needs_size: list[int] = []
    bcs = []
    for i, b in enumerate(arch.blocks):
        att = dict(_ATT_DEFAULTS)
        if b.attention.no_op:
            att["no_op"] = True
        elif b.attention.linear:
            att["replace_with_linear"] = True
        else:
            att["n_heads_in_group"] = p.num_attention_heads // b.attention.num_kv_heads
        ffn = dict(_FFN_DEFAULTS)
        if b.ffn.no_op:
            ffn["no_op"] = True
        elif b.ffn.linear:
            ffn["replace_with_linear"] = True
        else:
            m = intermediate_size_to_ffn_mult(b.ffn.intermediate_size, p.hidden_size)
            if m is None:  # no "ffn_mult": null beside it: vLLM would take the null for the width
                needs_size.append(i)
                del ffn["ffn_mult"]
                ffn["intermediate_size"] = b.ffn.intermediate_size
            else:
                ffn["ffn_mult"] = m
        bcs.append({"attention": att, "ffn": ffn})
    out["block_configs"] = bcs
    if needs_size:
        warnings.warn(
            f"layers {needs_size}: intermediate sizes not a multiple of 256 have no exact ffn_mult; "
            "wrote ffn.intermediate_size, which vLLM and transformers + puzzlekit read (SGLang, TensorRT-LLM and "
            "llama.cpp's converter read ffn_mult only; puzzlekit's GGUF export takes any width)",
            NonMultipleWarning,
            stacklevel=2,
        )
    return out


register_block_format(BlockFormat("nemotron-nas", ("nemotron-nas", "deci", "puzzle"), nas_block_dims,
                                  read_nemotron_nas, write_nemotron_nas))
