"""SFT data pieces: prompt/completion text for TRL and response-only loss masking.

TRL's ``SFTTrainer`` takes prompt–completion records and, by default
(``completion_only_loss``), computes the cross-entropy on the completion
tokens only.  :func:`to_prompt_completion` renders the paired samples of
:mod:`puzzlekit.post.chat` to such text records for tokenizers without a chat
template; :func:`response_only_labels` does the masking for a plain
accelerate loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from .chat import render_chat

__all__ = ["IGNORE_INDEX", "to_prompt_completion", "response_only_labels", "tokenize_for_sft"]

#: Label value the cross-entropy ignores (PyTorch's default ``ignore_index``).
IGNORE_INDEX = -100


def to_prompt_completion(sample: Mapping[str, Any], *, tokenizer: Any = None) -> dict[str, Any]:
    """A paired sample with message lists → the same sample with ``prompt`` / ``completion`` as text.

    The prompt ends with the assistant tag (generation prompt); the
    completion is the assistant's content (TRL appends the EOS token).
    """
    for key in ("prompt", "completion"):
        if key not in sample:
            raise ConfigError(f"to_prompt_completion: sample has no {key!r}; build it with paired_samples()")
    prompt = sample["prompt"]
    completion = sample["completion"]
    out = dict(sample)
    out["prompt"] = prompt if isinstance(prompt, str) else render_chat(prompt, add_generation_prompt=True,
                                                                       tokenizer=tokenizer)
    out["completion"] = completion if isinstance(completion, str) else "".join(
        str(m["content"]) for m in completion)
    return out


def response_only_labels(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for prompt + completion with the prompt's labels set to ``IGNORE_INDEX``.

    The model's loss then counts only the response tokens (shifted inside
    the model as usual for causal LMs).
    """
    if not completion_ids:
        raise ConfigError("response_only_labels: the completion is empty; nothing would be learned")
    ids = list(prompt_ids) + list(completion_ids)
    return ids, [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)


def tokenize_for_sft(sample: Mapping[str, Any], tokenizer: Any, *, add_eos: bool = True) -> dict[str, list[int]]:
    """Tokenize one text prompt/completion sample to ``input_ids``/``labels`` with response-only labels."""
    rec = to_prompt_completion(sample, tokenizer=tokenizer)
    p = tokenizer(rec["prompt"], add_special_tokens=False)["input_ids"]
    c = tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    ids, labels = response_only_labels(p, c)
    return {"input_ids": ids, "labels": labels}
