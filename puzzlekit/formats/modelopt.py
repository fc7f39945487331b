"""NVIDIA Model Optimizer's Puzzle ("Puzzletron", formerly ``modelopt.torch._compress``) format.

A ModelOpt puzzle folder (``PUZZLE_DIR``) holds, among others::

    replacement_library.json        the candidates ("layer replacements"), either a list of entries
                                    (v1) or {"version": 2, "entries": [...], "hidden_width", ...} (v2);
                                    an entry is {"parent_layer_indices": [i, ...],
                                                 "child_block_configs": [<block config>],
                                                 "weight_paths": [<safetensors file>, ...]}
    single_sequence_replacement_solutions--validation/
        solution_<k>.json           replace-1-block scores of one replacement:
                                    {"<metric>": {"avg": x, ...}, ...,
                                     "puzzle_solution": {"single_sequence_replacement": <entry>, ...}}
        teacher.json                the teacher's own scores (same metric layout)
    subblock_stats.json             a list of measurement scenarios, each
                                    {"args": {"gpu", "batch_size", "prefill_seq_len",
                                              "generation_seq_len", "n_embd", "weights_dtype",
                                              "activations_dtype", "kv_cache_dtype", ...},
                                     "non_block": {...},
                                     "subblocks": [{"subblock_config_class": "AttentionConfig" | "FFNConfig",
                                                    "subblock_config": {...}, "parent_layer_index": i,
                                                    "memory_mib", "num_params", "runtime_ms", ...}]}
    ckpts/teacher/config.json       the teacher (parent) HF config (``ckpts/sorted_teacher`` in v2)

A ModelOpt block config (``dataclasses.asdict`` of ``block_config.BlockConfig``) is
``{"attention": {"no_op", "replace_with_linear", "num_key_value_heads", ...},
"ffn": {"no_op", "replace_with_linear", "intermediate_size", ...}, "parallel_blocks"}``.

Mapping: an entry becomes one :class:`~puzzlekit.library.Candidate` over its parent layers
(``first..last``; several layers make a spanning candidate); the ``avg`` of each scored metric
becomes a candidate metric under the same name; each representable ``subblock_stats`` scenario
becomes a :class:`~puzzlekit.Scenario` whose block costs are the attention + FFN sub-block stats
(also kept separately as ``attention_<stat>`` / ``ffn_<stat>``).  What puzzlekit cannot represent
(MoE, Mamba, MLA, Llama-4 attention, sparsified or non-bf16 sub-blocks, changed query heads,
parallel blocks, a pruned hidden width, one replacement with several child blocks) is an error,
never an approximation.  Scenarios puzzlekit cannot name (int8 / NVFP4 / mixed dtypes, another
hidden width) are skipped with a log line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..architecture import ParentSpec, Scenario, load_config_dict
from ..blocks import AttentionConfig, BlockConfig, FFNConfig
from ..errors import LibraryError, PuzzlekitError
from ..io import MAX_JSON_BYTES, read_json
from ..library import BlockLibrary
from .modelopt_metrics import _metrics, _teacher_default
from .nvlabs import GPU_NAMES
from .relocate import relocate_weights

__all__ = [
    "import_modelopt",
    "block_from_modelopt",
    "block_to_modelopt",
    "attention_from_modelopt",
    "ffn_from_modelopt",
    "relocate_weights",
    "VALIDATION_DIR",
]

logger = logging.getLogger(__name__)

#: Where ModelOpt's scoring step writes the replace-1-block scores (``<solutions stem>--validation``).
VALIDATION_DIR = "single_sequence_replacement_solutions--validation"
_TEACHER_DIRS = ("ckpts/teacher", "ckpts/sorted_teacher", "ckpts/elastic_sorted_teacher")

_COMMON_SUB_FIELDS = {"no_op", "replace_with_linear", "sparsify", "weights_precision", "kind", "name"}
_ATTN_FIELDS = _COMMON_SUB_FIELDS | {"num_key_value_heads", "num_query_heads", "llama4", "mamba"}
_FFN_FIELDS = _COMMON_SUB_FIELDS | {"intermediate_size", "moe"}
_BLOCK_FIELDS = {"attention", "ffn", "parallel_blocks"}

#: torch dtype strings in ``subblock_stats.json`` args -> puzzlekit scenario dtypes.
_DTYPES = {"torch.bfloat16": "bf16", "bfloat16": "bf16", "bf16": "bf16", "torch.float16": "fp16",
           "float16": "fp16", "torch.float32": "fp32", "float32": "fp32", "torch.float8_e4m3fn": "fp8",
           "fp8": "fp8"}

_FIX = "fix or remove the entry (puzzlekit imports dense Llama-family attention / SwiGLU FFN blocks)"


# ---- block configs ---------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(d: Any, where: str, kind: str, fields: set[str], shape: str) -> None:
    """``d`` is an object whose fields are all among ``fields`` (a ModelOpt ``kind`` config)."""
    if not isinstance(d, Mapping):
        raise LibraryError(f"{where}: must be an object {shape}, got {type(d).__name__}")
    unknown = sorted(set(d) - fields)
    if unknown:
        raise LibraryError(f"{where}: unknown field {unknown[0]!r} in a ModelOpt {kind} config "
                           f"(known: {', '.join(sorted(fields))}); {_FIX}")


def _sub_common(d: Any, where: str, kind: str, fields: set[str]) -> tuple[bool, bool]:
    """Shared checks of a ModelOpt sub-block dict; returns (no_op, replace_with_linear)."""
    _check_fields(d, where, kind, fields, f"(a ModelOpt {kind} sub-block config)")
    k = d.get("kind")
    if k is not None and k != kind:
        raise LibraryError(f"{where}: sub-block kind {k!r} is not supported (puzzlekit imports {kind!r}); {_FIX}")
    no_op, linear = d.get("no_op", False), d.get("replace_with_linear", False)
    for name, v in (("no_op", no_op), ("replace_with_linear", linear)):
        if not isinstance(v, bool):
            raise LibraryError(f"{where}.{name}: must be true or false, got {v!r}")
    if no_op and linear:
        raise LibraryError(f"{where}: no_op and replace_with_linear are both true; set at most one")
    if d.get("sparsify") not in (None, []) and not no_op:
        raise LibraryError(f"{where}.sparsify: sparsified sub-blocks ({d['sparsify']!r}) cannot be represented; {_FIX}")
    if d.get("weights_precision") not in (None, "bf16") and not no_op:
        raise LibraryError(f"{where}.weights_precision: {d['weights_precision']!r} cannot be represented "
                           "(puzzlekit blocks are bf16; the precision belongs to the scenario)")
    return no_op, linear


def attention_from_modelopt(d: Any, where: str = "attention", parent: ParentSpec | None = None) -> AttentionConfig:
    """A ModelOpt ``AttentionConfig`` dict (``num_key_value_heads`` / ``no_op`` /
    ``replace_with_linear``) as a puzzlekit :class:`~puzzlekit.AttentionConfig`."""
    no_op, linear = _sub_common(d, where, "attention", _ATTN_FIELDS)
    for special in ("mamba", "llama4"):
        if d.get(special) is not None:
            raise LibraryError(f"{where}.{special}: {special} attention cannot be represented; {_FIX}")
    if no_op:
        return AttentionConfig.make_no_op()
    if linear:
        return AttentionConfig.make_linear()
    q = d.get("num_query_heads")
    if q is not None and (parent is None or q != parent.num_attention_heads):
        raise LibraryError(f"{where}.num_query_heads: {q!r} query heads cannot be represented (puzzlekit keeps the "
                           "parent's query heads" + (f", {parent.num_attention_heads})" if parent else ")"))
    kv = d.get("num_key_value_heads")
    if not _is_int(kv) or kv <= 0:
        raise LibraryError(f"{where}.num_key_value_heads: must be a positive integer for an attention that is "
                           f"neither no_op nor replace_with_linear, got {kv!r}")
    if parent is not None and (kv > parent.num_attention_heads or parent.num_attention_heads % kv):
        raise LibraryError(f"{where}.num_key_value_heads: {kv} does not divide the parent's "
                           f"{parent.num_attention_heads} query heads; allowed: {parent.kv_head_options}")
    return AttentionConfig.gqa(kv)


def ffn_from_modelopt(d: Any, where: str = "ffn", parent: ParentSpec | None = None) -> FFNConfig:
    """A ModelOpt ``FFNConfig`` dict (``intermediate_size`` / ``no_op`` / ``replace_with_linear``)
    as a puzzlekit :class:`~puzzlekit.FFNConfig`."""
    no_op, linear = _sub_common(d, where, "ffn", _FFN_FIELDS)
    if d.get("moe") is not None and not no_op:
        raise LibraryError(f"{where}.moe: mixture-of-experts FFNs cannot be represented; {_FIX}")
    if no_op:
        return FFNConfig.make_no_op()
    if linear:
        return FFNConfig.make_linear()
    inter = d.get("intermediate_size")
    if not _is_int(inter) or inter <= 0:
        raise LibraryError(f"{where}.intermediate_size: must be a positive integer for an FFN that is neither "
                           f"no_op nor replace_with_linear, got {inter!r}")
    return FFNConfig.swiglu(inter)


def block_from_modelopt(d: Any, where: str = "block", parent: ParentSpec | None = None) -> BlockConfig:
    """A ModelOpt ``BlockConfig`` dict (``{"attention": {...}, "ffn": {...}}``) as a puzzlekit block.

    Raises :class:`~puzzlekit.errors.LibraryError` naming ``where`` for anything puzzlekit cannot
    represent exactly."""
    _check_fields(d, where, "block", _BLOCK_FIELDS, "like {'attention': {...}, 'ffn': {...}}")
    if d.get("parallel_blocks") is not None:
        raise LibraryError(f"{where}.parallel_blocks: parallel blocks cannot be represented; {_FIX}")
    for part in ("attention", "ffn"):
        if d.get(part) is None:
            raise LibraryError(f"{where}: missing {part!r}; a block needs both sub-blocks "
                               f"(write {{'no_op': true}} for a removed one)")
    return BlockConfig(attention_from_modelopt(d["attention"], f"{where}.attention", parent),
                       ffn_from_modelopt(d["ffn"], f"{where}.ffn", parent))


def block_to_modelopt(block: BlockConfig, parent: ParentSpec | None = None) -> dict[str, Any]:
    """``block`` in ModelOpt's ``BlockConfig`` form (every puzzlekit block is representable).

    ModelOpt's ``AttentionConfig`` asserts ``num_key_value_heads`` is set for every attention that is not
    a no-op (a linear one included, though its linear layer does not use it), and ``FFNConfig`` that
    ``intermediate_size`` is set for every FFN that is not a no-op (a linear one included).  A linear
    sub-block gets the parent's value (``parent``), or 1 without a parent: a number ModelOpt accepts and
    never reads for a linear layer; :func:`block_from_modelopt` reads the block back unchanged.
    """
    a, f = block.attention, block.ffn
    kv = a.num_kv_heads
    if a.linear:
        kv = parent.num_key_value_heads if parent is not None else 1
    inter = f.intermediate_size
    if f.linear:
        inter = parent.intermediate_size if parent is not None else 1
    return {
        "attention": {"no_op": a.no_op, "replace_with_linear": a.linear, "sparsify": None,
                      "weights_precision": "bf16", "num_key_value_heads": kv,
                      "llama4": None, "mamba": None},
        "ffn": {"no_op": f.no_op, "replace_with_linear": f.linear, "sparsify": None,
                "weights_precision": "bf16", "moe": None, "intermediate_size": inter},
        "parallel_blocks": None,
    }


# ---- the documents ---------------------------------------------------------------------------

def _find_teacher_config(folder: Path, doc: Any) -> Path | None:
    cands = [folder / d / "config.json" for d in _TEACHER_DIRS]
    if isinstance(doc, Mapping) and isinstance(doc.get("sorted_teacher_dir"), str):
        cands.append(Path(doc["sorted_teacher_dir"]) / "config.json")
    return next((p for p in cands if p.is_file()), None)


def _teacher_blocks(cfg: Mapping[str, Any], path: Path, parent: ParentSpec) -> list[BlockConfig]:
    """The teacher's block per layer: its ``block_configs`` (ModelOpt or Nemotron-NAS form) or the
    homogeneous parent block."""
    bcs = cfg.get("block_configs")
    if not bcs:
        return [parent.parent_block()] * parent.num_hidden_layers
    if not isinstance(bcs, list) or len(bcs) != parent.num_hidden_layers:
        raise LibraryError(f"{path}: block_configs must be a list of {parent.num_hidden_layers} blocks "
                           "(num_hidden_layers)")
    def nas_form(b: Any) -> bool:
        a, f = (b.get("attention"), b.get("ffn")) if isinstance(b, Mapping) else (None, None)
        return (isinstance(a, Mapping) and "n_heads_in_group" in a) or (isinstance(f, Mapping) and "ffn_mult" in f)

    if any(nas_form(b) for b in bcs):  # Nemotron-NAS (DeciLM) form
        from ..architecture import Architecture

        try:
            return list(Architecture.from_config(dict(cfg)).blocks)
        except PuzzlekitError as e:
            raise LibraryError(f"{path}: {e}") from None
    return [block_from_modelopt(b, f"{path}: block_configs[{i}]", parent) for i, b in enumerate(bcs)]


def _entries(doc: Any, path: Path) -> tuple[list[Any], str, dict[str, Any]]:
    """The entry list, the JSON path prefix of its items, and the v2 header fields."""
    if isinstance(doc, list):
        return doc, "$", {}
    if isinstance(doc, Mapping) and "entries" in doc:
        if not isinstance(doc["entries"], list):
            raise LibraryError(f"{path}: $.entries must be a list of layer replacements, "
                               f"got {type(doc['entries']).__name__}")
        hw, thw = doc.get("hidden_width"), doc.get("teacher_hidden_width")
        if hw is not None and thw is not None and hw != thw:
            raise LibraryError(f"{path}: $.hidden_width is {hw!r} but the teacher's is {thw!r}; a library with a "
                               "pruned hidden width cannot be represented (puzzlekit children keep the parent's width)")
        header = {k: doc[k] for k in ("version", "scenario", "hidden_width") if k in doc}
        return doc["entries"], "$.entries", header
    raise LibraryError(f"{path}: expected a list of layer replacements (ModelOpt v1) or an object with "
                       f"'entries' (v2), got {type(doc).__name__}; is this a ModelOpt replacement_library.json?")


def _parse_entry(e: Any, where: str, parent: ParentSpec | None) -> tuple[int, int, BlockConfig, list[str]]:
    if not isinstance(e, Mapping):
        raise LibraryError(f"{where}: a layer replacement must be an object with parent_layer_indices, "
                           f"child_block_configs, weight_paths; got {type(e).__name__}")
    if "layer_replacement" in e:  # as stored inside puzzle solutions
        e = e["layer_replacement"]
        where += ".layer_replacement"
        if not isinstance(e, Mapping):
            raise LibraryError(f"{where}: must be an object")
    for k in ("parent_layer_indices", "child_block_configs"):
        if k not in e:
            raise LibraryError(f"{where}: missing field {k!r}; every layer replacement needs "
                               "parent_layer_indices and child_block_configs")
    idx = e["parent_layer_indices"]
    if not isinstance(idx, list) or not idx or not all(_is_int(i) for i in idx):
        raise LibraryError(f"{where}.parent_layer_indices: must be a non-empty list of layer indices, got {idx!r}")
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise LibraryError(f"{where}.parent_layer_indices: {idx} are not consecutive ascending layers; "
                           "a replacement must cover one run of parent layers")
    n = parent.num_hidden_layers if parent else None
    if idx[0] < 0 or (n is not None and idx[-1] >= n):
        raise LibraryError(f"{where}.parent_layer_indices: layer {idx[0] if idx[0] < 0 else idx[-1]} is out of range "
                           f"0..{(n - 1) if n is not None else '...'}" + (" (the parent's num_hidden_layers)" if n else ""))
    cbc = e["child_block_configs"]
    if not isinstance(cbc, list) or not cbc:
        raise LibraryError(f"{where}.child_block_configs: must be a non-empty list of block configs, got {cbc!r}")
    if len(cbc) != 1:
        raise LibraryError(f"{where}.child_block_configs: {len(cbc)} child blocks for {len(idx)} parent layers; "
                           "puzzlekit candidates (and ModelOpt's own MIP) replace a run of layers with one block")
    block = block_from_modelopt(cbc[0], f"{where}.child_block_configs[0]", parent)
    wp = e.get("weight_paths", [])
    if not isinstance(wp, list) or not all(isinstance(p, str) for p in wp):
        raise LibraryError(f"{where}.weight_paths: must be a list of file paths, got {wp!r}")
    return idx[0], idx[-1], block, wp


def _scenario(args: Any, where: str, teacher_hidden: int | None) -> Scenario | None:
    """The puzzlekit scenario of a ``subblock_stats.json`` ``args`` object, or None (logged) when
    puzzlekit cannot name it."""
    if not isinstance(args, Mapping):
        raise LibraryError(f"{where}.args: must be an object of measurement settings")
    for k in ("batch_size", "prefill_seq_len", "generation_seq_len"):
        if not _is_int(args.get(k)) or args[k] < 0:
            raise LibraryError(f"{where}.args.{k}: must be a non-negative integer, got {args.get(k)!r}")
    n_embd = args.get("n_embd")
    if teacher_hidden is not None and n_embd is not None and n_embd != teacher_hidden:
        logger.info("%s: skipped: measured at hidden width %s, the teacher's is %s", where, n_embd, teacher_hidden)
        return None
    names = {k: args.get(k, "torch.bfloat16") for k in ("weights_dtype", "activations_dtype", "kv_cache_dtype")}
    mapped = {_DTYPES.get(str(v)) for v in names.values()}
    if None in mapped or len(mapped) != 1:
        logger.info("%s: skipped: dtypes %s have no single puzzlekit dtype (%s)", where,
                    "/".join(str(v) for v in names.values()), ", ".join(sorted(set(_DTYPES.values()))))
        return None
    gpu = args.get("gpu")
    hw = "analytic" if gpu is None else GPU_NAMES.get(gpu) or re.sub(r"[^a-z0-9]+", "-", str(gpu).lower()).strip("-")
    try:
        return Scenario(hardware=hw or "unknown", dtype=mapped.pop(), batch=args["batch_size"],
                        prefill=args["prefill_seq_len"], decode=args["generation_seq_len"])
    except PuzzlekitError as e:
        raise LibraryError(f"{where}.args: {e}") from None


def _sub_key(cls: str, cfg: Any, parent: ParentSpec | None) -> tuple[str, Any] | None:
    """A comparable key of a stats sub-block, or None when puzzlekit cannot represent it (not needed)."""
    try:
        if cls == "AttentionConfig":
            return ("attention", attention_from_modelopt(cfg, "stats", parent))
        if cls == "FFNConfig":
            return ("ffn", ffn_from_modelopt(cfg, "stats", parent))
    except LibraryError:
        return None
    return None


def _load_stats(path: Path, lib: BlockLibrary, parent: ParentSpec | None, max_bytes: int) -> None:
    doc = read_json(path, what="ModelOpt subblock stats", max_bytes=max_bytes)
    if isinstance(doc, Mapping):
        doc = [doc]
    if not isinstance(doc, list):
        raise LibraryError(f"{path}: expected a list of measurement scenarios ({{'args', 'non_block', 'subblocks'}})")
    hidden = parent.hidden_size if parent else None
    for si, sc_doc in enumerate(doc):
        where = f"{path}: $[{si}]"
        if not isinstance(sc_doc, Mapping):
            raise LibraryError(f"{where}: a scenario must be an object with args and subblocks")
        sc = _scenario(sc_doc.get("args"), where, hidden)
        if sc is None:
            continue
        if sc.name in lib.scenarios:
            logger.info("%s: skipped: a second measurement of scenario %s (the first is kept)", where, sc.name)
            continue
        subs = sc_doc.get("subblocks")
        if not isinstance(subs, list):
            raise LibraryError(f"{where}.subblocks: must be a list of sub-block stats")
        table: dict[tuple[str, Any, int | None], dict[str, float]] = {}
        for j, s in enumerate(subs):
            w = f"{where}.subblocks[{j}]"
            if not isinstance(s, Mapping) or "subblock_config" not in s or "subblock_config_class" not in s:
                raise LibraryError(f"{w}: needs subblock_config and subblock_config_class")
            key = _sub_key(s["subblock_config_class"], s["subblock_config"], parent)
            if key is None:
                continue
            layer = s.get("parent_layer_index")
            if layer is not None and not _is_int(layer):
                raise LibraryError(f"{w}.parent_layer_index: must be an integer, got {layer!r}")
            vals: dict[str, float] = {}
            for k, v in s.items():
                if k in ("subblock_config", "subblock_config_class", "parent_layer_index") or v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise LibraryError(f"{w}.{k}: a stat must be a number or null, got {v!r}")
                vals[k] = float(v)
            table[(*key, layer)] = vals
        costs_by_block: dict[str, tuple[dict[str, float], int]] = {}
        for c in lib.candidates:
            parts = {}
            for kind, sub in (("attention", c.block.attention), ("ffn", c.block.ffn)):
                st = table.get((kind, sub, c.first), table.get((kind, sub, None)))
                if st is None:
                    raise LibraryError(f"{where}: no stats for the {kind} sub-block {sub.short()} of layer {c.first} "
                                       f"(candidate {c.block.key}); re-run ModelOpt's calc_subblock_stats "
                                       "on this replacement library")
                parts[kind] = st
            a, f = parts["attention"], parts["ffn"]
            costs = {k: a[k] + f[k] for k in a if k in f}
            costs.update({f"attention_{k}": v for k, v in a.items()})
            costs.update({f"ffn_{k}": v for k, v in f.items()})
            prev = costs_by_block.get(c.block.key)
            if prev is not None and prev[0] != costs:
                diff = sorted(k for k in set(prev[0]) | set(costs) if prev[0].get(k) != costs.get(k))
                raise LibraryError(f"{where}: block {c.block.key} has different stats at layer {c.first} than at "
                                   f"layer {prev[1]} ({diff[:3]}); puzzlekit costs depend on the block only")
            costs_by_block[c.block.key] = (costs, c.first)
        lib.add_scenario(sc, default=None)
        for key, (costs, _) in costs_by_block.items():
            lib.set_costs(sc.name, BlockConfig.from_key(key), costs)
        nb = sc_doc.get("non_block")
        if isinstance(nb, Mapping):
            num = {k: float(v) for k, v in nb.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
            lib.meta.setdefault("modelopt_non_block", {})[sc.name] = num
    if not lib.scenarios:
        logger.info("%s: no scenario puzzlekit can name; the library has no costs (profile it with "
                    "`puzzlekit profile`)", path)


def import_modelopt(
    source: str | os.PathLike,
    parent: ParentSpec | None = None,
    *,
    scores: str | os.PathLike | None = None,
    stats: str | os.PathLike | None = None,
    max_bytes: int = MAX_JSON_BYTES,
) -> BlockLibrary:
    """Read a ModelOpt (Puzzletron) replacement library into a :class:`~puzzlekit.BlockLibrary`.

    ``source``: the puzzle folder or its ``replacement_library.json``.  Scores come from
    ``scores``: the scoring step's folder (default ``<folder>/single_sequence_replacement_solutions--validation``)
    or a gathered-metrics JSON (the MIP's ``--gathered_metrics_path`` input, or the
    ``replacement_metrics_and_stats.json`` it writes),
    costs from ``stats`` (default ``<folder>/subblock_stats.json``); both are optional.  The parent
    spec is ``parent`` or the teacher's ``config.json`` (``<folder>/ckpts/teacher``,
    ``ckpts/sorted_teacher``).  Weight files are recorded (relative to the folder, which becomes
    the library's root) only when every file of a replacement lies inside the folder.  JSON
    documents over ``max_bytes`` are refused (raise it for a trusted, very large ``subblock_stats.json``).
    """
    src = Path(source)
    folder = src if src.is_dir() else src.parent
    lib_path = src / "replacement_library.json" if src.is_dir() else src
    if not lib_path.is_file():
        raise LibraryError(f"{lib_path}: no such file; give a ModelOpt puzzle folder (with replacement_library.json) "
                           "or the replacement_library.json itself")
    doc = read_json(lib_path, what="ModelOpt replacement library", max_bytes=max_bytes)
    entries, prefix, header = _entries(doc, lib_path)
    teacher_cfg_path = _find_teacher_config(folder, doc)
    teacher_cfg = None
    if teacher_cfg_path is not None:
        try:
            teacher_cfg = load_config_dict(teacher_cfg_path)
            if parent is None:
                parent = ParentSpec.from_hf_config(teacher_cfg)
        except PuzzlekitError as e:
            raise LibraryError(f"{teacher_cfg_path}: {e}") from None
    if parent is None:
        logger.warning("%s: no teacher config.json found (ckpts/teacher, ckpts/sorted_teacher) and no parent given; "
                    "the library has no parent spec", folder)
    teacher = None
    if parent is not None:  # the teacher's block per layer: its config's, else the (homogeneous) parent's
        teacher = (_teacher_blocks(teacher_cfg, teacher_cfg_path, parent) if teacher_cfg
                   else [parent.parent_block()] * parent.num_hidden_layers)

    parsed = [_parse_entry(e, f"{lib_path}: {prefix}[{i}]", parent) for i, e in enumerate(entries)]
    if not parsed:
        raise LibraryError(f"{lib_path}: {prefix} has no layer replacements")
    n = parent.num_hidden_layers if parent else max(p[1] for p in parsed) + 1
    lib = BlockLibrary(n, parent, root=folder,
                       meta={"imported_from": "modelopt", "source": lib_path.name, **{f"modelopt_{k}": v
                                                                                       for k, v in header.items()}})
    root = folder.resolve()
    where_of: dict[tuple[int, int, str], str] = {}
    outside = 0
    for i, (first, last, block, wp) in enumerate(parsed):
        where = f"{lib_path}: {prefix}[{i}]"
        k = (first, last, block.key)
        if k in where_of:
            raise LibraryError(f"{where}: duplicates {where_of[k].split(': ', 1)[1]} (layers {first}..{last}, "
                               f"block {block.key}); remove one of them")
        where_of[k] = where
        rel: list[str] = []
        for p in wp:
            q = Path(p) if Path(p).is_absolute() else folder / p
            try:
                rel.append(q.resolve().relative_to(root).as_posix())
            except ValueError:
                break
        weights = rel if wp and len(rel) == len(wp) else None
        outside += bool(wp) and weights is None
        is_teacher = teacher is not None and first == last and teacher[first] == block
        lib.add((first, last), block, weights=weights, name="teacher" if is_teacher else None)
    if outside:
        logger.warning("%s: %d replacements have weight files outside %s; their weights are left empty "
                    "(copy the checkpoints into the folder to keep them)", lib_path, outside, folder)

    vdir = Path(scores) if scores is not None else folder / VALIDATION_DIR
    if vdir.is_dir():
        _load_scores(vdir, lib, parent, teacher, max_bytes)
    elif vdir.is_file():
        _load_gathered(vdir, lib, parent, max_bytes)
    elif scores is not None:
        raise LibraryError(f"{vdir}: no such folder or file (ModelOpt's {VALIDATION_DIR} folder or a "
                           "gathered-metrics JSON)")
    else:
        logger.info("%s: no scores (%s missing); the candidates have no metrics", folder, VALIDATION_DIR)

    stats_path = Path(stats) if stats is not None else folder / "subblock_stats.json"
    if stats_path.is_file():
        _load_stats(stats_path, lib, parent, max_bytes)
    elif stats is not None:
        raise LibraryError(f"{stats_path}: no such file (ModelOpt's subblock_stats.json)")
    return lib


def _load_scores(vdir: Path, lib: BlockLibrary, parent: ParentSpec | None, teacher: list[BlockConfig] | None,
                 max_bytes: int) -> None:
    index = {(c.first, c.last, c.block.key): i for i, c in enumerate(lib.candidates)}
    scored: dict[int, Path] = {}
    names: set[str] = set()
    for path in sorted(vdir.glob("*solution*.json")):
        raw = read_json(path, what="ModelOpt validation result", max_bytes=max_bytes)
        if not isinstance(raw, Mapping):
            raise LibraryError(f"{path}: expected an object with metrics and puzzle_solution")
        ps = raw.get("puzzle_solution")
        rep = ps.get("single_sequence_replacement") if isinstance(ps, Mapping) else None
        if rep is None:
            raise LibraryError(f"{path}: $.puzzle_solution.single_sequence_replacement is missing; "
                               "only ModelOpt's single-sequence replacement scores can be imported")
        first, last, block, _ = _parse_entry(rep, f"{path}: $.puzzle_solution.single_sequence_replacement", parent)
        i = index.get((first, last, block.key))
        if i is None:
            raise LibraryError(f"{path}: scores layers {first}..{last} with block {block.key}, which is not in the "
                               "replacement library; the scores belong to another library")
        if i in scored:
            raise LibraryError(f"{path}: scores the same replacement as {scored[i].name} "
                               f"(layers {first}..{last}, {block.key}); remove one")
        m = _metrics(raw, path)
        if not m:
            raise LibraryError(f"{path}: no metric with an 'avg' (e.g. {{'lm_loss': {{'avg': 2.1}}}})")
        lib.candidates[i].metrics.update(m)
        scored[i] = path
        names |= set(m)
    tpath = vdir / "teacher.json"
    if teacher is not None and tpath.is_file():
        tm = _metrics(read_json(tpath, what="ModelOpt teacher result", max_bytes=max_bytes), tpath)
        for name in names - set(tm):
            d = _teacher_default(name)
            if d is not None:
                tm[name] = d
        for i, c in enumerate(lib.candidates):
            if i not in scored and c.span == 1 and teacher[c.first] == c.block:
                c.metrics.update(tm)
    elif tpath.is_file():
        logger.info("%s: the teacher's blocks are unknown (no teacher config.json or parent); its scores are not used",
                    tpath)
    unscored = sum(1 for c in lib.candidates if not c.metrics)
    if unscored:
        logger.info("%s: %d of %d candidates have no scores", vdir, unscored, len(lib.candidates))


def _load_gathered(path: Path, lib: BlockLibrary, parent: ParentSpec | None, max_bytes: int) -> None:
    """Scores from ModelOpt's gathered metrics: ``{"replacement_<k>": {"block_config", "parent_layer_indices",
    "metrics": {...}, "is_teacher", ...}}`` (``mip/run_puzzle.py::gather_multi_layer_puzle_metrics``)."""
    doc = read_json(path, what="ModelOpt gathered metrics", max_bytes=max_bytes)
    if not isinstance(doc, Mapping) or not doc:
        raise LibraryError(f"{path}: expected an object of 'replacement_<k>' -> {{block_config, parent_layer_indices, "
                           "metrics}} (ModelOpt's gathered metrics)")
    index = {(c.first, c.last, c.block.key): i for i, c in enumerate(lib.candidates)}
    seen: dict[int, str] = {}
    for name, v in doc.items():
        where = f"{path}: $.{name}"
        if not isinstance(v, Mapping) or "metrics" not in v:
            raise LibraryError(f"{where}: needs block_config, parent_layer_indices and metrics")
        first, last, block, _ = _parse_entry(
            {"parent_layer_indices": v.get("parent_layer_indices"), "child_block_configs": [v.get("block_config")]},
            where, parent)
        i = index.get((first, last, block.key))
        if i is None:
            raise LibraryError(f"{where}: layers {first}..{last} with block {block.key} are not in the replacement "
                               "library; the metrics belong to another library")
        if i in seen:
            raise LibraryError(f"{where}: scores the same replacement as $.{seen[i]}; remove one")
        m = v["metrics"]
        if not isinstance(m, Mapping):
            raise LibraryError(f"{where}.metrics: must be an object of name -> number")
        clean = {}
        for k, x in m.items():
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise LibraryError(f"{where}.metrics.{k}: must be a number, got {x!r}")
            if not (str(k).startswith("one_minus_") and str(k)[len("one_minus_"):] in m):  # ModelOpt's derived copy
                clean[str(k)] = float(x)
        lib.candidates[i].metrics.update(clean)
        seen[i] = str(name)

