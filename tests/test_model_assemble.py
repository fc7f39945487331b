"""Assembly from parent + library, block weight files, the ``puzzlekit assemble`` command."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from conftest import tiny_llama_config  # noqa: E402

from puzzlekit import Architecture, AttentionConfig, BlockConfig, BlockLibrary, FFNConfig, model_params  # noqa: E402
from puzzlekit.errors import ConfigError, LibraryError  # noqa: E402
from puzzlekit.model import (  # noqa: E402
    PuzzleForCausalLM,
    assemble,
    init_child_layer,
    load_block_weights,
    load_parent,
    make_layer,
    num_params,
    save_block_weights,
    save_model,
)

torch.set_num_threads(1)
A, F = AttentionConfig, FFNConfig


@pytest.fixture(scope="module")
def parent():
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tiny_llama_config()
    d.pop("model_type")
    d.pop("architectures")
    return load_parent(LlamaForCausalLM(LlamaConfig(**d)).eval())


CHILD = [
    BlockConfig(A.gqa(2), F.swiglu(256)),   # = parent
    BlockConfig(A.gqa(1), F.swiglu(128)),
    BlockConfig(A.make_linear(), F.make_linear()),
    BlockConfig(A.make_no_op(), F.swiglu(64)),
]


def test_assemble_from_architecture(parent):
    arch = parent.architecture.with_blocks(CHILD)
    x = torch.randint(0, 128, (2, 10))
    child = assemble(parent, arch, init={"calib_input_ids": x})
    assert isinstance(child, PuzzleForCausalLM)
    assert num_params(child) == model_params(child.architecture)
    assert child.architecture.blocks == tuple(CHILD)
    # non-block weights are copies, not shared with the parent
    assert torch.equal(child.model.embed_tokens.weight, parent.model.embed_tokens.weight)
    assert child.model.embed_tokens.weight.data_ptr() != parent.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        h_p = parent(x, output_hidden_states=True).hidden_states
        h_c = child(x, output_hidden_states=True).hidden_states
    assert torch.allclose(h_p[1], h_c[1], atol=1e-6)  # layer 0 is the parent's own block
    # the identity architecture reproduces the parent exactly
    same = assemble(parent, parent.architecture)
    with torch.no_grad():
        assert torch.equal(same(x).logits, parent(x).logits)


def test_block_weights_roundtrip_and_checks(parent, tmp_path):
    spec = parent.config.parent_spec
    layer = init_child_layer(parent.model.layers[1], CHILD[1], ffn_method="random")
    p = save_block_weights(layer, tmp_path / "l1.safetensors")
    fresh = make_layer(spec, CHILD[1], 1)
    load_block_weights(fresh, p)
    assert all(torch.equal(a, b) for a, b in zip(layer.state_dict().values(), fresh.state_dict().values()))
    with torch.device("meta"):
        from puzzlekit.model import PuzzleDecoderLayer

        meta_layer = PuzzleDecoderLayer(spec, CHILD[1], 1)
    load_block_weights(meta_layer, p)
    assert not any(t.is_meta for t in meta_layer.parameters())
    with pytest.raises(ConfigError, match="holds block"):
        load_block_weights(make_layer(spec, CHILD[0]), p)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ConfigError, match="safetensors"):
        load_block_weights(make_layer(spec, CHILD[1]), tmp_path / "bad.safetensors")
    assert not list(tmp_path.glob(".*tmp"))  # nothing left of the atomic writes


def test_block_from_sub_block_files(parent, tmp_path):
    """A block loads from its attention file + FFN file (as a decoupled BLD library stores it); a file of
    another sub-block, a tensor given twice, or a missing part is refused with the file named."""
    spec = parent.config.parent_spec
    block = CHILD[1]
    layer = init_child_layer(parent.model.layers[1], block, ffn_method="random")
    sd = layer.state_dict()
    att_only = make_layer(spec, BlockConfig(block.attention, F.make_no_op()), 1)
    att_only.load_state_dict({k: v for k, v in sd.items() if k.startswith(("input_layernorm.", "self_attn."))})
    ffn_only = make_layer(spec, BlockConfig(A.make_no_op(), block.ffn), 1)
    ffn_only.load_state_dict({k: v for k, v in sd.items() if k.startswith(("post_attention_layernorm.", "mlp."))})
    pa = save_block_weights(att_only, tmp_path / "attn.safetensors")
    pf = save_block_weights(ffn_only, tmp_path / "ffn.safetensors")
    with torch.device("meta"):
        from puzzlekit.model import PuzzleDecoderLayer

        fresh = PuzzleDecoderLayer(spec, block, 1)
    load_block_weights(fresh, [pa, pf])
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in sd.items())
    with pytest.raises(ConfigError, match="holds block"):  # one file: it must be the whole block
        load_block_weights(make_layer(spec, block, 1), [pa])
    from safetensors.torch import save_file

    part = tmp_path / "mlp-only.safetensors"  # the FFN file without its norm weight
    save_file({k: v.contiguous() for k, v in ffn_only.state_dict().items() if k.startswith("mlp.")}, str(part),
              metadata={"block": ffn_only.block.key})
    with pytest.raises(ConfigError, match="missing.*post_attention_layernorm"):
        load_block_weights(make_layer(spec, block, 1), [pa, part])
    with pytest.raises(ConfigError, match="also in"):
        load_block_weights(make_layer(spec, block, 1), [pa, pf, save_block_weights(att_only, tmp_path / "a2.safetensors")])
    other = make_layer(spec, BlockConfig(A.make_no_op(), F.swiglu(64)), 1)
    po = save_block_weights(other, tmp_path / "ffn64.safetensors")
    with pytest.raises(ConfigError, match="holds FFN ffn:64"):
        load_block_weights(make_layer(spec, block, 1), [pa, po])
    # a library candidate stored as the two files assembles into the same layer
    lib = BlockLibrary(4, spec, root=tmp_path)
    idx = [lib.add(i, spec.parent_block(), {"kl_div": 0.0}) for i in (0, 2, 3)]
    k = lib.add(1, block, {"kl_div": 0.1}, weights=["attn.safetensors", "ffn.safetensors"])
    lib.save(tmp_path / "library.json")
    back = BlockLibrary.load(tmp_path / "library.json")
    assert back.candidates[k].weight_files == ("attn.safetensors", "ffn.safetensors")
    with pytest.raises(LibraryError, match="weights_paths"):
        back.weights_path(k)
    child = assemble(parent, None, back, [idx[0], k, idx[1], idx[2]])
    assert all(torch.equal(v, child.model.layers[1].state_dict()[n]) for n, v in sd.items())


def _library(parent, tmp_path, trained_layer: int = 1) -> tuple[BlockLibrary, list[int], PuzzleForCausalLM]:
    spec = parent.config.parent_spec
    lib = BlockLibrary(4, spec, root=tmp_path)
    choices = []
    trained = None
    for i, b in enumerate(CHILD):
        lib.add(i, spec.parent_block(), {"kl_div": 0.0})
        weights = None
        if i == trained_layer:  # a "trained" candidate: random weights saved to the library folder
            trained = make_layer(spec, b, i)
            save_block_weights(trained, tmp_path / "blocks" / f"layer{i}.safetensors")
            weights = f"blocks/layer{i}.safetensors"
        if b != spec.parent_block():
            choices.append(lib.add(i, b, {"kl_div": 0.1}, weights=weights))
        else:
            choices.append(len(lib.candidates) - 1)
    lib.save(tmp_path / "library.json")
    return lib, choices, trained


def test_assemble_from_library_uses_trained_weights(parent, tmp_path):
    lib, choices, trained = _library(parent, tmp_path)
    lib = BlockLibrary.load(tmp_path / "library.json")
    child = assemble(parent, None, lib, choices)
    assert child.architecture.blocks == tuple(CHILD)
    for name, t in trained.state_dict().items():
        assert torch.equal(child.model.layers[1].state_dict()[name], t)
    with pytest.raises(LibraryError, match="cover"):
        assemble(parent, None, lib, choices[:3])
    with pytest.raises(ConfigError, match="differ"):
        assemble(parent, parent.architecture, lib, choices)


def test_save_model_atomic_and_reload(parent, tmp_path):
    child = assemble(parent, parent.architecture.with_blocks(CHILD))
    out = save_model(child, tmp_path / "child")
    back = load_parent(out)
    x = torch.randint(0, 128, (1, 7))
    with torch.no_grad():
        assert torch.equal(back(x).logits, child(x).logits)
    with pytest.raises(ConfigError, match="not empty"):
        save_model(child, out)


@pytest.mark.filterwarnings("ignore::puzzlekit.nas.NonMultipleWarning")
def test_cli_assemble(parent, tmp_path, capsys):
    from puzzlekit.cli import main

    pdir = tmp_path / "parent"
    save_model(parent, pdir)
    arch = parent.architecture.with_blocks(CHILD)
    arch_path = tmp_path / "child_config.json"
    arch_path.write_text(json.dumps(arch.to_nemotron_nas()))
    rc = main(["assemble", str(pdir), "--config", str(arch_path), "--out", str(tmp_path / "out"),
               "--ffn-init", "truncate"])
    assert rc == 0
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert Architecture.from_config(out).blocks == tuple(CHILD)
    # from a library and a search solution file
    lib, choices, _ = _library(parent, tmp_path / "lib")
    sol = {"status": "optimal", "choices": [{"layer": i, "candidate": c} for i, c in enumerate(choices)]}
    (tmp_path / "sol.json").write_text(json.dumps(sol))
    rc = main(["assemble", str(pdir), "--library", str(tmp_path / "lib" / "library.json"),
               "--solution", str(tmp_path / "sol.json"), "--out", str(tmp_path / "out2"), "--dtype", "bf16"])
    assert rc == 0
    m = load_parent(tmp_path / "out2")
    assert m.model.layers[1].mlp.up_proj.weight.dtype == torch.bfloat16
    rc = main(["assemble", str(pdir), "--out", str(tmp_path / "out3")])
    assert rc == 2 and "--config" in capsys.readouterr().err


def test_spanning_candidate_assembles_from_a_native_library(parent, tmp_path):
    # a block replacing parent layers 1-2, then trained weights for parent layer 3 (child layer 2)
    spec = parent.config.parent_spec
    lib = BlockLibrary(4, spec, root=tmp_path)
    first = lib.add(0, spec.parent_block(), {"kl_div": 0.0})
    merged = make_layer(spec, CHILD[1], 1)
    save_block_weights(merged, tmp_path / "merged.safetensors")
    span = lib.add((1, 2), CHILD[1], {"kl_div": 0.2}, weights="merged.safetensors")
    last = make_layer(spec, CHILD[3], 3)
    save_block_weights(last, tmp_path / "last.safetensors")
    tail = lib.add(3, CHILD[3], {"kl_div": 0.1}, weights="last.safetensors")
    lib.save(tmp_path / "library.json")
    child = assemble(parent, None, BlockLibrary.load(tmp_path / "library.json"), [first, span, tail])
    assert child.architecture.blocks == (spec.parent_block(), CHILD[1], CHILD[3])
    for k, trained in ((1, merged), (2, last)):
        for name, t in trained.state_dict().items():
            assert torch.equal(child.model.layers[k].state_dict()[name], t)
    ids = torch.randint(0, 128, (1, 6))
    with torch.no_grad():
        assert torch.isfinite(child(input_ids=ids).logits).all()
