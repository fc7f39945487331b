"""Which serving engines serve which child: the compatibility table, as data, and its checks.

Each :class:`Engine` row says, per sub-block kind, whether the engine serves it, the FFN width
rule, what it needs of the parent (biases) and of the tokenizer, and where in the engine's own
code each rule comes from.  The table is read from the engines' code (the files named in each
rule's ``source``); ``tests/test_engines*.py`` back the rows we can run here (transformers and
llama.cpp, the latter through ``llama-cpp-python``).

Three uses:

* **search**: ``pk.search(lib, ..., engine="vllm")`` (or ``constraints=[EngineConstraint("vllm")]``,
  CLI ``--engine``) keeps only candidates the engine serves;
* **export**: :func:`require_servable` refuses an architecture before anything is written,
  naming the layer, the sub-block and the engine;
* **docs**: :func:`markdown_table` renders the engines x sub-block kinds table of the README.

Verdicts: ``"served"`` (the engine's code builds and runs it; for transformers and llama.cpp
also checked against our model's logits by the tests), ``"refused"`` (our check refuses it,
because the engine's code cannot build it or computes something else) and ``"untested"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .blocks import AttentionConfig, BlockConfig, FFNConfig
from .errors import ConfigError, InfeasibleError, did_you_mean

__all__ = [
    "Rule",
    "Engine",
    "ENGINES",
    "EngineError",
    "EngineIssue",
    "EngineConstraint",
    "get_engine",
    "engine_names",
    "subblock_issues",
    "parent_issues",
    "architecture_issues",
    "require_servable",
    "block_served",
    "restriction_note",
    "markdown_table",
]

SERVED, REFUSED, UNTESTED = "served", "refused", "untested"

_VLLM = "vllm: vllm/model_executor/models/nemotron_nas.py"
_SGL = "sglang: python/sglang/srt/models/nemotron_nas.py"
_TRT = "TensorRT-LLM: tensorrt_llm/_torch/models/modeling_nemotron_nas.py"
_TRT_CONV = "TensorRT-LLM: tensorrt_llm/models/nemotron_nas/convert.py"
_LCPP = "llama.cpp (llama-cpp-python 0.3.36 vendor/llama.cpp): src/models/deci.cpp"
_OURS = "puzzlekit: puzzlekit/model/modeling.py"


class EngineError(ConfigError):
    """An architecture, parent or tokenizer that the named engine does not serve."""


@dataclass(frozen=True)
class Rule:
    """One cell of the table: a verdict, why, and where in the engine's code it comes from."""

    verdict: str
    why: str
    source: str

    def __post_init__(self) -> None:
        if self.verdict not in (SERVED, REFUSED, UNTESTED):
            raise ValueError(f"Rule.verdict must be served / refused / untested, got {self.verdict!r}")


@dataclass(frozen=True)
class Engine:
    """One engine's row: sub-block kinds, width rule, parent and tokenizer rules, format."""

    name: str
    title: str
    format: str  # what puzzlekit writes for it: "nemotron-nas" or "gguf"
    attention: Mapping[str, Rule]  # gqa / linear / no_op
    ffn: Mapping[str, Rule]  # swiglu / linear / no_op
    ffn_width_multiple: int = 1  # SwiGLU widths must be a multiple of this
    width_rule: Rule | None = None
    attention_bias: Rule | None = None  # None: served
    mlp_bias: Rule | None = None
    min_gqa_layers: int = 0  # model-level: at least this many GQA layers
    min_gqa_source: str = ""
    layer0_no_op_attention: Rule | None = None  # None: served
    tokenizer: Rule | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def rule(self, part: str, kind: str) -> Rule:
        return (self.attention if part == "attention" else self.ffn)[kind]


ENGINES: dict[str, Engine] = {
    "vllm": Engine(
        name="vllm", title="vLLM", format="nemotron-nas",
        attention={
            "gqa": Rule(SERVED, "any KV-head count dividing the query heads, per layer (full-attention layers of "
                        "different head counts share one KV-cache group: vllm/v1/kv_cache_interface.py::"
                        "UniformTypeKVCacheSpecs)", f"{_VLLM}::DeciLMDecoderLayer.__init__"),
            "linear": Rule(REFUSED, "no linear attention: every attention that is not no_op is built as "
                           "DeciLMAttention from num_attention_heads // n_heads_in_group (None for a linear one: "
                           "TypeError), and there is no 'linear_attn' weight to load",
                           f"{_VLLM}::DeciLMDecoderLayer.__init__"),
            "no_op": Rule(SERVED, "skipped (_is_no_op_attention)", f"{_VLLM}::DeciLMDecoderLayer.forward"),
        },
        ffn={
            "swiglu": Rule(SERVED, "width from ffn_mult when the block has that attribute, else from "
                           "intermediate_size (any width)", f"{_VLLM}::DeciLMDecoderLayer.__init__"),
            "linear": Rule(REFUSED, "no linear FFN: a non-no_op FFN is always a LlamaMLP sized from ffn_mult "
                           "(None for a linear one: TypeError in _ffn_mult_to_intermediate_size); no "
                           "'linear_mlp' weight to load", f"{_VLLM}::DeciLMDecoderLayer.__init__"),
            "no_op": Rule(SERVED, "skipped (_is_no_op_ffn)", f"{_VLLM}::DeciLMDecoderLayer.forward"),
        },
        width_rule=Rule(SERVED, "any intermediate size (intermediate_size is read when there is no ffn_mult)",
                        f"{_VLLM}::DeciLMDecoderLayer.__init__"),
        min_gqa_layers=1,
        min_gqa_source="vllm: vllm/config/model.py::ModelConfig.get_total_num_kv_heads ('nemotron-nas': the "
                       "first attention that is not no_op gives the KV heads; none: RuntimeError \"Couldn't "
                       "determine number of kv heads\")",
        tokenizer=Rule(SERVED, "the Hugging Face tokenizer files in the model folder (AutoTokenizer)",
                       "vllm: vllm/transformers_utils/tokenizer.py"),
    ),
    "sglang": Engine(
        name="sglang", title="SGLang", format="nemotron-nas",
        attention={
            "gqa": Rule(SERVED, "num_attention_heads // n_heads_in_group KV heads per layer",
                        f"{_SGL}::DeciLMDecodeLayer.__init__"),
            "linear": Rule(REFUSED, "no linear attention: num_attention_heads // n_heads_in_group with None "
                           "(TypeError); 'linear_attn' weights would be dropped with a warning",
                           f"{_SGL}::DeciLMDecodeLayer.__init__, DeciLMForCausalLM.load_weights"),
            "no_op": Rule(SERVED, "skipped (_is_no_op_attention)", f"{_SGL}::DeciLMDecodeLayer.forward"),
        },
        ffn={
            "swiglu": Rule(SERVED, "width from ffn_mult only (rounded up to a multiple of 256)",
                           f"{_SGL}::DeciLMDecodeLayer.__init__, _ffn_mult_to_intermediate_size"),
            "linear": Rule(REFUSED, "no linear FFN: LlamaMLP sized from ffn_mult (None: TypeError)",
                           f"{_SGL}::DeciLMDecodeLayer.__init__"),
            "no_op": Rule(SERVED, "skipped (_is_no_op_ffn)", f"{_SGL}::DeciLMDecodeLayer.forward"),
        },
        ffn_width_multiple=256,
        width_rule=Rule(REFUSED, "widths that are not a multiple of 256: ffn_mult is the only width field read "
                        "and maps to multiples of 256", f"{_SGL}::_ffn_mult_to_intermediate_size"),
        mlp_bias=Rule(REFUSED, "LlamaMLP is built without the config's mlp_bias", f"{_SGL}::DeciLMDecodeLayer.__init__"),
        tokenizer=Rule(SERVED, "the Hugging Face tokenizer files in the model folder",
                       "sglang: python/sglang/srt/hf_transformers_utils.py"),
    ),
    "tensorrt-llm": Engine(
        name="tensorrt-llm", title="TensorRT-LLM", format="nemotron-nas",
        attention={
            "gqa": Rule(SERVED, "num_attention_heads // n_heads_in_group KV heads per layer",
                        f"{_TRT}::NemotronNASModel.__init__"),
            "linear": Rule(SERVED, "LinearAttention, weight 'self_attn.linear_attn.weight' (H x H, no bias)",
                           f"{_TRT}::LinearAttention; {_TRT_CONV}::load_model_weights"),
            "no_op": Rule(SERVED, "skipped", f"{_TRT}::NemotronNASDecoderLayer.forward"),
        },
        ffn={
            "swiglu": Rule(SERVED, "GatedMLP, width from ffn_mult only",
                           f"{_TRT}::NemotronNASDecoderLayer.__init__; {_TRT_CONV}::hf_block_config_to_layer_config"),
            "linear": Rule(SERVED, "LinearMLP, weight 'mlp.linear_mlp.weight' (H x H, no bias)",
                           f"{_TRT}::LinearMLP; {_TRT_CONV}::load_model_weights"),
            "no_op": Rule(SERVED, "skipped", f"{_TRT}::NemotronNASDecoderLayer.forward"),
        },
        ffn_width_multiple=256,
        width_rule=Rule(REFUSED, "widths that are not a multiple of 256: only ffn_mult is read "
                        "(_ffn_mult_to_intermediate_size rounds up to 256); the error comes at load time",
                        f"{_TRT}::_ffn_mult_to_intermediate_size"),
        attention_bias=Rule(REFUSED, "attention built with bias=False", f"{_TRT}::NemotronNASAttention.__init__"),
        mlp_bias=Rule(REFUSED, "GatedMLP built with bias=False", f"{_TRT}::NemotronNASDecoderLayer.__init__"),
        tokenizer=Rule(SERVED, "the Hugging Face tokenizer files in the model folder",
                       "TensorRT-LLM: tensorrt_llm/llmapi/tokenizer.py"),
    ),
    "llamacpp": Engine(
        name="llamacpp", title="llama.cpp", format="gguf",
        attention={
            "gqa": Rule(SERVED, "per-layer head_count / head_count_kv arrays (n_head_kv > 0)",
                        f"{_LCPP}::llama_model_deci::load_arch_tensors, graph"),
            "linear": Rule(SERVED, "n_head > 0 and n_head_kv == 0: attn_norm then attn_output (H x H)",
                           f"{_LCPP}::llama_model_deci::graph ('linear attention')"),
            "no_op": Rule(SERVED, "n_head == 0: the layer's input goes straight to the FFN",
                          f"{_LCPP}::llama_model_deci::graph ('attention-free layer')"),
        },
        ffn={
            "swiglu": Rule(SERVED, "per-layer feed_forward_length array, any width (puzzlekit writes the GGUF; "
                           "llama.cpp's own convert_hf_to_gguf.py reads ffn_mult only)",
                           f"{_LCPP}::llama_model_deci::load_arch_tensors"),
            "linear": Rule(REFUSED, "no linear FFN in the graph (gate/up/down SwiGLU only) and no tensor mapping "
                           "for 'mlp.linear_mlp.weight'", f"{_LCPP}::llama_model_deci::graph"),
            "no_op": Rule(SERVED, "n_ff == 0 skips the layer; after a GQA or linear attention that `continue` "
                          "would also drop the attention's residual (wrong logits; an abort in the last layer), "
                          "so puzzlekit writes such an FFN as an exact zero SwiGLU of width 1",
                          f"{_LCPP}::llama_model_deci::graph ('FFN-free layer': if (n_ff == 0) continue)"),
        },
        width_rule=Rule(SERVED, "any width (written per layer)", f"{_LCPP}::llama_model_deci::load_arch_tensors"),
        layer0_no_op_attention=Rule(
            REFUSED, "the head size is read only when layer 0 has attention heads (hparams.n_head() is layer 0's): "
            "with layer 0's attention removed every later GQA layer gets head size 0 and loading fails "
            "('check_tensor_dims: tensor blk.1.attn_q.weight has wrong shape')",
            "llama.cpp: src/llama-model.cpp::llama_model_base::load_hparams (if (hparams.n_head() > 0))"),
        attention_bias=Rule(UNTESTED, "q/k/v/o biases are optional tensors in llama.cpp; the GGUF writer does not "
                            "write them yet", f"{_LCPP}; llama-model.cpp::create_tensor_qkv"),
        mlp_bias=Rule(UNTESTED, "FFN biases are optional tensors in llama.cpp; the GGUF writer does not write "
                      "them yet", f"{_LCPP}::llama_model_deci::load_arch_tensors"),
        tokenizer=Rule(SERVED, "written as what it is: GPT-2-style byte-level BPE ('gpt2' with the "
                       "pre-tokenizer 'gpt-2', 'smollm' or 'llama-bpe' for Llama-3) or SentencePiece-style BPE "
                       "with byte fallback ('llama'); other pre-tokenizers are refused",
                       "llama.cpp: src/llama-vocab.cpp::llama_vocab::impl::load"),
        notes=("llama.cpp's own convert_hf_to_gguf.py (conversion/deci.py::DeciModel) accepts only a 128,256-token "
               "Llama-3 vocabulary or a Llama-2-style BPE with byte fallback, and ffn_mult widths: puzzlekit "
               "writes the GGUF itself (puzzlekit export --format gguf).",),
    ),
    "transformers": Engine(
        name="transformers", title="transformers + puzzlekit", format="nemotron-nas",
        attention={
            "gqa": Rule(SERVED, "any KV-head count dividing the query heads", f"{_OURS}::PuzzleAttention"),
            "linear": Rule(SERVED, "self_attn.linear_attn.weight", f"{_OURS}::LinearAttention"),
            "no_op": Rule(SERVED, "no weights, no norm", f"{_OURS}::PuzzleDecoderLayer"),
        },
        ffn={
            "swiglu": Rule(SERVED, "any width", f"{_OURS}::SwiGLU"),
            "linear": Rule(SERVED, "mlp.linear_mlp.weight", f"{_OURS}::LinearMLP"),
            "no_op": Rule(SERVED, "no weights, no norm", f"{_OURS}::PuzzleDecoderLayer"),
        },
        width_rule=Rule(SERVED, "any width", f"{_OURS}::SwiGLU"),
        tokenizer=Rule(SERVED, "the Hugging Face tokenizer files in the model folder",
                       "transformers: AutoTokenizer.from_pretrained"),
        notes=("import puzzlekit.model first (it registers PuzzleForCausalLM for 'nemotron-nas'); no remote code runs.",),
    ),
}

_ALIASES = {"llama.cpp": "llamacpp", "llama-cpp": "llamacpp", "llama_cpp": "llamacpp", "trtllm": "tensorrt-llm",
            "tensorrt_llm": "tensorrt-llm", "trt-llm": "tensorrt-llm", "hf": "transformers"}


def engine_names() -> list[str]:
    """The engines of the table, in table order."""
    return list(ENGINES)


def get_engine(engine: str | Engine) -> Engine:
    """An :class:`Engine` by name (``vllm``, ``sglang``, ``tensorrt-llm``, ``llamacpp``, ``transformers``)."""
    if isinstance(engine, Engine):
        return engine
    if not isinstance(engine, str):
        raise ConfigError(f"engine must be a name, got {engine!r}; valid names: {', '.join(ENGINES)}")
    key = _ALIASES.get(engine.lower(), engine.lower())
    if key not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; {did_you_mean(key, ENGINES)}")
    return ENGINES[key]


@dataclass(frozen=True)
class EngineIssue:
    """Why one sub-block (or the parent, or the model) is not served: ``layer`` is None for model-wide issues."""

    engine: str
    layer: int | None
    part: str  # "attention" / "ffn" / "parent" / "model" / "tokenizer"
    subblock: str
    why: str
    source: str

    def __str__(self) -> str:
        where = f"layer {self.layer} {self.part} {self.subblock}" if self.layer is not None else \
            f"{self.part} {self.subblock}".strip()
        return f"{where}: {get_engine(self.engine).title} does not serve it ({self.why}; {self.source})"


def subblock_issues(engine: str | Engine, sub: AttentionConfig | FFNConfig, layer: int | None = None) -> list[EngineIssue]:
    """Why ``engine`` does not serve the sub-block ``sub`` (empty list: served)."""
    e = get_engine(engine)
    part = "attention" if isinstance(sub, AttentionConfig) else "ffn"
    rule = e.rule(part, sub.kind)
    out = []
    if rule.verdict != SERVED:
        out.append(EngineIssue(e.name, layer, part, sub.short(), rule.why, rule.source))
    elif part == "ffn" and sub.kind == "swiglu" and sub.intermediate_size % e.ffn_width_multiple:
        w = e.width_rule
        out.append(EngineIssue(e.name, layer, part, sub.short(),
                               f"intermediate size {sub.intermediate_size} is not a multiple of "
                               f"{e.ffn_width_multiple}: {w.why if w else ''}", w.source if w else ""))
    return out


def parent_issues(engine: str | Engine, parent: Any) -> list[EngineIssue]:
    """Why ``engine`` does not serve any child of ``parent`` (a :class:`~puzzlekit.ParentSpec`)."""
    e = get_engine(engine)
    out = []
    if parent is None:
        return out
    if (parent.qkv_bias or parent.o_bias) and e.attention_bias is not None and e.attention_bias.verdict != SERVED:
        out.append(EngineIssue(e.name, None, "parent", "attention bias", e.attention_bias.why, e.attention_bias.source))
    if parent.mlp_bias and e.mlp_bias is not None and e.mlp_bias.verdict != SERVED:
        out.append(EngineIssue(e.name, None, "parent", "mlp bias", e.mlp_bias.why, e.mlp_bias.source))
    return out


def architecture_issues(arch: Any, engine: str | Engine) -> list[EngineIssue]:
    """Every reason ``engine`` does not serve ``arch`` (an :class:`~puzzlekit.Architecture`), in layer order."""
    e = get_engine(engine)
    out = parent_issues(e, arch.parent)
    r0 = e.layer0_no_op_attention
    for i, b in enumerate(arch.blocks):
        out += subblock_issues(e, b.attention, i) + subblock_issues(e, b.ffn, i)
        if i == 0 and b.attention.no_op and r0 is not None and r0.verdict != SERVED:
            out.append(EngineIssue(e.name, 0, "attention", "no_op", "removed attention in layer 0: " + r0.why, r0.source))
    gqa = sum(b.attention.kind == "gqa" for b in arch.blocks)
    if gqa < e.min_gqa_layers:
        out.append(EngineIssue(e.name, None, "model", "", f"it needs at least {e.min_gqa_layers} GQA attention "
                               f"layer(s), the architecture has {gqa}", e.min_gqa_source))
    return out


def require_servable(arch: Any, engine: str | Engine, *, what: str = "architecture") -> None:
    """Raise :class:`EngineError` naming every layer / sub-block ``engine`` does not serve (first 5 in full)."""
    e = get_engine(engine)
    issues = architecture_issues(arch, e)
    if not issues:
        return
    shown = "; ".join(str(i) for i in issues[:5])
    more = f"; and {len(issues) - 5} more" if len(issues) > 5 else ""
    raise EngineError(f"{what}: {e.title} ({e.name}) cannot serve it: {shown}{more}. Search with --engine {e.name} "
                      f"(pk.search(..., engine={e.name!r})) to get a child it serves, or export for another engine "
                      f"(`puzzlekit engines` lists what each one serves); nothing was written")


def block_served(engine: str | Engine, block: BlockConfig) -> bool:
    """Whether ``engine`` serves both sub-blocks of ``block``."""
    return not (subblock_issues(engine, block.attention) or subblock_issues(engine, block.ffn))


@dataclass(frozen=True)
class EngineConstraint:
    """A search constraint: only candidates ``engine`` serves (and, for engines that need one, at least
    one GQA layer).  Pass it in ``constraints=[...]`` or give ``engine="vllm"`` to :func:`puzzlekit.search`."""

    engine: str

    def mask(self, library: Any) -> np.ndarray:
        e = get_engine(self.engine)
        pi = parent_issues(e, library.parent)
        if pi:
            raise InfeasibleError(f"engine {e.name}: no child of this parent is served: "
                                  + "; ".join(str(i) for i in pi))
        r0 = e.layer0_no_op_attention
        ok = np.array([block_served(e, c.block) and not (r0 is not None and r0.verdict != SERVED and c.first == 0
                                                         and c.block.attention.no_op)
                       for c in library.candidates], dtype=bool)
        covered = np.zeros(library.num_layers, dtype=bool)
        for c, good in zip(library.candidates, ok):
            if good:
                covered[list(c.layers)] = True
        if not covered.all():
            layer = int(np.flatnonzero(~covered)[0])
            reasons = sorted({str(i).split(": ", 1)[1] for c in library.candidates if layer in c.layers
                              for i in subblock_issues(e, c.block.attention, layer) + subblock_issues(e, c.block.ffn, layer)}
                             | ({"removed attention in layer 0"} if layer == 0 and r0 is not None else set()))
            raise InfeasibleError(f"engine {e.name}: no candidate of layer {layer} is served by {e.title} "
                                  f"({len(reasons)} reason(s), e.g. {reasons[0] if reasons else '?'}); add candidates "
                                  "it serves to the library or search for another engine")
        return ok

    def apply(self, library: Any, scenario: Any, out: Any) -> None:
        e = get_engine(self.engine)
        out.notes.append(f"candidates restricted to what {e.title} serves")
        if e.min_gqa_layers:
            name = f"{e.name}_gqa_layers"
            out.extra_costs[name] = np.array([float(len(c.layers)) if c.block.attention.kind == "gqa" else 0.0
                                              for c in library.candidates])
            lo, hi = out.budgets.get(name, (-np.inf, np.inf))
            out.budgets[name] = (max(lo, float(e.min_gqa_layers)), hi)


def restriction_note(engine: str | Engine | None) -> str:
    """A phrase for infeasibility messages: which engine restricted the candidates."""
    if engine is None:
        return ""
    e = get_engine(engine)
    return f" (candidates restricted to what {e.title} serves: --engine {e.name})"


def markdown_table(names: Sequence[str] | None = None) -> str:
    """The engines x sub-block kinds table (Markdown), each cell's verdict; sources listed under it."""
    names = list(names or ENGINES)
    cols = [("attention", "gqa", "GQA"), ("attention", "linear", "linear attn"), ("attention", "no_op", "no-op attn"),
            ("ffn", "swiglu", "FFN"), ("ffn", "linear", "linear FFN"), ("ffn", "no_op", "no-op FFN")]
    head = "| engine | " + " | ".join(c[2] for c in cols) + " | FFN widths | format |"
    rows = [head, "|" + "---|" * (len(cols) + 3)]
    for n in names:
        e = ENGINES[n]
        cells = [e.rule(p, k).verdict for p, k, _ in cols]
        width = "any" if e.ffn_width_multiple == 1 else f"multiples of {e.ffn_width_multiple}"
        rows.append(f"| {e.title} | " + " | ".join(cells) + f" | {width} | {e.format} |")
    return "\n".join(rows)
