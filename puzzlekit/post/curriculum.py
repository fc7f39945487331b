"""Pass-rate estimation, filtering and a Gaussian easy-to-hard curriculum for GRPO.

LN-Ultra's RL stage sampled each prompt several times from a model, dropped
the prompts it already solved often (pass rate ≥ 0.75) and ordered the rest
so that each batch's pass rates follow a Gaussian whose mean moves from easy
(high pass rate) to hard (low pass rate) over training.

* :func:`estimate_pass_rates`: k samples per prompt from any generator,
  scored by a TRL-style reward function.
* :func:`filter_by_pass_rate`: the indices to keep.
* :class:`CurriculumSampler`: batches of indices drawn with Gaussian weights
  around a moving target; usable as a ``torch.utils.data.Sampler`` (it
  iterates flat indices and has ``len``) or via :meth:`CurriculumSampler.order`
  to reorder a dataset handed to TRL's ``GRPOTrainer`` with
  ``shuffle_dataset=False``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConfigError
from .rewards import accuracy_reward

__all__ = ["estimate_pass_rates", "filter_by_pass_rate", "CurriculumSampler", "hf_generator"]

Generator = Callable[[Sequence[Any], int], Sequence[Sequence[Any]]]


def estimate_pass_rates(prompts: Sequence[Any], generate: Generator, *, k: int = 8,
                        reward: Callable[..., list[float]] = accuracy_reward, threshold: float = 1.0,
                        batch_size: int = 64, **columns: Sequence[Any]) -> list[float]:
    """Fraction of ``k`` sampled completions per prompt whose reward reaches ``threshold``.

    ``generate(prompts, k)`` returns ``k`` completions per prompt;
    ``reward`` is called like TRL calls it (``prompts=``, ``completions=``
    and each column of ``columns``, e.g. ``answer=[...]``, repeated per
    completion).
    """
    if k < 1:
        raise ConfigError(f"estimate_pass_rates: k={k}; use k >= 1 samples per prompt")
    for name, col in columns.items():
        if len(col) != len(prompts):
            raise ConfigError(f"estimate_pass_rates: column {name!r} has {len(col)} values for "
                              f"{len(prompts)} prompts")
    rates: list[float] = []
    for s in range(0, len(prompts), batch_size):
        chunk = list(prompts[s:s + batch_size])
        comps = generate(chunk, k)
        if len(comps) != len(chunk) or any(len(c) != k for c in comps):
            raise ConfigError(f"estimate_pass_rates: the generator must return {k} completions for each of "
                              f"{len(chunk)} prompts")
        flat_p = [p for p in chunk for _ in range(k)]
        flat_c = [c for cs in comps for c in cs]
        cols = {n: [v for v in col[s:s + batch_size] for _ in range(k)] for n, col in columns.items()}
        r = reward(prompts=flat_p, completions=flat_c, **cols)
        for i in range(len(chunk)):
            rates.append(sum(1.0 for x in r[i * k:(i + 1) * k] if x is not None and x >= threshold) / k)
    return rates


def filter_by_pass_rate(pass_rates: Sequence[float], *, max_rate: float = 0.75, min_rate: float | None = None
                        ) -> list[int]:
    """Indices of prompts to keep: pass rate below ``max_rate`` (LN-Ultra: 0.75) and, if given, ≥ ``min_rate``.

    For GRPO a ``min_rate`` of one success in k samples (``1 / k``) also drops the prompts the model never
    solves: every completion of such a group gets the same reward, so its group-normalised advantage and
    hence its gradient are zero.
    """
    if not 0.0 < max_rate <= 1.0:
        raise ConfigError(f"filter_by_pass_rate: max_rate={max_rate}; use a value in (0, 1]")
    if min_rate is not None and not 0.0 <= min_rate < max_rate:
        raise ConfigError(f"filter_by_pass_rate: min_rate={min_rate} with max_rate={max_rate}; use "
                          "0 <= min_rate < max_rate (or leave min_rate out)")
    return [i for i, r in enumerate(pass_rates)
            if r < max_rate and (min_rate is None or r >= min_rate)]


class CurriculumSampler:
    """Batches whose pass rates follow a Gaussian target moving from easy to hard.

    For batch ``t`` of ``T`` the target mean is
    ``mu_t = start + (end - start) * t / (T - 1)`` (pass-rate units: ``start``
    high = easy, ``end`` low = hard) and each unused prompt is drawn with
    weight ``exp(-(r - mu_t)² / (2 sigma²))``.  Defaults: start and end at
    the 90th and 10th percentiles of the pass rates, sigma 0.15.

    ``replacement=False`` (default) draws without replacement within an epoch
    (the pool refills when exhausted): every prompt is used once per epoch,
    which suits a budget of at most one pass over the prompts.  When
    ``num_batches * batch_size`` exceeds the pool, depletion pulls the batches
    off the target (the easy prompts run out early, the rest of the epoch is
    whatever is left, then the refill jumps back): the order becomes a
    saw-tooth rather than easy → hard.  ``replacement=True`` draws each batch
    from the whole pool (distinct prompts within a batch, repeats across
    batches), so the batches follow the target however long training runs.

    Call sequence: ``sampler = CurriculumSampler(rates, batch_size=8,
    num_batches=50)``; then ``for batch in sampler.batches(): ...`` or
    ``dataset.select(sampler.order())``.  The same seed gives the same order.
    """

    def __init__(self, pass_rates: Sequence[float], *, batch_size: int, num_batches: int,
                 sigma: float = 0.15, start: float | None = None, end: float | None = None, seed: int = 0,
                 replacement: bool = False):
        if not pass_rates:
            raise ConfigError("CurriculumSampler: no pass rates; estimate them first (estimate_pass_rates)")
        if batch_size < 1 or num_batches < 1:
            raise ConfigError(f"CurriculumSampler: batch_size={batch_size}, num_batches={num_batches}; both must be >= 1")
        if batch_size > len(pass_rates):
            raise ConfigError(f"CurriculumSampler: batch_size={batch_size} exceeds the {len(pass_rates)} prompts")
        if sigma <= 0:
            raise ConfigError(f"CurriculumSampler: sigma={sigma}; use a positive width")
        for r in pass_rates:
            if not (0.0 <= r <= 1.0):
                raise ConfigError(f"CurriculumSampler: pass rate {r} outside [0, 1]")
        srt = sorted(pass_rates)
        q = lambda f: srt[min(len(srt) - 1, int(f * (len(srt) - 1) + 0.5))]  # noqa: E731
        self.pass_rates = list(pass_rates)
        self.batch_size, self.num_batches, self.sigma, self.seed = batch_size, num_batches, sigma, seed
        self.replacement = replacement
        self.start = q(0.9) if start is None else float(start)
        self.end = q(0.1) if end is None else float(end)

    def target(self, t: int) -> float:
        """The target mean pass rate of batch ``t``."""
        if self.num_batches == 1:
            return self.start
        return self.start + (self.end - self.start) * t / (self.num_batches - 1)

    def batches(self) -> Iterator[list[int]]:
        """Yield ``num_batches`` lists of ``batch_size`` prompt indices."""
        rng = random.Random(self.seed)
        unused = set(range(len(self.pass_rates)))
        for t in range(self.num_batches):
            mu = self.target(t)
            batch: list[int] = []
            for _ in range(self.batch_size):
                if self.replacement:
                    unused = set(range(len(self.pass_rates))) - set(batch)
                elif not unused:
                    unused = set(range(len(self.pass_rates))) - set(batch)
                cand = sorted(unused)
                w = [math.exp(-((self.pass_rates[i] - mu) ** 2) / (2 * self.sigma ** 2)) + 1e-12 for i in cand]
                pick = rng.choices(cand, weights=w, k=1)[0]
                unused.discard(pick)
                batch.append(pick)
            yield batch

    def order(self) -> list[int]:
        """All batches concatenated (a dataset order for a trainer that does not shuffle)."""
        return [i for b in self.batches() for i in b]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.batch_size * self.num_batches


def hf_generator(model: Any, tokenizer: Any, *, max_new_tokens: int = 32, temperature: float = 1.0,
                 batch_size: int = 64) -> Generator:
    """A ``generate(prompts, k)`` callable over a transformers causal LM and tokenizer (prompts are text).

    Samples at ``temperature`` (greedy when 0) and returns the decoded
    completions without the prompt, special tokens removed.
    """
    import torch

    def generate(prompts: Sequence[str], k: int) -> list[list[str]]:
        model.eval()
        flat = [p for p in prompts for _ in range(k)]
        texts: list[str] = []
        for s in range(0, len(flat), batch_size):
            enc = tokenizer(flat[s:s + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                     temperature=temperature if temperature > 0 else None, top_k=0,
                                     top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]

    return generate
