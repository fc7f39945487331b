"""Run one backend in a fresh interpreter: ``python -m puzzlekit.solvers._isolated`` reads a pickled
``(backend name, problem, options)`` on stdin and writes the pickled Solution (or the error) on stdout.

For backends whose native libraries clash with others already loaded in the caller's process (OR-Tools'
SCIP wrapper after python-mip has loaded its CBC libraries: ``libOsiClp.so.1: undefined symbol``).
Only the caller's own data crosses the pipe.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any

__all__ = ["solve_isolated"]


def solve_isolated(name: str, problem: Any, options: Any, timeout: float | None = None) -> Any:
    """``get_solver(name).solve(problem, options)`` in a child interpreter; returns its Solution."""
    from ..errors import SolverError

    data = pickle.dumps((name, problem, options), protocol=pickle.HIGHEST_PROTOCOL)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    try:
        out = subprocess.run([sys.executable, "-m", "puzzlekit.solvers._isolated"], input=data, capture_output=True,
                             timeout=None if timeout is None else timeout + 60.0, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise SolverError(f"solver {name!r} in its own process did not answer within its time limit") from None
    if out.returncode != 0 or not out.stdout:
        tail = out.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise SolverError(f"solver {name!r} failed in its own process (exit {out.returncode}): {' | '.join(tail)}")
    ok, value = pickle.loads(out.stdout)  # our own child's answer
    if not ok:
        raise SolverError(f"solver {name!r} failed in its own process: {value}")
    value.info["isolated"] = True
    return value


def _main() -> int:
    name, problem, options = pickle.loads(sys.stdin.buffer.read())  # written by solve_isolated above
    from . import get_solver

    try:
        res: tuple[bool, Any] = (True, get_solver(name).solve(problem, options))
    except Exception as e:  # reported by the parent as a SolverError
        res = (False, f"{type(e).__name__}: {e}")
    sys.stdout.buffer.write(pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
