"""Post-training pieces: reasoning-toggle chat data, SFT masking, GRPO rewards, pass-rate curriculum.

These are data pieces and reward functions for TRL's ``SFTTrainer`` and
``GRPOTrainer`` (see ``examples/sft_reasoning_toggle`` and
``examples/grpo_curriculum``), not another trainer.
"""

from __future__ import annotations

from .arithmetic import (
    ARITHMETIC_ALPHABET,
    ArithmeticProblem,
    addition_trace,
    arithmetic_pairs,
    make_problems,
)
from .chat import (
    DEFAULT_STAGES,
    THINK_CLOSE,
    THINK_OPEN,
    THINKING_OFF,
    THINKING_ON,
    Stage,
    build_messages,
    format_response,
    paired_samples,
    render_chat,
    staged_mix,
    system_prompt,
)
from .curriculum import (
    AdaptiveCurriculum,
    CurriculumSampler,
    estimate_pass_rates,
    filter_by_pass_rate,
    hf_generator,
)
from .data import arithmetic_chat_corpus, read_jsonl, read_sft_data
from .evaluate import evaluate_toggle, generate
from .rewards import accuracy_reward, completion_text, extract_answer, format_reward, split_reasoning
from .sft import IGNORE_INDEX, response_only_labels, to_prompt_completion, tokenize_for_sft
from .tiny import char_tokenizer, tiny_llama

__all__ = [
    "THINKING_ON", "THINKING_OFF", "THINK_OPEN", "THINK_CLOSE", "system_prompt", "format_response",
    "build_messages", "paired_samples", "render_chat", "Stage", "staged_mix", "DEFAULT_STAGES",
    "accuracy_reward", "format_reward", "extract_answer", "split_reasoning", "completion_text",
    "estimate_pass_rates", "filter_by_pass_rate", "CurriculumSampler", "AdaptiveCurriculum", "hf_generator",
    "IGNORE_INDEX", "response_only_labels", "to_prompt_completion", "tokenize_for_sft",
    "ArithmeticProblem", "make_problems", "addition_trace", "arithmetic_pairs", "ARITHMETIC_ALPHABET",
    "char_tokenizer", "tiny_llama", "read_jsonl", "read_sft_data", "arithmetic_chat_corpus", "evaluate_toggle",
    "generate",
]
