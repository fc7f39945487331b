"""The LN-Ultra pipeline: the LN-Super pipeline's stages with Ultra's targets (8xH100, >= 1.5x lower
latency, 3M cached tokens), FFN fusion after the search, KD followed by continued pre-training, and RL.

The stages are the same functions as ``examples/ln_super/recipe.py`` (read that file top to bottom);
only the config differs.

    python examples/ln_ultra/recipe.py --config examples/ln_ultra/config.yaml --dry-run
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SUPER = Path(__file__).resolve().parents[1] / "ln_super" / "recipe.py"
_spec = importlib.util.spec_from_file_location("ln_super_recipe", _SUPER)
ln_super = importlib.util.module_from_spec(_spec)
sys.modules["ln_super_recipe"] = ln_super
_spec.loader.exec_module(ln_super)


def _argv(argv: list[str] | None) -> list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(Path(__file__).with_name("config.yaml")), *argv]
    return argv


def main(argv: list[str] | None = None) -> dict | None:
    """Command line: ``--dry-run`` or ``--stage NAME|all`` with this folder's config by default."""
    return ln_super.main(_argv(argv))


if __name__ == "__main__":
    raise SystemExit(ln_super.cli(_argv(None)))
