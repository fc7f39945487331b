"""Security: safe loading only (no pickle, no remote code), paths stay inside their folder, JSON size limit."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest

import puzzlekit as pk
from puzzlekit.errors import PuzzlekitError, UnsafeInputError

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

PKG = Path(pk.__file__).resolve().parent
SOURCES = sorted([*PKG.rglob("*.py"), *(PKG.parent / "solvers").rglob("*.py")])


class _Evil:
    """Unpickling this runs code that creates ``marker`` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _malicious_pickles(folder: Path, marker: Path) -> list[Path]:
    """Two malicious files: a raw pickle and a torch.save zip archive holding the payload."""
    raw = folder / "pytorch_model.bin"
    raw.write_bytes(pickle.dumps({"model.embed_tokens.weight": _Evil(marker)}))
    zipped = folder / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": _Evil(marker)}, zipped)
    return [raw, zipped]


def test_the_malicious_pickle_is_real(tmp_path):
    """Control: loading the crafted file unsafely does create the marker (so the tests below can fail)."""
    marker = tmp_path / "pwned"
    raw, zipped = _malicious_pickles(tmp_path, marker)
    pickle.loads(raw.read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(zipped, weights_only=False)
    assert marker.exists()


def _tiny_llama_folder(folder: Path, **over) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    if over:
        d = json.loads((folder / "config.json").read_text())
        d.update(over)
        (folder / "config.json").write_text(json.dumps(d))
    return folder


def test_pickle_checkpoints_are_refused_and_never_unpickled(tmp_path, reliability):
    from puzzlekit.model import load_block_weights, load_parent, make_layer

    marker = tmp_path / "pwned"
    model_dir = tmp_path / "model"
    _tiny_llama_folder(model_dir)
    os.remove(model_dir / "model.safetensors")
    raw, zipped = _malicious_pickles(model_dir, marker)
    cases = 0
    # 1) a model folder holding only pickles
    with pytest.raises(UnsafeInputError, match=r"pickle.*safetensors only"):
        load_parent(model_dir)
    cases += 1
    # 2) a pickle renamed to model.safetensors
    (model_dir / "model.safetensors").write_bytes(raw.read_bytes())
    with pytest.raises(PuzzlekitError, match="model.safetensors"):
        load_parent(model_dir)
    cases += 1
    # 3) a pickle as block weights (both formats, and renamed .safetensors)
    spec = pk.ParentSpec.from_hf_config(json.loads((model_dir / "config.json").read_text()))
    layer = make_layer(spec, spec.parent_block())
    for f in (raw, zipped, model_dir / "model.safetensors"):
        with pytest.raises(PuzzlekitError, match=re.escape(f.name) + ".*safetensors"):
            load_block_weights(layer, f)
        cases += 1
    # 4) the CLI on that folder: one line, exit 2
    from puzzlekit.cli import main

    assert main(["inspect", str(model_dir)]) in (0, 2)  # config only: nothing to unpickle
    assert not marker.exists(), "a pickle was unpickled"
    reliability("security", "malicious pickle (.bin/.pt/renamed .safetensors) as parent checkpoint or block "
                            "weights: refused with a message, payload never runs", cases)


def test_distill_checkpoint_optimizer_pickle_is_refused(tmp_path, reliability):
    """A tampered optimizer.pt in a GKD checkpoint is read with weights_only=True: refused, not run."""
    from _distill_helpers import pruned_child, tiny_parent, token_rows

    from puzzlekit.distill import DistillConfig, distill

    parent = tiny_parent()
    train = token_rows(16, 8, seed=1)
    cfg = DistillConfig(max_steps=2, batch_size=4, output_dir=str(tmp_path / "gkd"), save_every=1, eval_every=0)
    distill(pruned_child(parent), parent, train, cfg, stop_after=1)
    ck = sorted((tmp_path / "gkd" / "checkpoints").glob("step_*"))[-1]
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "payload": _Evil(marker)}, ck / "optimizer.pt")
    with pytest.raises(UnsafeInputError, match="optimizer.pt"):
        distill(pruned_child(parent), parent, train, cfg)
    assert not marker.exists()
    reliability("security", "malicious optimizer.pt in a GKD checkpoint: refused (weights_only=True), payload "
                            "never runs", 1)


def test_source_never_sets_trust_remote_code_nor_unsafe_loads(reliability):
    bad = []
    for f in SOURCES:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if code.lstrip().startswith(('"', "f\"", "'")):  # inside a message string
                continue
            if "trust_remote_code" in code and not re.search(r"trust_remote_code\s*=\s*False", code):
                bad.append(f"{f}:{i}: {line.strip()}")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                bad.append(f"{f}:{i}: {line.strip()}")
            if re.search(r"\bnp\.load\(", code) and "allow_pickle=False" not in code:
                bad.append(f"{f}:{i}: {line.strip()}")
            if re.search(r"\b(pickle|dill|cloudpickle|joblib)\.load", code) or "import pickle" in code:
                bad.append(f"{f}:{i}: {line.strip()}")
            if re.search(r"from_pretrained\(", code) and "Puzzle" not in code and "local_files_only=True" not in code:
                bad.append(f"{f}:{i}: {line.strip()} (hub/remote loading: pass local_files_only=True)")
    assert not bad, "\n".join(bad)
    reliability("security", "package source: no trust_remote_code=True, torch.load only with weights_only=True, "
                            "np.load only with allow_pickle=False, no pickle", len(SOURCES))


# The only places allowed to parse JSON directly, and why.
_JSON_ALLOWED = {
    "io.py": "read_json itself (size-checked before parsing)",
    "rundir.py": "journal lines, each one record written by this package",
    "bld/job.py": "the metadata string of a safetensors header (bounded by safetensors)",
    "post/data.py": "JSONL rows, read line by line, each line at most MAX_JSON_BYTES",
    "_isolated.py": "the header and the answer exchanged with this package's own child interpreter (solvers/)",
    "corpus.py": "the metadata string of a DomainData .npz this package wrote (read with allow_pickle=False)",
}


def test_every_json_reader_goes_through_read_json(reliability):
    bad = []
    for f in SOURCES:
        rel = f.relative_to(PKG).as_posix() if PKG in f.parents else f.name
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\bjson\.loads?\(", code) and rel not in _JSON_ALLOWED:
                bad.append(f"{f}:{i}: {line.strip()}")
    assert not bad, "JSON parsed outside puzzlekit.io.read_json:\n" + "\n".join(bad)
    reliability("security", "package source: every JSON file read goes through the size-limited read_json",
                len(SOURCES))


def test_auto_map_remote_code_is_never_executed(tmp_path, reliability):
    from puzzlekit.cli import main
    from puzzlekit.data import load_tokenizer
    from puzzlekit.model import load_parent
    from puzzlekit.model.parent import puzzle_config_from_hf

    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    code = f"open({str(marker)!r}, 'w').close()\n"
    _tiny_llama_folder(folder, auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                                         "AutoTokenizer": ["evil.EvilTok", None]})
    (folder / "evil.py").write_text(code)
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTok", None]},
                                                              "tokenizer_class": "EvilTok"}))
    cases = 0
    m = load_parent(folder)
    assert m.config.num_hidden_layers == 2
    cases += 1
    puzzle_config_from_hf(folder)
    pk.Architecture.from_config(folder)
    cases += 2
    try:
        load_tokenizer(folder)
    except Exception:  # refusing is fine; running evil.py is not
        pass
    cases += 1
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["inspect", str(folder)])
    cases += 1
    assert not marker.exists(), "remote code from auto_map was executed"
    reliability("security", "config/tokenizer with auto_map pointing at a local .py: never imported "
                            "(load_parent, config, tokenizer, CLI)", cases)


def _lib_with_weights(root: Path, weights: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lib = pk.BlockLibrary(1, pk.ParentSpec.from_hf_config({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 64}))
    d = lib.to_dict()
    blk = pk.BlockConfig(pk.AttentionConfig.gqa(2), pk.FFNConfig.swiglu(64))
    lib.add(0, blk, {"kl_div": 0.0})
    d = lib.to_dict()
    d["candidates"][0]["weights"] = weights
    (root / "library.json").write_text(json.dumps(d))
    return root / "library.json"


def test_weight_paths_cannot_leave_the_library_folder(tmp_path, reliability):
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"x")
    bad = ["../secret.safetensors", "w/../../secret.safetensors", str(outside), "/etc/passwd", "\\\\server\\x",
           "C:\\x.safetensors", ""]
    cases = 0
    for i, w in enumerate(bad):
        p = _lib_with_weights(tmp_path / f"lib{i}", w)
        with pytest.raises(PuzzlekitError) as ei:
            pk.BlockLibrary.load(p)
        assert "weights" in str(ei.value), ei.value
        cases += 1
    # a symlink inside the folder that points outside
    root = tmp_path / "libsym"
    (root / "w").mkdir(parents=True)
    os.symlink(outside, root / "w" / "b.safetensors")
    p = _lib_with_weights(root, "w/b.safetensors")
    with pytest.raises(UnsafeInputError, match="outside"):
        pk.BlockLibrary.load(p)
    cases += 1
    # a symlinked folder escaping
    root = tmp_path / "libsym2"
    root.mkdir()
    os.symlink(tmp_path, root / "up")
    p = _lib_with_weights(root, "up/secret.safetensors")
    with pytest.raises(UnsafeInputError, match="outside"):
        pk.BlockLibrary.load(p)
    cases += 1
    # a safetensors index naming a shard outside the model folder
    from puzzlekit.model.parent import checkpoint_files

    md = tmp_path / "m"
    md.mkdir()
    (md / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../secret.safetensors"}}))
    with pytest.raises(UnsafeInputError, match="outside"):
        checkpoint_files(md)
    cases += 1
    # a fine relative path is accepted
    ok = _lib_with_weights(tmp_path / "okl", "w/b0.safetensors")
    lib = pk.BlockLibrary.load(ok)
    assert lib.weights_path(0) == (tmp_path / "okl" / "w" / "b0.safetensors").resolve()
    reliability("security", "library weight paths and safetensors shards outside the folder (../, absolute, UNC, "
                            "drive, empty, symlinked file and folder): refused", cases)


def test_oversized_json_is_refused_before_parsing(tmp_path, monkeypatch, reliability):
    import puzzlekit.io as pio

    parsed = []
    real = pio.json.loads
    monkeypatch.setattr(pio.json, "loads", lambda *a, **k: parsed.append(1) or real(*a, **k))
    big = tmp_path / "big"
    big.mkdir()
    cases = 0
    # a sparse file just over each limit: the size check must refuse it without reading/parsing
    targets = [
        ("library.json", lambda p: pk.BlockLibrary.load(p), pio.MAX_JSON_BYTES),
        ("config.json", lambda p: pk.Architecture.from_config(p), 16 * 1024 * 1024),
        ("config.json", lambda p: pk.Architecture.from_config(p.parent), 16 * 1024 * 1024),
    ]
    for name, fn, limit in targets:
        p = big / name
        with open(p, "wb") as f:
            f.truncate(limit + 1)
        with pytest.raises(UnsafeInputError, match=r"over the .*limit"):
            fn(p)
        cases += 1
    from puzzlekit.model import load_parent

    with pytest.raises(UnsafeInputError, match=r"over the .*limit"):
        load_parent(big)
    cases += 1
    from puzzlekit.cli import main

    assert main(["library", "show", str(big / "library.json")]) == 2
    cases += 1
    assert parsed == [], "an oversized document reached the JSON parser"
    reliability("security", "JSON documents over the size limit (library, config, model folder, CLI): refused "
                            "before parsing", cases)
