"""Two-domain corpora split by document: the standard library's text, the split, the packed data."""

from __future__ import annotations

import numpy as np
import pytest

from puzzlekit.corpus import (
    DomainData,
    build_domain_data,
    python_stdlib_documents,
    split_documents,
    spread_cap,
)
from puzzlekit.data import DataError


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = ["def f(x):\n    return x + 1\n", "To be, or not to be, that is the question.\n"] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def _docs(prefix, n, size=400):
    """Each document repeats its own name, so any row shows which documents it came from."""
    return [(f"{prefix}{i:03d}", f"{prefix}{i:03d} " * size) for i in range(n)]


def test_stdlib_documents_are_source_and_reference_text_without_test_suites():
    docs = python_stdlib_documents()
    names = [n for n, _ in docs]
    assert names == sorted(names, key=lambda n: (not n.startswith("src/"), n)) and len(set(names)) == len(names)
    src = [n for n in names if n.startswith("src/")]
    assert "src/json/decoder.py" in src and "src/os.py" in src
    assert not [n for n in src if "/test/" in n or "/tests/" in n or n.startswith(("src/test/", "src/encodings/"))]
    assert any(n.startswith("doc/") for n in names)  # pydoc_data.topics, the text help() shows
    with pytest.raises(DataError, match="no such folder"):
        python_stdlib_documents("/no/such/stdlib")


def test_split_is_by_whole_document_seeded_and_stable():
    docs = _docs("a", 40)
    sp = split_documents(docs, valid_fraction=0.1, test_fraction=0.2, seed=3)
    assert [len(sp[k]) for k in ("train", "valid", "test")] == [28, 4, 8]
    names = {k: {n for n, _ in v} for k, v in sp.items()}
    assert not (names["train"] & names["valid"]) and not (names["train"] & names["test"])
    assert set().union(*names.values()) == {n for n, _ in docs}
    assert split_documents(list(reversed(docs)), valid_fraction=0.1, test_fraction=0.2, seed=3) == sp
    assert split_documents(docs, valid_fraction=0.1, test_fraction=0.2, seed=4) != sp
    with pytest.raises(DataError, match="unique"):
        split_documents(docs + docs[:1])
    with pytest.raises(DataError, match="too few"):
        split_documents(docs[:2], valid_fraction=0.5, test_fraction=0.4)


def test_domain_data_keeps_test_documents_out_of_what_the_stages_see(tokenizer, tmp_path):
    doms = {"a": _docs("a", 20), "b": _docs("b", 30, size=200)}
    dd = build_domain_data(doms, tokenizer, seq_len=32, train_tokens=2048, valid_tokens=256, test_tokens=512,
                           valid_fraction=0.1, test_fraction=0.2, seed=0)
    assert dd.train.shape == (128, 32) and dd.valid.shape == (16, 32)  # 64 + 64 rows, 8 + 8
    assert {k: v.shape for k, v in dd.test.items()} == {"a": (16, 32), "b": (16, 32)}
    meta = dd.meta["domains"]
    for d in ("a", "b"):
        used = {s: set(meta[d][s]["names"]) for s in ("train", "valid", "test")}
        assert not (used["test"] & (used["train"] | used["valid"])) and not (used["train"] & used["valid"])
    # the rows hold only their split's documents (each document repeats its name)
    import re

    def seen(rows):
        return set(re.findall(r"[ab]\d{3}", " ".join(tokenizer.decode(r) for r in rows)))

    for d in ("a", "b"):
        assert seen(dd.test[d]) <= set(meta[d]["test"]["names"]) and seen(dd.test[d])
    assert seen(dd.train) <= set(meta["a"]["train"]["names"]) | set(meta["b"]["train"]["names"])
    assert seen(dd.valid) <= set(meta["a"]["valid"]["names"]) | set(meta["b"]["valid"]["names"])
    td = dd.token_data()
    assert np.array_equal(td.train, dd.train) and np.array_equal(td.heldout, dd.valid)
    dd.save(tmp_path / "d.npz")
    back = DomainData.load(tmp_path / "d.npz")
    assert back.fingerprint == dd.fingerprint and back.meta == dd.meta and back.seq_len == 32
    again = build_domain_data(doms, tokenizer, seq_len=32, train_tokens=2048, valid_tokens=256, test_tokens=512,
                              valid_fraction=0.1, test_fraction=0.2, seed=0)
    assert again.fingerprint == dd.fingerprint
    with pytest.raises(DataError, match="domain name"):
        build_domain_data({"a__b": doms["a"]}, tokenizer, seq_len=32)


def test_spread_takes_a_window_of_every_document_instead_of_the_first_whole_ones(tokenizer):
    import re

    from puzzlekit.corpus import _window

    assert spread_cap(None, 5, 32) is None and spread_cap(512, 0, 32) is None
    assert spread_cap(4096, 5, 256) == 820 and spread_cap(4096, 69, 256) == 256  # at least one row per document
    ids = np.arange(1000)
    for name in ("x", "y", "z"):  # a contiguous slice at a seeded offset within the document
        w = _window(ids, 100, name, 0)
        assert len(w) == 100 and np.array_equal(w, np.arange(w[0], w[0] + 100)) and 0 <= w[0] <= 900
    assert len({int(_window(ids, 100, n, 0)[0]) for n in "abcdefgh"}) > 1
    assert np.array_equal(_window(ids, 100, "x", 0), _window(ids, 100, "x", 0))
    assert np.array_equal(_window(ids[:50], 100, "x", 0), ids[:50])  # a short document whole

    def seen(rows):
        return set(re.findall(r"a\d{3}", " ".join(tokenizer.decode(r) for r in rows)))

    doms = {"a": _docs("a", 40)}  # 4 test documents of ~2K tokens each; a 512-token test budget
    kw = dict(seq_len=32, train_tokens=2048, valid_tokens=256, test_tokens=512, valid_fraction=0.1,
              test_fraction=0.1, seed=0)
    whole = build_domain_data(doms, tokenizer, **kw)
    spread = build_domain_data(doms, tokenizer, spread=True, **kw)
    m0, m1 = whole.meta["domains"]["a"], spread.meta["domains"]["a"]
    assert m0["test"]["used"] == 1 and len(seen(whole.test["a"])) == 1  # the first document fills the budget
    assert m1["test"]["used"] == 4 and seen(spread.test["a"]) == set(m1["test"]["names"])  # every document
    assert m1["test"]["doc_cap"] == 128 and spread.test["a"].shape == whole.test["a"].shape == (16, 32)
    assert m1["train"]["used"] > m0["train"]["used"] and spread.meta["spread"] and not whole.meta["spread"]
    assert set(m1["test"]["names"]) == {n for n, _ in split_documents(doms["a"], valid_fraction=0.1,
                                                                      test_fraction=0.1)["test"]}
    again = build_domain_data(doms, tokenizer, spread=True, **kw)
    assert again.fingerprint == spread.fingerprint != whole.fingerprint
