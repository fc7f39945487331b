"""Post-training data from files and from code: JSONL readers and the generated reasoning-toggle corpus.

* :func:`read_jsonl`: rows of a JSONL file, each checked for the keys a stage needs.
* :func:`read_sft_data`: SFT samples grouped by ``source`` (reasoning / non_reasoning / chat / tool),
  ready for :func:`~puzzlekit.post.staged_mix`.
* :func:`arithmetic_chat_corpus`: chat text made in code (arithmetic answered with and without a
  ``<think>`` trace, in the reasoning-toggle format): text for a tiny stand-in parent, needing no hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["read_jsonl", "read_sft_data", "arithmetic_chat_corpus"]


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each an object with the ``required`` keys (a ConfigError names the line)."""
    from ..io import MAX_JSON_BYTES

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give a JSONL file with the keys {', '.join(required)}")
    rows = []
    with open(path, encoding="utf-8") as f:  # line by line: a large file is never read whole
        for n, line in enumerate(iter(lambda: f.readline(MAX_JSON_BYTES + 1), ""), 1):
            if len(line) > MAX_JSON_BYTES:
                raise ConfigError(f"{path}:{n}: a line longer than {MAX_JSON_BYTES} bytes; one sample per line")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: not JSON ({e.msg})") from e
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
            if missing:
                raise ConfigError(f"{path}:{n}: missing {', '.join(missing)}; each line needs {', '.join(required)}")
            rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def read_sft_data(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """SFT samples of a JSONL file (``{"prompt": text or a message list, "completion", "source"}``) grouped
    by ``source`` for :func:`~puzzlekit.post.staged_mix` (prompts rendered in the reasoning-toggle format)."""
    from .chat import DEFAULT_STAGES
    from .sft import to_prompt_completion

    known = {k for _, w in DEFAULT_STAGES for k in w}
    sources: dict[str, list[dict[str, Any]]] = {}
    for n, row in enumerate(read_jsonl(path, ("prompt", "completion", "source")), 1):
        if row["source"] not in known:
            raise ConfigError(f"{path}: row {n} has source {row['source']!r}; use one of {', '.join(sorted(known))}")
        sources.setdefault(row["source"], []).append(to_prompt_completion(row))
    return sources


def arithmetic_chat_corpus(n_problems: int = 1000, *, seed: int = 0) -> str:
    """Chat text made in code: ``n_problems`` arithmetic questions (seed ``seed + 7``) answered with and
    without a ``<think>`` trace, in the reasoning-toggle chat format, one document per line."""
    from .arithmetic import arithmetic_pairs, make_problems
    from .sft import to_prompt_completion

    docs = []
    for s in arithmetic_pairs(make_problems(n_problems, seed=seed + 7, max_digits=2)):
        pc = to_prompt_completion(s)
        docs.append(pc["prompt"] + pc["completion"] + "<|end|>")
    return "\n".join(docs) + "\n"
