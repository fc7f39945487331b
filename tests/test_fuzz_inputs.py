"""Fuzzed bad input: only puzzlekit's own error types escape, each naming what to fix."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import SUPER_49B, sh, tiny_llama_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import puzzlekit as pk
from puzzlekit.cli import main

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

_BASE_LIB: dict | None = None


def _base_library_doc() -> dict:
    global _BASE_LIB
    if _BASE_LIB is None:
        lib = pk.BlockLibrary(3, pk.ParentSpec.from_hf_config(tiny_llama_config()))
        sc = pk.Scenario("h100-sxm", "fp8", 8, 128, 32)
        lib.add_scenario(sc)
        a = pk.BlockConfig(pk.AttentionConfig.gqa(2), pk.FFNConfig.swiglu(256))
        n = pk.BlockConfig(pk.AttentionConfig.make_no_op(), pk.FFNConfig.make_no_op())
        for i in range(3):
            lib.add(i, a, {"kl_div": 0.0})
            lib.add(i, n, {"kl_div": 1.0})
        lib.set_costs(sc, a, {"memory_mib": 1.0})
        lib.set_costs(sc, n, {"memory_mib": 0.0})
        _BASE_LIB = lib.to_dict()
    return copy.deepcopy(_BASE_LIB)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, path, value, delete):
    if not path:
        return value
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_library_documents(data, tmp_path_factory, reliability):
    doc = _base_library_doc()
    paths = list(_paths(doc))
    path = data.draw(st.sampled_from(paths))
    value = data.draw(json_values)
    delete = data.draw(st.booleans())
    doc = _mutate(doc, path, value, delete)
    p = tmp_path_factory.mktemp("fz") / "lib.json"
    p.write_text(json.dumps(doc))
    try:
        pk.BlockLibrary.load(p)
    except pk.PuzzlekitError as e:
        assert str(e).strip()
    reliability("bad input", "library documents with one field replaced by random JSON or deleted", 400)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_nemotron_nas_configs(data, reliability):
    doc = json.loads(SUPER_49B.read_text())
    doc["block_configs"] = doc["block_configs"][:6]
    doc["num_hidden_layers"] = 6
    paths = [p for p in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    doc = _mutate(doc, path, data.draw(json_values), data.draw(st.booleans()))
    try:
        a = pk.Architecture.from_config(doc)
        pk.count(a)
    except pk.PuzzlekitError as e:
        assert str(e).strip()
    reliability("bad input", "Nemotron-NAS config.json with one field replaced by random JSON or deleted", 300)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(over=st.dictionaries(st.sampled_from(list(tiny_llama_config()) + ["head_dim", "attention_bias"]), json_values,
                       max_size=4))
def test_fuzz_hf_configs(over, reliability):
    try:
        pk.Architecture.from_config(tiny_llama_config(**over))
    except pk.PuzzlekitError as e:
        assert str(e).strip()
    reliability("bad input", "Llama config.json with random values in known fields", 200)


ARGS = st.lists(
    st.sampled_from(["inspect", "library", "show", "validate", "import", "export", "super-49b", "--json",
                     "--dtype", "fp8", "int4", "-o", "/nonexistent/x.json", "--format", "nvlabs", "--drop-nonfinite",
                     "/no/such", "", "--scenario", "ultra-253b"]),
    max_size=6,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=ARGS)
def test_fuzz_cli_arguments(argv, capsys, reliability):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: usage errors exit 2 with one line; --help/--version exit 0
        rc = e.code
    _, err = capsys.readouterr()
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        assert "Traceback" not in err and err.strip().count("\n") == 0, err
    reliability("bad input", "random CLI argument lists (inspect / library)", 200)


@pytest.fixture
def immutable_dir(tmp_path):
    """A folder nobody, root included, can create files in (chattr +i)."""
    d = tmp_path / "ro"
    d.mkdir()
    yield d
    sh("chattr", "-i", str(d))


@pytest.fixture
def tiny_disk(tmpfs_factory):
    """A 256 KiB tmpfs: a real full disk."""
    return tmpfs_factory("256k")


def test_read_only_run_directory(immutable_dir, reliability):
    from puzzlekit.io import atomic_write_json

    atomic_write_json(immutable_dir / "doc.json", {"v": 1})
    if not sh("chattr", "+i", str(immutable_dir)):
        pytest.skip("chattr +i is not supported on this filesystem")
    with pytest.raises(pk.PuzzlekitError, match="cannot write"):
        atomic_write_json(immutable_dir / "doc.json", {"v": 2})
    assert json.loads((immutable_dir / "doc.json").read_text()) == {"v": 1}
    reliability("faults", "read-only run directory: clear error, previous document intact", 1)


def test_full_disk_keeps_previous_document(tiny_disk, reliability):
    from puzzlekit.io import atomic_write_json
    from puzzlekit.rundir import Journal

    atomic_write_json(tiny_disk / "doc.json", {"v": 1})
    with pytest.raises(pk.PuzzlekitError, match="disk space"):
        atomic_write_json(tiny_disk / "doc.json", {"v": "x" * 1_000_000})
    assert json.loads((tiny_disk / "doc.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["doc.json"]  # no temp file left behind
    j = Journal(tiny_disk / "journal.jsonl")
    j.append({"kind": "k", "item": "a", "state": "COMPLETE"})
    with pytest.raises(pk.PuzzlekitError, match="free disk space"):
        for _ in range(10_000):
            j.append({"kind": "k", "item": "b" * 200, "state": "RUNNING"})
    assert j.states("k")["a"]["state"] == "COMPLETE"
    reliability("faults", "full disk (256 KiB tmpfs): clear error, previous document and journal intact", 2)
