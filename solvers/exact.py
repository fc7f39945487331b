"""``puzzlekit-exact``: the specialised exact solver (the default backend), raced against HiGHS.

It runs :func:`puzzlekit.search.exact.solve_exact` (a Lagrangian-pruned dynamic programme over layer
positions; every answer it gives is a proven optimum of the float problem, budgets met to 1e-9
relative).  The programme wins by far on libraries shaped like NVIDIA's (costs shared across layers),
and can lose by far where every layer's costs differ (measured runtimes with noise, a heterogeneous
parent, several budgets): its states then multiply.  So that the default never loses by more than a
little to HiGHS, four things guard it:

* **a quick infeasibility proof**: the LP relaxation (solved anyway for the multipliers) is checked
  first; an infeasible LP proves the problem infeasible in milliseconds;
* **a feasibility problem first without an incumbent**: when the presolve finds no feasible
  architecture (nearly infeasible: the programme has no target to prune by), HiGHS solves the problem
  with a zero objective (its first feasible answer is optimal: several times faster than the whole
  problem): infeasible is proven there, or its answer becomes the programme's incumbent; when the first
  beam pass finds nothing either, HiGHS takes the whole problem;
* **an early estimate of a blow-up**: a proof pass whose states, extrapolated linearly over the
  remaining layers, would pass ``max_states`` gives up at once (not after millions of states);
* **a race**: after ``race_delay`` seconds (0.05 by default; the programme finishes most problems of
  NVIDIA's shape before that) HiGHS starts on a second thread (highspy releases the GIL while it
  solves).  The first to *prove* its answer (optimal or infeasible) wins; the other is stopped
  cleanly: the programme polls a :class:`threading.Event` once per layer position, HiGHS its
  interrupt callbacks.  When the programme gives up before HiGHS has started, HiGHS runs at once on
  this thread with the programme's incumbent as a warm start.

The returned :class:`~puzzlekit.search.Solution` names the solver that proved it (``puzzlekit-exact``
or ``highs``); ``info["race"]`` says who won and ``info["fallback"]`` why the programme stopped.
``extra`` options: ``max_states`` (default 3,000,000), ``beam`` (default 300), ``race_delay``
(seconds, default 0.05), ``race`` (False: no HiGHS thread and no hand-over without an incumbent: the
programme alone, then HiGHS only after it gives up past ``max_states`` or half the time limit).  A nonzero ``mip_gap`` goes to HiGHS directly.
"""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from .base import Backend, SolveOptions

__all__ = ["ExactBackend", "RACE_DELAY"]

#: seconds the programme runs alone before HiGHS starts beside it
RACE_DELAY = 0.05


_RUNNING: set[threading.Thread] = set()  # cancelled HiGHS threads still winding down (joined at exit)


@atexit.register
def _join_running() -> None:
    for t in list(_RUNNING):
        t.join(timeout=5.0)


class _HighsThread:
    """HiGHS on a worker thread, started after ``delay`` seconds (or at :meth:`start_now`) unless cancelled."""

    def __init__(self, problem: Any, options: SolveOptions, delay: float, proved: threading.Event):
        self.problem, self.options, self.delay = problem, options, delay
        self.cancel = threading.Event()  # stops HiGHS (or keeps it from starting)
        self.go = threading.Event()  # start before the delay is over
        self.proved = proved  # set when HiGHS proved its answer: stops the programme
        self.started = False
        self.result: Any = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name="puzzlekit-highs-race", daemon=True)
        _RUNNING.add(self.thread)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.go.wait(self.delay)
            with self._lock:
                if self.cancel.is_set():
                    return
                self.started = True
            from .highs import solve_highs

            self.result = solve_highs(self.problem, self.options, stop=self.cancel)
            if self.result.status.value in ("optimal", "infeasible") and not self.cancel.is_set():
                self.proved.set()
        except BaseException as e:  # reported by the caller
            self.error = e
        finally:
            _RUNNING.discard(threading.current_thread())

    def start_now(self, why: str = "") -> bool:
        """Start HiGHS now; True (stop the programme: HiGHS alone) when the beam found nothing feasible."""
        if why.startswith("the beam found no"):
            return True
        self.go.set()
        return False

    def stop_before_start(self) -> bool:
        """Cancel if HiGHS has not started yet; True when it had not (nothing runs any more)."""
        with self._lock:
            if not self.started:
                self.cancel.set()
                self.go.set()
                return True
            return False

    def stop(self, wait: bool = False) -> None:
        """Stop HiGHS: it returns at its next interrupt poll (HiGHS polls a few times a second; the thread
        is not waited for unless ``wait``: its result is no longer needed)."""
        self.cancel.set()
        self.go.set()
        if wait:
            self.thread.join()


class ExactBackend(Backend):
    """Lagrangian-pruned exact dynamic programme, raced against HiGHS (see the module docstring)."""

    name = "puzzlekit-exact"
    required_modules = ("highspy",)  # LP multipliers and the race
    capabilities = frozenset({"time_limit", "warm_start", "float_exact", "bound"})
    install_hint = "pip install highspy"
    description = "exact DP with Lagrangian bounds (default), raced against HiGHS on hard instances"

    def solve(self, problem: Any, options: SolveOptions) -> Any:
        from puzzlekit.search.exact import solve_exact
        from puzzlekit.search.presolve import LPInfeasible, _lp_duals
        from puzzlekit.search.solution import Status

        from .highs import solve_highs

        t0 = time.perf_counter()
        extra = dict(options.extra)
        max_states = int(extra.pop("max_states", 3_000_000))
        beam = int(extra.pop("beam", 300))
        delay = float(extra.pop("race_delay", RACE_DELAY))
        race = bool(extra.pop("race", True))
        hopts = replace(options, extra=extra)

        def done(sol: Any, info: dict) -> Any:
            sol.info.update(info)
            sol.solve_seconds = time.perf_counter() - t0
            return sol

        if options.mip_gap != 0.0:
            return done(solve_highs(problem, hopts), {"fallback": "a nonzero mip_gap was asked: handed to HiGHS"})
        lp = options.hints.get("lp_duals")
        G, h = problem.le_rows()
        if lp is None and G.shape[0] > 1:  # before any HiGHS thread: the quick infeasibility proof
            try:
                lp = _lp_duals(problem, G, h)
            except LPInfeasible:
                return problem.make_solution(None, Status.INFEASIBLE, solver=self.name, seconds=time.perf_counter() - t0,
                                             info={"exact_reason": "the LP relaxation is infeasible"})
        warm = options.warm_start
        feas_info: dict[str, Any] = {}
        if race and options.hints.get("presolve_incumbent") is False and G.shape[0] > 1:
            # the presolve's Lagrangian covers and swaps found nothing feasible: (nearly) infeasible, where the
            # programme has no target to prune by.  HiGHS on the feasibility problem alone (a zero objective:
            # its first feasible answer is optimal) proves infeasibility or finds an incumbent several times
            # faster than on the whole problem; with an incumbent the programme runs as usual.
            t1 = time.perf_counter()
            z = solve_highs(replace(problem, objective=np.zeros(problem.n)), replace(hopts, warm_start=None))
            feas_info = {"feasibility_seconds": time.perf_counter() - t1, "feasibility": z.status.value}
            if z.status is Status.INFEASIBLE:
                return done(problem.make_solution(None, Status.INFEASIBLE, solver="highs",
                                                  seconds=time.perf_counter() - t0),
                            {**feas_info, "race": "HiGHS proved the budgets infeasible (feasibility problem)"})
            if not z.status.has_solution:
                return done(solve_highs(problem, hopts), {**feas_info, "race": "HiGHS alone"})
            warm = problem.origin_to_local(z.candidates)
        proved = threading.Event()
        # racing, both may use the whole time limit; alone, the programme leaves HiGHS half of it
        share = options.time_limit if race or options.time_limit is None else 0.5 * options.time_limit
        runner = _HighsThread(problem, hopts, delay, proved) if race else None
        try:
            r = solve_exact(problem, incumbent=warm, beam=beam, max_states=max_states,
                            time_limit=share, lower_bound=options.hints.get("lower_bound"),
                            lp_duals=lp, stop=proved,
                            on_hard=None if runner is None else runner.start_now)
        except BaseException:
            if runner is not None:
                runner.stop(wait=True)
            raise
        info: dict[str, Any] = {**feas_info, "states": r.states, "exact_seconds": r.seconds,
                                **{f"exact_{k}": v for k, v in r.info.items()}}
        if r.status in ("optimal", "infeasible"):
            if runner is not None:
                info["race"] = "exact first" + (" (HiGHS stopped)" if runner.started else "")
                runner.stop()
            if r.status == "optimal":
                return done(problem.make_solution(r.chosen, Status.OPTIMAL, solver=self.name,
                                                  seconds=time.perf_counter() - t0, bound=r.value), info)
            return done(problem.make_solution(None, Status.INFEASIBLE, solver=self.name,
                                              seconds=time.perf_counter() - t0), info)
        info["fallback"] = f"puzzlekit-exact gave up ({r.info.get('reason', '')})"
        if runner is None or runner.stop_before_start():
            # HiGHS had not started: run it here, warm-started from the programme's incumbent
            warm = r.incumbent if r.incumbent is not None else warm
            left = None if options.time_limit is None else max(1e-3, options.time_limit - (time.perf_counter() - t0))
            info["race"] = "HiGHS after the programme gave up"
            return done(solve_highs(problem, replace(hopts, time_limit=left, warm_start=warm)), info)
        runner.thread.join()
        if runner.error is not None:
            raise runner.error
        sol = runner.result
        info["race"] = "HiGHS first" if proved.is_set() else "HiGHS (the programme gave up)"
        if not sol.status.has_solution and sol.status is not Status.INFEASIBLE and r.incumbent is not None:
            # HiGHS stopped without an answer (a time limit): the programme's incumbent, with its bound
            return done(problem.make_solution(r.incumbent, Status.FEASIBLE, solver=self.name,
                                              seconds=time.perf_counter() - t0, bound=r.lower_bound), info)
        if (sol.status is Status.FEASIBLE and r.incumbent is not None
                and float(problem.c[r.incumbent].sum()) < (-sol.objective if problem.maximize else sol.objective)):
            return done(problem.make_solution(r.incumbent, Status.FEASIBLE, solver=self.name,
                                              seconds=time.perf_counter() - t0,
                                              bound=None if sol.bound is None else
                                              (-sol.bound if problem.maximize else sol.bound)), info)
        return done(sol, info)
