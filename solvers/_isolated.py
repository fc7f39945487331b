"""Run one backend in a fresh interpreter: ``python -m puzzlekit.solvers._isolated`` reads the problem
(an ``.npz`` of its arrays and a JSON header, loaded with ``allow_pickle=False``) on stdin and writes the
answer as JSON on stdout.

For backends whose native libraries clash with others already loaded in the caller's process (OR-Tools'
SCIP wrapper after python-mip has loaded its CBC libraries: ``libOsiClp.so.1: undefined symbol``).
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

__all__ = ["solve_isolated"]

_ARRAYS = ("first", "last", "objective", "costs", "lower", "upper", "constants", "origin")


def _encode(name: str, problem: Any, options: Any) -> bytes:
    arrays = {k: np.asarray(getattr(problem, k)) for k in _ARRAYS}
    for n, cut in enumerate(problem.cuts):
        arrays[f"cut{n}_index"], arrays[f"cut{n}_coef"] = np.asarray(cut.index), np.asarray(cut.coef)
    if options.warm_start is not None:
        arrays["warm_start"] = np.asarray(options.warm_start, dtype=np.int64)
    if options.hints.get("lp_duals") is not None:
        arrays["lp_duals"] = np.asarray(options.hints["lp_duals"], dtype=float)
    head = {"solver": name, "num_layers": problem.num_layers, "cost_names": list(problem.cost_names),
            "labels": list(problem.labels), "maximize": problem.maximize, "objective_name": problem.objective_name,
            "cuts": [{"rhs": c.rhs, "name": c.name} for c in problem.cuts],
            "options": {"time_limit": options.time_limit, "mip_gap": options.mip_gap, "threads": options.threads,
                        "verbose": options.verbose, "extra": dict(options.extra),
                        "hints": {k: v for k, v in options.hints.items() if k != "lp_duals"}}}
    arrays["header"] = np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _decode(data: bytes) -> tuple[str, Any, Any]:
    from puzzlekit.search.problem import Cut, Problem

    from .base import SolveOptions

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        head = json.loads(bytes(z["header"]).decode())
        a = {k: z[k] for k in _ARRAYS}
        cuts = tuple(Cut(z[f"cut{n}_index"], z[f"cut{n}_coef"], c["rhs"], c["name"]) for n, c in enumerate(head["cuts"]))
        warm = z["warm_start"] if "warm_start" in z.files else None
        hints = dict(head["options"]["hints"])
        if "lp_duals" in z.files:
            hints["lp_duals"] = z["lp_duals"]
    p = Problem(head["num_layers"], a["first"], a["last"], a["objective"], a["costs"], tuple(head["cost_names"]),
                a["lower"], a["upper"], a["constants"], maximize=head["maximize"],
                objective_name=head["objective_name"], labels=tuple(head["labels"]), origin=a["origin"], cuts=cuts)
    o = head["options"]
    opts = SolveOptions(time_limit=o["time_limit"], mip_gap=o["mip_gap"], threads=o["threads"], warm_start=warm,
                        verbose=o["verbose"], extra=o["extra"], hints=hints)
    return head["solver"], p, opts


def solve_isolated(name: str, problem: Any, options: Any, timeout: float | None = None) -> Any:
    """``get_solver(name).solve(problem, options)`` in a child interpreter; returns a verified Solution."""
    from puzzlekit.errors import SolverError
    from puzzlekit.search.solution import Status

    t0 = time.perf_counter()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    try:
        out = subprocess.run([sys.executable, "-m", "puzzlekit.solvers._isolated"], input=_encode(name, problem, options),
                             capture_output=True, timeout=None if timeout is None else timeout + 60.0, env=env,
                             check=False)
    except subprocess.TimeoutExpired:
        raise SolverError(f"solver {name!r} in its own process did not answer within its time limit") from None
    if out.returncode != 0 or not out.stdout:
        tail = out.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise SolverError(f"solver {name!r} failed in its own process (exit {out.returncode}): {' | '.join(tail)}")
    ans = json.loads(out.stdout)
    if "error" in ans:
        raise SolverError(f"solver {name!r} failed in its own process: {ans['error']}")
    status = Status(ans["status"])
    chosen = None if ans["candidates"] is None else problem.origin_to_local(ans["candidates"])
    bound = ans["bound"]
    if bound is not None and problem.maximize:
        bound = -bound  # the Solution's bound is in the user's sense; make_solution takes minimisation form
    info = dict(ans["info"], isolated=True)
    return problem.make_solution(chosen, status, solver=name, seconds=time.perf_counter() - t0, bound=bound,
                                 message=ans["message"], info=info)


def _plain(v: Any) -> Any:
    """``v`` with only JSON types (numbers, strings, lists, dicts; anything else as its string)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, (float, np.floating, np.integer)):
        f = float(v)
        return f if math.isfinite(f) else None
    return str(v)


def _main() -> int:
    name, problem, options = _decode(sys.stdin.buffer.read())
    from . import get_solver

    try:
        s = get_solver(name).solve(problem, options)
        bound = s.bound if s.bound is not None and math.isfinite(s.bound) else None
        ans = {"status": s.status.value, "candidates": None if not s.status.has_solution else list(s.candidates),
               "bound": bound, "message": s.message, "info": _plain(s.info)}
    except Exception as e:  # reported by the parent as a SolverError
        ans = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(ans))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
