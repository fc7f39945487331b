"""Progress reporting for long stages: a tqdm bar on a terminal, one line per stage in a log.

``progress(...)`` takes tqdm's arguments (``iterable``, ``total``, ``desc``, ``unit``, ``initial``,
``disable``) and returns something with tqdm's ``update`` / ``set_postfix`` / ``close`` / iteration.
What it shows is chosen by the environment variable ``PUZZLEKIT_PROGRESS``:

* ``auto`` (default): a tqdm bar when stderr is a terminal, otherwise **one line per stage**,
  written to stderr when the stage ends (``scoring: 54/54 cand in 10.2 s (layer=5, kl=0.0123)``),
  so logs of batch jobs and CI are not flooded with carriage-return frames;
* ``bar``: always a tqdm bar; ``lines``: always one line per stage;
* ``0`` / ``off`` / ``none``: nothing (the CLI's ``puzzlekit --quiet`` sets this).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import ConfigError

__all__ = ["progress", "progress_mode", "ENV"]

ENV = "PUZZLEKIT_PROGRESS"
_MODES = {"auto": "auto", "": "auto", "bar": "bar", "bars": "bar", "tqdm": "bar", "lines": "lines", "line": "lines",
          "0": "off", "off": "off", "none": "off", "false": "off", "no": "off", "1": "auto", "on": "auto"}


def progress_mode() -> str:
    """``"bar"``, ``"lines"`` or ``"off"``: what :func:`progress` shows now (see the module doc)."""
    raw = os.environ.get(ENV, "auto")
    mode = _MODES.get(raw.strip().lower())
    if mode is None:
        raise ConfigError(f"{ENV}={raw!r} is not understood; use auto, bar, lines or 0 (off)")
    if mode == "auto":
        try:
            return "bar" if sys.stderr.isatty() else "lines"
        except (AttributeError, ValueError):
            return "lines"
    return mode


class _Line:
    """tqdm's interface, printing one summary line when closed."""

    def __init__(self, iterable: Iterable[Any] | None, total: float | None, desc: str, unit: str, initial: float,
                 disable: bool):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.n = initial
        self.postfix: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kw}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed or self.disable:
            self._closed = True
            return
        self._closed = True
        n = int(self.n) if float(self.n).is_integer() else self.n
        done = f"{n}/{int(self.total)}" if self.total is not None else f"{n}"
        post = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        line = f"{self.desc}: {done} {self.unit} in {time.perf_counter() - self._t0:.1f} s" + (f" ({post})" if post else "")
        print(line.lstrip(": "), file=sys.stderr, flush=True)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("progress(...) was given no iterable")
        try:
            for x in self.iterable:
                yield x
                self.n += 1
        finally:
            self.close()

    def __enter__(self) -> _Line:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", initial: float = 0, disable: bool = False, **tqdm_kwargs: Any) -> Any:
    """A progress reporter for one stage: a tqdm bar or one line (see the module doc)."""
    mode = progress_mode()
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, **tqdm_kwargs)
    return _Line(iterable, total, desc, unit, initial, disable or mode == "off")
