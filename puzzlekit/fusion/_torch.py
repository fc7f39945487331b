"""Torch helpers shared by the fusion pass: calibration batches and captured FFN inputs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import ConfigError


class _Stop(Exception):
    pass


def iter_batches(data: Any, batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(input_ids, attention_mask)`` pairs from a LongTensor ``(N, T)``, a dict with
    ``input_ids`` (and optionally ``attention_mask``), or an iterable of either."""
    if isinstance(data, dict):
        ids = data.get("input_ids")
        if not isinstance(ids, torch.Tensor):
            raise ConfigError("calibration data dict must hold an 'input_ids' tensor")
        mask = data.get("attention_mask")
        for s in range(0, ids.shape[0], batch_size):
            yield ids[s:s + batch_size], (mask[s:s + batch_size] if mask is not None else None)
        return
    if isinstance(data, torch.Tensor):
        if data.dtype not in (torch.int64, torch.int32) or data.dim() != 2:
            raise ConfigError(
                f"calibration data must be token ids of shape (batch, seq) and integer dtype, "
                f"got {tuple(data.shape)} {data.dtype}"
            )
        for s in range(0, data.shape[0], batch_size):
            yield data[s:s + batch_size], None
        return
    try:
        it = iter(data)
    except TypeError:
        raise ConfigError(f"calibration data must be a token-id tensor or an iterable of them, got {type(data).__name__}") from None
    for item in it:
        yield from iter_batches(item, batch_size)


def model_device(model: Any) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def capture_layer_inputs(model: Any, ids: torch.Tensor, layers: Sequence[int],
                         mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """The residual stream each of ``layers``' FFN reads (after that layer's attention).

    Captured with a pre-hook on the layer's ``post_attention_layernorm``; the
    forward stops after the last layer needed.
    """
    mods = model.model.layers
    out: dict[int, torch.Tensor] = {}
    last = max(layers)
    handles = []

    def hook_for(i: int):
        def hook(_mod, args):
            out[i] = args[0].detach()
            if i == last:
                raise _Stop
        return hook

    for i in layers:
        norm = getattr(mods[i], "post_attention_layernorm", None)
        if norm is None:
            raise ConfigError(f"layer {i} has no FFN (no post_attention_layernorm); it cannot start an FFN run")
        handles.append(norm.register_forward_pre_hook(hook_for(i)))
    dev = model_device(model)
    try:
        model(input_ids=ids.to(dev), attention_mask=mask.to(dev) if mask is not None else None, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in layers if i not in out]
    if missing:
        raise ConfigError(f"layers {missing}: their FFN input was never computed during the forward pass")
    return out
