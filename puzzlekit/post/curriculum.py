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
* :class:`AdaptiveCurriculum`: a competence-tracking curriculum for TRL's
  ``GRPOTrainer``: a Beta posterior per prompt, initialised from the
  estimated pass rates and updated online from the rewards of each GRPO
  group (no extra generation); each batch is drawn lazily, favouring prompts
  whose groups carry a learning signal, retiring the ones that become solved.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConfigError
from .rewards import accuracy_reward

__all__ = ["estimate_pass_rates", "filter_by_pass_rate", "CurriculumSampler", "AdaptiveCurriculum", "hf_generator"]

logger = logging.getLogger(__name__)

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


class AdaptiveCurriculum:
    """A competence-tracking curriculum for GRPO: per-prompt pass rates updated online from the groups' rewards.

    Each prompt ``i`` carries a Beta(``a_i``, ``b_i``) posterior over its pass rate under the *current*
    policy, initialised from the pass rate estimated before training (``estimate_pass_rates``) as
    ``prior_strength`` pseudo-samples (plus a Jeffreys ½ / ½): ``a = prior_strength * r + 0.5``,
    ``b = prior_strength * (1 - r) + 0.5``.  Whenever GRPO scores a group of completions of prompt ``i``
    (its own ``num_generations`` samples: no extra generation), :meth:`update` discounts the old evidence and
    adds the new: ``a ← decay * a + successes``, ``b ← decay * b + failures`` (a success is a reward
    ≥ ``threshold``), so the estimate follows the policy as it improves instead of going stale.

    Batches are drawn lazily, one when the trainer asks for it, without repeats inside a batch, each live
    prompt with weight ``E[p (1 - p)] ** sharpness + floor`` under its posterior
    (``E[p (1 - p)] = a b / ((a + b)(a + b + 1))``): the expected Bernoulli variance of its rewards, which
    is what a group-normalised advantage needs (a group whose rewards are all equal has advantage 0 and
    gives no gradient).  It peaks at p = 0.5, falls towards p = 0 and 1, and, being a posterior
    expectation, stays positive for prompts the curriculum is unsure about; a prompt that keeps scoring 0
    loses weight with each all-zero group.  A prompt whose posterior mean reaches ``max_rate`` is
    *retired* (never drawn again, unless fewer than ``batch_size`` live prompts remain).

    With TRL's ``GRPOTrainer`` (one process; ``dataloader_num_workers=0`` keeps the draw one step behind
    the feedback at most, from the data loader's prefetch)::

        cur = AdaptiveCurriculum(pass_rates, batch_size=4, num_batches=400, seed=0)
        ds = Dataset.from_list([dict(row, prompt_index=i) for i, row in enumerate(pool)])
        trainer = GRPOTrainer(model, reward_funcs=[cur.reward_func(accuracy_reward), format_reward],
                              args=GRPOConfig(..., per_device_train_batch_size=4 * 8, num_generations=8),
                              train_dataset=ds, processing_class=tok)
        cur.attach(trainer)   # the trainer now pulls its prompts from cur.sampler(...)
        trainer.train()
        cur.estimates, cur.retired, cur.draws   # the online pass rates, the solved prompts, the batches

    :meth:`reward_func` wraps a TRL reward function: it returns that function's rewards unchanged and
    reports them, grouped by the dataset column ``index_column`` (the prompt's position in
    ``pass_rates``), to :meth:`observe`; it also logs ``curriculum/live`` (prompts not retired) and
    ``curriculum/mean_estimate`` through TRL's ``log_metric``.  :meth:`attach` makes the trainer's
    sampler :meth:`sampler` (each drawn prompt repeated ``num_generations`` times, the batch repeated
    ``num_iterations * steps_per_generation`` times, as TRL's ``RepeatSampler`` does).  Without a trainer:
    ``for batch in cur.batches(): ...; cur.observe(indices, rewards)``.  The same seed and the same
    rewards give the same batches; :meth:`state_dict` / :meth:`load_state_dict` carry the state across a
    restart.
    """

    def __init__(self, pass_rates: Sequence[float], *, batch_size: int, num_batches: int,
                 prior_strength: float = 8.0, decay: float = 0.5, max_rate: float = 0.75, sharpness: float = 1.0,
                 floor: float = 1e-3, threshold: float = 1.0, index_column: str = "prompt_index", seed: int = 0):
        name = "AdaptiveCurriculum"
        if not pass_rates:
            raise ConfigError(f"{name}: no pass rates; estimate them first (estimate_pass_rates)")
        for i, r in enumerate(pass_rates):
            if not (isinstance(r, (int, float)) and 0.0 <= r <= 1.0):
                raise ConfigError(f"{name}: pass_rates[{i}]={r!r} outside [0, 1]")
        if batch_size < 1 or num_batches < 1:
            raise ConfigError(f"{name}: batch_size={batch_size}, num_batches={num_batches}; both must be >= 1")
        if batch_size > len(pass_rates):
            raise ConfigError(f"{name}: batch_size={batch_size} exceeds the {len(pass_rates)} prompts")
        if not prior_strength > 0:
            raise ConfigError(f"{name}: prior_strength={prior_strength}; use a positive number of pseudo-samples "
                              "(e.g. the k of estimate_pass_rates)")
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"{name}: decay={decay}; use a value in (0, 1] (1 = never forget old evidence)")
        if not 0.0 < max_rate <= 1.0:
            raise ConfigError(f"{name}: max_rate={max_rate}; use a value in (0, 1]")
        if not sharpness > 0:
            raise ConfigError(f"{name}: sharpness={sharpness}; use a positive exponent (1 = weight E[p(1-p)])")
        if not floor >= 0:
            raise ConfigError(f"{name}: floor={floor}; use a weight >= 0")
        if not index_column or not isinstance(index_column, str):
            raise ConfigError(f"{name}: index_column={index_column!r}; name the dataset column holding each "
                              "prompt's index into pass_rates")
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed
        self.prior_strength, self.decay, self.max_rate = float(prior_strength), float(decay), float(max_rate)
        self.sharpness, self.floor, self.threshold = float(sharpness), float(floor), float(threshold)
        self.index_column = index_column
        self.initial = [float(r) for r in pass_rates]
        self.alpha = [self.prior_strength * r + 0.5 for r in self.initial]
        self.beta = [self.prior_strength * (1.0 - r) + 0.5 for r in self.initial]
        self.observed = [0] * len(self.initial)      # groups seen per prompt
        self.retired: set[int] = set()
        self.draws: list[list[int]] = []             # every batch drawn, in order
        self._rng = random.Random(seed)
        self._warned = False
        for i in range(len(self.initial)):
            self._maybe_retire(i)

    # --- the posterior
    def __len__(self) -> int:
        return len(self.initial)

    @property
    def estimates(self) -> list[float]:
        """The posterior mean pass rate of every prompt."""
        return [a / (a + b) for a, b in zip(self.alpha, self.beta)]

    def signal(self, i: int) -> float:
        """``E[p (1 - p)]`` under prompt ``i``'s posterior: the expected variance of its rewards."""
        a, b = self.alpha[i], self.beta[i]
        n = a + b
        return a * b / (n * (n + 1.0))

    def weights(self) -> list[float]:
        """The drawing weight of every prompt (0 for a retired one)."""
        return [0.0 if i in self.retired else self.signal(i) ** self.sharpness + self.floor
                for i in range(len(self.initial))]

    def _maybe_retire(self, i: int) -> None:
        if self.alpha[i] / (self.alpha[i] + self.beta[i]) >= self.max_rate:
            self.retired.add(i)

    def update(self, index: int, rewards: Sequence[float | None]) -> float:
        """Fold one group's rewards for prompt ``index`` into its posterior; return the new estimate."""
        if not 0 <= index < len(self.initial):
            raise ConfigError(f"AdaptiveCurriculum.update: prompt index {index} outside 0..{len(self.initial) - 1}; "
                              f"the {self.index_column!r} column must index the pass rates the curriculum was built on")
        if not rewards:
            raise ConfigError(f"AdaptiveCurriculum.update: no rewards for prompt {index}")
        s = sum(1 for r in rewards if r is not None and r >= self.threshold)
        self.alpha[index] = self.decay * self.alpha[index] + s
        self.beta[index] = self.decay * self.beta[index] + (len(rewards) - s)
        self.observed[index] += 1
        self._maybe_retire(index)
        return self.alpha[index] / (self.alpha[index] + self.beta[index])

    def observe(self, indices: Sequence[int], rewards: Sequence[float | None]) -> None:
        """Per-completion prompt indices and rewards (as TRL scores a batch): one :meth:`update` per prompt."""
        if len(indices) != len(rewards):
            raise ConfigError(f"AdaptiveCurriculum.observe: {len(indices)} prompt indices for {len(rewards)} rewards")
        groups: dict[int, list[float | None]] = {}
        for i, r in zip(indices, rewards):
            groups.setdefault(int(i), []).append(r)
        for i, rs in groups.items():
            self.update(i, rs)

    # --- drawing
    def next_batch(self) -> list[int]:
        """Draw (and record in :attr:`draws`) ``batch_size`` distinct prompts from the current weights."""
        w = self.weights()
        live = sum(1 for x in w if x > 0)
        if live < self.batch_size:
            if not self._warned:
                logger.warning("AdaptiveCurriculum: only %d live prompts for batches of %d; drawing retired ones "
                               "too", live, self.batch_size)
                self._warned = True
            w = [x if x > 0 else 1e-9 for x in w]
        batch: list[int] = []
        for _ in range(self.batch_size):
            cand = [i for i in range(len(w)) if w[i] > 0 and i not in batch]
            batch.append(self._rng.choices(cand, weights=[w[i] for i in cand], k=1)[0])
        self.draws.append(batch)
        return batch

    def batches(self) -> Iterator[list[int]]:
        """Yield ``num_batches`` batches, each drawn when asked for (after the feedback observed so far)."""
        for _ in range(self.num_batches):
            yield self.next_batch()

    def sampler(self, *, mini_repeat_count: int = 1, repeat_count: int = 1) -> _AdaptiveSampler:
        """A data-loader sampler over the dataset's rows that draws each batch lazily (TRL's repeat layout)."""
        if mini_repeat_count < 1 or repeat_count < 1:
            raise ConfigError(f"AdaptiveCurriculum.sampler: mini_repeat_count={mini_repeat_count}, "
                              f"repeat_count={repeat_count}; both must be >= 1")
        return _AdaptiveSampler(self, mini_repeat_count, repeat_count)

    # --- TRL
    def reward_func(self, fn: Callable[..., list[float | None]]) -> Callable[..., list[float | None]]:
        """Wrap a TRL reward function so that its rewards also update the curriculum (returned unchanged).

        Batches without the ``index_column`` column (an evaluation set) are scored without updating; the
        training dataset's column is checked by :meth:`attach`.  ``fn`` must be synchronous.
        """
        import inspect

        if not callable(fn) or inspect.iscoroutinefunction(fn):
            raise ConfigError(f"AdaptiveCurriculum.reward_func: {fn!r} is not a synchronous function; wrap a "
                              "TRL reward function such as accuracy_reward")

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> list[float | None]:
            rewards = fn(*args, **kwargs)
            idx = kwargs.get(self.index_column)
            if idx is None:
                return rewards
            self.observe(idx, rewards)
            log = kwargs.get("log_metric")
            if callable(log):
                log("curriculum/live", float(len(self.initial) - len(self.retired)))
                log("curriculum/mean_estimate", sum(self.estimates) / len(self.initial))
            return rewards

        wrapped._adaptive_curriculum = self  # type: ignore[attr-defined]
        return wrapped

    def attach(self, trainer: Any) -> Any:
        """Make a TRL ``GRPOTrainer`` draw its prompts from this curriculum; return the trainer.

        Checks that the trainer runs in one process, that its dataset has ``index_column`` with one row per
        pass rate, that a generation batch holds ``batch_size`` prompts and that one of its reward functions
        is wrapped by :meth:`reward_func`.
        """
        ds = getattr(trainer, "train_dataset", None)
        if ds is None or self.index_column not in getattr(ds, "column_names", []):
            raise ConfigError(f"AdaptiveCurriculum.attach: the training dataset has no {self.index_column!r} "
                              "column; add each row's index into pass_rates")
        if len(ds) != len(self.initial) or list(ds[self.index_column]) != list(range(len(self.initial))):
            raise ConfigError(f"AdaptiveCurriculum.attach: the dataset's {self.index_column!r} column must be "
                              f"0..{len(self.initial) - 1} in order (one row per pass rate; got {len(ds)} rows)")
        if getattr(trainer.accelerator, "num_processes", 1) != 1:
            raise ConfigError("AdaptiveCurriculum.attach: one process only (each process would see only its "
                              "slice of the rewards and draw different prompts); run without a distributed launcher")
        args = trainer.args
        prompts_per_gen = args.generation_batch_size // trainer.num_generations
        if prompts_per_gen != self.batch_size:
            raise ConfigError(f"AdaptiveCurriculum.attach: a generation batch holds {prompts_per_gen} prompts "
                              f"(generation_batch_size {args.generation_batch_size} / num_generations "
                              f"{trainer.num_generations}) but batch_size={self.batch_size}; make them equal")
        if not any(getattr(f, "_adaptive_curriculum", None) is self for f in trainer.reward_funcs):
            raise ConfigError("AdaptiveCurriculum.attach: no reward function reports to this curriculum; pass "
                              "reward_funcs=[curriculum.reward_func(accuracy_reward), ...] to the trainer")
        if getattr(args, "dataloader_num_workers", 0):
            raise ConfigError(f"AdaptiveCurriculum.attach: dataloader_num_workers={args.dataloader_num_workers}; "
                              "use 0 (workers would prefetch batches drawn before the feedback arrives)")
        sampler = self.sampler(mini_repeat_count=trainer.num_generations,
                               repeat_count=trainer.num_iterations * args.steps_per_generation)
        trainer._get_train_sampler = lambda dataset=None: sampler
        return trainer

    # --- restart
    def state_dict(self) -> dict[str, Any]:
        """The mutable state (JSON-serialisable): posteriors, retired prompts, draws, random state."""
        st = self._rng.getstate()
        return {"alpha": list(self.alpha), "beta": list(self.beta), "observed": list(self.observed),
                "retired": sorted(self.retired), "draws": [list(b) for b in self.draws],
                "rng": [st[0], list(st[1]), st[2]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (from a curriculum built on the same pass rates)."""
        n = len(self.initial)
        if len(state.get("alpha", ())) != n or len(state.get("beta", ())) != n:
            raise ConfigError(f"AdaptiveCurriculum.load_state_dict: the state is for a different pool "
                              f"(need {n} prompts)")
        self.alpha, self.beta = [float(x) for x in state["alpha"]], [float(x) for x in state["beta"]]
        self.observed = [int(x) for x in state["observed"]]
        self.retired = {int(i) for i in state["retired"]}
        self.draws = [list(b) for b in state["draws"]]
        v, internal, gauss = state["rng"]
        self._rng.setstate((v, tuple(internal), gauss))


class _AdaptiveSampler:
    """Flat dataset indices for a data loader: each lazily drawn batch in TRL's ``RepeatSampler`` layout."""

    def __init__(self, curriculum: AdaptiveCurriculum, mini_repeat_count: int, repeat_count: int):
        self.curriculum, self.mini_repeat_count, self.repeat_count = curriculum, mini_repeat_count, repeat_count

    def __iter__(self) -> Iterator[int]:
        for batch in self.curriculum.batches():
            for _ in range(self.repeat_count):
                for i in batch:
                    for _ in range(self.mini_repeat_count):
                        yield i

    def __len__(self) -> int:
        c = self.curriculum
        return c.num_batches * c.batch_size * self.mini_repeat_count * self.repeat_count


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
