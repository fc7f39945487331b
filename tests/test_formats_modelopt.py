"""Importing NVIDIA Model Optimizer (Puzzletron) replacement libraries.

The puzzle folders are written here in code and mirror, field for field, what ModelOpt writes:

* ``replacement_library.json``: v1, a list of layer replacements as built by
  ``modelopt/torch/_compress/replacement_library/build_replacement_library.py::_build_layer_replacements_from_block_library``
  (``parent_layer_indices``, ``child_block_configs`` = ``dataclasses.asdict(BlockConfig)`` of
  ``modelopt/torch/puzzletron/block_config.py``, ``weight_paths`` =
  ``<checkpoint>/subblocks_safetensors/block_<i>_<attention|ffn>.safetensors``); v2, the object of
  ``modelopt/torch/puzzletron/replacement_library/build_replacement_library.py::build_replacement_library_from_sorted_teacher``
  (``version``, ``sorted_teacher_dir``, ``hidden_width``, ``teacher_hidden_width``, ``scenario``, ``entries``);
* ``single_sequence_replacement_solutions--validation/solution_<k>.json`` and ``teacher.json``: the
  results of ``modelopt/torch/puzzletron/tools/validation_utils.py::write_results`` as called by
  ``tools/validate_puzzle_with_multi_replacements.py::validate_puzzle_solutions`` (``{metric: {"avg"}}``,
  ``i_solution``, ``puzzle_solution.single_sequence_replacement``, ``args``), read upstream by
  ``mip/run_puzzle.py::gather_multi_layer_puzle_metrics``;
* ``subblock_stats.json``: the list written by
  ``modelopt/torch/puzzletron/subblock_stats/calc_subblock_stats.py::calculate_subblock_stats_for_puzzle_dir``
  (one entry per batch size x (weights, activations, kv-cache) dtype x hidden width).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from pathlib import Path

import pytest
from conftest import tiny_llama_config

import puzzlekit
from puzzlekit.blocks import AttentionConfig, BlockConfig, FFNConfig
from puzzlekit.cli import main
from puzzlekit.errors import LibraryError
from puzzlekit.formats.modelopt import (
    VALIDATION_DIR,
    block_from_modelopt,
    block_to_modelopt,
    import_modelopt,
)
from puzzlekit.library import BlockLibrary

H, HEADS, KV, INTER, LAYERS, HEAD_DIM = 64, 4, 2, 256, 4, 16


# ---- writing a ModelOpt puzzle folder ------------------------------------------------------------

def attn(kv=KV, no_op=False, linear=False):
    """``dataclasses.asdict(AttentionConfig(...))`` of modelopt/torch/puzzletron/block_config.py."""
    return {"no_op": no_op, "replace_with_linear": linear, "sparsify": None, "weights_precision": "bf16",
            "num_key_value_heads": None if (no_op or linear) else kv, "llama4": None, "mamba": None}


def ffn(size=INTER, no_op=False, linear=False):
    """``dataclasses.asdict(FFNConfig(...))``."""
    return {"no_op": no_op, "replace_with_linear": linear, "sparsify": None, "weights_precision": "bf16",
            "moe": None, "intermediate_size": None if (no_op or linear) else size}


def block(a, f):
    return {"attention": a, "ffn": f, "parallel_blocks": None}


def sub_paths(ckpt: Path, layer: int, a: dict, f: dict) -> list[str]:
    """Weight paths as _build_layer_replacements_from_block_library makes them (no file for a no_op)."""
    out = []
    for name, sub in (("attention", a), ("ffn", f)):
        if not sub["no_op"]:
            out.append(str(ckpt / "subblocks_safetensors" / f"block_{layer}_{name}.safetensors"))
    return sorted(out)


def attn_params(a):
    if a["no_op"]:
        return 0
    if a["replace_with_linear"]:
        return H * H
    return 2 * H * HEADS * HEAD_DIM + 2 * H * a["num_key_value_heads"] * HEAD_DIM


def ffn_params(f):
    if f["no_op"]:
        return 0
    if f["replace_with_linear"]:
        return H * H
    return 3 * H * f["intermediate_size"]


# Student replacements: (parent_layer_indices, attention, ffn, checkpoint name) and their scores.
STUDENTS = [
    ([0], attn(), ffn(128), "bypass_ffn_128"),
    ([0], attn(), ffn(no_op=True), "bypass_ffn_128"),
    ([1], attn(1), ffn(), "bypass_kv_1"),
    ([1], attn(no_op=True), ffn(), "bypass_kv_1"),
    ([2], attn(linear=True), ffn(128), "bypass_linear"),
    ([3], attn(), ffn(linear=True), "bypass_linear"),
    ([3], attn(no_op=True), ffn(no_op=True), "bypass_linear"),
    ([1, 2], attn(), ffn(), "bypass_merge_1_2"),          # two parent layers -> one child block
    ([2, 3], attn(1), ffn(128), "bypass_merge_2_3"),
]
TEACHER_LM_LOSS = 2.0


def student_scores(k: int, entry: dict) -> dict[str, float]:
    """Deterministic replace-1-block scores: cheaper blocks hurt more."""
    a, f = entry["child_block_configs"][0]["attention"], entry["child_block_configs"][0]["ffn"]
    span = len(entry["parent_layer_indices"])
    saved = span * (attn_params(attn()) + ffn_params(ffn())) - attn_params(a) - ffn_params(f)
    kl = round(saved / 1e5 + 0.001 * (k + 1), 6)
    return {"lm_loss": TEACHER_LM_LOSS + kl, "kl_div": kl, "token_accuracy_top_1": 0.5 - kl / 10,
            "token_accuracy_top_1_consistency": 1 - kl}


def stats_scenario(*, gpu, batch, dtypes, n_embd=H, entries):
    """One element of subblock_stats.json (calculate_subblock_stats), stats per (sub-block, layer)."""
    subs, seen = [], set()
    for e in entries:
        b = e["child_block_configs"][0]
        for cls, sub, params in (("AttentionConfig", b["attention"], attn_params(b["attention"])),
                                 ("FFNConfig", b["ffn"], ffn_params(b["ffn"]))):
            key = (cls, json.dumps(sub, sort_keys=True), e["parent_layer_indices"][0])
            if key in seen:
                continue
            seen.add(key)
            kv_mib = 0.0
            if cls == "AttentionConfig" and sub["num_key_value_heads"]:
                kv_mib = batch * 4096 * 2 * sub["num_key_value_heads"] * HEAD_DIM * 2 / 2**20
            subs.append({"subblock_config": sub, "subblock_config_class": cls, "runtime_ms": None,
                         "prefill_runtime_ms": None, "decode_runtime_ms": None, "num_params": params,
                         "active_params": params, "parent_layer_index": e["parent_layer_indices"][0],
                         "memory_mib": params * 2 / 2**20 + kv_mib, "kv_cache_memory_mib": kv_mib})
    w, a, kv = dtypes
    return {"args": {"is_calc_runtime": False, "gpu": gpu, "batch_size": batch, "prefill_seq_len": 2048,
                     "generation_seq_len": 2048, "prefill_queue_size": 0, "n_embd": n_embd, "n_head": HEADS,
                     "vocab_size": 128, "benchmark_iterations": None, "use_cuda_graph": True,
                     "weights_dtype": w, "activations_dtype": a, "kv_cache_dtype": kv},
            "non_block": {"runtime_ms": None, "prefill_runtime_ms": None, "decode_runtime_ms": None,
                          "memory_mib": 2 * 128 * H * 2 / 2**20, "num_params": 2 * 128 * H},
            "subblocks": subs}


def write_puzzle(root: Path, *, version: int = 1, teacher_block_configs: bool = False,
                 outside: Path | None = None) -> dict:
    """A ModelOpt puzzle folder under ``root``; returns its documents (for tests to break)."""
    tdir = root / ("ckpts/teacher" if version == 1 else "ckpts/sorted_teacher")
    tdir.mkdir(parents=True)
    cfg = tiny_llama_config()
    if teacher_block_configs:  # what an AnyModel/DeciLM teacher carries
        cfg["block_configs"] = [block(attn(), ffn()) for _ in range(LAYERS)]
    (tdir / "config.json").write_text(json.dumps(cfg))
    entries = []
    for i in range(LAYERS):  # the teacher's own blocks (extracted from the teacher checkpoint)
        a, f = attn(), ffn()
        entries.append({"parent_layer_indices": [i], "child_block_configs": [block(a, f)],
                        "weight_paths": sub_paths(tdir, i, a, f) if version == 1 else []})
    for idx, a, f, ck in STUDENTS:
        ckpt = (outside if (outside is not None and ck == "bypass_kv_1") else root / "ckpts") / ck
        entries.append({"parent_layer_indices": idx, "child_block_configs": [block(a, f)],
                        "weight_paths": sub_paths(ckpt, idx[0], a, f) if version == 1 else []})
    if version == 1:
        lib_doc = entries
    else:
        lib_doc = {"version": 2, "sorted_teacher_dir": str(tdir.resolve()), "hidden_width": H,
                   "teacher_hidden_width": H, "scenario": f"width-{H:04d}", "entries": entries}
    (root / "replacement_library.json").write_text(json.dumps(lib_doc, indent=2))
    vdir = root / VALIDATION_DIR
    vdir.mkdir()
    solutions = {}
    for k, e in enumerate(entries[LAYERS:]):
        sc = student_scores(k, e)
        doc = {**{m: {"avg": v, "per_sample": [v, v]} for m, v in sc.items()}, "i_solution": k,
               "puzzle_solution": {"single_sequence_replacement": e, "chosen_replacements": [e],
                                   "block_configs": e["child_block_configs"]},
               "args": {"teacher_dir": str(tdir), "descriptor": "llama", "eval_samples": 8}}
        (vdir / f"solution_{k}.json").write_text(json.dumps(doc))
        solutions[k] = doc
    (vdir / "teacher.json").write_text(json.dumps({
        "lm_loss": {"avg": TEACHER_LM_LOSS}, "token_accuracy_top_1": {"avg": 0.5},
        "args": {"teacher_dir": str(tdir), "descriptor": "llama",
                 "replacement_library_path": str(root / "replacement_library.json")}}))
    stats = [stats_scenario(gpu=g, batch=b, dtypes=d, n_embd=n, entries=entries) for g, b, d, n in (
        ("NVIDIA H100 80GB HBM3", 64, ("nvfp4", "nvfp4", "nvfp4"), H),
        ("NVIDIA H100 80GB HBM3", 64, ("torch.int8", "torch.int8", "torch.bfloat16"), H),
        ("NVIDIA H100 80GB HBM3", 64, ("torch.bfloat16",) * 3, H),
        (None, 8, ("torch.bfloat16",) * 3, H),
        ("NVIDIA H100 80GB HBM3", 64, ("torch.bfloat16",) * 3, 32),  # another hidden width
    )]
    (root / "subblock_stats.json").write_text(json.dumps(stats))
    return {"library": lib_doc, "solutions": solutions, "stats": stats}


@pytest.fixture
def puzzle(tmp_path):
    root = tmp_path / "puzzle"
    root.mkdir()
    docs = write_puzzle(root)
    return root, docs


# ---- block configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("b", [
    BlockConfig(AttentionConfig.gqa(2), FFNConfig.swiglu(256)),
    BlockConfig(AttentionConfig.make_no_op(), FFNConfig.swiglu(96)),
    BlockConfig(AttentionConfig.make_linear(), FFNConfig.make_no_op()),
    BlockConfig(AttentionConfig.gqa(1), FFNConfig.make_linear()),
])
def test_block_modelopt_round_trip(b):
    d = block_to_modelopt(b)
    assert block_from_modelopt(json.loads(json.dumps(d))) == b
    assert set(d["attention"]) == set(attn()) and set(d["ffn"]) == set(ffn())


def test_block_from_modelopt_refuses_what_it_cannot_represent():
    spec = puzzlekit.ParentSpec.from_hf_config(tiny_llama_config())
    with pytest.raises(LibraryError, match=r"x\.attention\.num_key_value_heads: 3 does not divide .* 4 query heads"):
        block_from_modelopt(block(attn(3), ffn()), "x", spec)
    with pytest.raises(LibraryError, match=r"x\.ffn\.moe: mixture-of-experts"):
        block_from_modelopt(block(attn(), {**ffn(), "moe": {"num_local_experts": 8}}), "x")
    with pytest.raises(LibraryError, match=r"x\.attention: sub-block kind 'mamba' is not supported"):
        block_from_modelopt(block({**attn(), "kind": "mamba"}, ffn()), "x")
    with pytest.raises(LibraryError, match=r"x\.attention\.weights_precision: 'fp8'"):
        block_from_modelopt(block({**attn(), "weights_precision": "fp8"}, ffn()), "x")
    with pytest.raises(LibraryError, match=r"x\.attention\.num_query_heads: 2 query heads"):
        block_from_modelopt(block({**attn(), "num_query_heads": 2}, ffn()), "x", spec)
    with pytest.raises(LibraryError, match=r"x\.parallel_blocks"):
        block_from_modelopt({**block(attn(), ffn()), "parallel_blocks": [block(attn(), ffn())]}, "x")
    with pytest.raises(LibraryError, match=r"x: missing 'ffn'"):
        block_from_modelopt({"attention": attn(), "ffn": None}, "x")
    # the query-head count equal to the parent's is what ModelOpt writes for an unpruned attention
    assert block_from_modelopt(block({**attn(), "num_query_heads": 4}, ffn()), "x", spec).attention.num_kv_heads == 2


# ---- import ----------------------------------------------------------------------------------------

def test_import_v1_folder(puzzle, caplog):
    root, docs = puzzle
    with caplog.at_level(logging.INFO, logger="puzzlekit.formats.modelopt"):
        lib = import_modelopt(root)
    assert lib.validate() == []
    assert lib.num_layers == LAYERS and lib.parent.hidden_size == H and lib.parent.num_key_value_heads == KV
    assert len(lib) == LAYERS + len(STUDENTS)
    teacher = BlockConfig(AttentionConfig.gqa(KV), FFNConfig.swiglu(INTER))
    for i in range(LAYERS):
        (c,) = [c for c in lib.candidates if c.first == i and c.last == i and c.block == teacher]
        assert c.name == "teacher"
        # teacher.json's scores; the teacher's kl_div / consistency are 0 / 1 by definition
        assert c.metrics == {"lm_loss": TEACHER_LM_LOSS, "token_accuracy_top_1": 0.5, "kl_div": 0.0,
                             "token_accuracy_top_1_consistency": 1.0}
        assert c.weights == (f"ckpts/teacher/subblocks_safetensors/block_{i}_attention.safetensors",
                             f"ckpts/teacher/subblocks_safetensors/block_{i}_ffn.safetensors")
    spans = sorted((c.first, c.last, c.block.key) for c in lib.candidates if c.span > 1)
    assert spans == [(1, 2, teacher.key), (2, 3, "attn=gqa:1|ffn=ffn:128")]
    kinds = {(c.first, c.block.attention.kind, c.block.ffn.kind) for c in lib.candidates}
    assert {(1, "no_op", "swiglu"), (2, "linear", "swiglu"), (3, "gqa", "linear"), (3, "no_op", "no_op"),
            (0, "gqa", "no_op")} <= kinds
    # every student's metrics are its solution file's averages
    for doc in docs["solutions"].values():
        rep = doc["puzzle_solution"]["single_sequence_replacement"]
        idx = rep["parent_layer_indices"]
        b = block_from_modelopt(rep["child_block_configs"][0])
        (c,) = [c for c in lib.candidates if (c.first, c.last, c.block) == (idx[0], idx[-1], b)]
        assert c.metrics == {m: v["avg"] for m, v in doc.items() if isinstance(v, dict) and "avg" in v}
    no_op = next(c for c in lib.candidates if c.block.attention.no_op and c.block.ffn.no_op)
    assert no_op.weights is None  # ModelOpt stores no file for removed sub-blocks
    # costs: the bf16 scenarios only (nvfp4, int8 and the 32-wide measurement are skipped)
    assert sorted(lib.scenarios) == ["analytic/bf16/b8/p2048/d2048/tp1", "h100-sxm/bf16/b64/p2048/d2048/tp1"]
    assert lib.default_scenario == "h100-sxm/bf16/b64/p2048/d2048/tp1"
    t = lib.costs["h100-sxm/bf16/b64/p2048/d2048/tp1"][teacher.key]
    assert t["num_params"] == attn_params(attn()) + ffn_params(ffn())
    assert t["attention_num_params"] == attn_params(attn()) and t["ffn_num_params"] == ffn_params(ffn())
    assert "runtime_ms" not in t  # not measured (null) upstream
    assert lib.costs["h100-sxm/bf16/b64/p2048/d2048/tp1"]["attn=no_op|ffn=no_op"]["memory_mib"] == 0.0
    assert set(lib.cost_names) >= {"num_params", "memory_mib", "kv_cache_memory_mib", "active_params"}
    assert lib.meta["modelopt_non_block"]["h100-sxm/bf16/b64/p2048/d2048/tp1"]["num_params"] == 2 * 128 * H
    assert "skipped: dtypes nvfp4/nvfp4/nvfp4" in caplog.text and "hidden width 32" in caplog.text


def test_import_round_trips_and_is_searchable(puzzle, tmp_path):
    root, _ = puzzle
    lib = import_modelopt(root / "replacement_library.json")  # the file works as well as the folder
    out = lib.save(root / "puzzlekit-library.json")            # inside the folder: weights stay
    back = BlockLibrary.load(out)
    assert back.to_dict() == lib.to_dict()
    assert back.weights_paths(0)[0] == (root / "ckpts/teacher/subblocks_safetensors/block_0_attention.safetensors")

    teacher_params = LAYERS * (attn_params(attn()) + ffn_params(ffn()))
    budget = 0.7 * teacher_params
    sol = puzzlekit.search(back, "kl_div", {"num_params": budget})
    assert sol.costs["num_params"] <= budget + 1e-6
    arch = back.architecture(sol.candidates)
    assert arch.num_layers == LAYERS - sum(back.candidates[i].span - 1 for i in sol.candidates)
    # the optimum, by enumerating every tiling of the 4 layers with the library's candidates
    table = back.costs[back.default_scenario]
    best = None
    for choice in itertools.product(range(len(back)), repeat=LAYERS):
        for n in range(1, LAYERS + 1):
            pick = [back.candidates[i] for i in choice[:n]]
            nxt, ok = 0, True
            for c in pick:
                ok &= c.first == nxt
                nxt = c.last + 1
            if ok and nxt == LAYERS:
                if len(set(choice[:n])) == n and sum(table[c.block.key]["num_params"] for c in pick) <= budget:
                    v = sum(c.metrics["kl_div"] for c in pick)
                    best = v if best is None else min(best, v)
                break
    assert best is not None and sol.objective == pytest.approx(best, abs=1e-9)
    assert any(back.candidates[i].span > 1 or back.candidates[i].name != "teacher" for i in sol.candidates)


def test_import_v2_with_teacher_block_configs(tmp_path):
    root = tmp_path / "p2"
    root.mkdir()
    write_puzzle(root, version=2, teacher_block_configs=True)
    lib = import_modelopt(root)
    lib.validate()
    assert lib.meta["modelopt_version"] == 2 and lib.meta["modelopt_hidden_width"] == H
    assert all(c.weights is None for c in lib.candidates)  # a v2 library is virtual (empty weight_paths)
    assert sum(c.name == "teacher" for c in lib.candidates) == LAYERS
    doc = json.loads((root / "replacement_library.json").read_text())
    doc["hidden_width"] = 48
    (root / "replacement_library.json").write_text(json.dumps(doc))
    with pytest.raises(LibraryError, match=r"replacement_library\.json: \$\.hidden_width is 48 .* cannot be represented"):
        import_modelopt(root)


def test_weights_outside_the_folder_are_left_empty(tmp_path, caplog):
    root = tmp_path / "puzzle"
    root.mkdir()
    write_puzzle(root, outside=tmp_path / "elsewhere")
    with caplog.at_level(logging.WARNING, logger="puzzlekit.formats.modelopt"):
        lib = import_modelopt(root)
    moved = [c for c in lib.candidates if c.first == 1 and c.last == 1 and c.name != "teacher"]
    assert len(moved) == 2 and all(c.weights is None for c in moved)
    assert "2 replacements have weight files outside" in caplog.text
    assert sum(c.weights is not None for c in lib.candidates) == len(lib) - 2 - 1  # - the all-no_op block


def test_parent_argument_and_no_teacher_config(puzzle):
    root, _ = puzzle
    for p in (root / "ckpts/teacher/config.json",):
        p.unlink()
    lib = import_modelopt(root)  # no teacher: no parent spec, layers from the entries, no teacher scores
    assert lib.parent is None and lib.num_layers == LAYERS
    assert all(c.name is None for c in lib.candidates)
    with pytest.raises(LibraryError, match="metric 'kl_div' is missing on 4 candidates"):
        lib.metric_vector("kl_div")
    spec = puzzlekit.ParentSpec.from_hf_config(tiny_llama_config())
    lib = import_modelopt(root, spec)  # the parent's block is the teacher's at every layer
    assert lib.parent == spec and sum(c.name == "teacher" for c in lib.candidates) == LAYERS
    assert lib.metric_names == ["kl_div", "lm_loss", "token_accuracy_top_1", "token_accuracy_top_1_consistency"]
    with pytest.raises(LibraryError, match=r"\$\[2\]\.parent_layer_indices: layer 2 is out of range 0\.\.1"):
        import_modelopt(root, puzzlekit.ParentSpec.from_hf_config(tiny_llama_config(num_hidden_layers=2)))


def _mutate_library(docs, fn):
    lib = copy.deepcopy(docs["library"])
    fn(lib)
    return lib


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d[5].pop("parent_layer_indices"),
     r"replacement_library\.json: \$\[5\]: missing field 'parent_layer_indices'"),
    (lambda d: d[6]["child_block_configs"][0]["attention"].update(num_key_value_heads="2"),
     r"\$\[6\]\.child_block_configs\[0\]\.attention\.num_key_value_heads: must be a positive integer .* got '2'"),
    (lambda d: d[6].update(parent_layer_indices=[4]),
     r"\$\[6\]\.parent_layer_indices: layer 4 is out of range 0\.\.3"),
    (lambda d: d[6].update(parent_layer_indices=[1, 3]),
     r"\$\[6\]\.parent_layer_indices: \[1, 3\] are not consecutive"),
    (lambda d: d[7]["child_block_configs"][0]["ffn"].update(kind="moe"),
     r"\$\[7\]\.child_block_configs\[0\]\.ffn: sub-block kind 'moe' is not supported"),
    (lambda d: d[7]["child_block_configs"][0]["attention"].update(mla={"kv_lora_rank": 8}),
     r"\$\[7\]\.child_block_configs\[0\]\.attention: unknown field 'mla'"),
    (lambda d: d[8]["child_block_configs"].append(d[8]["child_block_configs"][0]),
     r"\$\[8\]\.child_block_configs: 2 child blocks for 1 parent layers"),
    (lambda d: d[8].update(weight_paths="ckpts/x.safetensors"),
     r"\$\[8\]\.weight_paths: must be a list"),
    (lambda d: d.append(copy.deepcopy(d[4])),
     r"\$\[13\]: duplicates \$\[4\] \(layers 0\.\.0"),
    (lambda d: d.__setitem__(0, "layer 0"),
     r"\$\[0\]: a layer replacement must be an object"),
])
def test_malformed_replacement_library(puzzle, mutate, match):
    root, docs = puzzle
    (root / "replacement_library.json").write_text(json.dumps(_mutate_library(docs, mutate)))
    with pytest.raises(LibraryError, match=match):
        import_modelopt(root)


def test_malformed_scores_and_stats(puzzle):
    root, docs = puzzle
    sol = root / VALIDATION_DIR / "solution_2.json"
    good = sol.read_text()
    bad = json.loads(good)
    bad["kl_div"]["avg"] = "low"
    sol.write_text(json.dumps(bad))
    with pytest.raises(LibraryError, match=r"solution_2\.json: \$\.kl_div\.avg must be a number, got 'low'"):
        import_modelopt(root)
    bad = json.loads(good)
    bad["puzzle_solution"]["single_sequence_replacement"]["child_block_configs"][0]["ffn"]["intermediate_size"] = 64
    sol.write_text(json.dumps(bad))
    with pytest.raises(LibraryError, match=r"solution_2\.json: scores layers 1\.\.1 with block attn=gqa:1\|ffn=ffn:64, "
                                           r"which is not in the replacement library"):
        import_modelopt(root)
    bad = json.loads(good)
    del bad["puzzle_solution"]
    sol.write_text(json.dumps(bad))
    with pytest.raises(LibraryError, match=r"solution_2\.json: \$\.puzzle_solution\.single_sequence_replacement is missing"):
        import_modelopt(root)
    sol.write_text(good)

    stats = copy.deepcopy(docs["stats"])
    stats[2]["subblocks"] = [s for s in stats[2]["subblocks"]
                             if not (s["subblock_config_class"] == "FFNConfig"
                                     and s["subblock_config"]["replace_with_linear"])]
    (root / "subblock_stats.json").write_text(json.dumps(stats))
    with pytest.raises(LibraryError, match=r"subblock_stats\.json: \$\[2\]: no stats for the ffn sub-block linear of layer 3"):
        import_modelopt(root)
    stats = copy.deepcopy(docs["stats"])
    stats[2]["subblocks"][0]["memory_mib"] = "big"
    (root / "subblock_stats.json").write_text(json.dumps(stats))
    with pytest.raises(LibraryError, match=r"\$\[2\]\.subblocks\[0\]\.memory_mib: a stat must be a number or null"):
        import_modelopt(root)
    stats = copy.deepcopy(docs["stats"])
    stats[2]["args"]["batch_size"] = "64"
    (root / "subblock_stats.json").write_text(json.dumps(stats))
    with pytest.raises(LibraryError, match=r"\$\[2\]\.args\.batch_size: must be a non-negative integer"):
        import_modelopt(root)


def test_not_a_modelopt_library(tmp_path):
    with pytest.raises(LibraryError, match=r"replacement_library\.json: no such file"):
        import_modelopt(tmp_path)
    (tmp_path / "replacement_library.json").write_text(json.dumps({"layer_0": {}}))
    with pytest.raises(LibraryError, match=r"expected a list of layer replacements \(ModelOpt v1\) or an object "
                                           r"with 'entries'"):
        import_modelopt(tmp_path)


# ---- CLI -------------------------------------------------------------------------------------------

def test_cli_import_modelopt(puzzle, tmp_path, capsys):
    root, docs = puzzle
    out = tmp_path / "out" / "library.json"
    out.parent.mkdir()
    rc = main(["library", "import", "--format", "modelopt", str(root), "-o", str(out)])
    o, e = capsys.readouterr()
    assert rc == 0, e
    assert f"imported {LAYERS + len(STUDENTS)} candidates over {LAYERS} layers" in o
    lib = BlockLibrary.load(out)
    assert all(c.weights is None for c in lib.candidates)  # saved outside the ModelOpt folder
    assert "note: weights of candidates whose files lie outside" in o
    assert lib.metric_names == ["kl_div", "lm_loss", "token_accuracy_top_1", "token_accuracy_top_1_consistency"]
    # saved inside the folder, the weights are kept
    inside = root / "library.json"
    assert main(["library", "import", "--format", "modelopt", str(root), "-o", str(inside)]) == 0
    assert BlockLibrary.load(inside).candidates[0].weight_files[0].startswith("ckpts/teacher/")
    capsys.readouterr()

    bad = _mutate_library(docs, lambda d: d[6].update(parent_layer_indices=[9]))
    (root / "replacement_library.json").write_text(json.dumps(bad))
    out2 = tmp_path / "out" / "bad.json"
    rc = main(["library", "import", "--format", "modelopt", str(root), "-o", str(out2)])
    o, e = capsys.readouterr()
    assert rc == 2 and not out2.exists()
    assert e.count("\n") == 1 and "layer 9 is out of range" in e and e.startswith("puzzlekit: error:")


def test_nemotron_nas_teacher(tmp_path):
    """A DeciLM / Nemotron-NAS teacher (Super-49B's published config): its heterogeneous blocks are the
    teacher's own candidates."""
    from puzzlekit.cli.common import builtin_config_path

    root = tmp_path / "nas"
    (root / "ckpts/teacher").mkdir(parents=True)
    cfg = json.loads(builtin_config_path("super-49b").read_text())
    (root / "ckpts/teacher/config.json").write_text(json.dumps(cfg))
    arch = puzzlekit.Architecture.from_config(cfg)
    entries = [{"parent_layer_indices": [i], "child_block_configs": [block_to_modelopt(b)], "weight_paths": []}
               for i, b in enumerate(arch.blocks)]
    entries += [{"parent_layer_indices": [i], "child_block_configs": [block(attn(8), ffn(no_op=True))],
                 "weight_paths": []} for i in range(0, 80, 10) if arch.blocks[i].ffn.kind != "no_op"]
    (root / "replacement_library.json").write_text(json.dumps(entries))
    lib = import_modelopt(root)
    lib.validate()
    assert lib.parent.num_hidden_layers == 80 and lib.num_layers == 80
    teachers = [c for c in lib.candidates if c.name == "teacher"]
    assert [c.block for c in teachers] == list(arch.blocks)
    assert len(lib) == 80 + len(entries) - 80


def test_size_limit(puzzle):
    from puzzlekit.errors import UnsafeInputError

    root, _ = puzzle
    with pytest.raises(UnsafeInputError, match=r"replacement_library\.json: \d+ bytes is over the 1000-byte limit"):
        import_modelopt(root, max_bytes=1000)
    assert len(import_modelopt(root, max_bytes=10**7)) == LAYERS + len(STUDENTS)


def test_scores_from_gathered_metrics(puzzle, tmp_path):
    """The MIP's gathered metrics (mip/run_puzzle.py::gather_multi_layer_puzle_metrics: students from the
    solution files, each teacher block with teacher.json's metrics, ``one_minus_<m>`` added) give the
    same scores as the validation folder."""
    import shutil

    root, docs = puzzle
    ref = import_modelopt(root)
    gathered = {}
    for k, doc in docs["solutions"].items():
        rep = doc["puzzle_solution"]["single_sequence_replacement"]
        m = {n: v["avg"] for n, v in doc.items() if isinstance(v, dict) and "avg" in v}
        m.update({f"one_minus_{n}": 1 - v for n, v in list(m.items())})
        gathered[f"replacement_{k}"] = {"block_config": rep["child_block_configs"][0],
                                        "parent_layer_indices": rep["parent_layer_indices"], "metrics": m,
                                        "layer_replacement": rep, "is_teacher": False}
    for i in range(LAYERS):
        m = {"lm_loss": TEACHER_LM_LOSS, "token_accuracy_top_1": 0.5, "kl_div": 0.0,
             "token_accuracy_top_1_consistency": 1.0}
        m.update({f"one_minus_{n}": 1 - v for n, v in list(m.items())})
        gathered[f"replacement_{len(STUDENTS) + i}"] = {"block_config": block(attn(), ffn()),
                                                        "parent_layer_indices": [i], "metrics": m, "is_teacher": True}
    path = tmp_path / "replacement_metrics_and_stats.json"
    path.write_text(json.dumps(gathered))
    shutil.rmtree(root / VALIDATION_DIR)
    lib = import_modelopt(root, scores=path)
    assert [c.metrics for c in lib.candidates] == [c.metrics for c in ref.candidates]

    gathered["replacement_0"]["parent_layer_indices"] = [0, 1, 2]
    path.write_text(json.dumps(gathered))
    with pytest.raises(LibraryError, match=r"replacement_metrics_and_stats\.json: \$\.replacement_0: layers 0\.\.2 "
                                           r"with block attn=gqa:2\|ffn=ffn:128 are not in the replacement library"):
        import_modelopt(root, scores=path)
    with pytest.raises(LibraryError, match=r"nope: no such folder or file"):
        import_modelopt(root, scores=tmp_path / "nope")


def _modelopt_accepts(d: dict) -> None:
    """The checks of ModelOpt's ``block_config`` dataclasses (Puzzletron ``AttentionConfig.__post_init__``,
    ``FFNConfig.__post_init__``): the real ones when ModelOpt is installed, else the same rules."""
    try:
        from modelopt.torch.puzzletron.block_config import BlockConfig as MOBlock  # type: ignore[import-not-found]
    except ImportError:
        MOBlock = None
    if MOBlock is not None:
        MOBlock(**json.loads(json.dumps(d)))
        return
    a, f = d["attention"], d["ffn"]
    assert not (a["no_op"] and a["replace_with_linear"]) and not (f["no_op"] and f["replace_with_linear"])
    if not a["no_op"] and a["mamba"] is None:
        assert isinstance(a["num_key_value_heads"], int), a  # `assert self.num_key_value_heads is not None`
    if not f["no_op"] and f["moe"] is None:
        assert isinstance(f["intermediate_size"], int), f  # "Intermediate size must be provided for an FFN block"


@pytest.mark.parametrize("b", [
    BlockConfig(AttentionConfig.make_linear(), FFNConfig.swiglu(256)),
    BlockConfig(AttentionConfig.gqa(2), FFNConfig.make_linear()),
    BlockConfig(AttentionConfig.make_linear(), FFNConfig.make_linear()),
    BlockConfig(AttentionConfig.make_no_op(), FFNConfig.make_no_op()),
    BlockConfig(AttentionConfig.gqa(1), FFNConfig.swiglu(96)),
])
def test_block_export_is_what_modelopt_reads(b):
    spec = puzzlekit.ParentSpec.from_hf_config(tiny_llama_config())
    for parent in (spec, None):
        d = block_to_modelopt(b, parent)
        _modelopt_accepts(d)  # linear attention wrote num_key_value_heads=None before: ModelOpt asserts
        assert block_from_modelopt(json.loads(json.dumps(d)), "x", spec) == b
    d = block_to_modelopt(b, spec)
    if b.attention.linear:
        assert d["attention"]["num_key_value_heads"] == spec.num_key_value_heads
    if b.ffn.linear:
        assert d["ffn"]["intermediate_size"] == spec.intermediate_size
