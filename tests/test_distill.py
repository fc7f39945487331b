"""GKD loss, layer matching, and the accelerate loop (accumulation, resume, continued pre-training)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _distill_helpers import pruned_child, tiny_parent, token_rows  # noqa: E402

from puzzlekit.distill import (  # noqa: E402
    DistillConfig,
    GKDWeights,
    distill,
    evaluate_kl,
    gkd_loss,
    kl_to_parent,
    latest_checkpoint,
    match_layers,
    warmup_cosine,
)
from puzzlekit.errors import ConfigError  # noqa: E402

torch.set_num_threads(1)


def test_match_layers_one_to_one_and_many_to_one():
    assert match_layers(3) == [(1, 1), (2, 2), (3, 3)]
    # child layer 1 replaces parent layers 1..3: its output sits where parent layer 3's does
    assert match_layers(5, 3, spans=[1, 3, 1]) == [(1, 1), (2, 4), (3, 5)]
    with pytest.raises(ConfigError, match="spans"):
        match_layers(4, 3)
    with pytest.raises(ConfigError, match="sum"):
        match_layers(4, 2, spans=[1, 2])


def test_kl_matches_the_definition_and_is_zero_for_equal_logits():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    ref = F.kl_div(F.log_softmax(a, -1), F.log_softmax(b, -1), log_target=True, reduction="none").sum(-1).mean()
    assert torch.allclose(kl_to_parent(a, b), ref, atol=1e-6)
    assert float(kl_to_parent(b, b)) == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    ref_m = F.kl_div(F.log_softmax(a, -1), F.log_softmax(b, -1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl_to_parent(a, b, mask), ref_m[mask.bool()].mean(), atol=1e-6)
    with pytest.raises(ConfigError, match="vocabulary"):
        kl_to_parent(a, b[..., :5])


def test_gkd_loss_zero_for_the_parent_itself_and_positive_for_a_pruned_child():
    parent = tiny_parent()
    ids = token_rows(2, 16)
    po = parent(input_ids=ids, output_hidden_states=True)
    loss, parts = gkd_loss(po, po, ids, pairs=match_layers(2), weights=GKDWeights(1, 1, 1))
    assert parts["cosine"] == pytest.approx(0, abs=1e-5) and parts["kl"] == pytest.approx(0, abs=1e-5)
    assert parts["lm"] > 0
    child = pruned_child(parent)
    co = child(input_ids=ids, output_hidden_states=True)
    loss, parts = gkd_loss(co, po, ids, pairs=match_layers(2))
    assert parts["kl"] > 1e-3 and parts["cosine"] > 1e-4 and "lm" not in parts
    assert loss.requires_grad
    with pytest.raises(ConfigError, match="parent"):
        gkd_loss(co, None, ids, pairs=match_layers(2))
    with pytest.raises(ConfigError, match="every weight"):
        GKDWeights(0, 0, 0)


def test_warmup_cosine_shape():
    lrs = [warmup_cosine(s, total=100, warmup=10, min_ratio=0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[100] == pytest.approx(0.1) and all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))


def _cfg(tmp_path=None, **kw):
    base = dict(max_steps=30, batch_size=4, learning_rate=2e-3, weight_decay=0.0, eval_every=15,
                mixed_precision="no", log_every=0)
    if tmp_path is not None:
        base.update(output_dir=str(tmp_path))
    base.update(kw)
    return DistillConfig(**base)


def test_gkd_lowers_kl_to_the_parent():
    parent = tiny_parent()
    child = pruned_child(parent, keep=8, reinit_ffn=True)
    train, held = token_rows(64, 16, seed=1), token_rows(16, 16, seed=2)
    before = evaluate_kl(child, parent, held)["kl"]
    res = distill(child, parent, train, _cfg(), eval_tokens=held)
    after = evaluate_kl(child, parent, held)["kl"]
    assert res.evals[0]["kl"] == pytest.approx(before, rel=1e-5)
    assert after < 0.6 * before, (before, after)
    assert res.evals[-1]["step"] == 30 and len(res.history) == 30


def test_gradient_accumulation_equals_the_big_batch():
    parent = tiny_parent()
    train = token_rows(32, 12, seed=3)
    a, b = pruned_child(parent), pruned_child(parent)
    distill(a, parent, train, _cfg(max_steps=4, batch_size=8, eval_every=0))
    distill(b, parent, train, _cfg(max_steps=4, batch_size=4, grad_accum_steps=2, eval_every=0))
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa, pb, atol=2e-5), k


def test_resume_continues_exactly(tmp_path):
    parent = tiny_parent()
    train = token_rows(32, 12, seed=4)
    full = pruned_child(parent)
    distill(full, parent, train, _cfg(max_steps=6, eval_every=0))
    part = pruned_child(parent)
    distill(part, parent, train, _cfg(tmp_path, max_steps=6, save_every=3, eval_every=0), stop_after=3)
    ck = latest_checkpoint(tmp_path)
    assert ck is not None and (ck / "model.safetensors").exists() and (ck / "optimizer.pt").exists()
    # a fresh process would rebuild the child from scratch: the weights come from the checkpoint
    resumed = pruned_child(parent)
    res = distill(resumed, parent, train, _cfg(tmp_path, max_steps=6, save_every=3, eval_every=0))
    assert res.start_step == 3 and len(res.history) == 6
    for (k, pa), pb in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-5), k
    # already finished: a no-op
    again = distill(pruned_child(parent), parent, train, _cfg(tmp_path, max_steps=6, save_every=3))
    assert again.start_step == again.end_step == 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000003", "step_00000006"]


def test_continued_pretraining_needs_no_parent_and_lowers_lm_loss():
    parent = tiny_parent()
    child = copy.deepcopy(parent).train()
    # a learnable stream: each row counts upward mod the vocabulary
    start = torch.randint(0, 64, (64, 1), generator=torch.Generator().manual_seed(0))
    rows = (start + torch.arange(16)) % 64
    res = distill(child, None, rows, _cfg(max_steps=40, weights=GKDWeights(cosine=0, kl=0, lm=1), eval_every=0))
    assert res.history[-1]["lm"] < 0.5 * res.history[0]["lm"]
    with pytest.raises(ConfigError, match="parent"):
        distill(child, None, rows, _cfg())


def test_bad_inputs_are_named():
    parent = tiny_parent()
    with pytest.raises(ConfigError, match="train_tokens"):
        distill(pruned_child(parent), parent, torch.zeros(4), _cfg())
    with pytest.raises(ConfigError, match="output_dir"):
        DistillConfig(max_steps=1, save_every=1)
    with pytest.raises(ConfigError, match="mixed_precision"):
        DistillConfig(max_steps=1, mixed_precision="fp8")


def test_distill_after_another_trainer_set_bf16_in_this_process(tmp_path):
    """SFT (TRL: bf16 by default) then GKD in one process: accelerate's process-wide state must not
    make distill raise."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from puzzlekit.distill.trainer import _new_accelerator

    AcceleratorState._reset_state(reset_partial_state=False)
    Accelerator(mixed_precision="bf16")  # what an earlier bf16 trainer leaves behind
    acc = _new_accelerator("no")
    assert str(acc.state.mixed_precision) == "no"
    assert isinstance(acc.prepare(torch.nn.Linear(2, 2)), torch.nn.Module)
    AcceleratorState._reset_state(reset_partial_state=False)


def test_another_childs_checkpoint_in_output_dir_is_named(tmp_path):
    """Issue 21 item 9: a folder holding another child's run is refused with what it is and what to do
    (it used to be a raw 'size mismatch' RuntimeError from load_state_dict)."""
    parent = tiny_parent()
    train = token_rows(16, 8, seed=1)
    cfg = _cfg(tmp_path, max_steps=2, save_every=1, eval_every=0)
    distill(pruned_child(parent, keep=24), parent, train, cfg, stop_after=1)
    with pytest.raises(ConfigError, match="another model's run") as e:
        distill(pruned_child(parent, keep=8), parent, train, cfg)
    msg = str(e.value)
    assert str(tmp_path) in msg and "new folder" in msg and "delete" in msg and "[32, 24] there, [32, 8] in this model" in msg
    # a child with other tensors altogether (a third layer) is named the same way
    with pytest.raises(ConfigError, match="another model's run.*absent"):
        distill(pruned_child(tiny_parent(layers=3), keep=24), tiny_parent(layers=3), train, cfg)
    res = distill(pruned_child(parent, keep=24), parent, train, cfg)  # its own child resumes
    assert res.start_step == 1 and res.end_step == 2


def test_resume_with_another_global_batch_is_refused(tmp_path):
    parent = tiny_parent()
    train = token_rows(16, 8, seed=1)
    distill(pruned_child(parent), parent, train, _cfg(tmp_path, max_steps=2, save_every=1, eval_every=0),
            stop_after=1)
    with pytest.raises(ConfigError, match="global batch of 4 .* this run has 8"):
        distill(pruned_child(parent), parent, train, _cfg(tmp_path, max_steps=2, save_every=1, eval_every=0,
                                                           batch_size=4, grad_accum_steps=2))


def test_checkpoint_formats_do_not_mix(tmp_path):
    from puzzlekit.distill.checkpoint import check_resume_state

    parent = tiny_parent()
    distill(pruned_child(parent), parent, token_rows(16, 8, seed=1),
            _cfg(tmp_path, max_steps=2, save_every=1, eval_every=0), stop_after=1)
    ck = latest_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="fsdp=False"):
        check_resume_state(ck, {}, fmt="dcp", global_batch=4, world=1, batch_size=4, grad_accum_steps=1)


def test_activation_checkpointing_gives_the_same_training():
    parent = tiny_parent()
    train = token_rows(32, 12, seed=3)
    a, b = pruned_child(parent), pruned_child(parent)
    ra = distill(a, parent, train, _cfg(max_steps=4, eval_every=0))
    rb = distill(b, parent, train, _cfg(max_steps=4, eval_every=0, activation_checkpointing=True))
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rb.history], rel=1e-6)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa, pb, atol=1e-6), k
    assert all("forward" not in layer.__dict__ for layer in b.model.layers)  # undone afterwards


def test_checkpointed_layers_recompute_in_backward():
    """The option really recomputes: a layer's FFN runs twice per training step with it, once without."""
    from puzzlekit.distill.fsdp import enable_activation_checkpointing

    child = pruned_child(tiny_parent()).train()
    seen = []
    child.model.layers[0].mlp.register_forward_pre_hook(lambda m, a: seen.append(1))
    child(input_ids=token_rows(2, 8), use_cache=False).logits.sum().backward()
    assert len(seen) == 1
    undo = enable_activation_checkpointing(child)
    child(input_ids=token_rows(2, 8), use_cache=False).logits.sum().backward()
    assert len(seen) == 3  # forward + recomputation in backward
    undo()
    child(input_ids=token_rows(2, 8), use_cache=False).logits.sum().backward()
    assert len(seen) == 4


def test_dcp_checkpoint_metadata_is_json_and_nothing_is_unpickled(tmp_path):
    import json
    import pickle

    import torch.distributed.checkpoint as dcp

    from puzzlekit.distill.checkpoint import dcp_reader, dcp_writer, read_dcp_metadata
    from puzzlekit.errors import UnsafeInputError

    state = {"model": {"w": torch.arange(6.0).view(3, 2), "b": torch.ones(2, dtype=torch.bfloat16)}}
    with pytest.warns(UserWarning, match="single process"):
        dcp.save(state, storage_writer=dcp_writer(tmp_path / "dcp"))
    assert not (tmp_path / "dcp" / ".metadata").exists()
    md = read_dcp_metadata(tmp_path / "dcp")
    assert tuple(md.state_dict_metadata["model.w"].size) == (3, 2)
    back = {"model": {"w": torch.zeros(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16)}}
    with pytest.warns(UserWarning, match="single process"):
        dcp.load(back, storage_reader=dcp_reader(tmp_path / "dcp"))
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and torch.equal(back["model"]["b"], state["model"]["b"])
    # tampered metadata: a dtype that is not one, a shard file outside the folder
    doc = json.loads((tmp_path / "dcp" / ".metadata.json").read_text())
    for bad in ({"dtype": "os.system"}, {"file": "../../x"}):
        d = json.loads(json.dumps(doc))
        if "dtype" in bad:
            d["state_dict_metadata"]["model.w"]["dtype"] = bad["dtype"]
        else:
            d["storage_data"][0]["file"] = bad["file"]
        (tmp_path / "dcp" / ".metadata.json").write_text(json.dumps(d))
        with pytest.raises(UnsafeInputError, match="metadata"):
            read_dcp_metadata(tmp_path / "dcp")
    # torch's own writer pickles its metadata: such a folder is refused, its payload never runs
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "dcp" / ".metadata.json").unlink()
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UnsafeInputError, match="pickled"):
        read_dcp_metadata(tmp_path / "dcp")
    assert not marker.exists()


def test_fsdp_memory_arithmetic_for_super_49b():
    """The per-GPU figures of examples/gkd/README.md, computed from the two architectures."""
    from puzzlekit.accounting import model_params
    from puzzlekit.architecture import Architecture, ParentSpec
    from puzzlekit.blocks import BlockConfig
    from puzzlekit.cli.common import builtin_config_path
    from puzzlekit.distill.memory import GIB, activation_bytes_per_token, fsdp_memory

    child = Architecture.from_config(builtin_config_path("super-49b"))
    parent = Architecture.homogeneous(child.parent)
    assert model_params(child) == 49_867_145_216 and round(model_params(parent) / 1e9, 2) == 70.55
    m8, m16 = (fsdp_memory(child, parent, gpus=g) for g in (8, 16))
    pc = model_params(child)
    assert m8.child_params == pytest.approx(4 * pc / 8) and m8.child_optimizer == 2 * m8.child_grads
    for k in ("child_params", "child_grads", "child_optimizer", "parent_params"):  # sharded: halves
        assert getattr(m16, k) == pytest.approx(getattr(m8, k) / 2)
    for k in ("gathered", "activations", "logits"):  # per GPU micro-batch and one unit: no change
        assert getattr(m16, k) == getattr(m8, k)
    no_ac = fsdp_memory(child, parent, gpus=8, activation_checkpointing=False)
    assert no_ac.activations > 5 * m8.activations
    assert round(m8.total / GIB, 1) == 138.4 and round(m16.total / GIB, 1) == 83.7  # the README's table
    # one Llama-3.3-70B layer saves 364,800 bytes per token for backward (bf16, flash attention)
    spec: ParentSpec = child.parent
    assert activation_bytes_per_token(spec, spec.parent_block()) == 364_800
    assert activation_bytes_per_token(spec, BlockConfig.from_key("attn=no_op|ffn=no_op")) == 0
    with pytest.raises(ConfigError, match="gpus"):
        fsdp_memory(child, gpus=0)
