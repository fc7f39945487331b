"""Chat formatting with the Llama-Nemotron reasoning toggle, paired samples, staged mixing.

Llama-Nemotron switches reasoning on and off with the system prompt alone:
``"detailed thinking on"`` makes the assistant answer with a ``<think>…</think>``
trace followed by the answer; ``"detailed thinking off"`` makes it answer
directly, with no trace.  SFT data therefore comes in *pairs*: the same prompt
once with a trace (thinking on) and once without (thinking off).

The SFT data was mixed in stages: reasoning data first, then non-reasoning
data, then chat and tool calling.  :func:`staged_mix` builds such a schedule
from named sources; each stage is trained in turn (one ``SFTTrainer.train``
per stage, or one ordered dataset).

Everything here is plain Python (no torch) so data can be built anywhere.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = [
    "THINKING_ON",
    "THINKING_OFF",
    "THINK_OPEN",
    "THINK_CLOSE",
    "system_prompt",
    "format_response",
    "build_messages",
    "paired_samples",
    "render_chat",
    "Stage",
    "staged_mix",
    "DEFAULT_STAGES",
]

THINKING_ON = "detailed thinking on"
THINKING_OFF = "detailed thinking off"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def system_prompt(thinking: bool) -> str:
    """The Llama-Nemotron system prompt that turns reasoning on (True) or off (False)."""
    return THINKING_ON if thinking else THINKING_OFF


def format_response(answer: str, reasoning: str | None, thinking: bool) -> str:
    """The assistant's text: ``<think>reasoning</think>answer`` when thinking, else ``answer``.

    Raises ConfigError when thinking is on and no reasoning trace is given (an
    empty trace would teach the model to emit empty think tags).
    """
    if thinking:
        if reasoning is None or not str(reasoning).strip():
            raise ConfigError("format_response: thinking=True needs a non-empty reasoning trace; "
                              "pass reasoning=... or build a thinking-off sample")
        return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{answer}"
    return str(answer)


def build_messages(question: str, answer: str, reasoning: str | None, thinking: bool) -> list[dict[str, str]]:
    """A chat (system, user, assistant) in the ``[{"role", "content"}]`` form TRL and HF templates use."""
    return [
        {"role": "system", "content": system_prompt(thinking)},
        {"role": "user", "content": str(question)},
        {"role": "assistant", "content": format_response(answer, reasoning, thinking)},
    ]


def paired_samples(
    question: str, answer: str, reasoning: str, **extra: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reasoning (thinking on) and non-reasoning (thinking off) samples of one prompt.

    Each sample is a prompt–completion record (``prompt``: system + user
    messages, ``completion``: the assistant message) plus ``thinking``,
    ``answer`` and any ``extra`` columns, ready for TRL's ``SFTTrainer`` (which
    then computes the loss on the completion only) or for
    :func:`render_chat`.
    """
    out = []
    for thinking in (True, False):
        msgs = build_messages(question, answer, reasoning, thinking)
        out.append({"prompt": msgs[:2], "completion": msgs[2:], "thinking": thinking,
                    "answer": str(answer), **extra})
    return out[0], out[1]


# A minimal chat template for tokenizers that have none (the tiny in-code tokenizers of the
# examples): "<|system|>…\n<|user|>…\n<|assistant|>…<|end|>".
_ROLE_TAGS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|tool|>"}
END_TAG = "<|end|>"


def render_chat(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False,
                tokenizer: Any = None) -> str:
    """Render messages to text: with the tokenizer's own chat template when it has one, else a minimal one.

    The minimal template writes ``<|role|>content`` lines and closes the
    assistant turn with ``<|end|>``; ``add_generation_prompt`` appends
    ``<|assistant|>`` so a model continues with its answer.
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    parts = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in _ROLE_TAGS:
            raise ConfigError(f"render_chat: message {i} has role {role!r}; use one of {sorted(_ROLE_TAGS)}")
        parts.append(_ROLE_TAGS[role] + str(m.get("content", "")))
        parts.append(END_TAG if role == "assistant" else "\n")
    if add_generation_prompt:
        parts.append(_ROLE_TAGS["assistant"])
    return "".join(parts)


@dataclass(frozen=True)
class Stage:
    """One SFT stage: how many samples it draws and the mixing weight of each named source."""

    name: str
    num_samples: int
    weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ConfigError(f"Stage {self.name!r}: num_samples is {self.num_samples}; use a count >= 0")
        if not self.weights or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ConfigError(f"Stage {self.name!r}: weights {dict(self.weights)} must be non-negative "
                              "with a positive sum, e.g. {'reasoning': 1.0}")


#: Llama-Nemotron's order: reasoning first, then non-reasoning, then chat and tool calling
#: (each later stage keeps some of the earlier data so the earlier skill is not forgotten).
DEFAULT_STAGES = (
    ("reasoning", {"reasoning": 1.0}),
    ("non_reasoning", {"non_reasoning": 0.8, "reasoning": 0.2}),
    ("chat", {"chat": 0.6, "tool": 0.2, "reasoning": 0.1, "non_reasoning": 0.1}),
)


def staged_mix(sources: Mapping[str, Sequence[Any]], stages: Sequence[Stage], *, seed: int = 0
               ) -> list[list[Any]]:
    """Draw each stage's samples from the sources in proportion to the stage's weights.

    Returns one list per stage (train them in order).  Sources are drawn
    without replacement while they last and cycle (reshuffled) after;
    weights naming an absent source are an error, and a source that is
    empty cannot be drawn from.
    """
    rng = random.Random(seed)
    pools: dict[str, list[Any]] = {}
    cursors: dict[str, int] = {}
    for name, data in sources.items():
        pools[name] = list(data)
        rng.shuffle(pools[name])
        cursors[name] = 0
    out: list[list[Any]] = []
    for st in stages:
        names = [n for n, w in st.weights.items() if w > 0]
        for n in names:
            if n not in pools:
                raise ConfigError(f"staged_mix: stage {st.name!r} weights source {n!r}, which is not among "
                                  f"the sources {sorted(pools)}; add it or drop its weight")
            if not pools[n]:
                raise ConfigError(f"staged_mix: source {n!r} is empty but stage {st.name!r} draws from it")
        total = sum(st.weights[n] for n in names)
        # largest-remainder apportionment: counts sum exactly to num_samples
        raw = [st.num_samples * st.weights[n] / total for n in names]
        counts = [int(r) for r in raw]
        for i in sorted(range(len(names)), key=lambda i: raw[i] - counts[i], reverse=True)[
                : st.num_samples - sum(counts)]:
            counts[i] += 1
        batch: list[Any] = []
        for n, c in zip(names, counts):
            for _ in range(c):
                if cursors[n] >= len(pools[n]):
                    rng.shuffle(pools[n])
                    cursors[n] = 0
                batch.append(pools[n][cursors[n]])
                cursors[n] += 1
        rng.shuffle(batch)
        out.append(batch)
    return out
