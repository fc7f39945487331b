"""Verifiable rewards for GRPO, in the signature TRL's ``GRPOTrainer`` calls.

TRL calls each reward function as ``f(prompts=..., completions=...,
completion_ids=..., **columns)`` where ``columns`` are the dataset's other
columns, one value per completion, and expects a list of floats back.
Completions are strings (standard datasets) or lists of messages
(conversational datasets); both are accepted here.

* :func:`accuracy_reward`: 1.0 when the answer after the reasoning trace
  equals the ground truth in the ``answer`` column, else 0.0.
* :func:`format_reward`: 1.0 when ``<think>…</think>`` is present exactly when
  thinking is on (the ``thinking`` column, or the system prompt of the
  prompt), else 0.0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .chat import THINK_CLOSE, THINK_OPEN, THINKING_OFF, THINKING_ON

__all__ = ["completion_text", "split_reasoning", "extract_answer", "accuracy_reward", "format_reward",
           "thinking_from_prompt"]

_THINK_RE = re.compile(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), re.S)
_END_MARKERS = ("<|end|>", "</s>", "<|eot_id|>", "<|im_end|>")


def completion_text(completion: Any) -> str:
    """The assistant text of a completion given as a string or as a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return "".join(str(m.get("content", "")) for m in completion
                       if isinstance(m, dict) and m.get("role", "assistant") == "assistant")
    raise ConfigError(f"completion of type {type(completion).__name__}: expected a string or a list of messages")


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split ``<think>r</think>a`` into (r, a); (None, text) when there is no complete think block."""
    m = _THINK_RE.search(text)
    if m is None:
        return None, text
    return m.group(1), text[m.end():]


def extract_answer(text: str) -> str:
    """The final answer of a completion: what follows the think block, up to an end marker, stripped."""
    _, ans = split_reasoning(text)
    for mk in _END_MARKERS:
        ans = ans.split(mk, 1)[0]
    return ans.strip()


def _norm(x: Any) -> str:
    s = str(x).strip()
    try:  # numeric answers compare by value ("07" == "7", "3.0" == "3")
        v = float(s)
        return repr(int(v)) if v.is_integer() else repr(v)
    except ValueError:
        return " ".join(s.split())


def accuracy_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 per completion whose final answer equals the ground truth ``answer``, else 0.0.

    A completion whose think block is left open (``<think>`` without
    ``</think>``) gets 0: its answer cannot be found.
    """
    if len(answer) != len(completions):
        raise ConfigError(f"accuracy_reward: {len(completions)} completions but {len(answer)} answers; "
                          "the dataset needs an 'answer' column")
    out = []
    for c, a in zip(completions, answer):
        text = completion_text(c)
        if THINK_OPEN in text and THINK_CLOSE not in text:
            out.append(0.0)
            continue
        out.append(1.0 if _norm(extract_answer(text)) == _norm(a) else 0.0)
    return out


def thinking_from_prompt(prompt: Any) -> bool | None:
    """Read the reasoning toggle from a prompt's system message (None when it has neither prompt)."""
    text = prompt if isinstance(prompt, str) else " ".join(
        str(m.get("content", "")) for m in prompt if isinstance(m, dict) and m.get("role") == "system")
    if THINKING_OFF in text:
        return False
    if THINKING_ON in text:
        return True
    return None


def format_reward(completions: Sequence[Any], thinking: Sequence[bool] | None = None,
                  prompts: Sequence[Any] | None = None, **kwargs: Any) -> list[float]:
    """1.0 when the completion has one complete ``<think>…</think>`` block iff thinking is on.

    The toggle comes from the ``thinking`` column, else from each prompt's
    system message; with neither, a ConfigError says which to add.  With
    thinking on, the block must open the completion and be followed by a
    non-empty answer; with it off, no think tag may appear at all.
    """
    n = len(completions)
    if thinking is None:
        if prompts is None:
            raise ConfigError("format_reward: needs a 'thinking' column or prompts carrying the system prompt "
                              f"{THINKING_ON!r} / {THINKING_OFF!r}")
        thinking = [thinking_from_prompt(p) for p in prompts]
        if any(t is None for t in thinking):
            raise ConfigError(f"format_reward: a prompt has neither {THINKING_ON!r} nor {THINKING_OFF!r}; "
                              "add the system prompt or a 'thinking' column")
    if len(thinking) != n:
        raise ConfigError(f"format_reward: {n} completions but {len(thinking)} 'thinking' values")
    out = []
    for c, on in zip(completions, thinking):
        text = completion_text(c).strip()
        n_open, n_close = text.count(THINK_OPEN), text.count(THINK_CLOSE)
        if on:
            ok = (n_open == 1 and n_close == 1 and text.startswith(THINK_OPEN)
                  and bool(split_reasoning(text)[0].strip()) and bool(extract_answer(text)))
        else:
            ok = n_open == 0 and n_close == 0 and bool(extract_answer(text))
        out.append(1.0 if ok else 0.0)
    return out
