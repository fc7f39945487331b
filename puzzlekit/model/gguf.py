"""GGUF parents: a ``.gguf`` file (as Ollama, LM Studio or llama.cpp users have them) as a parent.

A GGUF file is read directly with ``gguf`` (gguf-py, the reader maintained with llama.cpp): its
metadata gives the Hugging Face ``config.json``, each tensor is dequantized on its own
(``gguf.quants.dequantize``) to float32, renamed to the Hugging Face names, and written into
safetensors shards.  The tokenizer (with its chat template) is converted by transformers'
GGUF tokenizer converter.  The result is an ordinary model folder, cached::

    folder = ensure_gguf_parent("SmolLM2-135M-Instruct.Q4_1.gguf")   # dequantized once, then reused
    parent = load_parent("SmolLM2-135M-Instruct.Q4_1.gguf")           # the same, through load_parent

Why not transformers' own GGUF model loading (``AutoModelForCausalLM`` with ``gguf_file=``) for the weights: it parses
the file's metadata twice and rebuilds its name map per tensor (29-53 s for the 135M SmolLM2 on the
shared two-core development machine, against 15 s for reading and dequantizing here; the tokenizer
conversion both need is another 10-15 s), materialises the whole model before it can be saved, and a test that
compares our parent with transformers' own model from the same file would compare one code path with
itself.  The dequantized weights are the parent: quality is measured against them, not against
the model the GGUF was quantized from.

llama.cpp's converter permutes the rows of Llama's Q and K projections for its RoPE layout
(``convert_hf_to_gguf.py``, ``LlamaModel.permute``); they are permuted back here.  Qwen2 files
are stored unpermuted.

The cache folder holds ``config.json``, ``model.safetensors`` (or shards + index), the tokenizer
files and ``gguf_source.json`` (the source's path, size, modification time and SHA-256).  A
cached folder is reused when the source's size and modification time match, or, when only the
time differs, its SHA-256; otherwise it is rebuilt.  Everything is written into a temporary folder
and renamed, so a killed conversion leaves no half folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "GGUFError",
    "SUPPORTED_ARCHITECTURES",
    "supported_quant_types",
    "find_gguf",
    "GGUFInfo",
    "read_gguf_info",
    "gguf_config_dict",
    "dequantize_gguf",
    "gguf_cache_dir",
    "ensure_gguf_parent",
    "resolve_parent_path",
]

log = logging.getLogger(__name__)

#: GGUF ``general.architecture`` values loaded as a parent (llama covers Llama 1-3, SmolLM, Mistral).
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
_MODEL_TYPE = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
#: Version of the cache folder layout (a change rebuilds every cache).
CACHE_FORMAT = 1
SOURCE_FILE = "gguf_source.json"
MAX_SHARD_BYTES = 2 * 2**30

_LAYER = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


class GGUFError(ConfigError):
    """A GGUF file cannot be used as a parent (architecture, quantization, layout)."""


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise GGUFError("reading a .gguf parent needs the `gguf` package: pip install gguf "
                        "(or puzzlekit[torch])") from None
    return gguf


def supported_quant_types() -> tuple[str, ...]:
    """The GGUF tensor types this installation dequantizes (F32, F16 and gguf-py's quantizations)."""
    gguf = _gguf()
    from gguf import quants

    names = ["F32", "F16"] + [t.name for t in getattr(quants, "_type_traits", {})]
    return tuple(n for n in dict.fromkeys(names) if hasattr(gguf.GGMLQuantizationType, n))


def find_gguf(path: str | os.PathLike) -> Path | None:
    """The GGUF file ``path`` names: the file itself, or the single ``*.gguf`` in a folder that holds no
    safetensors model; None for anything else (an ordinary model folder).  Several GGUF files in one
    folder are ambiguous: a :class:`GGUFError` lists them."""
    p = Path(path)
    if p.is_file():
        return p if p.suffix.lower() == ".gguf" else None
    if not p.is_dir() or (p / "model.safetensors").exists() or (p / "model.safetensors.index.json").exists():
        return None
    found = sorted(f for f in p.iterdir() if f.suffix.lower() == ".gguf" and f.is_file())
    if len(found) > 1:
        raise GGUFError(f"{p}: holds {len(found)} GGUF files ({', '.join(f.name for f in found[:4])}); "
                        "give the path of the one to use")
    return found[0] if found else None


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


@dataclass
class GGUFInfo:
    """What a GGUF file holds: its architecture, tensor types and the Hugging Face config it gives."""

    path: Path
    architecture: str
    name: str | None
    tensor_types: dict[str, int]
    config: dict[str, Any]
    num_elements: int
    tokenizer: str | None = None  # ``tokenizer.ggml.model`` (gpt2, llama, ...), None without one
    tensors: list[str] = field(default_factory=list, repr=False)


def _reader(path: Path) -> Any:
    gguf = _gguf()
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError) as e:
        raise GGUFError(f"{path}: not a readable GGUF file ({e}); give a .gguf model file") from None


def read_gguf_info(path: str | os.PathLike, reader: Any = None) -> GGUFInfo:
    """Read the metadata of a GGUF file and check that it can be a parent (architecture, tensor
    types, plain RoPE); raises a :class:`GGUFError` naming what is supported otherwise."""
    path = Path(path)
    r = reader if reader is not None else _reader(path)
    arch = _field(r, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: GGUF architecture {arch!r} is not supported as a parent; supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)} (Llama-family decoders: Llama, SmolLM, Mistral, Qwen2)")
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    ok = supported_quant_types()
    bad = sorted(set(types) - set(ok))
    if bad:
        raise GGUFError(f"{path}: tensor type(s) {', '.join(bad)} cannot be dequantized by the installed gguf package; "
                        f"supported: {', '.join(ok)} (a newer `gguf` may support more)")
    names = [t.name for t in r.tensors]
    if "rope_freqs.weight" in names:
        raise GGUFError(f"{path}: holds RoPE frequency factors (rope_freqs.weight, Llama-3.1-style scaled RoPE), "
                        "which are not supported; supported: plain RoPE (rope.freq_base)")
    scaling = _field(r, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise GGUFError(f"{path}: RoPE scaling {scaling!r} is not supported; supported: plain RoPE (no scaling)")
    cfg = _config(r, arch, names, path)
    return GGUFInfo(path, arch, _field(r, "general.name"), types, cfg,
                    int(sum(int(t.n_elements) for t in r.tensors)), _field(r, "tokenizer.ggml.model"), names)


def _config(r: Any, arch: str, names: list[str], path: Path) -> dict[str, Any]:
    def need(key: str) -> Any:
        v = _field(r, f"{arch}.{key}")
        if v is None:
            raise GGUFError(f"{path}: GGUF metadata lacks '{arch}.{key}'; the file is incomplete")
        return v

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    kv = int(_field(r, f"{arch}.attention.head_count_kv", heads))
    head_dim = int(_field(r, f"{arch}.attention.key_length", hidden // heads))
    rot = int(_field(r, f"{arch}.rope.dimension_count", head_dim))
    if rot != head_dim:
        raise GGUFError(f"{path}: partial rotary embedding ({rot} of {head_dim} dims) is not supported")
    emb = next((t for t in r.tensors if t.name == "token_embd.weight"), None)
    if emb is None:
        raise GGUFError(f"{path}: no token_embd.weight tensor; not a decoder LM")
    vocab = int(_field(r, f"{arch}.vocab_size", int(emb.shape[-1])))
    model_type, cls = _MODEL_TYPE[arch]
    d: dict[str, Any] = {
        "model_type": model_type, "architectures": [cls],
        "hidden_size": hidden, "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
        "num_hidden_layers": int(need("block_count")), "vocab_size": vocab,
        "max_position_embeddings": int(_field(r, f"{arch}.context_length", 4096)),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(r, f"{arch}.rope.freq_base", 10000.0)),
        "hidden_act": "silu", "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float32",
    }
    if arch == "llama":
        d.update(attention_bias=any(n.endswith("attn_q.bias") for n in names), mlp_bias=False)
    else:
        d.update(use_sliding_window=False)
    for key, hf in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        v = _field(r, f"tokenizer.ggml.{key}_token_id")
        if v is not None:
            d[hf] = int(v)
    return d


def gguf_config_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of a GGUF file (metadata only; nothing is dequantized)."""
    f = find_gguf(path)
    if f is None:
        raise GGUFError(f"{path}: not a .gguf file or a folder holding one")
    return read_gguf_info(f).config


def _hf_name(name: str, num_layers: int, path: Path) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER.match(name)
    if m is None or m.group(2) not in _LAYER_NAMES or int(m.group(1)) >= num_layers:
        raise GGUFError(f"{path}: unexpected tensor {name!r} for a Llama-family decoder; "
                        f"expected {', '.join(_GLOBAL_NAMES)} and blk.N.{{{','.join(_LAYER_NAMES)}}}")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def _unpermute(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's RoPE row permutation of a Q or K projection (rows = n_head · head_dim)."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def iter_dequantized(path: Path, info: GGUFInfo, reader: Any) -> Iterator[tuple[str, Any]]:
    """``(hf_name, float32 torch tensor)`` for each tensor of the file, one at a time."""
    import numpy as np
    import torch
    from gguf import quants

    cfg = info.config
    for t in reader.tensors:
        name = _hf_name(t.name, cfg["num_hidden_layers"], path)
        w = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        want = tuple(int(x) for x in reversed([int(s) for s in t.shape]))  # GGUF lists dims fastest first
        if w.size != int(np.prod(want)):
            raise GGUFError(f"{path}: tensor {t.name} dequantized to {w.size} values, its shape {want} needs "
                            f"{int(np.prod(want))}")
        w = w.reshape(want)
        if info.architecture == "llama" and t.name.endswith(("attn_q.weight", "attn_q.bias")):
            w = _unpermute(w, cfg["num_attention_heads"])
        elif info.architecture == "llama" and t.name.endswith(("attn_k.weight", "attn_k.bias")):
            w = _unpermute(w, cfg["num_key_value_heads"])
        w = np.ascontiguousarray(w)
        yield name, torch.from_numpy(w if w.flags.writeable else w.copy())  # F32 tensors are read-only memmap views


def _write_shards(tensors: Iterator[tuple[str, Any]], out: Path, max_shard_bytes: int) -> int:
    """Write tensors into ``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` + index."""
    from safetensors.torch import save_file

    shards: list[dict[str, Any]] = [{}]
    size = 0
    files: list[Path] = []
    total = 0

    def flush() -> None:
        f = out / f"shard-{len(files):05d}.safetensors"
        save_file(shards[-1], str(f), metadata={"format": "pt"})
        files.append(f)
        shards[-1] = {}

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            flush()
            size = 0
        shards[-1][name] = t
        size += nbytes
        total += nbytes
    if shards[-1] or not files:
        flush()
    if len(files) == 1:
        files[0].rename(out / "model.safetensors")
        return total
    n = len(files)
    weight_map: dict[str, str] = {}
    from safetensors import safe_open

    for k, f in enumerate(files):
        final = out / f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        f.rename(final)
        with safe_open(str(final), framework="pt") as sf:
            weight_map.update({key: final.name for key in sf.keys()})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return total


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_record(path: Path, sha: str | None = None) -> dict[str, Any]:
    st = path.stat()
    return {"format": CACHE_FORMAT, "source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha or _sha256(path)}


def _convert_tokenizer(path: Path, out: Path) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True,
                                            trust_remote_code=False)
    except Exception as e:  # transformers raises several types for tokenizers it cannot convert
        raise GGUFError(f"{path}: transformers cannot convert this GGUF's tokenizer ({type(e).__name__}: {e}); "
                        "supported: the tokenizers transformers converts from GGUF (llama SentencePiece, gpt2 BPE)") from None
    tok.save_pretrained(str(out))


def dequantize_gguf(path: str | os.PathLike, out: str | os.PathLike, *, tokenizer: bool = True,
                    max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Dequantize a GGUF file into the model folder ``out`` (float32 safetensors, ``config.json``,
    tokenizer, ``gguf_source.json``), written under a temporary name and renamed.  ``out`` must not
    exist or be replaceable (an older cache).  Returns ``out``."""
    path, out = Path(path), Path(out)
    t0 = time.perf_counter()
    reader = _reader(path)
    info = read_gguf_info(path, reader)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sha = _sha256(path)
        nbytes = _write_shards(iter_dequantized(path, info, reader), tmp, max_shard_bytes)
        del reader
        (tmp / "config.json").write_text(json.dumps(info.config, indent=1))
        if tokenizer and info.tokenizer is not None:
            _convert_tokenizer(path, tmp)
        elif tokenizer:
            log.warning("%s: the GGUF holds no tokenizer (no tokenizer.ggml.model); the parent loads, but text "
                        "data needs a tokenizer: pass token ids or use a model folder with tokenizer.json", path)
        (tmp / SOURCE_FILE).write_text(json.dumps({**_source_record(path, sha), "architecture": info.architecture,
                                                   "tensor_types": info.tensor_types}, indent=1))
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; the cache is an ordinary folder
        for f in tmp.iterdir():
            f.chmod(0o666 & ~mask)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("dequantized %s (%s, %s) into %s: %.0f MiB float32 in %.1f s", path.name, info.architecture,
             ", ".join(f"{k}×{v}" for k, v in sorted(info.tensor_types.items())), out, nbytes / 2**20,
             time.perf_counter() - t0)
    return out


def gguf_cache_dir(path: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> Path:
    """The default cache folder of a GGUF file: ``CACHE/gguf/<name>-<hash of its absolute path>``."""
    p = Path(path).resolve()
    from ..fetch import default_cache_dir

    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    return root / "gguf" / f"{p.stem}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"


def _cache_matches(path: Path, folder: Path) -> bool:
    rec_path = folder / SOURCE_FILE
    if not rec_path.is_file() or not (folder / "config.json").is_file():
        return False
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        return False
    from ..errors import PuzzlekitError
    from ..io import read_json

    try:
        rec = read_json(rec_path, what="GGUF cache record")
    except (OSError, PuzzlekitError):
        return False
    if not isinstance(rec, dict):
        return False
    st = path.stat()
    if rec.get("format") != CACHE_FORMAT or rec.get("size") != st.st_size:
        return False
    if rec.get("mtime_ns") == st.st_mtime_ns:
        return True
    if rec.get("sha256") != _sha256(path):  # touched or copied: the content decides
        return False
    rec["mtime_ns"] = st.st_mtime_ns
    try:
        rec_path.write_text(json.dumps(rec, indent=1))
    except OSError:  # a read-only cache still serves
        pass
    return True


def ensure_gguf_parent(path: str | os.PathLike, cache: str | os.PathLike | None = None, *,
                       tokenizer: bool = True) -> Path:
    """The dequantized model folder of the GGUF ``path`` (a file or a folder holding one): ``cache``
    (default :func:`gguf_cache_dir`) when it matches the source, else dequantized into it now."""
    f = find_gguf(path)
    if f is None:
        raise GGUFError(f"{path}: not a .gguf file or a folder holding one")
    folder = Path(cache) if cache is not None else gguf_cache_dir(f)
    if _cache_matches(f, folder):
        log.info("GGUF parent %s: using the cached dequantized weights in %s", f.name, folder)
        return folder
    with _locked(folder):  # several processes (torchrun) asking at once: one converts, the others wait
        if _cache_matches(f, folder):
            return folder
        if folder.exists() and any(folder.iterdir()) and not (folder / SOURCE_FILE).exists():
            raise GGUFError(f"{folder}: exists and is not a puzzlekit GGUF cache (no {SOURCE_FILE}); "
                            "choose another cache folder or remove it")
        log.warning("GGUF parent %s: dequantizing into %s (once; later loads read the cache)", f.name, folder)
        return dequantize_gguf(f, folder, tokenizer=tokenizer)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``.NAME.lock`` beside ``folder`` (POSIX ``flock``; no lock elsewhere)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder.parent / f".{folder.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_parent_path(path: str | os.PathLike, *, gguf_cache: str | os.PathLike | None = None) -> Path:
    """A parent argument as a model folder: a Hugging Face folder is returned as it is; a ``.gguf``
    file (or a folder holding one and no safetensors model) is dequantized into its cache folder
    (``gguf_cache``, default :func:`gguf_cache_dir`) once and that folder returned."""
    p = Path(path)
    if find_gguf(p) is not None:
        return ensure_gguf_parent(p, gguf_cache)
    return p
