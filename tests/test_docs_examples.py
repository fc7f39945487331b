"""Every Python and shell example in README.md and docs/*.md runs here (issue 21): a changed signature
breaks a test, not a user.

How the docs are read
* A fenced block tagged ``python`` runs in-process; the blocks of one file run in order in one
  namespace (later blocks use what earlier ones made).  ``bash`` / ``sh`` / ``shell`` / ``console``
  blocks run with bash (``set -e``), ``puzzlekit`` and ``python`` being this interpreter's.
* Other tags (``text``, ``json``, ``yaml``, ...) are not run; an untagged fence is an error (tag it).
* Every line of any block that starts with ``puzzlekit SUBCOMMAND`` is checked against the real
  argument parser: the sub-command exists and so does every ``--flag`` shown.
* The examples run in a fresh folder per file holding what they name: ``my-llama/`` (a tiny random
  Llama with a character tokenizer), ``corpus/`` (this repository's own markdown as text),
  ``Llama-3.3-70B/config.json`` (the real dimensions, no weights), ``super/config.json`` (the bundled
  Super-49B config), ``PUZZLE_DIR/`` (a small ModelOpt puzzle folder) and, when ``../shared/data`` has
  it, ``puzzle-llama-3.3-70b-block-library/`` (NVIDIA's library, read in place).

Marks: an HTML comment on the line just above a fence,

* ``<!-- doc-test: skip REASON -->``: not run (the reason is required: large data, network, GPUs);
* ``<!-- doc-test: needs nvidia-library -->``: runs only where NVIDIA's library is found
  (``needs smollm2``: where the SmolLM2 GGUF is already in puzzlekit's cache; ``needs llama-cpp``: where
  llama-cpp-python is installed, which CI builds best effort);
* ``<!-- doc-test: slow -->``: runs only with ``-m slow`` (the file's other blocks run by default);
* ``<!-- doc-test: synopsis -->``: a usage summary with placeholders (shell): only the parser check.

Several marks: one comment line each, directly above the fence.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import NVLABS_LIB, ROOT, SUPER_49B

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell", "console"}
INERT = {"text", "json", "yaml", "yml", "toml", "csv", "diff", "ini", "jsonl", "output"}
MARKS = {"skip", "needs", "slow", "synopsis"}


def _smollm2_cached() -> bool:
    from puzzlekit.fetch import SMOLLM2_GGUF, default_cache_dir

    return (default_cache_dir() / SMOLLM2_GGUF.folder / SMOLLM2_GGUF.name).exists()


def _llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


#: data or packages an example may need, found in place (never downloaded by the tests)
RESOURCES = {"nvidia-library": lambda: (NVLABS_LIB / "block_library.json").exists(),
             "smollm2": _smollm2_cached, "llama-cpp": _llama_cpp_installed}
_FENCE = re.compile(r"^(\s*)```(.*)$")
_MARK = re.compile(r"^\s*<!--\s*doc-test:\s*([\w-]+)\s*(.*?)\s*-->\s*$")

#: Llama-3.3-70B's published dimensions (its config.json, without weights)
LLAMA_70B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
    "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16",
}


@dataclass
class Block:
    file: Path
    line: int
    lang: str
    code: str
    marks: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return (self.lang in PYTHON or self.lang in SHELL) and not ({"skip", "synopsis"} & set(self.marks))


def parse(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with their marks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, info = m.group(1), m.group(2).strip()
        lang = info.split()[0].lower() if info else ""
        marks: dict[str, str] = {}
        j = i - 1
        while j >= 0 and _MARK.match(lines[j]):  # one mark per line, any number of lines above the fence
            mm = _MARK.match(lines[j])
            marks[mm.group(1)] = mm.group(2)
            j -= 1
        body = []
        fence_line = i + 1
        i += 1
        while i < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i >= len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{len(lines)}: unclosed code fence")
        out.append(Block(path, fence_line, lang, "\n".join(body) + "\n", marks))
        i += 1
    return out


ALL = {p: parse(p) for p in DOCS}


# ---- fast checks -----------------------------------------------------------------------------
def test_every_fence_is_tagged_and_every_mark_is_known():
    bad = []
    for blocks in ALL.values():
        for b in blocks:
            if b.lang not in PYTHON | SHELL | INERT:
                bad.append(f"{b.where}: fence tagged {b.lang!r}: tag it python / bash (run) or text (not run)")
            for mark, arg in b.marks.items():
                if mark not in MARKS:
                    bad.append(f"{b.where}: unknown doc-test mark {mark!r}; known: {sorted(MARKS)}")
                if mark == "skip" and not arg:
                    bad.append(f"{b.where}: 'doc-test: skip' needs a reason")
                if mark == "needs" and arg not in RESOURCES:
                    bad.append(f"{b.where}: 'doc-test: needs {arg}': known resources {sorted(RESOURCES)}")
                if mark == "synopsis" and b.lang not in SHELL:
                    bad.append(f"{b.where}: a synopsis is a shell block")
    assert not bad, "\n".join(bad)
    assert sum(b.runnable for bs in ALL.values() for b in bs) >= 20  # the harness sees the examples


def _cli_lines() -> list[tuple[Block, str]]:
    out = []
    for blocks in ALL.values():
        for b in blocks:
            for raw in b.code.splitlines():
                line = raw.split(" #", 1)[0].strip().lstrip("$ ").strip()
                for part in re.split(r"&&|\|\|?|;", line):
                    part = part.strip()
                    if part.startswith("puzzlekit ") or part.startswith("python -m puzzlekit "):
                        out.append((b, part))
    return out


def cli_problems(lines: list[tuple[Block, str]]) -> list[str]:
    """What is wrong with each ``puzzlekit ...`` line: an unknown sub-command or option."""
    from puzzlekit.cli import build_parser

    parser = build_parser()
    bad = []
    for b, line in lines:
        toks = [t.strip("[]|") for t in line.replace("[", " [").replace("]", "] ").replace("|", " | ").split()]
        toks = [t for t in toks if t and t not in ("|", "...", "…")]
        toks = toks[3:] if toks[0] == "python" else toks[1:]
        p = parser
        while toks and toks[0].startswith("-"):  # global flags
            if toks[0] not in p._option_string_actions:
                bad.append(f"{b.where}: `{line}`: puzzlekit has no option {toks[0]}")
            toks = toks[1:]
        while toks:
            subs = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
            if not subs or toks[0] not in subs[0].choices:
                break
            p = subs[0].choices[toks[0]]
            toks = toks[1:]
        if p is parser:
            bad.append(f"{b.where}: `{line}`: no such sub-command")
            continue
        for t in toks:
            if re.match(r"^--?[A-Za-z]", t):
                flag = t.split("=", 1)[0]
                if flag not in p._option_string_actions:
                    bad.append(f"{b.where}: `{line}`: {p.prog} has no option {flag}")
    return bad


def test_every_cli_line_in_the_docs_matches_the_parser():
    lines = _cli_lines()
    assert len(lines) >= 20
    bad = cli_problems(lines)
    assert not bad, "\n".join(bad)
    # the check itself: a renamed option, a missing sub-command
    fake = Block(ROOT / "README.md", 1, "bash", "")
    assert len(cli_problems([(fake, "puzzlekit search LIB.json --objectve kl_div [--json]"),
                             (fake, "puzzlekit serach LIB.json"),
                             (fake, "puzzlekit library import --format nvlabs SRC -o LIB.json --fast")])) == 3


# ---- the examples, run --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def doc_world(tmp_path_factory) -> Path:
    """The files the examples name (see the module doc), built once."""
    w = tmp_path_factory.mktemp("docworld")
    (w / "Llama-3.3-70B").mkdir()
    (w / "Llama-3.3-70B" / "config.json").write_text(json.dumps(LLAMA_70B, indent=1))
    (w / "super").mkdir()
    shutil.copy(SUPER_49B, w / "super" / "config.json")
    (w / "corpus").mkdir()
    for p in DOCS:
        shutil.copy(p, w / "corpus" / p.name)
    if (NVLABS_LIB / "block_library.json").exists():
        os.symlink(NVLABS_LIB, w / "puzzle-llama-3.3-70b-block-library")
    from test_formats_modelopt import write_puzzle

    (w / "PUZZLE_DIR").mkdir()
    write_puzzle(w / "PUZZLE_DIR")
    try:
        import torch  # noqa: F401
    except ImportError:
        return w
    from puzzlekit.post.tiny import char_tokenizer, tiny_llama

    text = "".join((w / "corpus" / p.name).read_text(encoding="utf-8") for p in DOCS)
    tok = char_tokenizer("".join(sorted(set(text) - {"\r"})), model_max_length=1_000_000)
    model = tiny_llama(len(tok), hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256,
                       max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(w / "my-llama")
    tok.save_pretrained(w / "my-llama")
    return w


def _run_python(b: Block, ns: dict) -> None:
    try:
        exec(compile(b.code, b.where, "exec"), ns)
    except Exception as e:
        raise AssertionError(f"{b.where}: the example failed: {type(e).__name__}: {e}\n{b.code}") from e


def _run_shell(b: Block, cwd: Path) -> None:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PUZZLEKIT_PROGRESS", "lines")
    code = "\n".join(line[2:] if line.startswith("$ ") else line for line in b.code.splitlines())
    shim = f"python() {{ {shlex.quote(sys.executable)} \"$@\"; }}\nexport -f python\n"
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", shim + code], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=900)
    if r.returncode:
        raise AssertionError(f"{b.where}: the example exited {r.returncode}\n{b.code}\n--- stdout\n{r.stdout[-3000:]}"
                             f"\n--- stderr\n{r.stderr[-3000:]}")


def _plan(path: Path, slow: bool) -> tuple[list[Block], list[str]]:
    run, why = [], []
    for b in ALL[path]:
        if not b.runnable:
            if "skip" in b.marks:
                why.append(f"{b.where}: skipped ({b.marks['skip']})")
            continue
        if "needs" in b.marks and not RESOURCES[b.marks["needs"]]():
            why.append(f"{b.where}: needs {b.marks['needs']}, not found")
            continue
        if "slow" in b.marks and not slow:
            why.append(f"{b.where}: slow (runs with -m slow)")
            continue
        run.append(b)
    return run, why


def _params():
    out = []
    for p in DOCS:
        blocks = ALL[p]
        if any(b.runnable for b in blocks):
            out.append(pytest.param(p, False, id=str(p.relative_to(ROOT))))
        if any(b.runnable and "slow" in b.marks for b in blocks):
            out.append(pytest.param(p, True, id=f"{p.relative_to(ROOT)}::slow", marks=pytest.mark.slow))
    return out


@pytest.mark.parametrize("path,slow", _params())
def test_doc_examples_run(path, slow, doc_world, tmp_path, monkeypatch):
    blocks, why = _plan(path, slow)
    if not blocks:
        pytest.skip("; ".join(why) or "nothing to run")
    for entry in doc_world.iterdir():
        os.symlink(entry, tmp_path / entry.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PUZZLEKIT_PROGRESS", "lines")
    import puzzlekit.solvers as solvers

    monkeypatch.setattr(solvers, "_REGISTRY", dict(solvers._REGISTRY))  # backends a doc registers stay in it
    ns: dict = {"__name__": "__doc_example__"}
    for b in blocks:
        if b.lang in PYTHON:
            _run_python(b, ns)
        else:
            _run_shell(b, tmp_path)
