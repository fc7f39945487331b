"""Assemble a child from the parent and chosen candidates; one block's weights as safetensors.

A block file holds one layer's tensors under layer-relative names (``self_attn.q_proj.weight``,
``mlp.linear_mlp.weight``…) and, in its safetensors metadata, the block key and hidden size,
so a file is never loaded into a layer of another kind.  Files are written atomically.
"""

from __future__ import annotations

import logging
import os
import re
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


_ATTN_PREFIXES = ("input_layernorm.", "self_attn.")
_FFN_PREFIXES = ("post_attention_layernorm.", "mlp.")


def load_block_weights(layer: PuzzleDecoderLayer,
                       path: str | os.PathLike | Sequence[str | os.PathLike],
                       parent_layers: Sequence[int] | None = None) -> PuzzleDecoderLayer:
    """Load a block file, or several files that together hold the block, into ``layer`` (in place; a
    layer on the meta device is materialised).

    Several files: each holds some of the layer's sub-blocks (e.g. a decoupled BLD library's attention
    file and FFN file); each file's block must agree with the layer on the sub-blocks it holds, no
    tensor may come twice, and together they must hold every tensor.  Raises :class:`ConfigError`
    when the files' blocks or tensors do not match the layer.

    ``parent_layers``: the parent layers the block replaces (a spanning candidate replaces several;
    after one, a child layer's index is no longer its parent layer's).  A checkpoint's sub-block file
    (ModelOpt's ``model.layers.<i>.*`` names) must hold one of them; default: the layer's own index.
    """
    from safetensors import safe_open

    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if not paths:
        raise ConfigError(f"load_block_weights: no weights file given for block {layer.block.key}")
    params = dict(layer.named_parameters())
    seen: dict[str, Path] = {}
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"{p}: block weights file not found")
        try:
            f = safe_open(str(p), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise ConfigError(f"{p}: not a readable safetensors file ({e})") from None
        with f:
            meta = f.metadata() or {}
            if meta.get("hidden_size") not in (None, str(layer.spec.hidden_size)):
                raise ConfigError(f"{p}: hidden_size {meta['hidden_size']} != the model's {layer.spec.hidden_size}")
            rename = _hf_layer_names(p, set(f.keys()), meta, layer, parent_layers)  # file name -> layer name
            names = set(rename.values())
            key = meta.get("block")
            if key is not None and key != layer.block.key:
                if len(paths) == 1:
                    raise ConfigError(f"{p}: holds block {key}, but the layer is {layer.block.key}; "
                                      "pick the file of the chosen candidate")
                _check_sub_blocks(p, key, names, layer)
            extra = sorted(names - set(params))
            twice = sorted(n for n in names if n in seen)
            if extra or twice:
                raise ConfigError(f"{p}: tensors do not match block {layer.block.key}: unexpected {extra[:3]}"
                                  + (f"; {twice[:3]} also in {seen[twice[0]]}" if twice else ""))
            for fname, name in sorted(rename.items(), key=lambda kv: kv[1]):
                t, prm = f.get_tensor(fname), params[name]
                if tuple(t.shape) != tuple(prm.shape):
                    raise ConfigError(f"{p}: {name} has shape {tuple(t.shape)}, the layer expects {tuple(prm.shape)}")
                seen[name] = p
                device = torch.device("cpu") if prm.is_meta else prm.device
                _set_param(layer, name, t.to(device=device, dtype=prm.dtype))
    missing = sorted(set(params) - set(seen))
    if missing:
        where = paths[0] if len(paths) == 1 else f"{len(paths)} files ({', '.join(p.name for p in paths)})"
        raise ConfigError(f"{where}: tensors do not match block {layer.block.key}: missing {missing[:3]}")
    return layer


_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _hf_layer_names(path: Path, names: set[str], meta: Mapping[str, str], layer: PuzzleDecoderLayer,
                    parent_layers: Sequence[int] | None = None) -> dict[str, str]:
    """The file's tensor names -> the layer's parameter names.

    puzzlekit's block files hold layer-relative names.  A sub-block file of NVIDIA's Model Optimizer
    (Puzzletron's ``subblocks_safetensors/block_<i>_<attention|ffn>.safetensors``) has no puzzlekit
    metadata and keeps the checkpoint's names, ``model.layers.<i>.self_attn.q_proj.weight``...: the
    prefix is dropped when every tensor has it with one ``i``, and ``i`` is one of the parent layers the
    block replaces (``parent_layers``; default the layer's own index).
    """
    if meta.get("format") == BLOCK_FORMAT or not names:
        return {n: n for n in names}
    found = {n: _HF_LAYER.match(n) for n in names}
    if not all(found.values()):
        return {n: n for n in names}  # not a checkpoint's layer file: the name checks below report it
    idx = {int(m.group(1)) for m in found.values()}
    if len(idx) != 1:
        raise ConfigError(f"{path}: holds tensors of layers {sorted(idx)}; a block file holds one layer's")
    (i,) = idx
    want = [layer.layer_idx] if parent_layers is None else [int(j) for j in parent_layers]
    if i not in want:
        where = (f"parent layer {want[0]}" if len(want) == 1 else f"parent layers {want[0]}..{want[-1]}")
        raise ConfigError(f"{path}: holds layer {i}'s tensors (model.layers.{i}.*), but the block replaces {where}"
                          + (f" (child layer {layer.layer_idx})" if want != [layer.layer_idx] else "")
                          + "; pick that layer's sub-block file")
    return {n: m.group(2) for n, m in found.items()}


def _check_sub_blocks(path: Path, key: str, names: set[str], layer: PuzzleDecoderLayer) -> None:
    """A sub-block file (one of several) must agree with ``layer`` on the sub-blocks it holds."""
    from ..blocks import BlockConfig

    try:
        fb = BlockConfig.from_key(key)
    except Exception:
        raise ConfigError(f"{path}: its metadata names an unreadable block {key!r}") from None
    if any(n.startswith(_ATTN_PREFIXES) for n in names) and fb.attention != layer.block.attention:
        raise ConfigError(f"{path}: holds attention {fb.attention.short()}, but the layer's is "
                          f"{layer.block.attention.short()} ({layer.block.key}); pick the chosen candidate's files")
    if any(n.startswith(_FFN_PREFIXES) for n in names) and fb.ffn != layer.block.ffn:
        raise ConfigError(f"{path}: holds FFN {fb.ffn.short()}, but the layer's is {layer.block.ffn.short()} "
                          f"({layer.block.key}); pick the chosen candidate's files")


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
        spans = [range(c.first, c.last + 1) for c in cands]
        if architecture is not None and tuple(architecture.blocks) != tuple(blocks):
            raise ConfigError("assemble: architecture's blocks differ from the chosen candidates' blocks")
    else:
        if architecture is None:
            raise ConfigError("assemble: give an architecture, or a library with choices")
        if architecture.num_layers != len(players):
            raise ConfigError(f"assemble: the architecture has {architecture.num_layers} layers, the parent "
                              f"{len(players)}; without a library each child layer replaces one parent layer")
        idxs, blocks, sources = [None] * len(players), list(architecture.blocks), list(range(len(players)))
        spans = [range(i, i + 1) for i in sources]
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
    for i, (block, src, idx, span) in enumerate(zip(blocks, sources, idxs, spans)):
        wpath = library.weights_paths(idx) if idx is not None else None
        if wpath:
            with torch.device("meta"):
                layer = PuzzleDecoderLayer(spec, block, i)
            load_block_weights(layer, wpath, parent_layers=span)
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
