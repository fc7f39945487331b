"""Layer placement: one model spread over several devices in one process (naive pipeline).

A parent that does not fit one accelerator (Llama-3.3-70B in bf16 is 141 GB; Llama-3.1-405B
810 GB) is split into contiguous runs of layers, balanced by parameter bytes: the embedding on
the first device, the final norm and the LM head on the last (on the first when the head is tied
to the embedding).  The hidden state moves to a layer's device when it crosses a boundary, with
the rotary tables and the mask, in :class:`~puzzlekit.model.PuzzleModel`'s forward, in BLD's
parent pass and in replace-1-block scoring; BLD units and scored candidates are built on their
layer's device.  Loading places each tensor straight onto its device, so the whole model is never
materialised on one device::

    parent = load_parent("Llama-3.3-70B-Instruct", dtype=torch.bfloat16, device_map="auto")
    device_of(parent.model.layers[79])         # cuda:1 on two GPUs

``device_map``: ``"auto"`` (every visible CUDA device), a list of devices (a device may repeat:
``["cuda:0", "cpu"]`` keeps the second half in host memory), or ``None`` (one device).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["resolve_devices", "check_device", "plan_placement", "place_model", "device_of", "follow", "moved"]


def resolve_devices(device_map: str | Sequence[str | torch.device]) -> list[torch.device]:
    """The devices of a ``device_map`` argument.  ``"auto"``: every visible CUDA device or, under
    torchrun / ``accelerate launch`` with several processes on this machine (``LOCAL_WORLD_SIZE``),
    this process's contiguous share of them (8 GPUs, 2 processes: ``cuda:0-3`` and ``cuda:4-7``)."""
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ConfigError(f"device_map={device_map!r}: use 'auto' or a list of devices, e.g. ['cuda:0', 'cuda:1']")
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError("device_map='auto' needs CUDA devices and none is visible; pass device='cpu' or "
                              "a list of devices")
        lw, lr = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        if lw > n:
            raise ConfigError(f"device_map='auto': {lw} processes on this machine share {n} GPU(s); run at most "
                              f"{n} processes, or give each a device instead (--device)")
        share = n // lw
        return [torch.device("cuda", i) for i in range(lr * share, (lr + 1) * share)]
    try:
        devs = [torch.device(d) for d in device_map]
    except (TypeError, RuntimeError) as e:
        raise ConfigError(f"device_map={device_map!r}: not a list of devices ({e})") from None
    if not devs:
        raise ConfigError("device_map is empty: give at least one device")
    for d in devs:
        check_device(d, "device_map names")
    return devs


def check_device(device: torch.device, what: str) -> torch.device:
    """``device``, or a :class:`ConfigError` (``what`` names the argument) when it is a CUDA device this
    machine does not have."""
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (device.index is not None and device.index >= n):
            raise ConfigError(f"{what} {device}, but this machine has {n} visible CUDA device(s)"
                              + (f" (cuda:0..cuda:{n - 1})" if n else "; use cpu"))
    return device


def _layer_bytes(model: Any) -> list[int]:
    return [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in model.model.layers]


def plan_placement(model: Any, devices: str | Sequence[str | torch.device]) -> dict[str, torch.device]:
    """Module name -> device: contiguous runs of layers balanced by parameter bytes, counting the
    embedding with the first device's share and the head with the last's.

    Works on a model on the meta device (sizes only), so a checkpoint can be placed while loading.
    """
    devs = resolve_devices(devices)
    layers = _layer_bytes(model)
    emb = sum(p.numel() * p.element_size() for p in model.model.embed_tokens.parameters())
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = 0 if tied else sum(p.numel() * p.element_size() for p in model.lm_head.parameters())
    total = emb + sum(layers) + head
    plan: dict[str, torch.device] = {"model.embed_tokens": devs[0], "model.rotary_emb": devs[0]}
    k, acc = 0, emb
    for i, b in enumerate(layers):
        # move on once this device holds its share, keeping at least one layer per later device possible
        while (k < len(devs) - 1 and acc + b / 2 > total * (k + 1) / len(devs)
               and len(layers) - i >= len(devs) - 1 - k):
            k += 1
        plan[f"model.layers.{i}"] = devs[k]
        acc += b
    plan["model.norm"] = devs[0] if tied else devs[-1]
    plan["lm_head"] = devs[0] if tied else devs[-1]
    return plan


def _device_for(plan: dict[str, torch.device], name: str) -> torch.device:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        d = plan.get(".".join(parts[:n]))
        if d is not None:
            return d
    raise ConfigError(f"tensor {name!r} belongs to no placed module; the model is not a PuzzleForCausalLM")


def place_model(model: Any, device_map: str | Sequence[str | torch.device]) -> Any:
    """Move an in-memory ``PuzzleForCausalLM`` onto ``device_map`` (see :func:`plan_placement`)."""
    plan = plan_placement(model, device_map)
    for name, dev in plan.items():
        mod = model.get_submodule(name)
        mod.to(dev)
    if getattr(model.config, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def device_of(module: Any) -> torch.device | None:
    """The device of a module's first parameter (None for a module without parameters: a no-op layer)."""
    p = next(module.parameters(), None)
    return None if p is None else p.device


def moved(obj: Any, dev: torch.device | None) -> Any:
    """``obj`` (a tensor, a tuple of them, or None) on ``dev``; unchanged when ``dev`` is None or
    already its device (no copy)."""
    if obj is None or dev is None:
        return obj
    if isinstance(obj, tuple):
        return tuple(moved(t, dev) for t in obj)
    return obj if obj.device == dev else obj.to(dev)


def follow(dev: torch.device | None, x: torch.Tensor, *rest: Any) -> tuple[Any, ...]:
    """``x`` and ``rest`` (tensors, tuples of tensors or None) on ``dev`` (unchanged when ``dev`` is
    None or already ``x``'s): what the hidden state carries across a device boundary."""
    if dev is None or x.device == dev:
        return (x, *rest)
    return (x.to(dev), *(moved(o, dev) for o in rest))
