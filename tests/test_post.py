"""Post-training pieces: chat toggle, paired samples, staged mixing, masking, rewards, pass rates, curriculum."""

from __future__ import annotations

import random
import statistics

import pytest

from puzzlekit.errors import ConfigError
from puzzlekit.post import (
    ARITHMETIC_ALPHABET,
    IGNORE_INDEX,
    THINKING_OFF,
    THINKING_ON,
    ArithmeticProblem,
    CurriculumSampler,
    Stage,
    accuracy_reward,
    addition_trace,
    arithmetic_pairs,
    build_messages,
    char_tokenizer,
    estimate_pass_rates,
    extract_answer,
    filter_by_pass_rate,
    format_reward,
    make_problems,
    paired_samples,
    render_chat,
    response_only_labels,
    staged_mix,
    to_prompt_completion,
    tokenize_for_sft,
)


def test_messages_follow_the_toggle():
    on = build_messages("1+2", "3", "1+2=3", thinking=True)
    off = build_messages("1+2", "3", "1+2=3", thinking=False)
    assert on[0] == {"role": "system", "content": THINKING_ON}
    assert off[0] == {"role": "system", "content": THINKING_OFF}
    assert on[2]["content"] == "<think>1+2=3</think>3"
    assert off[2]["content"] == "3"
    with pytest.raises(ConfigError, match="reasoning trace"):
        build_messages("1+2", "3", "", thinking=True)


def test_paired_samples_share_the_prompt_and_answer():
    a, b = paired_samples("q", "42", "trace", source="x")
    assert a["thinking"] and not b["thinking"]
    assert a["prompt"][1] == b["prompt"][1] and a["answer"] == b["answer"] == "42"
    assert "<think>" in a["completion"][0]["content"] and "<think>" not in b["completion"][0]["content"]
    assert a["source"] == "x"


def test_render_chat_minimal_template():
    msgs = build_messages("1+2", "3", None, thinking=False)
    text = render_chat(msgs[:2], add_generation_prompt=True)
    assert text == f"<|system|>{THINKING_OFF}\n<|user|>1+2\n<|assistant|>"
    with pytest.raises(ConfigError, match="role"):
        render_chat([{"role": "robot", "content": "x"}])


def test_addition_trace_and_difficulty():
    assert addition_trace(47, 38) == "7+8=15,4+3+1=8"
    assert addition_trace(5, 123) == "5+3=8,0+2=2,0+1=1"
    p = ArithmeticProblem(99, 1)
    assert p.answer == "100" and p.num_carries == 2 and p.difficulty == 4
    assert ArithmeticProblem(1, 2).difficulty == 1
    # every trace is consistent with the answer: the column digits read backwards plus the final carry
    for p in make_problems(200, seed=3, max_digits=3):
        sums = [int(s.split("=")[1]) for s in p.reasoning.split(",")]
        digits = "".join(str(s % 10) for s in reversed(sums))
        if sums[-1] >= 10:
            digits = "1" + digits
        assert int(digits) == p.a + p.b


def test_make_problems_distinct_and_held_out():
    train = make_problems(100, seed=0)
    test = make_problems(50, seed=1, exclude={p.question for p in train})
    assert len({p.question for p in train}) == 100
    assert not {p.question for p in train} & {p.question for p in test}
    with pytest.raises(ConfigError, match="distinct"):
        make_problems(10_000, max_digits=1)


def test_staged_mix_proportions_and_order():
    sources = {"reasoning": [("r", i) for i in range(50)], "non_reasoning": [("n", i) for i in range(50)],
               "chat": [("c", i) for i in range(10)]}
    stages = [Stage("reasoning", 40, {"reasoning": 1}), Stage("non_reasoning", 40, {"non_reasoning": 3, "reasoning": 1}),
              Stage("chat", 30, {"chat": 1, "reasoning": 1, "non_reasoning": 1})]
    out = staged_mix(sources, stages, seed=0)
    assert [len(s) for s in out] == [40, 40, 30]
    assert all(x[0] == "r" for x in out[0])
    assert sum(x[0] == "n" for x in out[1]) == 30
    assert sum(x[0] == "c" for x in out[2]) == 10
    # the first stage draws without replacement
    assert len(set(out[0])) == 40
    assert staged_mix(sources, stages, seed=0) == out
    with pytest.raises(ConfigError, match="tool"):
        staged_mix(sources, [Stage("x", 3, {"tool": 1})])
    with pytest.raises(ConfigError, match="weights"):
        Stage("x", 3, {})


def test_response_only_masking():
    ids, labels = response_only_labels([1, 2, 3], [7, 8])
    assert ids == [1, 2, 3, 7, 8] and labels == [IGNORE_INDEX] * 3 + [7, 8]
    tok = char_tokenizer(ARITHMETIC_ALPHABET)
    on, off = arithmetic_pairs([ArithmeticProblem(47, 38)])
    rec = tokenize_for_sft(off, tok)
    kept = [t for t in rec["labels"] if t != IGNORE_INDEX]
    assert tok.decode(kept) == "85<|end|>"
    rec = tokenize_for_sft(on, tok)
    kept = [t for t in rec["labels"] if t != IGNORE_INDEX]
    assert tok.decode(kept) == "<think>7+8=15,4+3+1=8</think>85<|end|>"
    assert to_prompt_completion(on)["prompt"].endswith("<|assistant|>")


def test_char_tokenizer_round_trip_and_tags_are_single_tokens():
    tok = char_tokenizer(ARITHMETIC_ALPHABET)
    s = "<think>1+2=3</think>3<|end|>"
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == s
    assert len(ids) == 1 + 5 + 1 + 1 + 1
    assert tok.eos_token_id == tok.convert_tokens_to_ids("<|end|>")


def test_accuracy_reward():
    comps = ["<think>x</think>85", "85<|end|>", " 85 ", "<think>x</think>84", "<think>85", "085"]
    assert accuracy_reward(completions=comps, answer=["85"] * 6) == [1, 1, 1, 0, 0, 1]
    conv = [[{"role": "assistant", "content": "<think>a</think>12"}]]
    assert accuracy_reward(prompts=["p"], completions=conv, answer=[12]) == [1.0]
    assert extract_answer("<think>1</think> 7<|end|>junk") == "7"
    with pytest.raises(ConfigError, match="answer"):
        accuracy_reward(completions=["1"], answer=[])


def test_format_reward_toggle():
    comps = ["<think>t</think>5", "5", "<think>t</think>5", "5", "<think></think>5", "<think>t</think>",
             "<think>t</think><think>u</think>5"]
    thinking = [True, True, False, False, True, True, True]
    assert format_reward(completions=comps, thinking=thinking) == [1, 0, 0, 1, 0, 0, 0]
    prompts = [[{"role": "system", "content": THINKING_ON}, {"role": "user", "content": "q"}],
               f"<|system|>{THINKING_OFF}\n<|user|>q\n<|assistant|>"]
    assert format_reward(completions=["<think>t</think>5", "5"], prompts=prompts) == [1.0, 1.0]
    with pytest.raises(ConfigError, match="thinking"):
        format_reward(completions=["5"], prompts=["no system prompt"])


def test_rewards_work_inside_trl_signature():
    # TRL passes prompts, completions, completion_ids and every dataset column by keyword
    kw = dict(prompts=["p", "p"], completions=["<think>t</think>3", "3"], completion_ids=[[1], [2]],
              answer=["3", "3"], thinking=[True, False], trainer_state=None, difficulty=[1, 1])
    assert accuracy_reward(**kw) == [1.0, 1.0]
    assert format_reward(**kw) == [1.0, 1.0]


def test_estimate_pass_rates_with_a_known_generator():
    # a generator whose i-th prompt is right in exactly i of 4 samples
    answers = ["1", "2", "3", "4", "5"]

    def gen(prompts, k):
        return [[answers[int(p)] if j < int(p) else "wrong" for j in range(k)] for p in prompts]

    rates = estimate_pass_rates(["0", "1", "2", "3", "4"], gen, k=4, batch_size=2, answer=answers)
    assert rates == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert filter_by_pass_rate(rates) == [0, 1, 2]
    assert filter_by_pass_rate(rates, max_rate=0.6, min_rate=0.1) == [1, 2]
    with pytest.raises(ConfigError, match="column"):
        estimate_pass_rates(["0"], gen, k=2, answer=[])
    with pytest.raises(ConfigError, match="max_rate"):
        filter_by_pass_rate(rates, max_rate=0)
    with pytest.raises(ConfigError, match="min_rate"):
        filter_by_pass_rate(rates, max_rate=0.5, min_rate=0.5)


def test_curriculum_moves_from_easy_to_hard():
    rng = random.Random(0)
    rates = [rng.random() for _ in range(400)]
    s = CurriculumSampler(rates, batch_size=16, num_batches=20, sigma=0.1, seed=1)
    batches = list(s.batches())
    means = [statistics.mean(rates[i] for i in b) for b in batches]
    assert means[0] > 0.75 and means[-1] < 0.25
    # the batch means track the moving target
    assert all(abs(m - s.target(t)) < 0.12 for t, m in enumerate(means))
    # roughly monotone: a clear downward trend
    assert statistics.correlation(list(range(20)), means) < -0.95
    assert len(s.order()) == len(s) == 320 and list(s) == s.order()
    assert all(len(set(b)) == 16 for b in batches)
    assert CurriculumSampler(rates, batch_size=16, num_batches=20, sigma=0.1, seed=1).order() == s.order()
    with pytest.raises(ConfigError, match="pass rate"):
        CurriculumSampler([1.5], batch_size=1, num_batches=1)


def test_curriculum_with_replacement_follows_the_target_past_one_epoch():
    # 40 prompts, 100 batches of 4 = 10 epochs: without replacement the pool's depletion makes a saw-tooth,
    # with replacement every batch sits near the moving target
    rates = [i / 39 for i in range(40)]
    kw = dict(batch_size=4, num_batches=100, sigma=0.1, seed=0)

    def off_target(s):
        return max(abs(statistics.mean(rates[i] for i in b) - s.target(t)) for t, b in enumerate(s.batches()))

    with_r = CurriculumSampler(rates, replacement=True, **kw)
    without = CurriculumSampler(rates, **kw)
    assert off_target(with_r) < 0.2 < off_target(without)
    assert all(len(set(b)) == 4 for b in with_r.batches())
    means = [statistics.mean(rates[i] for i in b) for b in with_r.batches()]
    assert statistics.correlation(list(range(100)), means) < -0.9


def test_curriculum_refills_the_pool():
    s = CurriculumSampler([0.1, 0.5, 0.9], batch_size=2, num_batches=5)
    order = s.order()
    assert len(order) == 10 and set(order) == {0, 1, 2}
