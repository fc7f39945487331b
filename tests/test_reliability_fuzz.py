"""Fuzzed CLI arguments for the newer commands, scenario strings and model configs: only puzzlekit's
own errors escape; the CLI exits 2 with one line on stderr and no traceback."""

from __future__ import annotations

import json

from conftest import SUPER_49B
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import puzzlekit as pk
from puzzlekit.cli import main

TOKENS = ["search", "sweep", "profile", "build-library", "score", "fuse", "assemble", "solvers", "super-49b",
          "--budget", "memory_mib=1", "runtime_ms<=-5", "x=nan", "=", "--objective", "kl_div", "--solver", "nope",
          "highs", "--time-limit", "-1", "inf", "--scenario", "h100:fp8:bs8", "bogus", "--json", "--run", "/no/run",
          "--parent", "/no/model", "--data", "--tokens", "0", "-3", "1e99", "--batch-size", "--library",
          "/no/lib.json", "--target", "2", "--points", "abc", "--out", "/proc/x", "--mode", "coupled", ""]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=7))
def test_fuzz_cli_arguments_of_every_command(argv, capsys, reliability):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    _, err = capsys.readouterr()
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        assert "Traceback" not in err and err.strip() and err.strip().count("\n") == 0, (argv, err)
    reliability("bad input", "random CLI argument lists (search / sweep / profile / build-library / score / fuse / "
                             "assemble / solvers)", 300)


_SC_LIB = None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=st.text(max_size=24) | st.lists(st.sampled_from(["h100-sxm", "fp8", "b8", "p128", "d32", "tp1", "x", "",
                                                            "-1", "nan"]), max_size=6).map("/".join),
       d=st.dictionaries(st.sampled_from(["hardware", "dtype", "batch", "prefill", "decode", "tp", "x"]),
                         st.none() | st.integers(-3, 10) | st.text(max_size=4) | st.floats(), max_size=6))
def test_fuzz_scenario_strings_and_documents(s, d, reliability):
    global _SC_LIB
    if _SC_LIB is None:
        _SC_LIB = pk.BlockLibrary(1, pk.ParentSpec.from_hf_config({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 128}))
        _SC_LIB.add_scenario(pk.Scenario("h100-sxm", "fp8", 8, 128, 32))
    try:
        _SC_LIB.resolve_scenario(s)
    except pk.PuzzlekitError as e:
        assert repr(s)[1:-1][:10] in str(e) or s == "" or str(e).strip()
    try:
        pk.Scenario.from_dict(d)
    except pk.PuzzlekitError as e:
        assert "scenario" in str(e)
    reliability("bad input", "random scenario names and scenario documents", 200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_nas_configs_for_the_model(data, reliability):
    from puzzlekit.model.parent import puzzle_config_from_hf

    doc = json.loads(SUPER_49B.read_text())
    doc["block_configs"] = doc["block_configs"][:3]
    doc["num_hidden_layers"] = 3
    key = data.draw(st.sampled_from(["hidden_size", "num_attention_heads", "vocab_size", "rope_theta", "rope_scaling",
                                     "block_configs", "num_hidden_layers", "rms_norm_eps", "max_position_embeddings",
                                     "num_key_value_heads", "torch_dtype"]))
    doc[key] = data.draw(st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=5)
                         | st.floats(allow_nan=True) | st.lists(st.integers(), max_size=2))
    try:
        puzzle_config_from_hf(doc)
    except pk.PuzzlekitError as e:
        assert str(e).strip()
    reliability("bad input", "Nemotron-NAS config.json for the model (PuzzleConfig) with one field randomised", 150)
