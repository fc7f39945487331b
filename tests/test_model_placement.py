"""Layer placement over several devices: the plan, loading onto it, and BLD / scoring / generation on a
placed parent (CPU-only placements here; a CPU + CUDA placement in the gpu-marked test)."""

from __future__ import annotations

import pytest
import torch

from puzzlekit.errors import ConfigError

torch.set_num_threads(1)


def _llama(layers: int = 4, tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def test_plan_is_contiguous_balanced_and_puts_the_ends_on_the_end_devices():
    from puzzlekit.model import load_parent
    from puzzlekit.model.placement import plan_placement

    m = load_parent(_llama(layers=8))
    plan = plan_placement(m, ["cpu:0", "meta", "cpu:1"])  # three distinct devices by name
    per_layer = [plan[f"model.layers.{i}"] for i in range(8)]
    order = [torch.device("cpu", 0), torch.device("meta"), torch.device("cpu", 1)]
    idx = [order.index(d) for d in per_layer]
    assert idx == sorted(idx) and set(idx) == {0, 1, 2}  # contiguous runs, every device used
    assert max(idx.count(k) for k in range(3)) - min(idx.count(k) for k in range(3)) <= 2
    assert plan["model.embed_tokens"] == order[0] and plan["lm_head"] == order[2] and plan["model.norm"] == order[2]
    # a tied head stays with the embedding it shares
    tied = plan_placement(load_parent(_llama(tied=True)), ["cpu:0", "cpu:1"])
    assert tied["lm_head"] == tied["model.embed_tokens"] == torch.device("cpu", 0)
    # more devices than layers: every layer still gets one, in order
    few = plan_placement(load_parent(_llama(layers=2)), ["cpu:0", "meta", "cpu:1"])
    assert [few[f"model.layers.{i}"] for i in range(2)] == sorted(
        [few[f"model.layers.{i}"] for i in range(2)], key=lambda d: order.index(d))


def test_load_parent_with_a_device_map_matches_the_single_device_model(tmp_path):
    from puzzlekit.model import load_parent, save_model
    from puzzlekit.model.placement import device_of

    hf = _llama()
    ref = load_parent(hf)
    save_model(ref, tmp_path / "m")
    placed = load_parent(tmp_path / "m", device_map=["cpu", "cpu"])
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        assert torch.equal(placed(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert all(device_of(layer) == torch.device("cpu") for layer in placed.model.layers)
    out = placed.generate(ids[:, :4], max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref.generate(ids[:, :4], max_new_tokens=4, do_sample=False))
    # an in-memory model goes through the same plan
    again = load_parent(hf, device_map=["cpu"])
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_hidden_state_crosses_device_boundaries(tmp_path):
    """With the second half of the layers on the meta device (a stand-in for a second accelerator: it
    propagates shapes, no values), every layer gets its input, rotary tables and mask on its own device,
    the head gets the final state on its device, and BLD's parent pass leaves each layer's ``x, h, y``
    on that layer's device."""
    from puzzlekit.bld.engine import parent_activations
    from puzzlekit.model import load_parent
    from puzzlekit.model.placement import device_of, place_model

    m = place_model(load_parent(_llama(layers=4)), ["cpu", "meta"])
    devs = [device_of(layer).type for layer in m.model.layers]
    assert devs == ["cpu", "cpu", "meta", "meta"] and m.lm_head.weight.device.type == "meta"
    seen = []

    def hook(mod, args):
        x, pe, mask = args[0], args[1], args[2]
        seen.append({device_of(mod).type, x.device.type, pe[0].device.type, pe[1].device.type,
                     mask.device.type if mask is not None else device_of(mod).type})

    for layer in m.model.layers:
        layer.register_forward_pre_hook(hook)
    ids = torch.randint(0, 96, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0  # left padding: a real mask tensor that must follow the hidden state
    out = m(input_ids=ids, attention_mask=mask)
    assert out.logits.device.type == "meta" and out.logits.shape == (2, 8, 96)
    assert seen == [{"cpu"}, {"cpu"}, {"meta"}, {"meta"}]
    pe, acts = parent_activations(m, ids, [0, 3])
    assert all(t.device.type == "cpu" for t in acts[0]) and all(t.device.type == "meta" for t in acts[3])


def test_bad_device_maps_are_refused_with_a_clear_error(tmp_path):
    from puzzlekit.model import load_parent

    hf = _llama(layers=2)
    with pytest.raises(ConfigError, match="device or device_map"):
        load_parent(hf, device="cpu", device_map=["cpu"])
    with pytest.raises(ConfigError, match="use 'auto' or a list"):
        load_parent(hf, device_map="balanced")
    with pytest.raises(ConfigError, match="empty"):
        load_parent(hf, device_map=[])
    with pytest.raises(ConfigError, match="not a list of devices"):
        load_parent(hf, device_map=["gpu7"])
    with pytest.raises(ConfigError, match="visible CUDA device"):
        load_parent(hf, device_map=["cpu", "cuda:63"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs CUDA"):
            load_parent(hf, device_map="auto")


@pytest.mark.gpu
def test_bld_scoring_and_forward_with_layers_on_cpu_and_cuda(tmp_path):
    """A parent split between the CPU and a GPU (the hidden state, rotary tables and mask cross the
    boundary; units and candidates live on their layer's device): forward, BLD and scoring agree
    with an all-CPU run to float tolerance."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from test_bld import make_data, small_space

    from puzzlekit.bld import BLDConfig, run_bld, unit_results
    from puzzlekit.model import load_parent
    from puzzlekit.model.placement import device_of
    from puzzlekit.scoring import score_library

    torch.backends.cuda.matmul.allow_tf32 = False
    hf = _llama(layers=4)
    cpu_parent = load_parent(hf)
    placed = load_parent(_llama(layers=4), device_map=["cpu", "cuda"])
    devs = [device_of(layer).type for layer in placed.model.layers]
    assert devs[0] == "cpu" and devs[-1] == "cuda" and placed.lm_head.weight.device.type == "cuda"
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(placed(input_ids=ids).logits.cpu(), cpu_parent(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
    data, space = make_data(), small_space(cpu_parent)
    cfg = BLDConfig(tokens=16 * 4 * 6, batch_size=4, lr=3e-3, eval_sequences=4)
    a = score_library(cpu_parent, run_bld(cpu_parent, data, tmp_path / "cpu", space, cfg, progress=False), data,
                      tmp_path / "cpu", eval_sequences=4, progress=False)
    b = score_library(placed, run_bld(placed, data, tmp_path / "placed", space, cfg, progress=False), data,
                      tmp_path / "placed", eval_sequences=4, progress=False)
    res = unit_results(tmp_path / "placed")
    assert any(v["bld_nmse"] < v["bld_nmse_init"] for v in res.values())
    for ca, cb in zip(a.candidates, b.candidates):
        assert cb.metrics["kl_div"] == pytest.approx(ca.metrics["kl_div"], rel=5e-2, abs=1e-4)


def test_cli_build_library_and_score_take_device_and_device_map(tmp_path, capsys):
    """``--device-map cpu,cpu`` (the layers split over two placements) gives the same library and scores
    as ``--device cpu``; contradictory or unavailable devices exit 2 with one line."""
    import json

    from test_reliability_faults import _tiny_llama_dir, _tokens

    from puzzlekit.cli import main

    parent = _tiny_llama_dir(tmp_path / "parent", 2)
    out = {}
    for name, dev in (("one", ["--device", "cpu"]), ("split", ["--device-map", "cpu,cpu"])):
        run = tmp_path / name
        run.mkdir()
        _tokens().save(run / "tokens.npz")
        assert main(["build-library", "--parent", str(parent), "--data", "unused", "--run", str(run), "--tokens",
                     "512", "--batch-size", "4", "--seq-len", "16", "--ffn-fractions", "0.5", "--no-progress",
                     "--json", *dev]) == 0
        assert main(["score", "--run", str(run), "--parent", str(parent), "--eval-sequences", "4", "--json",
                     *dev]) == 0
        capsys.readouterr()
        out[name] = json.loads((run / "library.json").read_text())["candidates"]
    assert [c["metrics"] for c in out["one"]] == [c["metrics"] for c in out["split"]]
    bad = [["--device", "cpu", "--device-map", "cpu"], ["--device", "tpu:3"], ["--device-map", ","],
           ["--device-map", ""], ["--device", "cuda:63"], ["--ref-memory-gb", "-1"]]
    if not torch.cuda.is_available():
        bad.append(["--device", "cuda"])
    for extra in bad:
        rc = main(["score", "--run", str(tmp_path / "one"), "--parent", str(parent), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and ("device" in err or "memory" in err), (extra, err)


def test_auto_device_map_shares_the_gpus_out_over_local_processes(monkeypatch):
    """``device_map="auto"`` under torchrun: each local process gets its contiguous share of the GPUs
    (the device count is simulated; nothing is allocated)."""
    from puzzlekit.model.placement import resolve_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert resolve_devices("auto") == [torch.device("cuda", i) for i in range(8)]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_devices("auto") == [torch.device("cuda", i) for i in range(4, 8)]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_devices("auto") == [torch.device("cuda", 4), torch.device("cuda", 5)]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "9")
    with pytest.raises(ConfigError, match="9 processes on this machine share 8 GPU"):
        resolve_devices("auto")
