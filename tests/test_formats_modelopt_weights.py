"""A child assembled from an imported ModelOpt (Puzzletron) library loads ModelOpt's sub-block weight
files (``subblocks_safetensors/block_<i>_<attention|ffn>.safetensors``, the checkpoint's own
``model.layers.<i>.*`` tensor names) into puzzlekit layers."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama_config
from safetensors.torch import save_file
from test_formats_modelopt import write_puzzle

from puzzlekit.errors import ConfigError
from puzzlekit.formats.modelopt import import_modelopt

torch.set_num_threads(1)


def _teacher():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = {k: v for k, v in tiny_llama_config().items() if k not in ("model_type", "architectures")}
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def _write_sub_blocks(ckpt, sd: dict, layer: int, ffn_width: int | None = None) -> None:
    """What ModelOpt's checkpoint split writes for one layer (HF names, one file per sub-block)."""
    pre = f"model.layers.{layer}."
    att = {k: v for k, v in sd.items() if k.startswith((pre + "input_layernorm.", pre + "self_attn."))}
    ffn = {k: v for k, v in sd.items() if k.startswith((pre + "post_attention_layernorm.", pre + "mlp."))}
    if ffn_width is not None:  # a pruned FFN: the first ffn_width channels
        ffn = {k: (v[:ffn_width] if k.endswith(("gate_proj.weight", "up_proj.weight")) else
                   v[:, :ffn_width] if k.endswith("down_proj.weight") else v) for k, v in ffn.items()}
    d = ckpt / "subblocks_safetensors"
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in att.items()}, str(d / f"block_{layer}_attention.safetensors"))
    save_file({k: v.contiguous() for k, v in ffn.items()}, str(d / f"block_{layer}_ffn.safetensors"))


@pytest.fixture
def imported(tmp_path):
    from puzzlekit.model import load_parent

    root = tmp_path / "puzzle"
    root.mkdir()
    write_puzzle(root)
    teacher = _teacher()
    sd = teacher.state_dict()
    for i in range(4):
        _write_sub_blocks(root / "ckpts/teacher", sd, i)
    _write_sub_blocks(root / "ckpts/bypass_ffn_128", sd, 0, ffn_width=128)
    return import_modelopt(root), load_parent(teacher), sd


def _pick(lib, layer: int, key: str) -> int:
    return next(i for i, c in enumerate(lib.candidates) if c.first == c.last == layer and c.block.key == key
                and c.weights)


def test_assembled_from_modelopt_files_teacher_blocks_reproduce_the_teacher(imported):
    from puzzlekit.model import assemble

    lib, parent, sd = imported
    pkey = parent.config.parent_spec.parent_block().key
    choices = [_pick(lib, i, pkey) for i in range(4)]
    child = assemble(parent, None, lib, choices)
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        assert torch.equal(child(input_ids=ids).logits, parent(input_ids=ids).logits)
    # a pruned FFN's file: the layer holds exactly its tensors
    choices[0] = _pick(lib, 0, "attn=gqa:2|ffn=ffn:128")
    child = assemble(parent, None, lib, choices)
    mlp = child.model.layers[0].mlp
    assert torch.equal(mlp.gate_proj.weight, sd["model.layers.0.mlp.gate_proj.weight"][:128])
    assert torch.equal(mlp.down_proj.weight, sd["model.layers.0.mlp.down_proj.weight"][:, :128])
    with torch.no_grad():
        assert not torch.equal(child(input_ids=ids).logits, parent(input_ids=ids).logits)


def test_a_modelopt_file_of_another_layer_is_refused(imported, tmp_path):
    from puzzlekit.model import load_block_weights, make_layer

    lib, parent, sd = imported
    spec = parent.config.parent_spec
    files = lib.weights_paths(_pick(lib, 1, spec.parent_block().key))
    layer = make_layer(spec, spec.parent_block(), 2)  # layer 2, given layer 1's files
    with pytest.raises(ConfigError, match="holds layer 1's tensors"):
        load_block_weights(layer, files)
    mixed = tmp_path / "mixed.safetensors"
    save_file({"model.layers.1.input_layernorm.weight": sd["model.layers.1.input_layernorm.weight"],
               "model.layers.2.input_layernorm.weight": sd["model.layers.2.input_layernorm.weight"]}, str(mixed))
    with pytest.raises(ConfigError, match="tensors of layers"):
        load_block_weights(make_layer(spec, spec.parent_block(), 1), [mixed])


def test_spanning_candidate_then_later_layers_assemble_from_modelopt_files(imported):
    # a spanning replacement (parent layers 1-2 -> one child block) moves every later child layer's index off
    # its parent layer's: child layer 2 must still load parent layer 3's files (model.layers.3.*)
    from puzzlekit.model import assemble

    lib, parent, sd = imported
    root = lib.root
    _write_sub_blocks(root / "ckpts/bypass_merge_1_2", sd, 1)  # the merged block's files (ModelOpt names them by layer 1)
    pkey = parent.config.parent_spec.parent_block().key
    span = next(i for i, c in enumerate(lib.candidates) if (c.first, c.last) == (1, 2) and c.block.key == pkey)
    assert lib.weights_paths(span)
    choices = [_pick(lib, 0, pkey), span, _pick(lib, 3, pkey)]
    child = assemble(parent, None, lib, choices)
    assert len(child.model.layers) == 3
    for child_layer, parent_layer in ((0, 0), (1, 1), (2, 3)):
        got = child.model.layers[child_layer].state_dict()
        for name, t in got.items():
            assert torch.equal(t, sd[f"model.layers.{parent_layer}.{name}"]), (child_layer, name)
    with torch.no_grad():
        assert torch.isfinite(child(input_ids=torch.randint(0, 128, (1, 6))).logits).all()
