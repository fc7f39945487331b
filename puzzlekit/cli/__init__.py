"""The ``puzzlekit`` command line.

Each sub-command lives in a module ``puzzlekit/cli/cmd_<name>.py`` that defines
``register(subparsers)``; modules are discovered automatically, so adding a
command touches no shared file.  Exit codes: 0 success, 2 bad input (one line
on stderr, no traceback unless ``--debug``), 1 an internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from ..errors import PuzzlekitError

__all__ = ["main", "build_parser", "CLIError"]


class CLIError(PuzzlekitError):
    """A bad command-line argument."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="puzzlekit", description="Puzzle-style architecture search for cheaper LLM inference.")
    parser.add_argument("--version", action="version", version=f"puzzlekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or progress lines (the same as PUZZLEKIT_PROGRESS=0); off a "
                             "terminal, long stages print one line each when they end")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    pkg = importlib.import_module(__name__)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used as the console script)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.quiet:
            import os

            os.environ["PUZZLEKIT_PROGRESS"] = "0"
        rc = args.func(args)
        return int(rc or 0)
    except PuzzlekitError as e:
        if debug:
            raise
        msg = " ".join(str(e).split("\n"))
        print(f"puzzlekit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("puzzlekit: interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # an internal error: say so, and how to see more
        if debug:
            raise
        print(f"puzzlekit: internal error: {type(e).__name__}: {e} (re-run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
