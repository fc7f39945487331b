"""Register the Nemotron-NAS classes with transformers' Auto classes without importing torch early.

``puzzlekit.model`` registers ``PuzzleConfig`` / ``PuzzleForCausalLM`` with ``AutoConfig`` and
``AutoModelForCausalLM`` (model type ``"nemotron-nas"``) when it is imported.  So that ``import
puzzlekit`` alone is enough for ``AutoModelForCausalLM`` to load a child folder, while
``import puzzlekit`` stays free of torch:

* if transformers is already imported, ``puzzlekit.model`` is imported now;
* otherwise a one-shot import hook imports ``puzzlekit.model`` right after transformers' own
  top-level module has run (so the first ``import transformers`` also imports torch, which any
  use of an Auto model class would import anyway).

Set ``PUZZLEKIT_AUTO_REGISTER=0`` to turn this off (``import puzzlekit.model`` then registers).
Failures (no torch installed, ...) are logged at debug level and never break an import.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

_TARGET = "transformers"


def _register() -> None:
    # puzzlekit.model registers itself at the end of its import; when transformers is being imported by
    # puzzlekit.model (or a module it imports) the registration happens there, so do nothing now
    if any(m == "puzzlekit.model" or m.startswith("puzzlekit.model.") for m in sys.modules):
        return
    try:
        importlib.import_module("puzzlekit.model")
    except Exception as e:  # never break the user's import of transformers
        log.debug("puzzlekit: could not register the Nemotron-NAS Auto classes: %s", e)


class _Finder(importlib.abc.MetaPathFinder):
    """One-shot finder: lets the other finders find transformers, then runs :func:`_register` after it."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        _uninstall()
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _register()

        try:
            loader.exec_module = exec_module  # this module's loader instance only
        except (AttributeError, TypeError):
            return spec
        return spec


_finder = _Finder()


def _uninstall() -> None:
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def install() -> None:
    """Register now (transformers already imported) or when transformers is imported."""
    if os.environ.get("PUZZLEKIT_AUTO_REGISTER", "1").strip().lower() in ("0", "off", "no", "false"):
        return
    if _TARGET in sys.modules:
        _register()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
