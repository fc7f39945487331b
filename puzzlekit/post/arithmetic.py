"""A synthetic, verifiable task generated in code: column addition with a worked trace.

``"47+38"`` → answer ``"85"``; the reasoning trace adds the columns right to
left with the carry written out: ``"7+8=15,4+3+1=8"``.  Difficulty grows with
the number of digits and of carries, so pass rates spread out — what a
pass-rate curriculum needs — and a tiny model trained in minutes on a CPU
solves the short ones with and without the trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .chat import paired_samples

__all__ = ["ArithmeticProblem", "make_problem", "make_problems", "addition_trace", "arithmetic_pairs",
           "ARITHMETIC_ALPHABET"]

#: Every character the task and its chat format use (for a character-level tokenizer).
ARITHMETIC_ALPHABET = "0123456789+=, \n" + "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class ArithmeticProblem:
    """One addition problem with its answer, worked trace and difficulty."""

    a: int
    b: int

    @property
    def question(self) -> str:
        """The prompt text, e.g. ``"47+38"``."""
        return f"{self.a}+{self.b}"

    @property
    def answer(self) -> str:
        """The verifiable ground truth, e.g. ``"85"``."""
        return str(self.a + self.b)

    @property
    def reasoning(self) -> str:
        """The worked trace (see :func:`addition_trace`)."""
        return addition_trace(self.a, self.b)

    @property
    def num_carries(self) -> int:
        """How many columns carry."""
        return sum(1 for step in self.reasoning.split(",") if int(step.split("=")[1]) >= 10)

    @property
    def difficulty(self) -> int:
        """Digits of the longer operand plus the number of carries (1 = easiest)."""
        return max(len(str(self.a)), len(str(self.b))) + self.num_carries


def addition_trace(a: int, b: int) -> str:
    """Right-to-left column sums with carries: ``addition_trace(47, 38) == "7+8=15,4+3+1=8"``."""
    if a < 0 or b < 0:
        raise ConfigError(f"addition_trace: operands must be >= 0, got {a} and {b}")
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}" + ("+1" if carry else "") + f"={s}")
        carry = s // 10
    return ",".join(steps)


def make_problem(rng: random.Random, max_digits: int = 2, min_digits: int = 1) -> ArithmeticProblem:
    """One random problem whose operands have between ``min_digits`` and ``max_digits`` digits."""
    if not 1 <= min_digits <= max_digits:
        raise ConfigError(f"make_problem: need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")

    def operand() -> int:
        d = rng.randint(min_digits, max_digits)
        return rng.randint(0 if d == 1 else 10 ** (d - 1), 10 ** d - 1)

    return ArithmeticProblem(operand(), operand())


def make_problems(n: int, *, seed: int = 0, max_digits: int = 2, min_digits: int = 1,
                  exclude: set[str] | None = None) -> list[ArithmeticProblem]:
    """``n`` distinct problems (by question), none in ``exclude`` (use it to keep test sets held out)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[ArithmeticProblem] = []
    space = sum(9 * 10 ** (d - 1) + (1 if d == 1 else 0) for d in range(min_digits, max_digits + 1)) ** 2
    if n > space - len(seen):
        raise ConfigError(f"make_problems: asked for {n} distinct problems but only {space - len(seen)} exist "
                          f"with {min_digits}..{max_digits} digits; raise max_digits or ask for fewer")
    while len(out) < n:
        p = make_problem(rng, max_digits, min_digits)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def arithmetic_pairs(problems: list[ArithmeticProblem]) -> list[dict[str, Any]]:
    """The paired thinking-on / thinking-off SFT samples of each problem (2 per problem)."""
    out: list[dict[str, Any]] = []
    for p in problems:
        out.extend(paired_samples(p.question, p.answer, p.reasoning, difficulty=p.difficulty))
    return out
