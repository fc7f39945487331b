"""GGUF export for llama.cpp: architecture ``deci``, per-layer heads and FFN widths, the tokenizer as it is.

llama.cpp's ``deci`` model (``src/models/deci.cpp`` in the vendored llama.cpp of llama-cpp-python
0.3.36) reads per-layer arrays ``deci.attention.head_count``, ``deci.attention.head_count_kv`` and
``deci.feed_forward_length``; a layer's kind follows from them:

* ``n_head == 0``: attention removed; ``n_head > 0, n_head_kv == 0``: linear attention (``attn_output``
  is the H x H matrix); otherwise GQA;
* ``n_ff == 0``: FFN removed.  The graph then ``continue``s past the layer *before adding the
  attention's output to the residual*, so a layer with attention and a removed FFN would be
  computed wrong (and abort as the last layer).  Such an FFN is written as an exact zero SwiGLU of
  width 1 (gate/up/down all zero: ``silu(0)·0`` then ``0·W_down`` add exactly nothing), which
  llama.cpp computes correctly at the cost of a norm and three 1-wide products.  The last layer gets
  the same treatment when its FFN is removed (the graph selects the output rows inside the FFN path).

Q and K are permuted for llama.cpp's interleaved RoPE exactly as its converter does
(``conversion/deci.py::DeciModel.permute``); Llama-3 RoPE scaling becomes the ``rope_freqs`` tensor
(``DeciModel.generate_extra_tensors``).

The tokenizer is written from the model folder's ``tokenizer.json`` as what it is (see
:func:`tokenizer_fields`): GPT-2-style byte-level BPE (``gpt2`` with the pre-tokenizer ``gpt-2``,
``smollm`` or ``llama-bpe``) or SentencePiece-style BPE with byte fallback (``llama``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..engines import EngineError, require_servable
from ..errors import ConfigError

__all__ = ["ZERO_FFN_WIDTH", "layer_plan", "tokenizer_fields", "write_gguf", "GGUF_DTYPES"]

#: Width of the zero FFN written for a removed FFN that llama.cpp would otherwise mis-compute.
ZERO_FFN_WIDTH = 1
#: puzzlekit dtype -> GGUF tensor type name.
GGUF_DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}

_LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                 "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def layer_plan(arch: Any) -> list[tuple[int, int, int, bool]]:
    """``(n_head, n_head_kv, n_ff, zero_ffn)`` per layer as llama.cpp's ``deci`` model reads them.

    Raises :class:`~puzzlekit.engines.EngineError` for what llama.cpp does not serve.
    """
    require_servable(arch, "llamacpp")
    p = arch.parent
    out = []
    last = arch.num_layers - 1
    for i, b in enumerate(arch.blocks):
        a, f = b.attention, b.ffn
        n_head = 0 if a.no_op else p.num_attention_heads
        n_kv = a.num_kv_heads if a.kind == "gqa" else 0
        zero = f.no_op and (not a.no_op or i == last)
        n_ff = ZERO_FFN_WIDTH if zero else (0 if f.no_op else f.intermediate_size)
        out.append((n_head, n_kv, n_ff, zero))
    return out


# ---- tokenizer --------------------------------------------------------------------------------------


def _pre_tokenizer(tj: dict, where: str) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json`` (src/llama-vocab.cpp)."""
    pt = tj.get("pre_tokenizer") or {}

    def byte_level(x: dict, regex: bool) -> bool:
        return (x.get("type") == "ByteLevel" and bool(x.get("use_regex", True)) == regex
                and not x.get("add_prefix_space", False))

    if byte_level(pt, True):
        return "gpt-2"
    items = pt.get("pretokenizers") if pt.get("type") == "Sequence" else None
    if items and len(items) == 2:
        first, second = items
        if first.get("type") == "Digits" and first.get("individual_digits") and byte_level(second, True):
            return "smollm"
        pattern = (first.get("pattern") or {}).get("Regex")
        if first.get("type") == "Split" and pattern == _LLAMA3_SPLIT and byte_level(second, False):
            return "llama-bpe"
    raise EngineError(
        f"{where}: the byte-level BPE pre-tokenizer {pt!r} is not one llama.cpp names (puzzlekit writes 'gpt-2' for a "
        "plain ByteLevel, 'smollm' for Digits + ByteLevel, 'llama-bpe' for Llama-3's Split + ByteLevel); llama.cpp "
        "would split the text differently, so nothing was written"
    )


def _probe_specials(tok_dir: Path) -> tuple[bool, bool]:
    """Whether the Hugging Face tokenizer adds BOS / EOS to a plain text (written so llama.cpp does the same)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True, trust_remote_code=False)
    ids = tok("a").input_ids
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return (bool(ids) and bos is not None and ids[0] == bos, len(ids) > 1 and eos is not None and ids[-1] == eos)


def tokenizer_fields(tok_dir: str | os.PathLike, vocab_size: int) -> dict[str, Any]:
    """What the GGUF says about the tokenizer in ``tok_dir`` (its ``tokenizer.json``).

    Returns ``{"model", "pre", "tokens", "types", "scores", "special"}`` where ``special`` is a
    ``gguf.SpecialVocab`` (merges, special ids, add-BOS/EOS, chat template).  Raises
    :class:`EngineError` for a tokenizer llama.cpp cannot reproduce.
    """
    import gguf

    from ..io import read_json

    tok_dir = Path(tok_dir)
    path = tok_dir / "tokenizer.json"
    if not path.is_file():
        raise EngineError(f"{tok_dir}: no tokenizer.json; llama.cpp needs the tokenizer inside the GGUF. Give the "
                          "folder of the parent's Hugging Face tokenizer (--tokenizer DIR)")
    tj = read_json(path, max_bytes=64 * 2**20, what="tokenizer.json")
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise EngineError(f"{path}: tokenizer model {model.get('type')!r}; puzzlekit writes BPE tokenizers for llama.cpp "
                          "(GPT-2-style byte-level or SentencePiece-style with byte fallback)")
    tt = gguf.TokenType
    add_bos, add_eos = _probe_specials(tok_dir)
    if model.get("byte_fallback"):
        vocab = gguf.LlamaHfVocab(tok_dir)
        tokens, scores, types = [], [], []
        for text, score, typ in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(typ)
        if vocab.vocab_size > vocab_size:
            raise EngineError(f"{path}: {vocab.vocab_size} tokens but the model's vocab_size is {vocab_size}")
        for i in range(len(tokens), vocab_size):
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(tt.UNUSED)
        special = gguf.SpecialVocab(tok_dir, load_merges=False, n_vocab=vocab_size)
        kind, pre = "llama", None
    else:
        if (tj.get("decoder") or {}).get("type") != "ByteLevel":
            raise EngineError(f"{path}: a BPE without byte fallback must decode byte-level (GPT-2 style); got decoder "
                              f"{tj.get('decoder')!r}")
        pre = _pre_tokenizer(tj, str(path))
        by_id: dict[int, tuple[str, int]] = {}
        for text, i in (model.get("vocab") or {}).items():
            by_id[int(i)] = (text, tt.NORMAL)
        for a in tj.get("added_tokens") or []:
            by_id[int(a["id"])] = (a["content"], tt.CONTROL if a.get("special") else tt.USER_DEFINED)
        if by_id and max(by_id) >= vocab_size:
            raise EngineError(f"{path}: token id {max(by_id)} is outside the model's vocab_size {vocab_size}")
        tokens, types = [], []
        for i in range(vocab_size):
            text, typ = by_id.get(i, (f"[PAD{i}]", tt.UNUSED))
            tokens.append(text)
            types.append(typ)
        scores = None
        special = gguf.SpecialVocab(tok_dir, load_merges=True, n_vocab=vocab_size)
        if not special.merges:
            raise EngineError(f"{path}: a byte-level BPE needs its merges; none found")
        kind = "gpt2"
    special.add_special_token["bos"] = add_bos
    special.add_special_token["eos"] = add_eos
    return {"model": kind, "pre": pre, "tokens": tokens, "types": types, "scores": scores, "special": special}


# ---- writer -----------------------------------------------------------------------------------------


def _permute(w: Any, n_head: int) -> Any:
    """HF's rotate-half Q/K rows -> llama.cpp's interleaved pairs (conversion/deci.py::DeciModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(spec: Any) -> Any:
    import torch

    rs = dict(spec.rope_scaling)
    dim = spec.head_dim
    freqs = 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rs.get("factor", 8.0)
    low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    low_wl, high_wl = old / low, old / high
    out = []
    for f in freqs.tolist():
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            s = (old / wl - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return torch.tensor(out, dtype=torch.float32)


def write_gguf(model: Any, path: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None, dtype: str = "fp32",
               name: str | None = None, no_vocab: bool = False) -> Path:
    """Write ``model`` (a :class:`~puzzlekit.model.PuzzleForCausalLM`) as a llama.cpp GGUF file, atomically.

    ``dtype``: ``fp32`` / ``fp16`` / ``bf16`` for the matrices (norms and RoPE factors stay F32).
    The architecture is checked first (:func:`layer_plan`), then the tokenizer; nothing is written
    when either is refused.  ``no_vocab=True`` (timing models only) writes no tokenizer: llama.cpp
    then takes token ids and has ``vocab_size`` dummy tokens (``src/llama-vocab.cpp``, ``"no_vocab"``).
    """
    import gguf
    import torch

    from ..io import atomic_path

    if dtype not in GGUF_DTYPES:
        raise ConfigError(f"GGUF dtype must be one of {sorted(GGUF_DTYPES)}, got {dtype!r}")
    arch = model.architecture
    spec = arch.parent
    plan = layer_plan(arch)
    if spec.rope_scaling and spec.rope_scaling.get("rope_type", spec.rope_scaling.get("type")) not in ("llama3", "default"):
        raise EngineError(f"RoPE scaling {dict(spec.rope_scaling)!r}: puzzlekit writes GGUF for plain RoPE and Llama-3 "
                          "scaling only")
    if spec.sliding_window is not None:
        raise EngineError("a sliding-window parent (Mistral) has no sliding window in llama.cpp's deci model")
    tok = tokenizer_fields(tokenizer_dir, spec.vocab_size) if tokenizer_dir is not None and not no_vocab else None
    if tok is None and not no_vocab:
        raise EngineError("llama.cpp needs the tokenizer inside the GGUF; give the folder of the parent's "
                          "Hugging Face tokenizer (tokenizer_dir / --tokenizer DIR)")
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_DTYPES[dtype])
    ftype = {"fp32": gguf.LlamaFileType.ALL_F32, "fp16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    H = spec.hidden_size

    def tname(kind: Any, i: int | None = None) -> str:
        return (names[kind].format(bid=i) if i is not None else names[kind]) + ".weight"

    tensors: list[tuple[str, Any, bool]] = []  # (name, fp32 tensor, is_matrix)
    tensors.append((tname(T.TOKEN_EMBD), sd["model.embed_tokens.weight"], True))
    tensors.append((tname(T.OUTPUT_NORM), sd["model.norm.weight"], False))
    if not spec.tie_word_embeddings:
        tensors.append((tname(T.OUTPUT), sd["lm_head.weight"], True))
    if spec.rope_scaling and spec.rope_scaling.get("rope_type", spec.rope_scaling.get("type")) == "llama3":
        tensors.append((tname(T.ROPE_FREQS), _llama3_rope_factors(spec), False))
    for i, (n_head, n_kv, n_ff, zero) in enumerate(plan):
        pre = f"model.layers.{i}."
        if n_head:
            tensors.append((tname(T.ATTN_NORM, i), sd[pre + "input_layernorm.weight"], False))
            if n_kv:
                tensors.append((tname(T.ATTN_Q, i), _permute(sd[pre + "self_attn.q_proj.weight"], n_head), True))
                tensors.append((tname(T.ATTN_K, i), _permute(sd[pre + "self_attn.k_proj.weight"], n_kv), True))
                tensors.append((tname(T.ATTN_V, i), sd[pre + "self_attn.v_proj.weight"], True))
                tensors.append((tname(T.ATTN_OUT, i), sd[pre + "self_attn.o_proj.weight"], True))
            else:
                tensors.append((tname(T.ATTN_OUT, i), sd[pre + "self_attn.linear_attn.weight"], True))
        if zero:
            tensors.append((tname(T.FFN_NORM, i), torch.ones(H), False))
            tensors.append((tname(T.FFN_GATE, i), torch.zeros(ZERO_FFN_WIDTH, H), True))
            tensors.append((tname(T.FFN_UP, i), torch.zeros(ZERO_FFN_WIDTH, H), True))
            tensors.append((tname(T.FFN_DOWN, i), torch.zeros(H, ZERO_FFN_WIDTH), True))
        elif n_ff:
            tensors.append((tname(T.FFN_NORM, i), sd[pre + "post_attention_layernorm.weight"], False))
            for kind, hf in ((T.FFN_GATE, "gate_proj"), (T.FFN_UP, "up_proj"), (T.FFN_DOWN, "down_proj")):
                tensors.append((tname(kind, i), sd[pre + f"mlp.{hf}.weight"], True))

    path = Path(path)
    if path.suffix != ".gguf":
        raise ConfigError(f"{path}: a GGUF file name ends in .gguf")
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "deci")
        w.add_name(name or "puzzlekit child")
        w.add_block_count(arch.num_layers)
        w.add_context_length(spec.max_position_embeddings)
        w.add_embedding_length(H)
        w.add_feed_forward_length([p[2] for p in plan])
        w.add_head_count([p[0] for p in plan])
        w.add_head_count_kv([p[1] for p in plan])
        w.add_layer_norm_rms_eps(spec.rms_norm_eps)
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
        w.add_rope_dimension_count(spec.head_dim)
        w.add_rope_freq_base(spec.rope_theta)
        w.add_vocab_size(spec.vocab_size)
        w.add_file_type(ftype)
        if tok is None:
            w.add_tokenizer_model("no_vocab")
        else:
            w.add_tokenizer_model(tok["model"])
            if tok["pre"]:
                w.add_tokenizer_pre(tok["pre"])
            w.add_token_list(tok["tokens"])
            w.add_token_types(tok["types"])
            if tok["scores"] is not None:
                w.add_token_scores(tok["scores"])
            tok["special"].add_to_gguf(w, quiet=True)
        for tn, t, is_matrix in tensors:
            if is_matrix and qtype != gguf.GGMLQuantizationType.F32:
                if qtype == gguf.GGMLQuantizationType.BF16:
                    data = t.contiguous().to(torch.bfloat16).view(torch.int16).numpy()
                else:
                    data = t.contiguous().to(torch.float16).numpy()
                w.add_tensor(tn, data, raw_dtype=qtype)
            else:
                w.add_tensor(tn, t.contiguous().numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path
