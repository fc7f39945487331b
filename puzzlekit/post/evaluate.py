"""Held-out evaluation of the reasoning toggle: greedy completions of verifiable problems in both modes.

    from puzzlekit.post import evaluate_toggle, make_problems
    res = evaluate_toggle(model, tokenizer, make_problems(200, seed=1), max_new_tokens=40)
    res["on"]["think_tag_rate"], res["off"]["accuracy"]

Used by the SFT and RL stages of :mod:`puzzlekit.pipeline` and by the ``sft_reasoning_toggle`` and
``grpo_curriculum`` recipes.
"""

from __future__ import annotations

from typing import Any

from .chat import build_messages, render_chat
from .rewards import accuracy_reward, format_reward

__all__ = ["generate", "evaluate_toggle"]


def generate(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 100) -> list[str]:
    """Greedy completions (text after the prompt)."""
    import torch

    model.eval()
    tok.padding_side = "left"
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        enc = tok(prompts[s:s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def evaluate_toggle(model: Any, tok: Any, problems: list[Any], max_new_tokens: int) -> dict[str, dict[str, Any]]:
    """Per mode (``on``: "detailed thinking on", ``off``): the fraction of completions with think tags,
    the format reward and the accuracy, and the first completion as an example."""
    res = {}
    for mode, thinking in (("on", True), ("off", False)):
        prompts = [render_chat(build_messages(p.question, p.answer, p.reasoning, thinking)[:2],
                               add_generation_prompt=True) for p in problems]
        comps = generate(model, tok, prompts, max_new_tokens)
        answers = [p.answer for p in problems]
        res[mode] = {
            "think_tag_rate": sum("<think>" in c for c in comps) / len(comps),
            "format": sum(format_reward(completions=comps, thinking=[thinking] * len(comps))) / len(comps),
            "accuracy": sum(accuracy_reward(completions=comps, answer=answers)) / len(comps),
            "example": comps[0],
        }
    return res
