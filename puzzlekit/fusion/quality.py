"""What fusion costs in quality: KL of a fused model to the unfused one, and a random baseline.

* :func:`plan_kl` fuses a copy of the model with a plan and returns the mean
  per-token ``KL(unfused ‖ fused)`` on held-out token ids.
* :func:`random_plan` fuses the same number of sequential steps as a given plan,
  with the merges picked uniformly at random inside the same runs.
* :func:`compare_with_random` runs both for one or more budgets.
* :func:`markov_data` / :func:`train_toy_model` make a small trained model with
  attention-free runs in seconds on CPU (a structured synthetic language: a
  random order-2 Markov chain, which needs attention to predict), for tests,
  benchmarks and docs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..architecture import Architecture
from ..errors import ConfigError
from .graph import architecture_of, find_ffn_runs
from .plan import FusionPlan

__all__ = ["plan_kl", "random_plan", "compare_with_random", "markov_data", "train_toy_model"]


@torch.no_grad()
def kl_to_reference(reference: Any, candidate: Any, data: torch.Tensor, batch_size: int = 16) -> float:
    """Mean per-token ``KL(reference ‖ candidate)`` of the next-token distributions (nats)."""
    total, n = 0.0, 0
    for s in range(0, data.shape[0], batch_size):
        ids = data[s:s + batch_size]
        p = F.log_softmax(reference(input_ids=ids, use_cache=False).logits.float(), -1)
        q = F.log_softmax(candidate(input_ids=ids, use_cache=False).logits.float(), -1)
        kl = (p.exp() * (p - q)).sum(-1)
        total += float(kl.sum())
        n += kl.numel()
    return total / max(n, 1)


def plan_kl(model: Any, plan: FusionPlan, data: torch.Tensor, batch_size: int = 16) -> float:
    """Mean per-token KL of ``model`` fused with ``plan`` to ``model`` itself (0 for an empty plan)."""
    from .fuse import fuse_ffns

    if not plan.groups:
        return 0.0
    fused, _ = fuse_ffns(model, plan)
    return kl_to_reference(model, fused.eval(), data, batch_size)


def random_plan(source: Any, steps_saved: int, seed: int = 0, *, leave_last: bool = False) -> FusionPlan:
    """A plan saving ``steps_saved`` sequential FFN steps with merges drawn at random.

    Each merge joins two adjacent FFNs (or groups) of one run, chosen uniformly
    among the boundaries still open, as :func:`make_plan` would but blind to data.
    """
    arch = architecture_of(source)
    segs = []
    for r in find_ffn_runs(arch):
        for seg in r.fusable_segments():
            seg = list(seg)
            if leave_last and seg[-1] == r.last:
                seg = seg[:-1]
            if len(seg) >= 2:
                segs.append(seg)
    boundaries = [(si, k) for si, seg in enumerate(segs) for k in range(len(seg) - 1)]
    if steps_saved > len(boundaries):
        raise ConfigError(f"random_plan: only {len(boundaries)} merges are possible, asked for {steps_saved}")
    chosen = set(random.Random(seed).sample(boundaries, steps_saved))
    groups = []
    for si, seg in enumerate(segs):
        cur = [seg[0]]
        for k in range(len(seg) - 1):
            if (si, k) in chosen:
                cur.append(seg[k + 1])
            else:
                if len(cur) >= 2:
                    groups.append(tuple(cur))
                cur = [seg[k + 1]]
        if len(cur) >= 2:
            groups.append(tuple(cur))
    return FusionPlan(sorted(groups), meta={"criterion": "random", "seed": seed, "steps_saved": steps_saved})


def compare_with_random(model: Any, calib: torch.Tensor, heldout: torch.Tensor, steps_saved: Sequence[int], *,
                        draws: int = 5, leave_last: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """For each budget, KL of the dependency-chosen plan and of ``draws`` random plans (mean, all)."""
    from .dependency import dependency_matrix
    from .plan import make_plan

    dep = dependency_matrix(model, calib)
    total = sum(len(r) for r in find_ffn_runs(model))
    rows = []
    for s in steps_saved:
        plan = make_plan(model, dep, target_steps=total - s, leave_last=leave_last)
        rand = [plan_kl(model, random_plan(model, plan.steps_saved, seed + d, leave_last=leave_last), heldout)
                for d in range(draws)]
        rows.append({"steps_saved": plan.steps_saved, "groups": [list(g) for g in plan.groups],
                     "kl_dependency": plan_kl(model, plan, heldout), "kl_random_mean": float(np.mean(rand)),
                     "kl_random": rand})
    return rows


def markov_data(num_seqs: int, seq_len: int, vocab: int, seed: int = 0, *, branching: int = 3,
                order: int = 2) -> torch.Tensor:
    """Token ids from a random Markov chain of ``order`` 1 or 2: each context (previous token, or
    pair of tokens) allows ``branching`` next tokens.  The chain's table depends only on
    ``vocab`` / ``branching`` / ``order``; ``num_seqs`` rows are drawn with ``seed``.
    The best achievable loss is ``ln(branching)`` nats per token."""
    if order not in (1, 2):
        raise ConfigError(f"markov_data: order must be 1 or 2, got {order!r}")
    table = np.random.default_rng(1234 + vocab + branching + order).integers(
        0, vocab, size=(vocab,) * order + (branching,))
    rng = np.random.default_rng(seed)
    out = np.empty((num_seqs, seq_len), dtype=np.int64)
    out[:, :order] = rng.integers(0, vocab, size=(num_seqs, order))
    choice = rng.integers(0, branching, size=(num_seqs, seq_len))
    for t in range(order, seq_len):
        ctx = (out[:, t - 1],) if order == 1 else (out[:, t - 2], out[:, t - 1])
        out[:, t] = table[ctx + (choice[:, t],)]
    return torch.from_numpy(out)


def train_toy_model(arch: Architecture, data: torch.Tensor, *, steps: int = 200, batch_size: int = 16,
                    lr: float = 3e-3, seed: int = 0) -> Any:
    """A ``PuzzleForCausalLM`` of ``arch`` trained from scratch on ``data`` (token ids) with AdamW."""
    from ..model import PuzzleForCausalLM

    torch.manual_seed(seed)
    model = PuzzleForCausalLM.from_architecture(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=g)
        ids = data[idx]
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        opt.step()
    return model.eval()
