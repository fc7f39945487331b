"""AdaptiveCurriculum: the online pass-rate update, the drawing distribution, and a real GRPOTrainer run."""

from __future__ import annotations

import collections

import pytest

from puzzlekit.errors import ConfigError
from puzzlekit.post.curriculum import AdaptiveCurriculum


def test_all_ones_retires_and_all_zeros_down_weights():
    cur = AdaptiveCurriculum([0.5, 0.5, 0.5, 0.5], batch_size=2, num_batches=10, prior_strength=8, decay=0.5)
    assert cur.estimates == [0.5] * 4 and not cur.retired
    w0 = cur.weights()
    cur.observe([0] * 8 + [1] * 8, [1.0] * 8 + [0.0] * 8)   # prompt 0 solved in all 8, prompt 1 in none
    assert cur.estimates[0] > 0.75 and 0 in cur.retired and cur.weights()[0] == 0.0
    assert cur.estimates[1] < 0.25 and cur.weights()[1] < w0[1]
    before = cur.weights()[1]
    cur.update(1, [0.0] * 8)                                # it stays at 0: weight keeps falling
    assert cur.weights()[1] < before and 1 not in cur.retired
    assert cur.observed == [1, 2, 0, 0]
    # the update is the discounted Beta posterior: a = decay * a + successes, b = decay * b + failures
    assert cur.alpha[2] == 8 * 0.5 + 0.5
    cur.update(2, [1.0, 0.0, None, 0.5])                    # None and below-threshold rewards are failures
    assert cur.alpha[2] == 0.5 * 4.5 + 1 and cur.beta[2] == 0.5 * 4.5 + 3
    # retired prompts are never drawn while enough live ones remain
    assert all(0 not in b for b in cur.batches())


def test_initial_solved_prompts_are_retired():
    cur = AdaptiveCurriculum([0.2, 1.0, 0.5], batch_size=1, num_batches=1, max_rate=0.75)
    assert cur.retired == {1}


def test_half_is_favoured_over_extremes():
    cur = AdaptiveCurriculum([0.5, 0.05, 0.95, 0.3], batch_size=1, num_batches=4000, max_rate=1.0, seed=3)
    w = cur.weights()
    assert w[0] > w[3] > w[1] and w[0] > w[2]
    counts = collections.Counter(i for b in cur.batches() for i in b)
    assert counts[0] > counts[3] > counts[1] and counts[0] > 1.8 * counts[2]
    # empirical frequencies match the weights
    for i in range(4):
        assert abs(counts[i] / 4000 - w[i] / sum(w)) < 0.03
    # sharpness concentrates the draw on the informative prompts
    sharp = AdaptiveCurriculum([0.5, 0.05, 0.95, 0.3], batch_size=1, num_batches=1, max_rate=1.0, sharpness=3)
    ws = sharp.weights()
    assert ws[0] / ws[1] > (w[0] / w[1]) ** 2


def test_the_policy_getting_better_moves_the_draw():
    # prompt 0 becomes easy (0.5 -> 7 of 8), prompt 2 becomes learnable (0.1 -> 4 of 8): the draw follows
    cur = AdaptiveCurriculum([0.5, 0.5, 0.1], batch_size=1, num_batches=1, max_rate=1.0)
    w0 = cur.weights()
    assert w0[1] > w0[2]
    cur.update(0, [1.0] * 7 + [0.0])
    cur.update(2, [1.0] * 4 + [0.0] * 4)
    w = cur.weights()
    assert w[0] < w0[0] and w[2] > w0[2] and w[2] > w[0]
    assert cur.estimates[2] > 0.3 and cur.estimates[0] > 0.6


def test_same_seed_same_order_and_feedback_changes_it():
    rates = [i / 49 for i in range(50)]

    def run(seed, feedback):
        cur = AdaptiveCurriculum(rates, batch_size=4, num_batches=30, seed=seed)
        for b in cur.batches():
            assert len(set(b)) == 4
            if feedback:  # a deterministic "policy": prompt i is solved in (i % 9) of 8 samples
                for i in b:
                    cur.update(i, [1.0] * min(8, i % 9) + [0.0] * (8 - min(8, i % 9)))
        return cur.draws, cur.estimates

    assert run(0, True) == run(0, True)
    assert run(0, True)[0] != run(1, True)[0]
    assert run(0, True)[0] != run(0, False)[0]


def test_state_dict_round_trip_continues_identically():
    rates = [0.1, 0.3, 0.5, 0.7, 0.2, 0.6]
    a = AdaptiveCurriculum(rates, batch_size=2, num_batches=5, seed=4)
    for b in a.batches():
        a.update(b[0], [1.0, 0.0, 1.0, 1.0])
    b_ = AdaptiveCurriculum(rates, batch_size=2, num_batches=5, seed=99)
    b_.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(5)] == [b_.next_batch() for _ in range(5)]
    assert a.estimates == b_.estimates and a.retired == b_.retired
    with pytest.raises(ConfigError, match="different pool"):
        AdaptiveCurriculum([0.5], batch_size=1, num_batches=1).load_state_dict(a.state_dict())


def test_too_few_live_prompts_still_fills_the_batch():
    cur = AdaptiveCurriculum([0.5, 0.5, 0.5], batch_size=2, num_batches=1)
    cur.update(0, [1.0] * 8)
    cur.update(1, [1.0] * 8)
    assert cur.retired == {0, 1}
    b = cur.next_batch()
    assert len(set(b)) == 2 and 2 in b


def test_sampler_uses_trl_repeat_layout():
    cur = AdaptiveCurriculum([0.5] * 6, batch_size=2, num_batches=3, seed=0)
    s = cur.sampler(mini_repeat_count=3, repeat_count=2)
    flat = list(s)
    assert len(flat) == len(s) == 3 * 2 * 3 * 2
    for t, b in enumerate(cur.draws):
        blk = flat[t * 12:(t + 1) * 12]
        assert blk == [i for i in b for _ in range(3)] * 2


@pytest.mark.parametrize("kw, match", [
    (dict(pass_rates=[]), "no pass rates"),
    (dict(pass_rates=[1.5]), r"pass_rates\[0\]"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=5), "exceeds"),
    (dict(num_batches=0), "num_batches"),
    (dict(prior_strength=0), "prior_strength"),
    (dict(decay=0), "decay"),
    (dict(decay=1.5), "decay"),
    (dict(max_rate=0), "max_rate"),
    (dict(sharpness=-1), "sharpness"),
    (dict(floor=-0.1), "floor"),
    (dict(index_column=""), "index_column"),
])
def test_bad_arguments_raise(kw, match):
    args = dict(pass_rates=[0.2, 0.4, 0.6], batch_size=1, num_batches=2)
    args.update(kw)
    with pytest.raises(ConfigError, match=match):
        AdaptiveCurriculum(args.pop("pass_rates"), **args)


def test_bad_feedback_raises():
    cur = AdaptiveCurriculum([0.2, 0.4], batch_size=1, num_batches=1)
    with pytest.raises(ConfigError, match="prompt index 5"):
        cur.update(5, [1.0])
    with pytest.raises(ConfigError, match="2 prompt indices for 1 rewards"):
        cur.observe([0, 1], [1.0])
    with pytest.raises(ConfigError, match="no rewards"):
        cur.update(0, [])
    with pytest.raises(ConfigError, match="mini_repeat_count"):
        cur.sampler(mini_repeat_count=0)
    wrapped = cur.reward_func(lambda completions, **kw: [1.0] * len(completions))
    # an evaluation batch (no prompt_index column) is scored without touching the curriculum
    assert wrapped(completions=["a"], prompts=["p"]) == [1.0] and cur.observed == [0, 0]
    assert wrapped(completions=["a", "b"], prompt_index=[1, 1]) == [1.0, 1.0] and cur.observed == [0, 1]

    async def async_reward(completions, **kw):
        return [0.0] * len(completions)

    with pytest.raises(ConfigError, match="synchronous"):
        cur.reward_func(async_reward)


def test_grpo_trainer_pulls_from_the_curriculum_and_feeds_it_real_rewards(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from puzzlekit.post import ARITHMETIC_ALPHABET, build_messages, render_chat
    from puzzlekit.post.tiny import char_tokenizer, tiny_llama

    torch.set_num_threads(1)
    tok = char_tokenizer(ARITHMETIC_ALPHABET)
    model = tiny_llama(len(tok), hidden_size=32, num_layers=1, intermediate_size=64, seed=0,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    n, G, P, steps = 12, 4, 2, 4
    rows = [{"prompt": render_chat(build_messages(f"What is {i} + 1?", "", "x", True)[:2],
                                   add_generation_prompt=True), "prompt_index": i} for i in range(n)]
    seen: list[tuple[list[int], list[float]]] = []

    def digit_reward(completions, prompt_index, **kw):
        """A real reward on the sampled text (1 when it holds a digit); prompt 0 is always solved."""
        r = [1.0 if (i == 0 or any(ch.isdigit() for ch in c)) else 0.0 for c, i in zip(completions, prompt_index)]
        seen.append((list(prompt_index), r))
        return r

    # prompt 0 starts as the most informative (0.5 vs 0.2, sharpened) so that it is drawn early
    rates = [0.5] + [0.02] * (n - 1)
    cur = AdaptiveCurriculum(rates, batch_size=P, num_batches=steps + 2, sharpness=4, floor=0.0, seed=0)
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=P * G,
                      num_generations=G, max_completion_length=8, learning_rate=1e-4, beta=0.0, logging_steps=1,
                      save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[cur.reward_func(digit_reward)], args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok)
    cur.attach(trainer)
    trainer.train()

    assert len(seen) == steps
    # the trainer's groups are the curriculum's draws, in order, each prompt num_generations times
    for (idx, _), batch in zip(seen, cur.draws):
        assert idx == [i for i in batch for _ in range(G)]
    # the posterior is exactly the discounted Beta update of the rewards the trainer computed
    ref = AdaptiveCurriculum(rates, batch_size=P, num_batches=steps)
    retired_at = None
    for t, (idx, r) in enumerate(seen):
        ref.observe(idx, r)
        if retired_at is None and 0 in ref.retired:
            retired_at = t
    assert cur.estimates == ref.estimates and sum(cur.observed) == steps * P
    assert any(abs(e - r) > 0.1 for e, r in zip(cur.estimates, rates))
    # feedback reached the draw: prompt 0 (all rewards 1) is retired, and never drawn after the batch the
    # data loader had already prefetched when it was retired (one step of lag)
    assert 0 in cur.retired and retired_at is not None and retired_at + 2 < len(cur.draws)
    assert all(0 not in b for b in cur.draws[retired_at + 2:])
    assert len(cur.draws) == steps + 1   # the loader prefetches one batch ahead
    logged = [h for h in trainer.state.log_history if "curriculum/live" in h]
    assert logged and logged[-1]["curriculum/live"] == n - len(cur.retired)
    with pytest.raises(ConfigError, match="reward function"):
        AdaptiveCurriculum([0.5] * n, batch_size=P, num_batches=1).attach(trainer)
    with pytest.raises(ConfigError, match="generation batch holds"):
        AdaptiveCurriculum([0.5] * n, batch_size=3, num_batches=1).attach(trainer)


def test_grpo_recipe_adaptive_ordering_and_resume(tmp_path):
    """The example recipe trains an 'adaptive' run, and a second invocation with another ordering list reuses it."""
    import importlib.util
    import sys
    from pathlib import Path

    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from puzzlekit.post import ARITHMETIC_ALPHABET
    from puzzlekit.post.recipe_config import load_recipe_config
    from puzzlekit.post.tiny import char_tokenizer, tiny_llama

    torch.set_num_threads(1)
    tok = char_tokenizer(ARITHMETIC_ALPHABET)
    tiny_llama(len(tok), hidden_size=32, num_layers=1, intermediate_size=64, pad_token_id=tok.pad_token_id,
               eos_token_id=tok.eos_token_id).save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    path = Path(__file__).resolve().parents[1] / "examples" / "grpo_curriculum" / "recipe.py"
    spec = importlib.util.spec_from_file_location("example_grpo_curriculum_adaptive", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)

    def cfg(orderings):
        return load_recipe_config(path.with_name("config.yaml"), mod.Config, {
            "sft_model_dir": str(tmp_path / "sft"), "output_dir": str(tmp_path / "out"), "num_prompts": 8,
            "num_eval_problems": 4, "pass_rate_samples": 2, "max_steps": 2, "prompts_per_step": 2,
            "num_generations": 2, "max_completion_length": 8, "eval_every": 2, "eval_samples": 1,
            "orderings": orderings, "train_seeds": [0], "min_pass_rate": 0.0, "max_pass_rate": 1.0})

    m = mod.main(cfg(["adaptive"]))
    (run,) = m["runs"]
    assert run["ordering"] == "adaptive" and len(run["batch_pass_rate"]) == len(run["train_reward"]) == 2
    assert run["distinct_prompts"] >= 2 and len(run["final_estimates"]) == m["kept"]
    assert run["live"][-1] == m["kept"] - run["retired"]
    m2 = mod.main(cfg(["random", "adaptive"]))
    assert [r["ordering"] for r in m2["runs"]] == ["adaptive", "random"]
    assert m2["runs"][0] == run   # reused, not retrained
    with pytest.raises(ConfigError, match="orderings"):
        cfg(["adaptiv"])
