import json
import subprocess
import sys

import pytest
from conftest import tiny_llama_config

from puzzlekit.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_json_super(capsys):
    rc, out, _ = run(capsys, "inspect", "super-49b", "--json", "--dtype", "fp8")
    assert rc == 0
    d = json.loads(out)
    assert d["num_layers"] == 80 and d["num_params"] == 49_867_145_216
    assert d["weight_bytes"] == d["num_params"]
    assert [42, 51] in d["attention_free_runs"]
    assert d["layers"][42]["attention"] == {"kind": "no_op", "num_kv_heads": None}
    assert d["layers"][0]["ffn"]["kind"] == "swiglu"
    assert d["kv_bytes_per_token"] == 49 * 2 * 8 * 128


def test_inspect_plain_llama(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(tiny_llama_config()))
    rc, out, _ = run(capsys, "inspect", str(tmp_path))
    assert rc == 0 and "attention-free runs: none" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["inspect", "/no/such/file"], "no such file"),
        (["inspect", "super-49b", "--dtype", "int4"], "invalid choice"),
        (["library", "show", "/no/such.json"], "no such file"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) if argv[0] == "frobnicate" or "--dtype" in argv else _null():
        rc, _, err = run(capsys, *argv)
        assert rc == 2
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_console_script_argparse_errors_one_line():
    p = subprocess.run([sys.executable, "-m", "puzzlekit", "inspect", "super-49b", "--dtype", "int4"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "invalid choice" in p.stderr


def test_library_import_show_validate(tmp_path, capsys, nvlabs_lib_path):
    out_lib = tmp_path / "lib.json"
    rc, out, _ = run(capsys, "library", "import", "--format", "nvlabs", str(nvlabs_lib_path), "-o", str(out_lib))
    assert rc == 0 and out_lib.exists()
    rc, out, _ = run(capsys, "library", "show", str(out_lib), "--json")
    s = json.loads(out)
    assert s["num_candidates"] == 1280 and s["metrics"] == ["kl_div", "lm_loss"]
    rc, out, _ = run(capsys, "library", "validate", str(out_lib))
    assert rc == 0 and "valid" in out


def test_library_validate_nan(tmp_path, capsys, nvlabs_library):
    nvlabs_library.save(tmp_path / "lib.json")
    d = json.loads((tmp_path / "lib.json").read_text())
    d["candidates"][5]["metrics"]["kl_div"] = None
    (tmp_path / "bad.json").write_text(json.dumps(d))
    rc, _, err = run(capsys, "library", "validate", str(tmp_path / "bad.json"))
    assert rc == 2 and "kl_div" in err and "candidates[5]" in err
