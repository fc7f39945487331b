"""Greedy chat answers of a child against its parent on fixed prompts, with the parent's chat template.

A cheap, readable check of what compression did to an instruction-tuned parent: each of
:data:`CHAT_PROMPTS` is rendered with the tokenizer's chat template, both models answer greedily,
and the **share of prompts whose first ``n`` answer tokens equal the parent's** is reported, with
the answers side by side::

    parent_ans = greedy_answers(parent, tok)                # token ids per prompt
    res = compare_answers(parent_ans, greedy_answers(child, tok), tokenizer=tok, n=16)
    res["share"], res["examples"][:3]

An answer that ends (EOS) before ``n`` tokens is compared up to its end: a child that stops at the
same place agrees.  Prompts are batched with left padding; the answers equal one-at-a-time
generation (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["CHAT_PROMPTS", "render_prompts", "greedy_answers", "compare_answers", "chat_agreement"]

#: Thirty fixed prompts: facts, arithmetic, definitions, instructions, code, short writing.
CHAT_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "Who wrote the play Romeo and Juliet?",
    "What is 12 plus 7?",
    "Name three primary colors.",
    "What is the boiling point of water in degrees Celsius?",
    "Translate 'thank you' into Spanish.",
    "What is the largest planet in our solar system?",
    "Give me a synonym for 'happy'.",
    "What does a Python list comprehension do?",
    "Write a Python function that returns the square of a number.",
    "What is photosynthesis?",
    "How do I reverse a string in Python?",
    "What is the chemical symbol for gold?",
    "Explain what a noun is in one sentence.",
    "What is the opposite of 'cold'?",
    "Write a haiku about the sea.",
    "What are the three states of matter?",
    "Why is the sky blue?",
    "What is the square root of 81?",
    "List two benefits of regular exercise.",
    "What language is spoken in Brazil?",
    "What is a prime number?",
    "Summarize the story of Cinderella in one sentence.",
    "How many continents are there?",
    "What is the freezing point of water in Fahrenheit?",
    "Suggest a name for a pet cat.",
    "What does CPU stand for?",
    "Write one sentence describing autumn.",
    "What is the main ingredient of guacamole?",
)


def render_prompts(tokenizer: Any, prompts: Sequence[str] = CHAT_PROMPTS, *,
                   system: str | None = None) -> list[list[int]]:
    """Each prompt as one user turn, rendered with the tokenizer's chat template and the assistant's
    generation prompt (``system``: an optional system turn; the template may add its own default)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the tokenizer has no chat template; chat evaluation needs an instruction-tuned parent's "
                          "tokenizer (e.g. from its GGUF or tokenizer_config.json)")
    out = []
    for p in prompts:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        enc = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
        out.append(list(enc["input_ids"]))
    return out


@torch.no_grad()
def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[str] = CHAT_PROMPTS, *, max_new_tokens: int = 16,
                   batch_size: int = 8, system: str | None = None) -> list[list[int]]:
    """The model's greedy answer (token ids, EOS included when reached, at most ``max_new_tokens``)
    to each prompt."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token; greedy answers need one to stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rendered = render_prompts(tokenizer, prompts, system=system)
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    answers: list[list[int]] = []
    for b in range(0, len(rendered), batch_size):
        chunk = rendered[b:b + batch_size]
        T = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for k, r in enumerate(chunk):  # left padding: every prompt ends where generation starts
            ids[k, T - len(r):] = torch.tensor(r)
            mask[k, T - len(r):] = 1
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=pad)
        for row in out[:, T:].tolist():
            ans = []
            for t in row:
                ans.append(int(t))
                if t == eos:
                    break
            answers.append(ans)
    model.train(was)
    return answers


def _head(ans: Sequence[int], n: int, eos: int | None) -> list[int]:
    out = []
    for t in ans[:n]:
        out.append(int(t))
        if eos is not None and t == eos:
            break
    return out


def compare_answers(parent: Sequence[Sequence[int]], child: Sequence[Sequence[int]], *, n: int = 16,
                    tokenizer: Any = None, prompts: Sequence[str] = CHAT_PROMPTS, examples: int = 5) -> dict[str, Any]:
    """``share``: the fraction of prompts whose first ``n`` answer tokens (up to EOS) equal the parent's;
    ``matches`` per prompt; with ``tokenizer``, ``examples``: the first ``examples`` prompts with both
    answers decoded (differing ones first)."""
    if len(parent) != len(child):
        raise ConfigError(f"compare_answers: {len(parent)} parent answers but {len(child)} child answers")
    if not parent:
        raise ConfigError("compare_answers: no answers")
    eos = getattr(tokenizer, "eos_token_id", None)
    matches = [_head(a, n, eos) == _head(b, n, eos) for a, b in zip(parent, child)]
    res: dict[str, Any] = {"share": sum(matches) / len(matches), "n_tokens": n, "matches": matches}
    if tokenizer is not None:
        order = sorted(range(len(matches)), key=lambda i: (matches[i], i))[:examples]
        res["examples"] = [{"prompt": prompts[i] if i < len(prompts) else None, "same": matches[i],
                            "parent": tokenizer.decode(parent[i], skip_special_tokens=True),
                            "child": tokenizer.decode(child[i], skip_special_tokens=True)} for i in order]
    return res


def chat_agreement(parent_model: Any, child_model: Any, tokenizer: Any, *, n: int = 16,
                   prompts: Sequence[str] = CHAT_PROMPTS, parent_answers: Sequence[Sequence[int]] | None = None,
                   batch_size: int = 8) -> dict[str, Any]:
    """:func:`compare_answers` of the two models' greedy answers (``parent_answers``: reuse the parent's)."""
    pa = parent_answers if parent_answers is not None else greedy_answers(parent_model, tokenizer, prompts,
                                                                            max_new_tokens=n, batch_size=batch_size)
    ca = greedy_answers(child_model, tokenizer, prompts, max_new_tokens=n, batch_size=batch_size)
    return compare_answers(pa, ca, n=n, tokenizer=tokenizer, prompts=prompts)
