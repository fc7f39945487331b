"""Measured costs in llama.cpp: sub-blocks timed as llama.cpp runs them (``puzzlekit profile --engine llamacpp``).

**Runner.**  :class:`LlamaCppRunner` loads a GGUF file with ``llama-cpp-python``'s low-level API and
runs a :class:`~puzzlekit.Scenario` the way a server would: one ``llama_decode`` of ``batch x prefill``
prompt tokens (``batch`` sequences, logits for each sequence's last token), then ``decode`` steps of
``batch`` tokens (one per sequence, logits for each).  Time is ``time.perf_counter`` around the calls
(``llama_synchronize`` after each); the KV cache is cleared before every run; each figure is the
median of ``repeats`` runs after ``warmup`` runs.

**Repeated-block method** (as :mod:`puzzlekit.profilers.measured`).  A sub-block is timed inside a
GGUF model that stacks ``n`` copies of a layer holding it (random weights, the parent's dimensions,
exported by :func:`puzzlekit.export.gguf.write_gguf`, so the copies are what llama.cpp runs for a
child): its cost is ``(t(n_hi) - t(n_lo)) / (n_hi - n_lo)``, and the intercept ``t(n) - n * cost``
is the part outside the blocks (embeddings, final norm, LM head, llama.cpp's per-call work).  Every
timing model starts with ``ballast`` parent layers (default 1: llama.cpp reads the head size from
layer 0, which must keep its attention); they are subtracted from the intercept.  The ``n_lo`` and
``n_hi`` models run alternately and each pair's difference is kept (a slow spell of a shared
machine hits both); the median difference is the marginal cost.  Measured on this project's 2-core
VM (SmolLM2-135M dimensions, fp16, one thread): stacks of 4 to 45 parent layers (83 to 360 MiB) cost
the same per layer within noise, so a stack's marginal is what the layer costs inside a whole model.
llama.cpp's thread pool spins on barriers; on a shared machine one thread (``threads=1``, the
default) gives stable timings where two were 5-10x slower and erratic.  With one thread the work runs
in the calling thread, so the default clock is the process's CPU time (``clock="cpu"``): it leaves
out the time other processes hold the core.  Measured on this VM at load 2-4 (SmolLM2 dimensions,
fp16, batch 1, 128 + 32 tokens): a 30-layer model predicted from 3- and 11-layer models within 6 %
(prefill) and 1 % (decode) by CPU time, with a run-to-run spread of 3 % (8 % by wall time, which
also ran 35 % longer).  ``clock="wall"`` times elapsed time.

* an FFN is timed in layers ``(no-op attention, FFN)``;
* an attention in layers ``(attention, no-op FFN)``, which llama.cpp gets as attention plus a zero
  FFN of width 1 (see :mod:`puzzlekit.export.gguf`); that zero FFN is timed on its own in layers
  ``(no-op attention, zero FFN)`` and subtracted, and is charged back to blocks that pair an
  attention with a removed FFN (they are exported that way).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puzzlekit.architecture import Architecture, ParentSpec, Scenario
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
from puzzlekit.errors import ConfigError

__all__ = ["LlamaCppRunner", "PhaseTimes", "LlamaCppProfiler", "llamacpp_available", "block_runtime",
           "write_random_gguf", "ZERO_FFN_KEY"]

#: The key of the zero FFN's own timing in :attr:`LlamaCppProfiler.subblocks`.
ZERO_FFN_KEY = "zero_ffn"
#: ``wall``: elapsed time; ``cpu``: this process's CPU time, which on a shared machine leaves out the time
#: other processes hold the core (with one llama.cpp thread the work runs in the calling thread).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _need_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError("llama.cpp timing needs llama-cpp-python: pip install 'puzzlekit[llamacpp]' "
                          "(builds libllama from source, about 5 minutes on 2 cores)") from None
    return llama_cpp


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds of one scenario run in llama.cpp: the prompt (prefill) and the generation (decode)."""

    prefill_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    def tokens_per_s(self, scenario: Scenario) -> tuple[float, float]:
        """(prompt-processing tokens/s, generation tokens/s) for ``scenario``."""
        pp = scenario.batch * scenario.prefill / self.prefill_s if self.prefill_s > 0 else float("nan")
        tg = scenario.batch * scenario.decode / self.decode_s if self.decode_s > 0 else float("nan")
        return pp, tg


class LlamaCppRunner:
    """One GGUF model in llama.cpp, ready to run scenarios (``close()`` or use as a context manager)."""

    def __init__(self, path: str | os.PathLike, scenario: Scenario, *, threads: int | None = None,
                 flash_attn: bool | None = None, clock: str = "wall"):
        lc = _need_llama_cpp()
        if clock not in CLOCKS:
            raise ConfigError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
        self.lc, self.scenario, self.clock_name = lc, scenario, clock
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ConfigError(f"{path}: llama.cpp could not load this GGUF")
        B, P, D = scenario.batch, scenario.prefill, scenario.decode
        cp = lc.llama_context_default_params()
        cp.n_ctx = max(256, B * (P + D) + 16)
        cp.n_batch = cp.n_ubatch = max(B * max(P, 1), B, 32)
        cp.n_seq_max = B
        cp.n_threads = cp.n_threads_batch = threads or os.cpu_count() or 1
        cp.no_perf = True
        if flash_attn is not None and hasattr(cp, "flash_attn_type"):
            cp.flash_attn_type = 1 if flash_attn else 0
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise ConfigError(f"{path}: llama.cpp could not create a context for {scenario.name}")
        self.mem = lc.llama_get_memory(self.ctx)
        n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(cp.n_batch, 0, B)
        self._tokens_prefill = [(7 * k + 3) % n_vocab for k in range(max(P, 1))]
        self._tokens_decode = [(11 * k + 5) % n_vocab for k in range(max(D, 1))]

    def _fill(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for k, (tok, pos, seq, want) in enumerate(items):
            b.token[k] = tok
            b.pos[k] = pos
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = seq
            b.logits[k] = want
        b.n_tokens = len(items)

    def _decode(self) -> None:
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise ConfigError(f"llama_decode failed with code {rc} under {self.scenario.name}")
        self.lc.llama_synchronize(self.ctx)

    def run_both(self) -> dict[str, PhaseTimes]:
        """One prefill + decode of the scenario from an empty KV cache, timed by both clocks
        (``{"wall": ..., "cpu": ...}``)."""
        B, P, D = self.scenario.batch, self.scenario.prefill, self.scenario.decode
        self.lc.llama_memory_clear(self.mem, True)
        wall, cpu = CLOCKS["wall"], CLOCKS["cpu"]
        pre = [0.0, 0.0]
        if P:
            self._fill([(self._tokens_prefill[p], p, s, p == P - 1) for s in range(B) for p in range(P)])
            w0, c0 = wall(), cpu()
            self._decode()
            pre = [wall() - w0, cpu() - c0]
        dec = [0.0, 0.0]
        for step in range(D):
            self._fill([(self._tokens_decode[step], P + step, s, True) for s in range(B)])
            w0, c0 = wall(), cpu()
            self._decode()
            dec[0] += wall() - w0
            dec[1] += cpu() - c0
        return {"wall": PhaseTimes(pre[0], dec[0]), "cpu": PhaseTimes(pre[1], dec[1])}

    def run_once(self) -> PhaseTimes:
        """One prefill + decode of the scenario from an empty KV cache, timed by this runner's clock."""
        return self.run_both()[self.clock_name]

    def time(self, warmup: int = 1, repeats: int = 5) -> PhaseTimes:
        """Median prefill and decode seconds over ``repeats`` runs (after ``warmup``)."""
        for _ in range(warmup):
            self.run_once()
        runs = [self.run_once() for _ in range(repeats)]
        return PhaseTimes(statistics.median(r.prefill_s for r in runs), statistics.median(r.decode_s for r in runs))

    def close(self) -> None:
        lc = self.lc
        if getattr(self, "batch", None) is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaCppRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _quiet_llama_logs() -> None:
    """Silence llama.cpp's load-time logging (it goes to stderr by default)."""
    import ctypes

    lc = _need_llama_cpp()
    cb = lc.llama_log_callback(lambda level, text, data: None)
    _quiet_llama_logs.keep = cb  # type: ignore[attr-defined]  # keep the callback alive
    lc.llama_log_set(cb, ctypes.c_void_p(0))


def write_random_gguf(arch: Architecture, path: str | os.PathLike, dtype: str = "fp16", seed: int = 0) -> Path:
    """A GGUF of ``arch`` with random weights and no tokenizer (timing depends on neither)."""
    import torch

    from puzzlekit.export.gguf import write_gguf
    from puzzlekit.model import PuzzleForCausalLM

    torch.manual_seed(seed)
    with torch.no_grad():
        model = PuzzleForCausalLM.from_architecture(arch).eval()
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return write_gguf(model, path, tokenizer_dir=None, dtype=dtype, no_vocab=True)


def block_runtime(sub: dict[str, PhaseTimes], block: BlockConfig) -> PhaseTimes:
    """A block's llama.cpp time from its sub-blocks' (the zero FFN charged to attention + removed FFN)."""
    a, f = block.attention, block.ffn
    parts = []
    if not a.no_op:
        parts.append(sub[a.short()])
    if not f.no_op:
        parts.append(sub[f.short()])
    elif not a.no_op:
        parts.append(sub[ZERO_FFN_KEY])
    return PhaseTimes(sum(p.prefill_s for p in parts), sum(p.decode_s for p in parts))


@dataclass
class LlamaCppProfiler:
    """Time every sub-block of ``blocks`` in llama.cpp under each of ``scenarios`` (see the module doc).

    ``subblocks[scenario name]`` maps ``sub.short()`` (and :data:`ZERO_FFN_KEY`) to the marginal
    :class:`PhaseTimes`; :meth:`non_block` is the median intercept.  :meth:`costs` gives library costs
    (ms).  Runs of the ``n_lo`` and ``n_hi`` models alternate and each repeat's difference is kept, so a
    slow spell of a shared machine hits both; the median difference is the marginal.
    """

    spec: ParentSpec
    scenarios: Sequence[Scenario]
    dtype: str = "fp16"
    threads: int | None = 1
    n_lo: int = 2
    n_hi: int = 10
    ballast: int = 1
    warmup: int = 1
    repeats: int = 5
    clock: str = "cpu"
    workdir: str | os.PathLike | None = None
    subblocks: dict[str, dict[str, PhaseTimes]] = field(default_factory=dict)
    intercepts: dict[str, list[PhaseTimes]] = field(default_factory=dict)
    log: Any = None

    def __post_init__(self) -> None:
        self.scenarios = list(self.scenarios)
        if not self.scenarios:
            raise ConfigError("LlamaCppProfiler: give at least one scenario")
        if self.ballast < 1:
            raise ConfigError("LlamaCppProfiler: ballast must be >= 1 (llama.cpp reads head sizes from layer 0, "
                              "which must keep its attention)")
        if self.clock not in CLOCKS:
            raise ConfigError(f"clock must be one of {sorted(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and self.threads != 1:
            raise ConfigError("clock='cpu' needs threads=1 (llama.cpp's worker threads spin while they wait)")
        if not 1 <= self.n_lo < self.n_hi:
            raise ConfigError(f"need 1 <= n_lo < n_hi, got n_lo={self.n_lo}, n_hi={self.n_hi}")
        for sc in self.scenarios:
            self.subblocks.setdefault(sc.name, {})
            self.intercepts.setdefault(sc.name, [])

    def _arch(self, layers: list[BlockConfig]) -> Architecture:
        # the ballast first: layer 0 keeps its attention (llama.cpp reads head sizes from layer 0)
        return Architecture(self.spec, tuple([self.spec.parent_block()] * self.ballast + layers))

    def _marginal(self, layer: BlockConfig, key: str, tmp: Path) -> None:
        k = self.n_hi - self.n_lo
        lo_p = write_random_gguf(self._arch([layer] * self.n_lo), tmp / f"{key}-lo.gguf", self.dtype)
        hi_p = write_random_gguf(self._arch([layer] * self.n_hi), tmp / f"{key}-hi.gguf", self.dtype)
        try:
            for sc in self.scenarios:
                with LlamaCppRunner(lo_p, sc, threads=self.threads, clock=self.clock) as lo, \
                        LlamaCppRunner(hi_p, sc, threads=self.threads, clock=self.clock) as hi:
                    for _ in range(self.warmup):
                        lo.run_once()
                        hi.run_once()
                    pairs = [(lo.run_once(), hi.run_once()) for _ in range(self.repeats)]
                m = PhaseTimes(max(0.0, statistics.median((h.prefill_s - lo_.prefill_s) / k for lo_, h in pairs)),
                               max(0.0, statistics.median((h.decode_s - lo_.decode_s) / k for lo_, h in pairs)))
                lo_med = PhaseTimes(statistics.median(x.prefill_s for x, _ in pairs),
                                    statistics.median(x.decode_s for x, _ in pairs))
                self.subblocks[sc.name][key] = m
                self.intercepts[sc.name].append(PhaseTimes(lo_med.prefill_s - self.n_lo * m.prefill_s,
                                                           lo_med.decode_s - self.n_lo * m.decode_s))
                if self.log:
                    self.log(f"  {sc.name}  {key:<10} prefill {1e3 * m.prefill_s:8.3f} ms  decode "
                             f"{1e3 * m.decode_s:8.3f} ms per layer")
        finally:
            lo_p.unlink(missing_ok=True)
            hi_p.unlink(missing_ok=True)

    def measure(self, blocks: Iterable[BlockConfig]) -> dict[str, dict[str, PhaseTimes]]:
        """Time every distinct sub-block of ``blocks`` (and the zero FFN when some attention needs it),
        plus the parent's own sub-blocks (the ballast's, for the non-block part)."""
        _quiet_llama_logs()
        blocks = [*blocks, self.spec.parent_block()]
        atts = sorted({b.attention for b in blocks if not b.attention.no_op}, key=lambda a: a.short())
        ffns = sorted({b.ffn for b in blocks if not b.ffn.no_op}, key=lambda f: f.short())
        no_op_a, no_op_f = AttentionConfig.make_no_op(), FFNConfig.make_no_op()
        first = self.subblocks[self.scenarios[0].name]
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix="puzzlekit-llamacpp-") as d:
            tmp = Path(d)
            if ZERO_FFN_KEY not in first:
                # a removed FFN after a removed attention is skipped by llama.cpp: time the zero FFN as
                # (no-op attention, 1-wide FFN) layers
                self._marginal(BlockConfig(no_op_a, FFNConfig.swiglu(1)), ZERO_FFN_KEY, tmp)
            for f in ffns:
                if f.short() not in first:
                    self._marginal(BlockConfig(no_op_a, f), f.short(), tmp)
            for a in atts:
                if a.short() not in first:
                    self._marginal(BlockConfig(a, no_op_f), a.short(), tmp)  # attention + zero FFN
                    for sc in self.scenarios:
                        sub = self.subblocks[sc.name]
                        m, z = sub[a.short()], sub[ZERO_FFN_KEY]
                        sub[a.short()] = PhaseTimes(max(0.0, m.prefill_s - z.prefill_s),
                                                    max(0.0, m.decode_s - z.decode_s))
        return self.subblocks

    def non_block(self, scenario: Scenario) -> PhaseTimes:
        """The median intercept less the ballast: what a model costs besides its blocks."""
        its = self.intercepts.get(scenario.name)
        if not its:
            raise ConfigError(f"measure sub-blocks under {scenario.name} first")
        pb = block_runtime(self.subblocks[scenario.name], self.spec.parent_block())
        return PhaseTimes(statistics.median(i.prefill_s for i in its) - self.ballast * pb.prefill_s,
                          statistics.median(i.decode_s for i in its) - self.ballast * pb.decode_s)

    def costs(self, scenario: Scenario, blocks: Iterable[BlockConfig]) -> dict[str, dict[str, float]]:
        """Library costs (ms) per block key: ``runtime_ms``, ``prefill_ms``, ``decode_ms``."""
        sub = self.subblocks[scenario.name]
        out = {}
        for b in blocks:
            t = block_runtime(sub, b)
            out[b.key] = {"runtime_ms": 1e3 * t.total_s, "prefill_ms": 1e3 * t.prefill_s, "decode_ms": 1e3 * t.decode_s}
        return out

    def predict(self, arch: Architecture, scenario: Scenario) -> PhaseTimes:
        """A whole model's predicted time: its blocks' sum plus the non-block part."""
        nb = self.non_block(scenario)
        parts = [block_runtime(self.subblocks[scenario.name], b) for b in arch.blocks]
        return PhaseTimes(nb.prefill_s + sum(p.prefill_s for p in parts), nb.decode_s + sum(p.decode_s for p in parts))

    def profile_library(self, library: Any) -> Any:
        """Measure ``library``'s blocks and write their costs under each scenario (in place; returns it).

        Blocks llama.cpp does not serve (:mod:`puzzlekit.engines`) are refused: search the library
        with ``engine="llamacpp"`` after removing them, or profile a space without them.
        """
        from puzzlekit.engines import subblock_issues

        bad = sorted({b.key for b in library.blocks if subblock_issues("llamacpp", b.attention)
                      or subblock_issues("llamacpp", b.ffn)})
        if bad:
            raise ConfigError(f"llama.cpp does not serve {len(bad)} block(s) of the library (e.g. {bad[0]}); profile "
                              "a space without them (puzzlekit profile --engine llamacpp drops them from the default "
                              "space)")
        self.measure(library.blocks)
        nb = library.meta.setdefault("non_block_costs", {})
        prof = library.meta.setdefault("profiles", {})
        for sc in self.scenarios:
            name = library.add_scenario(sc)
            for key, c in self.costs(sc, library.blocks).items():
                library.set_costs(name, BlockConfig.from_key(key), c)
            t = self.non_block(sc)
            nb[name] = {"runtime_ms": 1e3 * t.total_s, "prefill_ms": 1e3 * t.prefill_s, "decode_ms": 1e3 * t.decode_s}
            prof[name] = {"profiler": "llamacpp-measured", "dtype": self.dtype, "threads": self.threads,
                          "clock": self.clock,
                          "copies": [self.n_lo, self.n_hi], "ballast": self.ballast, "repeats": self.repeats,
                          "subblocks_ms": {k: {"prefill": 1e3 * v.prefill_s, "decode": 1e3 * v.decode_s}
                                           for k, v in self.subblocks[sc.name].items()}}
        return library
