"""Weight paths of a library moved to another folder (where it will be saved): :func:`relocate_weights`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..library import BlockLibrary

__all__ = ["relocate_weights"]

logger = logging.getLogger("puzzlekit.formats.modelopt")


def relocate_weights(library: BlockLibrary, folder: str | os.PathLike) -> int:
    """Re-express weight paths relative to ``folder`` (where the library will be saved); weights of
    candidates whose files are not inside ``folder`` are dropped (logged).  Returns how many were dropped."""
    new = Path(folder).resolve()
    old = library.root.resolve() if library.root is not None else None
    dropped = 0
    for c in library.candidates:
        if not c.weight_files:
            continue
        try:
            rel = [(old / w).resolve().relative_to(new).as_posix() for w in c.weight_files] if old else None
        except ValueError:
            rel = None
        if rel is None:
            c.weights = None
            dropped += 1
        else:
            c.weights = rel[0] if len(rel) == 1 else tuple(rel)
    library.root = Path(folder)
    if dropped:
        logger.warning("%d candidates' weight files are outside %s; their weights are left empty "
                    "(save the library inside the ModelOpt folder to keep them)", dropped, folder)
    return dropped

