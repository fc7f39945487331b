"""Assemble a child from the parent and chosen candidates; one block's weights as safetensors.

A block file holds one layer's tensors under layer-relative names (``self_attn.q_proj.weight``,
``mlp.linear_mlp.weight``…) and, in its safetensors metadata, the block key and hidden size,
so a file is never loaded into a layer of another kind.  Files are written atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..architecture import Architecture
from ..errors import ConfigError, LibraryError
from ..io import atomic_write_safetensors, fsync_dir
from .init import init_child_layer
from .modeling import PuzzleConfig, PuzzleDecoderLayer, PuzzleForCausalLM
from .parent import _set_param, empty_model

__all__ = ["assemble", "save_block_weights", "load_block_weights", "save_model", "BLOCK_FORMAT"]

log = logging.getLogger(__name__)

BLOCK_FORMAT = "puzzlekit.block/1"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "generation_config.json", "chat_template.jinja")


def save_block_weights(layer: PuzzleDecoderLayer, path: str | os.PathLike,
                       metadata: Mapping[str, str] | None = None) -> Path:
    """Write one layer's weights (layer-relative names) to a safetensors file, atomically."""

    if not isinstance(layer, PuzzleDecoderLayer):
        raise ConfigError(f"save_block_weights: expected a PuzzleDecoderLayer, got {type(layer).__name__}")
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in layer.state_dict().items()}
    meta = {"format": BLOCK_FORMAT, "block": layer.block.key, "hidden_size": str(layer.spec.hidden_size)}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    atomic_write_safetensors(path, tensors, metadata=meta)
    return path


def load_block_weights(layer: PuzzleDecoderLayer, path: str | os.PathLike) -> PuzzleDecoderLayer:
    """Load a block file into ``layer`` (in place; a layer on the meta device is materialised).

    Raises :class:`ConfigError` when the file's block or tensors do not match the layer.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: block weights file not found")
    try:
        f = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None
    with f:
        meta = f.metadata() or {}
        key = meta.get("block")
        if key is not None and key != layer.block.key:
            raise ConfigError(f"{path}: holds block {key}, but the layer is {layer.block.key}; "
                              "pick the file of the chosen candidate")
        if meta.get("hidden_size") not in (None, str(layer.spec.hidden_size)):
            raise ConfigError(f"{path}: hidden_size {meta['hidden_size']} != the model's {layer.spec.hidden_size}")
        names = set(f.keys())
        params = dict(layer.named_parameters())
        missing, extra = sorted(set(params) - names), sorted(names - set(params))
        if missing or extra:
            raise ConfigError(f"{path}: tensors do not match block {layer.block.key}: "
                              f"missing {missing[:3]}, unexpected {extra[:3]}")
        for name, p in params.items():
            t = f.get_tensor(name)
            if tuple(t.shape) != tuple(p.shape):
                raise ConfigError(f"{path}: {name} has shape {tuple(t.shape)}, the layer expects {tuple(p.shape)}")
            device = torch.device("cpu") if p.is_meta else p.device
            _set_param(layer, name, t.to(device=device, dtype=p.dtype))
    return layer


def _resolve_choices(parent_layers: int, library: Any, choices: Sequence[int]) -> list[Any]:
    cands = []
    nxt = 0
    for k, idx in enumerate(choices):
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(library.candidates):
            raise LibraryError(f"choices[{k}]={idx!r} is not a candidate index of the library (0..{len(library.candidates) - 1})")
        c = library.candidates[idx]
        if c.first != nxt:
            raise LibraryError(f"choices[{k}]: candidate {idx} covers layers {c.first}..{c.last}, expected one starting "
                               f"at layer {nxt}; choices must cover the parent's layers in order")
        nxt = c.last + 1
        cands.append(c)
    if nxt != parent_layers:
        raise LibraryError(f"choices cover parent layers 0..{nxt - 1}, the parent has {parent_layers}")
    return cands


@torch.no_grad()
def _calib_hidden(parent: PuzzleForCausalLM, calib_input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Hidden states entering each parent layer for the calibration tokens."""
    dev = parent.lm_head.weight.device
    out = parent(input_ids=calib_input_ids.to(dev), output_hidden_states=True, use_cache=False)
    return list(out.hidden_states[: len(parent.model.layers)])


@torch.no_grad()
def assemble(parent: PuzzleForCausalLM, architecture: Architecture | None, library: Any = None,
             choices: Sequence[int] | None = None, init: Mapping[str, Any] | None = None) -> PuzzleForCausalLM:
    """The child model: parent non-block weights (copied) + one layer per child block.

    * ``library`` + ``choices`` (candidate indices in layer order, e.g. a search ``Solution``'s
      ``candidates``): a layer whose candidate has trained weights loads them; the others are
      initialised from the first parent layer the candidate replaces.  ``architecture`` may then
      be None; when given, its blocks must equal the chosen candidates'.
    * without a library: ``architecture`` has one block per parent layer, each initialised
      from the parent layer at the same index.

    ``init``: ``ffn_method`` / ``kv_method`` / ``seed`` for :func:`init_child_layer`, and
    ``calib_input_ids`` (token ids) for contribution pruning; ``ffn_method`` defaults to
    ``"contribution"`` with calibration tokens, else ``"truncate"``.
    """
    if not isinstance(parent, PuzzleForCausalLM):
        raise ConfigError(f"assemble: parent must be a PuzzleForCausalLM (see load_parent), got {type(parent).__name__}")
    init = dict(init or {})
    unknown = set(init) - {"ffn_method", "kv_method", "seed", "calib_input_ids"}
    if unknown:
        raise ConfigError(f"assemble: unknown init option(s) {sorted(unknown)}; "
                          "use ffn_method, kv_method, seed, calib_input_ids")
    players = parent.model.layers
    if library is not None:
        if choices is None:
            raise ConfigError("assemble: a library needs choices (candidate indices in layer order)")
        cands = _resolve_choices(len(players), library, list(choices))
        idxs: list[int | None] = list(choices)
        blocks = [c.block for c in cands]
        sources = [c.first for c in cands]
        if architecture is not None and tuple(architecture.blocks) != tuple(blocks):
            raise ConfigError("assemble: architecture's blocks differ from the chosen candidates' blocks")
    else:
        if architecture is None:
            raise ConfigError("assemble: give an architecture, or a library with choices")
        if architecture.num_layers != len(players):
            raise ConfigError(f"assemble: the architecture has {architecture.num_layers} layers, the parent "
                              f"{len(players)}; without a library each child layer replaces one parent layer")
        idxs, blocks, sources = [None] * len(players), list(architecture.blocks), list(range(len(players)))
    spec = parent.config.parent_spec
    if architecture is not None and architecture.parent.hidden_size != spec.hidden_size:
        raise ConfigError(f"assemble: architecture hidden_size {architecture.parent.hidden_size} != parent's {spec.hidden_size}")
    child_arch = Architecture(spec, tuple(blocks))
    pc = parent.config
    config = PuzzleConfig.from_architecture(
        child_arch, rope_parameters=dict(pc.rope_parameters or {}), sliding_window=pc.sliding_window,
        bos_token_id=pc.bos_token_id, eos_token_id=pc.eos_token_id, pad_token_id=pc.pad_token_id,
        initializer_range=pc.initializer_range)
    calib = init.pop("calib_input_ids", None)
    init.setdefault("ffn_method", "contribution" if calib is not None else "truncate")
    hidden = _calib_hidden(parent, calib) if calib is not None and init["ffn_method"] == "contribution" else None
    child = empty_model(config)
    ref = parent.lm_head.weight
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        _set_param(child, name, parent.get_parameter(name).detach().clone())
    if config.tie_word_embeddings:
        child.lm_head.weight = child.model.embed_tokens.weight
    for i, (block, src, idx) in enumerate(zip(blocks, sources, idxs)):
        wpath = library.weights_path(idx) if idx is not None else None
        if wpath is not None:
            with torch.device("meta"):
                layer = PuzzleDecoderLayer(spec, block, i)
            load_block_weights(layer, wpath)
            layer.to(device=ref.device, dtype=ref.dtype)
        else:
            layer = init_child_layer(players[src], block, layer_idx=i,
                                     calib_inputs=hidden[src] if hidden is not None else None, **init)
        child.model.layers[i] = layer
    child.model.rotary_emb.to(ref.device)
    left = [n for n, p in child.named_parameters() if p.is_meta]
    if left:  # a bug, not bad input
        raise RuntimeError(f"assemble left tensors unset: {left[:3]}")
    log.info("assembled a %d-layer child (%s)", len(blocks), ", ".join(sorted({b.key for b in blocks}))[:200])
    return child.eval()


def save_model(model: PuzzleForCausalLM, out: str | os.PathLike, *, tokenizer_from: str | os.PathLike | None = None,
               max_shard_size: str = "5GB") -> Path:
    """Save a model folder (Nemotron-NAS config.json + safetensors) atomically: written to a
    temporary folder beside ``out`` and renamed; tokenizer files are copied from ``tokenizer_from``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not empty; choose a new output folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer_from is not None:
            for name in _TOKENIZER_FILES:
                src = Path(tokenizer_from) / name
                if src.is_file() and not (tmp / name).exists():
                    shutil.copy2(src, tmp / name)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
