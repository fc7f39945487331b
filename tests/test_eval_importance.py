"""Layer importance (ShortGPT Block Influence), per-domain evaluation against the parent, chat agreement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama_config

from puzzlekit.blocks import AttentionConfig, BlockConfig
from puzzlekit.errors import ConfigError


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from puzzlekit.model import load_parent

    torch.manual_seed(0)
    return load_parent(LlamaForCausalLM(LlamaConfig(**tiny_llama_config()))).requires_grad_(False)


def test_block_influence_is_one_minus_the_cosine_of_layer_input_and_output(tiny):
    from puzzlekit.scoring import layer_importance

    ids = torch.randint(0, 128, (5, 12), generator=torch.Generator().manual_seed(1))
    imp = layer_importance(tiny, ids, batch_size=2)
    hs = tiny(ids, output_hidden_states=True).hidden_states  # the last one is after the final norm
    for i in range(len(tiny.model.layers) - 1):
        want = 1 - F.cosine_similarity(hs[i], hs[i + 1], dim=-1).mean().item()
        assert imp.block[i] == pytest.approx(want, abs=1e-5)
    assert imp.tokens == 60 and (imp.attention > 0).all() and (imp.ffn > 0).all()
    assert imp.order() == sorted(range(4), key=lambda i: imp.block[i])
    assert imp.order("attention", exclude=(0,))[0] != 0 and len(imp.order(exclude=(1, 2))) == 2
    skip = layer_importance(tiny, ids, skip_first=3)
    assert skip.tokens == 45 and not (skip.block == imp.block).all()
    with pytest.raises(ConfigError, match="importance kind"):
        imp.scores("mlp")
    with pytest.raises(ConfigError, match="skip_first"):
        layer_importance(tiny, ids, skip_first=12)


def test_a_removed_attention_has_zero_importance(tiny):
    from puzzlekit.model import assemble
    from puzzlekit.scoring import LayerImportance, layer_importance

    arch = tiny.architecture
    blocks = list(arch.blocks)
    blocks[2] = BlockConfig(AttentionConfig.make_no_op(), blocks[2].ffn)
    child = assemble(tiny, type(arch)(arch.parent, tuple(blocks)))
    imp = layer_importance(child, torch.randint(0, 128, (2, 10)))
    assert imp.attention[2] == 0 and imp.attention[1] > 0
    back = LayerImportance.from_dict(imp.to_dict())
    assert back.order("attention")[0] == 2
    spec = tiny.config.parent_spec
    short = back.removed(spec, 2)  # ShortGPT: the 2 lowest-BI layers go entirely
    gone = [i for i, b in enumerate(short.blocks) if b.attention.no_op and b.ffn.no_op]
    assert gone == sorted(back.order()[:2])
    att = back.removed(spec, 1, "attention").blocks
    assert att[2].attention.no_op and not att[2].ffn.no_op and sum(b.attention.no_op for b in att) == 1
    with pytest.raises(ConfigError, match="k=9"):
        back.removed(spec, 9)


def test_evaluate_model_against_a_direct_computation(tiny):
    from puzzlekit.eval import ParentReference, evaluate_model
    from puzzlekit.model import assemble

    g = torch.Generator().manual_seed(2)
    doms = {"a": torch.randint(0, 128, (3, 16), generator=g), "b": torch.randint(0, 128, (2, 16), generator=g)}
    ref = ParentReference.build(tiny, doms, batch_size=2)
    same = evaluate_model(tiny, ref)
    for d in doms:
        assert same[d]["kl"] == pytest.approx(0, abs=1e-6) and same[d]["top1_agree"] == 1.0
        assert same[d]["lm_loss"] == pytest.approx(ref.parent_metrics[d]["lm_loss"], rel=1e-6)
    arch = tiny.architecture
    child = assemble(tiny, type(arch)(arch.parent, tuple(
        BlockConfig(b.attention, b.ffn if i % 2 else type(b.ffn).swiglu(64)) for i, b in enumerate(arch.blocks))))
    got = evaluate_model(child, ref)["a"]
    ids = doms["a"]
    lp = F.log_softmax(tiny(ids).logits[:, :-1].float(), -1)
    lq = F.log_softmax(child(ids).logits[:, :-1].float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    ce = -lq.gather(-1, ids[:, 1:, None]).mean().item()
    assert got["kl"] == pytest.approx(kl, rel=1e-4) and got["lm_loss"] == pytest.approx(ce, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(ce), rel=1e-5) and got["tokens"] == 45
    assert got["top1_agree"] == pytest.approx((lp.argmax(-1) == lq.argmax(-1)).float().mean().item())
    rows = (lp.exp() * (lp - lq)).sum(-1).mean(-1)  # per row: batches of 2 rows, one chunk of 256 positions
    assert got["kl_rows"] == pytest.approx(rows.tolist(), rel=1e-4)
    with pytest.raises(ConfigError, match="integer rows"):
        ParentReference.build(tiny, {"a": torch.zeros(3)})


def test_kl_per_row_with_chunks_across_rows_and_the_paired_difference(tiny, monkeypatch):
    import puzzlekit.eval.lm as lm
    from puzzlekit.eval import ParentReference, evaluate_model, paired_difference
    from puzzlekit.model import assemble

    monkeypatch.setattr(lm, "CHUNK", 7)  # 15 positions a row: chunks straddle rows
    ids = torch.randint(0, 128, (5, 16), generator=torch.Generator().manual_seed(3))
    ref = ParentReference.build(tiny, {"a": ids}, batch_size=2)
    arch = tiny.architecture
    child = assemble(tiny, type(arch)(arch.parent, tuple(
        BlockConfig(b.attention, type(b.ffn).swiglu(32)) for b in arch.blocks)))
    got = evaluate_model(child, ref)["a"]
    lp = F.log_softmax(tiny(ids).logits[:, :-1].float(), -1)
    lq = F.log_softmax(child(ids).logits[:, :-1].float(), -1)
    rows = (lp.exp() * (lp - lq)).sum(-1).mean(-1)
    assert got["kl_rows"] == pytest.approx(rows.tolist(), rel=1e-4)
    assert sum(got["kl_rows"]) / 5 == pytest.approx(got["kl"], rel=1e-9)
    a, b = [1.0, 2.0, 3.0, 4.0], [0.5, 2.5, 2.0, 3.0]  # differences 0.5, -0.5, 1, 1
    p = paired_difference(a, b)
    assert p["mean"] == pytest.approx(0.5) and p["rows"] == 4
    assert p["se"] == pytest.approx(math.sqrt(0.5) / 2) and p["z"] == pytest.approx(0.5 / (math.sqrt(0.5) / 2))
    assert paired_difference([1, 2], [0, 1])["z"] == math.inf and paired_difference([1, 2], [1, 2])["z"] == 0
    with pytest.raises(ConfigError, match="equal-length"):
        paired_difference([1, 2, 3], [1, 2])


def test_compare_answers_counts_the_first_tokens_up_to_eos():
    from puzzlekit.eval import CHAT_PROMPTS, compare_answers

    class Tok:
        eos_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(str(i) for i in ids if not (skip_special_tokens and i == 0))

    parent = [[5, 6, 7, 8], [5, 0], [1, 2, 3], [9, 9, 9, 9]]
    child = [[5, 6, 7, 9], [5, 0], [1, 2, 4], [9, 9, 9, 9, 1]]
    r = compare_answers(parent, child, n=3, tokenizer=Tok(), prompts=CHAT_PROMPTS[:4], examples=2)
    assert r["matches"] == [True, True, False, True] and r["share"] == 0.75
    assert r["examples"][0] == {"prompt": CHAT_PROMPTS[2], "same": False, "parent": "1 2 3", "child": "1 2 4"}
    assert compare_answers([[5, 0, 7]], [[5, 0, 8]], n=16, tokenizer=Tok())["share"] == 1.0  # stopped together
    assert compare_answers([[5, 0]], [[5, 6]], n=16)["share"] == 0.0
    assert len(CHAT_PROMPTS) == 30 and len(set(CHAT_PROMPTS)) == 30
    with pytest.raises(ConfigError, match="2 parent answers but 1"):
        compare_answers([[1], [2]], [[1]])
