"""Load a parent (Llama, Qwen2, Mistral, or a Nemotron-NAS child) as a :class:`PuzzleForCausalLM`.

A ``.gguf`` file (or a folder holding one) is dequantized once into a cached model folder
(:mod:`puzzlekit.model.gguf`) and loaded from there.

The Llama-family weight names are ours already (``model.layers.{i}.self_attn.q_proj.weight``…),
so loading is a name-checked copy.  A folder is loaded without materialising the model twice:
the model is built on the meta device (accelerate's ``init_empty_weights``) and each tensor of
each safetensors shard is read (memory-mapped) and placed into it one at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..architecture import Architecture, load_config_dict
from ..errors import ConfigError, UnsafeInputError
from ..io import resolve_inside
from .modeling import PuzzleConfig, PuzzleForCausalLM

__all__ = ["load_parent", "puzzle_config_from_hf", "checkpoint_files", "empty_model", "load_state_into"]

log = logging.getLogger(__name__)

_PASSTHROUGH = ("bos_token_id", "eos_token_id", "pad_token_id")
_IGNORED_KEYS = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


def _rope_parameters(d: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE settings of a config dict, from transformers 5's ``rope_parameters`` or the legacy
    ``rope_scaling`` + ``rope_theta`` (llama3 scaling included)."""
    rp = d.get("rope_parameters")
    if isinstance(rp, Mapping) and rp:
        rope = dict(rp)
    else:
        rope = dict(d.get("rope_scaling") or {})
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope.setdefault("rope_theta", float(d.get("rope_theta", 10000.0)))
    if rope["rope_type"] in ("llama3", "yarn", "longrope"):
        rope.setdefault("original_max_position_embeddings", d.get("max_position_embeddings", 4096))
    return rope


def puzzle_config_from_hf(source: str | os.PathLike | Mapping[str, Any], **hf_kwargs: Any) -> PuzzleConfig:
    """A :class:`PuzzleConfig` for a Llama / Qwen2 / Mistral / Nemotron-NAS ``config.json``
    (dict, file or folder): the homogeneous child equal to the parent, or the NAS model itself."""
    d = load_config_dict(source)
    arch = Architecture.from_config(d)
    kw: dict[str, Any] = {k: d[k] for k in _PASSTHROUGH if k in d}
    kw["rope_parameters"] = _rope_parameters(d)
    if d.get("model_type") == "mistral" and d.get("sliding_window") is not None:
        kw["sliding_window"] = d["sliding_window"]
    for k in ("torch_dtype", "dtype"):
        if isinstance(d.get(k), str):
            if not isinstance(getattr(torch, d[k], None) if d[k] else None, torch.dtype):
                raise ConfigError(f"config.json: {k}={d[k]!r} is not a torch dtype; use e.g. 'bfloat16' or 'float32'")
            kw["dtype"] = d[k]
    kw.update(hf_kwargs)
    return PuzzleConfig.from_architecture(arch, **kw)


def empty_model(config: PuzzleConfig) -> PuzzleForCausalLM:
    """The model with its parameters on the meta device (buffers such as RoPE frequencies are real)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return PuzzleForCausalLM(config)


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model folder (``model.safetensors`` or the shards its index names)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        from ..io import read_json

        doc = read_json(index, what="safetensors index")
        wm = doc.get("weight_map") if isinstance(doc, Mapping) else None
        if not isinstance(wm, Mapping) or not wm:
            raise ConfigError(f"{index}: 'weight_map' must map tensor names to shard files")
        return [resolve_inside(folder, f, what="safetensors shard") for f in sorted(set(wm.values()))]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise UnsafeInputError(
            f"{folder}: only pickle checkpoints (*.bin / *.pt) found; puzzlekit loads safetensors only. "
            "Convert them once with transformers: AutoModelForCausalLM.from_pretrained(folder)"
            ".save_pretrained(out, safe_serialization=True)"
        )
    raise ConfigError(f"{folder}: no model.safetensors or model.safetensors.index.json; give a Hugging Face model folder")


def _iter_safetensors(files: list[Path], device: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for f in files:
        try:
            sf_handle = safe_open(str(f), framework="pt", device=device)
        except Exception as e:  # safetensors raises its own error types for malformed (e.g. pickle) files
            raise UnsafeInputError(f"{f}: not a readable safetensors file ({e}); puzzlekit loads safetensors only "
                                   "(re-save the model with save_pretrained(..., safe_serialization=True))") from None
        with sf_handle as sf:
            for name in sf.keys():
                yield name, sf.get_tensor(name)


def load_state_into(model: PuzzleForCausalLM, tensors: Iterator[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                    *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
                    source: str = "checkpoint", placement: Mapping[str, torch.device] | None = None
                    ) -> PuzzleForCausalLM:
    """Place named tensors into a (meta) model one at a time; every parameter must be given once.

    Tensors are assigned, not copied, when dtype and device already match.  ``placement``
    (:func:`~puzzlekit.model.placement.plan_placement`) puts each tensor on its module's device
    instead of ``device``.  Raises a :class:`ConfigError` naming missing, unexpected or
    mis-shaped tensors.
    """
    from .placement import _device_for

    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = bool(model.config.tie_word_embeddings)
    seen: set[str] = set()
    unexpected: list[str] = []
    for name, t in items:
        if name.endswith(_IGNORED_KEYS):
            continue
        if tied and name == "lm_head.weight":
            continue
        p = params.get(name)
        if p is None:
            unexpected.append(name)
            continue
        if tuple(p.shape) != tuple(t.shape):
            raise ConfigError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, the model expects "
                              f"{tuple(p.shape)}; the config.json does not match the weights")
        t = t.to(device=_device_for(placement, name) if placement else device, dtype=dtype or t.dtype)
        _set_param(model, name, t)
        seen.add(name)
    expected = {n for n in params if not (tied and n == "lm_head.weight")}
    missing = sorted(expected - seen)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {sorted(unexpected)[:3]})")
        raise ConfigError(f"{source}: " + "; ".join(parts) + "; the weights do not match the config.json")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    for mname, mod in model.named_modules():  # RoPE frequencies and other buffers follow the weights' device
        if not any(True for _ in mod.buffers(recurse=False)):
            continue
        dev = _device_for(placement, mname) if placement else torch.device(device)
        for bname, b in list(mod.named_buffers(recurse=False)):
            if b.device != dev and not b.is_meta:
                mod._buffers[bname] = b.to(dev)
    return model


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, pname = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    mod._parameters[pname] = nn.Parameter(value, requires_grad=value.is_floating_point())


def load_parent(path_or_hf_model: str | os.PathLike | nn.Module, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None, *,
                device_map: str | list[str | torch.device] | None = None,
                gguf_cache: str | os.PathLike | None = None) -> PuzzleForCausalLM:
    """The parent as a :class:`PuzzleForCausalLM` (homogeneous child equal to it).

    ``path_or_hf_model``: a local Hugging Face folder (Llama, Qwen2, Mistral or Nemotron-NAS;
    safetensors, single or sharded), a ``.gguf`` file or a folder holding one (Llama / Qwen2
    architectures; dequantized to float32 once into ``gguf_cache``, default
    ``~/.cache/puzzlekit/gguf/NAME-HASH``, and read from there afterwards), or an in-memory
    transformers model (its tensors are shared, not copied, when ``dtype`` / ``device`` do not
    change them).  ``dtype`` defaults to the stored dtype; ``device`` to CPU.  ``device_map``
    (``"auto"`` or a list of devices) spreads the layers over several devices instead
    (:mod:`puzzlekit.model.placement`); each tensor is read straight onto its device.
    """
    if device_map is not None:
        if device is not None:
            raise ConfigError("load_parent: pass device or device_map, not both")
        from .placement import place_model, plan_placement, resolve_devices

        devs = resolve_devices(device_map)
        if isinstance(path_or_hf_model, nn.Module):
            return place_model(load_parent(path_or_hf_model), devs)
    device = str(device or "cpu")
    if isinstance(path_or_hf_model, nn.Module):
        hf = path_or_hf_model
        cfg = getattr(hf, "config", None)
        if cfg is None or not hasattr(cfg, "to_dict"):
            raise ConfigError(f"load_parent: {type(hf).__name__} has no Hugging Face config; pass a transformers "
                              "LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM or a model folder")
        if isinstance(hf, PuzzleForCausalLM):
            return hf.to(device=device, dtype=dtype) if dtype is not None else hf.to(device)
        d = cfg.to_dict()
        config = puzzle_config_from_hf(d)
        model = empty_model(config)
        sd = hf.state_dict()
        load_state_into(model, sd, dtype=dtype, device=device, source=type(hf).__name__)
        log.info("loaded parent %s (%d layers) from an in-memory model", d.get("model_type"), config.num_hidden_layers)
        return model.eval()
    from .gguf import resolve_parent_path

    folder = resolve_parent_path(path_or_hf_model, gguf_cache=gguf_cache)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; load_parent takes a Hugging Face model folder, a .gguf file "
                          "or a transformers model")
    d = load_config_dict(folder)
    if d.get("model_type") in ("nemotron-nas", "deci", "puzzle"):
        raw = dict(d)
        raw.pop("model_type", None)
        config = PuzzleConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
    else:
        config = puzzle_config_from_hf(d)
    files = checkpoint_files(folder)
    model = empty_model(config)
    placement = plan_placement(model, devs) if device_map is not None else None
    load_state_into(model, _iter_safetensors(files, "cpu"), dtype=dtype, device=device, source=str(folder),
                    placement=placement)
    log.info("loaded parent %s from %s (%d files)", d.get("model_type"), folder, len(files))
    return model.eval()

