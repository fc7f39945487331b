"""Evaluating a child against its parent: per-domain KL / perplexity / top-1 agreement on held-out
text (:mod:`puzzlekit.eval.lm`) and greedy chat answers on fixed prompts (:mod:`puzzlekit.eval.chat`)."""

from .chat import CHAT_PROMPTS, chat_agreement, compare_answers, greedy_answers, render_prompts
from .lm import ParentReference, evaluate_model, paired_difference

__all__ = ["CHAT_PROMPTS", "chat_agreement", "compare_answers", "greedy_answers", "render_prompts",
           "ParentReference", "evaluate_model", "paired_difference"]
