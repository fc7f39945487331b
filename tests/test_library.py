import json
import math

import numpy as np
import pytest
from conftest import tiny_llama_config
from hypothesis import given, settings
from hypothesis import strategies as st

import puzzlekit as pk
from puzzlekit import AttentionConfig, BlockConfig, BlockLibrary, FFNConfig, LibraryError, UnsafeInputError
from puzzlekit.formats import export_nvlabs, import_nvlabs

A8 = BlockConfig(AttentionConfig.gqa(2), FFNConfig.swiglu(256))
NOP = BlockConfig(AttentionConfig.make_no_op(), FFNConfig.make_no_op())
SC = pk.Scenario("h100-sxm", "fp8", 8, 128, 32)


def small_library(n=3) -> BlockLibrary:
    lib = BlockLibrary(n, pk.ParentSpec.from_hf_config(tiny_llama_config()))
    lib.add_scenario(SC)
    for i in range(n):
        lib.add(i, A8, {"kl_div": 0.0})
        lib.add(i, NOP, {"kl_div": 0.1 * (i + 1)})
    lib.add((0, 1), NOP, {"kl_div": 0.5})
    lib.set_costs(SC, A8, {"memory_mib": 10.0, "runtime_ms": 2.0})
    lib.set_costs(SC, NOP, {"memory_mib": 0.0, "runtime_ms": 0.0})
    return lib


def test_nvlabs_import(nvlabs_library):
    lib = nvlabs_library
    assert lib.num_layers == 80 and len(lib) == 1280
    assert lib.default_scenario == "h100-sxm/fp8/b256/p1000/d200/tp1"
    assert {"memory_mib", "runtime_ms", "num_params"} <= set(lib.cost_names)
    assert lib.metric_names == ["kl_div", "lm_loss"]
    kinds = {(c.block.attention.kind, c.block.ffn.kind) for c in lib.candidates}
    assert kinds == {("gqa", "swiglu"), ("gqa", "no_op"), ("no_op", "swiglu"), ("no_op", "no_op")}
    parent = next(c for c in lib.candidates if c.first == 0 and c.metrics["kl_div"] == 0.0)
    assert parent.block == BlockConfig(AttentionConfig.gqa(8), FFNConfig.swiglu(28672))


def test_nvlabs_round_trip(tmp_path, nvlabs_library):
    nvlabs_library.save(tmp_path / "lib.json")
    back = BlockLibrary.load(tmp_path / "lib.json")
    assert back.to_dict() == nvlabs_library.to_dict()
    export_nvlabs(back, tmp_path / "nv")
    again = import_nvlabs(tmp_path / "nv")
    assert again.to_dict()["candidates"] == nvlabs_library.to_dict()["candidates"]
    assert again.costs == nvlabs_library.costs


def test_save_load_and_matrices(tmp_path):
    lib = small_library()
    lib.validate()
    lib.save(tmp_path / "l.json")
    back = BlockLibrary.load(tmp_path / "l.json")
    assert back.to_dict() == lib.to_dict()
    m = back.cost_matrix(["memory_mib"])
    assert m.shape == (7, 1) and m[0, 0] == 10.0
    np.testing.assert_allclose(back.metric_vector("kl_div")[:2], [0.0, 0.1])
    assert back.candidates[-1].span == 2


def test_unknown_names_suggest():
    lib = small_library()
    with pytest.raises(LibraryError, match="did you mean 'kl_div'"):
        lib.metric_vector("kl_dv")
    with pytest.raises(LibraryError, match="did you mean 'memory_mib'"):
        lib.cost_matrix(["memory_mb"])


def test_validation_errors():
    lib = small_library()
    lib.candidates[0].metrics["kl_div"] = math.nan
    with pytest.raises(LibraryError, match="drop_nonfinite"):
        lib.validate()
    dropped = lib.validate(drop_nonfinite=True)
    assert len(dropped) == 1 and "non-finite kl_div" in dropped[0]
    with pytest.raises(LibraryError, match="duplicate"):
        lib.add(1, A8)
    lib2 = BlockLibrary(3)
    lib2.add(0, A8)
    with pytest.raises(LibraryError, match="layer 1 has no candidate"):
        lib2.validate()
    lib3 = small_library()
    lib3.costs[SC.name][A8.key]["memory_mib"] = -1
    with pytest.raises(LibraryError, match="finite and >= 0"):
        lib3.validate()
    lib4 = small_library()
    del lib4.costs[SC.name][NOP.key]["runtime_ms"]
    with pytest.raises(LibraryError, match="lacks cost 'runtime_ms'"):
        lib4.validate()


@pytest.mark.parametrize("path", ["../x.safetensors", "/etc/passwd", "a/../../b"])
def test_weight_paths_must_stay_inside(tmp_path, path):
    lib = small_library()
    lib.candidates[0].weights = path
    lib.save(tmp_path / "lib.json")
    with pytest.raises(UnsafeInputError):
        BlockLibrary.load(tmp_path / "lib.json")


@pytest.mark.parametrize("weights", [[], ["a.safetensors", "a.safetensors"], ["a.safetensors", 3], {"a": 1}])
def test_bad_weight_lists_are_refused(tmp_path, weights):
    d = small_library().to_dict()
    d["candidates"][0]["weights"] = weights
    p = tmp_path / "lib.json"
    p.write_text(json.dumps(d))
    with pytest.raises(LibraryError, match=r"candidates\[0\]\.weights"):
        BlockLibrary.load(p)


def test_weight_lists_stay_inside(tmp_path):
    lib = small_library()
    lib.candidates[0].weights = ("ok.safetensors", "../escape.safetensors")
    lib.save(tmp_path / "lib.json")
    with pytest.raises(UnsafeInputError):
        BlockLibrary.load(tmp_path / "lib.json")


def test_oversized_and_malformed_documents(tmp_path):
    p = tmp_path / "l.json"
    p.write_text("{" + " " * 100 + "}")
    from puzzlekit.io import read_json

    with pytest.raises(UnsafeInputError, match="limit"):
        read_json(p, max_bytes=10)
    p.write_text('{"schema_version": 1, "num_layers": 2, "candidates": [{"layers": [0]}]}')
    with pytest.raises(LibraryError, match=r"candidates\[0\].layers"):
        BlockLibrary.load(p)
    p.write_text('{"num_layers": NaN}')
    with pytest.raises(pk.PuzzlekitError, match="invalid JSON"):
        BlockLibrary.load(p)
    p.write_text(json.dumps({"layer_0": {}}))
    with pytest.raises(LibraryError, match="--format nvlabs"):
        BlockLibrary.load(p)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from([A8, NOP]),
                               st.floats(0, 10, allow_nan=False)), min_size=1, max_size=12),
        )
    )
)
def test_library_document_round_trip_property(tmp_path_factory, data):
    n, cands = data
    lib = BlockLibrary(n)
    lib.add_scenario(SC)
    for layer in range(n):
        lib.add(layer, NOP, {"kl_div": 1.0})
    for layer, block, kl in cands:
        if not any(c.first == layer and c.block == block for c in lib.candidates):
            lib.add(layer, block, {"kl_div": kl})
    for b in (A8, NOP):
        lib.set_costs(SC, b, {"memory_mib": 1.0})
    path = tmp_path_factory.mktemp("lib") / "lib.json"
    lib.save(path)
    assert BlockLibrary.load(path).to_dict() == lib.to_dict()


def test_architecture_from_choices():
    lib = small_library()
    arch = lib.architecture([0, 3, 5])
    assert [b.key for b in arch.blocks] == [A8.key, NOP.key, NOP.key]
    span = lib.architecture([6, 5])  # candidate 6 spans layers 0..1
    assert span.num_layers == 2
    with pytest.raises(LibraryError, match="exactly once"):
        lib.architecture([0, 6, 4])
    with pytest.raises(LibraryError, match="cover layers 0..1"):
        lib.architecture([0, 2])


def test_architecture_of_a_search_solution(nvlabs_library):
    sol = pk.search(nvlabs_library, "kl_div", {"memory_mib": 80000, "runtime_ms": 51200})
    spec = pk.ParentSpec.from_hf_config(tiny_llama_config(hidden_size=8192, num_attention_heads=64,
                                                          num_key_value_heads=8, intermediate_size=28672,
                                                          num_hidden_layers=80, vocab_size=128256))
    arch = nvlabs_library.architecture(sol.candidates, parent=spec)
    assert arch.num_layers == 80
    assert abs(sol.objective - 6.861455) < 1e-6


_NV_BLOCKS = [A8, NOP, BlockConfig(AttentionConfig.make_no_op(), FFNConfig.swiglu(128)),
              BlockConfig(AttentionConfig.gqa(1), FFNConfig.make_no_op()),
              BlockConfig(AttentionConfig.make_linear(), FFNConfig.make_linear())]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(range(len(_NV_BLOCKS))),
                       st.floats(0, 10, allow_nan=False), st.floats(0, 1e4, allow_nan=False)),
             min_size=1, max_size=15))))
def test_nvlabs_format_round_trip_property(tmp_path_factory, data):
    """export_nvlabs -> import_nvlabs keeps every candidate, metric and cost (linear sub-blocks included)."""
    n, cands = data
    spec = pk.ParentSpec.from_hf_config(tiny_llama_config())
    lib = BlockLibrary(n, spec)
    lib.add_scenario(SC)
    for layer in range(n):
        lib.add(layer, NOP, {"kl_div": 1.0, "lm_loss": 3.0})
    for layer, b, kl, _ in cands:
        block = _NV_BLOCKS[b]
        if not any(c.first == layer and c.block == block for c in lib.candidates):
            lib.add(layer, block, {"kl_div": kl, "lm_loss": 2.0 + kl})
    for i, block in enumerate(_NV_BLOCKS):
        cost = next((c[3] for c in cands if c[1] == i), 1.0)
        lib.set_costs(SC, block, {"memory_mib": cost, "runtime_ms": cost / 3,
                                  "attention_num_params": float(pk.accounting.attention_params(spec, block.attention)),
                                  "ffn_num_params": float(pk.accounting.ffn_params(spec, block.ffn))})
    folder = tmp_path_factory.mktemp("nv")
    export_nvlabs(lib, folder)
    back = import_nvlabs(folder, parent=spec)
    key = lambda c: (c.first, c.block.key)  # noqa: E731
    assert sorted((key(c), c.metrics) for c in back.candidates) == sorted((key(c), c.metrics) for c in lib.candidates)
    assert back.scenarios == lib.scenarios
    assert {b: back.costs[SC.name][b] for b in back.costs[SC.name]} == {
        b.key: lib.costs[SC.name][b.key] for b in {c.block for c in lib.candidates}}
