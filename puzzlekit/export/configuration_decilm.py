# Copyright puzzlekit developers. Licensed under the Apache License, Version 2.0.
"""Nemotron-NAS (DeciLM) config class, written by puzzlekit beside an exported ``config.json``.

Serving engines resolve a ``model_type: "nemotron-nas"`` checkpoint with transformers' ``AutoConfig``,
remote code allowed, which imports this file through the config's ``auto_map``, and then read ``config.block_configs[i].attention.no_op`` (and the
other block fields) as attributes: vLLM and SGLang (``nemotron_nas.py``), TensorRT-LLM
(``modeling_nemotron_nas.py``, ``dataclasses.asdict`` in ``nemotron_nas/convert.py``).

Each entry of ``block_configs`` becomes a dataclass.  An FFN written with ``ffn_mult`` has that
attribute; an FFN written with ``intermediate_size`` (a width that is not a multiple of 256) has
``intermediate_size`` and no ``ffn_mult`` attribute, which is how vLLM tells the two apart.

This module imports only ``dataclasses`` and ``transformers``; puzzlekit itself never imports it
when loading a model (it reads ``config.json`` as data).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig


def _check_keys(cls: type, d: dict, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"block_configs {where}: unknown keys {unknown}; known: {sorted(known)}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """One layer's attention: GQA (``n_heads_in_group`` query heads per KV head), linear or no-op."""

    no_op: bool = False
    replace_with_linear: bool = False
    n_heads_in_group: int | None = None
    sparsify: list | None = None
    num_sink_tokens: int | None = None
    window_length: int | None = None
    unshifted_sink: bool = False
    use_prefill_window_in_sink_attention: bool = False


@dataclasses.dataclass(frozen=True)
class FFNConfig:
    """One layer's FFN: SwiGLU of width ``ffn_mult`` (engines round ``int(2*m*hidden/3)`` up to 256), linear or no-op."""

    no_op: bool = False
    replace_with_linear: bool = False
    ffn_mult: float | None = None
    sparsify: list | None = None


@dataclasses.dataclass(frozen=True)
class FFNConfigWithSize:
    """A SwiGLU FFN whose width has no exact ``ffn_mult`` (not a multiple of 256): ``intermediate_size``."""

    intermediate_size: int
    no_op: bool = False
    replace_with_linear: bool = False
    sparsify: list | None = None


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One layer: ``attention`` then ``ffn``."""

    attention: AttentionConfig
    ffn: Any

    @classmethod
    def from_dict(cls, d: Any, i: int) -> BlockConfig:
        if isinstance(d, BlockConfig):
            return d
        if not isinstance(d, dict) or not isinstance(d.get("attention"), dict) or not isinstance(d.get("ffn"), dict):
            raise ValueError(f"block_configs[{i}] must be {{'attention': {{...}}, 'ffn': {{...}}}}, got {d!r}")
        extra = sorted(set(d) - {"attention", "ffn"})
        if extra:
            raise ValueError(f"block_configs[{i}]: unknown keys {extra}")
        a, f = dict(d["attention"]), dict(d["ffn"])
        _check_keys(AttentionConfig, a, f"[{i}].attention")
        ffn_cls = FFNConfigWithSize if f.get("intermediate_size") is not None else FFNConfig
        if ffn_cls is FFNConfigWithSize:
            f.pop("ffn_mult", None)
        else:
            f.pop("intermediate_size", None)
        _check_keys(ffn_cls, f, f"[{i}].ffn")
        return cls(AttentionConfig(**a), ffn_cls(**f))


class DeciLMConfig(PretrainedConfig):
    """A Llama-family config with one ``block_configs`` entry per layer (Nemotron-NAS / DeciLM)."""

    model_type = "nemotron-nas"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, block_configs=None, **kwargs):
        # transformers 5 turns the legacy RoPE keys into ``rope_parameters``; the engines read
        # ``rope_theta`` / ``rope_scaling`` (SGLang, TensorRT-LLM) or ``rope_parameters`` (vLLM), so keep all three
        rope_theta = kwargs.pop("rope_theta", 10000.0)
        rope_scaling = kwargs.pop("rope_scaling", None)
        kwargs.pop("rope_parameters", None)
        blocks = [BlockConfig.from_dict(b, i) for i, b in enumerate(block_configs or [])]
        super().__init__(**kwargs)
        if blocks and getattr(self, "num_hidden_layers", len(blocks)) != len(blocks):
            raise ValueError(f"num_hidden_layers={self.num_hidden_layers} but block_configs has {len(blocks)} entries")
        self.block_configs = blocks
        rope = dict(rope_scaling or {"rope_type": "default"})
        rope.setdefault("rope_type", rope.pop("type", "default"))
        rope["rope_theta"] = rope_theta
        self.rope_parameters = rope
        self.rope_theta = rope_theta
        if not isinstance(getattr(type(self), "rope_scaling", None), property):
            self.rope_scaling = rope_scaling  # transformers < 5; in 5.x it is a view of rope_parameters
        for name in ("intermediate_size", "num_key_value_heads"):  # per layer in block_configs
            if not hasattr(self, name):
                setattr(self, name, None)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["block_configs"] = [_block_to_dict(b) for b in self.block_configs]
        rope = dict(d.pop("rope_parameters", None) or self.rope_parameters or {})
        # written as rope_theta / rope_scaling, as in the published checkpoints
        d["rope_theta"] = rope.pop("rope_theta", self.rope_theta)
        d["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
        return d


def _block_to_dict(b: Any) -> dict:
    if isinstance(b, dict):
        return b
    return {"attention": dataclasses.asdict(b.attention), "ffn": dataclasses.asdict(b.ffn)}
