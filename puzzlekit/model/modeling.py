"""PuzzleForCausalLM: a Llama-family decoder whose layers differ from each other.

Each layer is an attention sub-block then an FFN sub-block on the residual stream::

    x = x + attn(norm_1(x))          # GQA (any KV heads) | linear H×H | no-op (nothing, no norm)
    x = x + ffn(norm_2(x))           # SwiGLU (any width)  | linear H×H | no-op (nothing, no norm)

The config is the Nemotron-NAS (DeciLM) ``config.json`` (``model_type: "nemotron-nas"``,
``block_configs``) and the weight names are the ones vLLM (``nemotron_nas.py``) and
TensorRT-LLM (``modeling_nemotron_nas.py``) load:

* GQA: ``self_attn.{q,k,v,o}_proj.weight``; SwiGLU: ``mlp.{gate,up,down}_proj.weight``;
* linear attention: ``self_attn.linear_attn.weight``; linear FFN: ``mlp.linear_mlp.weight``
  (no bias; both keep their RMSNorm);
* a no-op sub-block has no weights and no norm (no ``input_layernorm`` /
  ``post_attention_layernorm``).

Only GQA layers hold a KV cache; they use dense cache indices (the k-th GQA layer uses cache
layer k, as vLLM does), so a plain ``DynamicCache()`` holds exactly one entry per GQA layer.

Costs per layer and token (``puzzlekit.accounting`` counts the same tensors), with ``H`` hidden,
``n_h`` query heads, ``n_kv`` KV heads, ``d`` head dim, ``I`` FFN width, ``T`` context length;
FLOPs = 2 · multiply-adds (Kaplan et al. 2020, "Scaling Laws", Table 1):

* GQA: params ``2·H·n_h·d + 2·H·n_kv·d``; FLOPs ``2·params + 4·n_h·d·T`` (scores and weighted sum);
  KV cache ``2·n_kv·d`` elements;
* SwiGLU: params ``3·H·I``; FLOPs ``6·H·I``;
* linear attention / linear FFN: params ``H²``; FLOPs ``2·H²``; no-op: 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from ..architecture import Architecture, ParentSpec
from ..blocks import BlockConfig
from ..errors import ConfigError
from .placement import device_of, follow

__all__ = [
    "PuzzleConfig",
    "PuzzleAttention",
    "LinearAttention",
    "SwiGLU",
    "LinearMLP",
    "PuzzleDecoderLayer",
    "PuzzleModel",
    "PuzzleForCausalLM",
    "make_layer",
]


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


class PuzzleConfig(PreTrainedConfig):
    """A Nemotron-NAS (DeciLM) config: Llama-family dimensions plus one ``block_configs`` entry per layer.

    Build one with :meth:`from_architecture`; read the blocks back with :attr:`architecture`.
    ``qkv_bias`` (bias on q/k/v only, as in Qwen2) is an extension vLLM's loader also reads.
    """

    model_type = "nemotron-nas"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int | None = 1
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    attention_bias: bool = False
    qkv_bias: bool | None = None
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    sliding_window: int | None = None
    block_configs: list | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.block_configs is None:  # a homogeneous Llama-shaped default
            kv = self.num_key_value_heads or self.num_attention_heads
            inter = self.intermediate_size or 4 * self.hidden_size
            self.block_configs = [
                {"attention": {"n_heads_in_group": self.num_attention_heads // kv},
                 "ffn": {"intermediate_size": inter}}
            ] * self.num_hidden_layers
        self.block_configs = [_plain_block_config(b) for b in self.block_configs]
        kwargs.pop("auto_map", None)  # the published checkpoints' remote code is never used
        super().__post_init__(**kwargs)
        self.num_hidden_layers = len(self.block_configs)
        _ = self.blocks  # validate now: a bad block raises ConfigError naming it

    # ---- views ---------------------------------------------------------------------------
    @property
    def blocks(self) -> list[BlockConfig]:
        """One :class:`BlockConfig` per layer (canonical form)."""
        from ..nas import nas_blocks

        d = {"hidden_size": self.hidden_size, "num_attention_heads": self.num_attention_heads,
             "block_configs": self.block_configs}
        return nas_blocks(d, "PuzzleConfig")

    @property
    def parent_spec(self) -> ParentSpec:
        """The dimensions shared by all layers (largest KV heads / FFN width over the blocks)."""
        blocks = self.blocks
        kvs = [b.attention.num_kv_heads for b in blocks if b.attention.num_kv_heads]
        sizes = [b.ffn.intermediate_size for b in blocks if b.ffn.intermediate_size]
        rope = dict(self.rope_parameters or {})
        theta = float(rope.pop("rope_theta", 10000.0))
        scaling = rope if rope.get("rope_type", "default") != "default" else None
        return ParentSpec(
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=max(kvs) if kvs else self.num_attention_heads,
            head_dim=self.head_dim,
            intermediate_size=max(sizes) if sizes else 4 * self.hidden_size,
            vocab_size=self.vocab_size,
            num_hidden_layers=self.num_hidden_layers,
            tie_word_embeddings=bool(self.tie_word_embeddings),
            rms_norm_eps=float(self.rms_norm_eps),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(self.max_position_embeddings),
            qkv_bias=bool(self.attention_bias if self.qkv_bias is None else self.qkv_bias),
            o_bias=bool(self.attention_bias),
            mlp_bias=bool(self.mlp_bias),
            hidden_act=self.hidden_act,
            model_type="nemotron-nas",
            sliding_window=self.sliding_window,
        )

    @property
    def architecture(self) -> Architecture:
        """This config as an :class:`~puzzlekit.Architecture`."""
        return Architecture(self.parent_spec, tuple(self.blocks))

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_architecture(cls, arch: Architecture, **hf_kwargs: Any) -> PuzzleConfig:
        """The config of a child model (``hf_kwargs``: token ids, ``dtype``, … passed through)."""
        if not isinstance(arch, Architecture):
            raise ConfigError(f"from_architecture: expected an Architecture, got {type(arch).__name__}")
        p = arch.parent
        nas = nas_dict(arch)
        keep = {k: nas[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in nas}
        rope = dict(p.rope_scaling) if p.rope_scaling else {"rope_type": "default"}
        rope.setdefault("rope_type", rope.pop("type", "default"))
        rope["rope_theta"] = p.rope_theta
        kw: dict[str, Any] = dict(
            vocab_size=p.vocab_size,
            hidden_size=p.hidden_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=p.num_attention_heads,
            head_dim=p.head_dim,
            hidden_act=p.hidden_act,
            max_position_embeddings=p.max_position_embeddings,
            rms_norm_eps=p.rms_norm_eps,
            tie_word_embeddings=p.tie_word_embeddings,
            rope_parameters=rope,
            attention_bias=p.o_bias,
            qkv_bias=p.qkv_bias if p.qkv_bias != p.o_bias else None,
            mlp_bias=p.mlp_bias,
            sliding_window=p.sliding_window,
            block_configs=nas["block_configs"],
            **keep,
        )
        kw.update(hf_kwargs)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict, in the Nemotron-NAS form the serving engines read; ``auto_map`` names
        the ``configuration_decilm.py`` that :meth:`save_pretrained` writes beside it (for the engines:
        puzzlekit itself never imports it)."""
        from ..nas import AUTO_MAP

        d = super().to_dict()
        d["architectures"] = ["DeciLMForCausalLM"]
        d["model_type"] = "nemotron-nas"
        d["intermediate_size"] = None
        d["num_key_value_heads"] = None
        rope = dict(d.get("rope_parameters") or self.rope_parameters or {})
        d["rope_theta"] = rope.pop("rope_theta", 10000.0)
        d["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
        if d.get("qkv_bias") is None:
            d.pop("qkv_bias", None)
        d["auto_map"] = dict(AUTO_MAP)
        return d

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """Write ``config.json`` and, beside it, the ``configuration_decilm.py`` its ``auto_map`` names."""
        from ..export import write_decilm_module

        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_decilm_module(save_directory)
        return out


def _plain_block_config(b: Any) -> dict[str, Any]:
    """A block config entry as plain JSON (the DeciLM remote code keeps dataclasses)."""
    if isinstance(b, dict):
        return {"attention": dict(b.get("attention") or {}), "ffn": dict(b.get("ffn") or {}),
                **{k: v for k, v in b.items() if k not in ("attention", "ffn")}}
    if hasattr(b, "attention") and hasattr(b, "ffn"):
        return {"attention": dict(vars(b.attention)), "ffn": dict(vars(b.ffn))}
    raise ConfigError(f"PuzzleConfig.block_configs: each entry must be {{'attention': {{...}}, 'ffn': {{...}}}}, got {b!r}")


def nas_dict(arch: Architecture) -> dict[str, Any]:
    """``arch`` as a Nemotron-NAS dict; q/k/v-only bias (Qwen2) is written as ``qkv_bias``."""
    import dataclasses
    import warnings

    from ..nas import NonMultipleWarning

    p = arch.parent
    a = arch
    if p.qkv_bias != p.o_bias:  # the format has one flag; vLLM reads an extra 'qkv_bias'
        a = Architecture(dataclasses.replace(p, qkv_bias=p.o_bias), arch.blocks, arch.extra_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonMultipleWarning)
        d = a.to_nemotron_nas()
    if p.qkv_bias != p.o_bias:
        d["qkv_bias"] = p.qkv_bias
    return d


def _rope_config(spec: ParentSpec) -> PuzzleConfig:
    """A minimal config for ``LlamaRotaryEmbedding`` built from a parent spec."""
    return PuzzleConfig.from_architecture(Architecture(spec, (spec.parent_block(),)))


# ------------------------------------------------------------------------------------------------
# Sub-blocks
# ------------------------------------------------------------------------------------------------


class PuzzleAttention(nn.Module):
    """Grouped-query attention with ``num_kv_heads`` KV heads, RoPE and SDPA."""

    def __init__(self, spec: ParentSpec, num_kv_heads: int):
        super().__init__()
        H, nh, d = spec.hidden_size, spec.num_attention_heads, spec.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = nh, num_kv_heads, d
        self.q_proj = nn.Linear(H, nh * d, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(H, num_kv_heads * d, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(H, num_kv_heads * d, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(nh * d, H, bias=spec.o_bias)

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, cache: Cache | None = None,
                cache_idx: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)     # (B, n_h, T, d)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, d)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, cache_idx)
        # causal when no explicit mask is given (a prefill with no padding and no cache)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                           is_causal=attention_mask is None and T > 1,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class LinearAttention(nn.Module):
    """Attention replaced by one H×H matrix (DeciLM ``replace_with_linear``; no token mixing)."""

    def __init__(self, spec: ParentSpec):
        super().__init__()
        self.linear_attn = nn.Linear(spec.hidden_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.linear_attn(x)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with any intermediate size (fused wide FFNs included)."""

    def __init__(self, spec: ParentSpec, intermediate_size: int):
        super().__init__()
        H, b = spec.hidden_size, spec.mlp_bias
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(H, intermediate_size, bias=b)
        self.up_proj = nn.Linear(H, intermediate_size, bias=b)
        self.down_proj = nn.Linear(intermediate_size, H, bias=b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LinearMLP(nn.Module):
    """FFN replaced by one H×H matrix (DeciLM ``replace_with_linear``)."""

    def __init__(self, spec: ParentSpec):
        super().__init__()
        self.linear_mlp = nn.Linear(spec.hidden_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_mlp(x)


# ------------------------------------------------------------------------------------------------
# Layer
# ------------------------------------------------------------------------------------------------


class PuzzleDecoderLayer(nn.Module):
    """One layer: ``h = x + attn_delta(x); out = h + ffn_delta(h)``.

    A no-op sub-block has no module and no norm: ``self_attn`` / ``mlp`` are ``None`` and
    ``input_layernorm`` / ``post_attention_layernorm`` are ``None``.
    """

    def __init__(self, spec: ParentSpec, block: BlockConfig, layer_idx: int = 0):
        super().__init__()
        if not isinstance(block, BlockConfig):
            raise ConfigError(f"PuzzleDecoderLayer: block must be a BlockConfig, got {type(block).__name__}")
        kv = block.attention.num_kv_heads
        if kv is not None and spec.num_attention_heads % kv:
            raise ConfigError(f"layer {layer_idx}: num_kv_heads={kv} must divide "
                              f"num_attention_heads={spec.num_attention_heads}; allowed: {spec.kv_head_options}")
        self.spec, self.block, self.layer_idx = spec, block, layer_idx
        att, ffn = block.attention, block.ffn
        self.input_layernorm = None if att.no_op else LlamaRMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        self.self_attn = (None if att.no_op else LinearAttention(spec) if att.linear
                          else PuzzleAttention(spec, att.num_kv_heads))
        self.post_attention_layernorm = None if ffn.no_op else LlamaRMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        self.mlp = None if ffn.no_op else LinearMLP(spec) if ffn.linear else SwiGLU(spec, ffn.intermediate_size)

    @property
    def has_kv_cache(self) -> bool:
        """Whether this layer holds a KV cache (GQA attention only)."""
        return isinstance(self.self_attn, PuzzleAttention)

    def attn_delta(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                   attention_mask: torch.Tensor | None = None, past_key_values: Cache | None = None,
                   cache_position: torch.Tensor | None = None, *, cache_idx: int | None = None) -> torch.Tensor:
        """The attention sub-block's contribution to the residual stream, norm included.

        A no-op attention returns a 0-dim zero tensor (broadcasts in ``x + delta``; no allocation).
        ``attention_mask`` is None (causal) or a boolean / additive mask broadcastable to
        ``(B, n_h, T, T_kv)``.  ``cache_idx`` is the layer's KV-cache slot (default: ``layer_idx``;
        :class:`PuzzleModel` passes dense slots).  ``cache_position`` is accepted and unused.
        """
        if self.self_attn is None:
            return x.new_zeros(())
        h = self.input_layernorm(x)
        if isinstance(self.self_attn, LinearAttention):
            return self.self_attn(h)
        if position_embeddings is None:
            raise ConfigError(f"layer {self.layer_idx}: GQA attention needs position_embeddings (cos, sin) "
                              "from the model's rotary_emb")
        return self.self_attn(h, position_embeddings, attention_mask, past_key_values,
                              self.layer_idx if cache_idx is None else cache_idx)

    def ffn_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN sub-block's contribution to the residual stream, norm included (0-dim zero for no-op)."""
        if self.mlp is None:
            return x.new_zeros(())
        return self.mlp(self.post_attention_layernorm(x))

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, past_key_values: Cache | None = None,
                cache_position: torch.Tensor | None = None, *, cache_idx: int | None = None) -> torch.Tensor:
        h = x + self.attn_delta(x, position_embeddings, attention_mask, past_key_values, cache_idx=cache_idx)
        return h + self.ffn_delta(h)

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, block={self.block.key}"


def make_layer(spec: ParentSpec, block: BlockConfig, layer_idx: int = 0, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> PuzzleDecoderLayer:
    """A randomly initialised layer (normal(0, 0.02) weights, unit norms), like a fresh model's."""
    with torch.device(device or "cpu"):
        layer = PuzzleDecoderLayer(spec, block, layer_idx)
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return layer.to(dtype=dtype) if dtype is not None else layer


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


def causal_mask(attention_mask: torch.Tensor | None, q_len: int, past_len: int, *,
                sliding_window: int | None = None, device: torch.device | None = None) -> torch.Tensor | None:
    """The boolean SDPA mask ``(B|1, 1, q_len, past_len + q_len)`` (True = attend), or None when
    plain causal attention (or, for one query, none) is exact.

    ``attention_mask`` is the 2-D padding mask (1 = token) over past and new tokens, or a ready
    4-D mask returned unchanged.  A query that may attend to nothing (padding) attends to itself,
    so SDPA never produces NaN.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask
    kv_len = past_len + q_len
    padded = attention_mask is not None and not bool(attention_mask.all())
    windowed = sliding_window is not None and kv_len > sliding_window
    if not padded and not windowed and (past_len == 0 or q_len == 1):
        return None
    q_pos = torch.arange(past_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask = mask & (q_pos - k_pos < sliding_window)
    mask = mask[None, None]
    if padded:
        mask = mask & attention_mask[:, None, None, -kv_len:].bool()
        mask = mask | (k_pos == q_pos)[None, None]
    return mask


class PuzzlePreTrainedModel(PreTrainedModel):
    """Shared Hugging Face plumbing (weights init, config class, capabilities)."""

    config_class = PuzzleConfig
    config: PuzzleConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["PuzzleDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = False


class PuzzleModel(PuzzlePreTrainedModel):
    """Embeddings, the heterogeneous layers, the final norm and the rotary embedding."""

    def __init__(self, config: PuzzleConfig):
        super().__init__(config)
        spec = config.parent_spec
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(PuzzleDecoderLayer(spec, b, i) for i, b in enumerate(config.blocks))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                output_hidden_states: bool | None = None, cache: Cache | None = None,
                **kwargs: Any) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("PuzzleModel.forward: pass exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        T = x.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device)[None]
        mask = causal_mask(attention_mask, T, past, sliding_window=self.config.sliding_window, device=x.device)
        pe = self.rotary_emb(x, position_ids)
        hidden = [x] if output_hidden_states else None
        slot = 0  # dense KV-cache slot: the k-th GQA layer uses cache layer k
        for layer in self.layers:
            x, pe, mask = follow(device_of(layer), x, pe, mask)  # placed over devices: cross a boundary
            x = layer(x, pe, mask, cache, cache_idx=slot)
            slot += layer.has_kv_cache
            if hidden is not None:
                hidden.append(x)
        x = self.norm(follow(device_of(self.norm), x)[0])
        if hidden is not None:
            hidden[-1] = x  # transformers' convention: the last hidden state is after the final norm
        return BaseModelOutputWithPast(last_hidden_state=x, cache=cache if use_cache else None,
                                       hidden_states=tuple(hidden) if hidden is not None else None)


class PuzzleForCausalLM(PuzzlePreTrainedModel, GenerationMixin):
    """A heterogeneous Llama-family causal LM (Nemotron-NAS / DeciLM compatible).

    ``model.model.layers[i]`` is a :class:`PuzzleDecoderLayer`; ``generate()`` works with a
    KV cache for the GQA layers only.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: PuzzleConfig):
        super().__init__(config)
        self.model = PuzzleModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_architecture(cls, arch: Architecture, **hf_kwargs: Any) -> PuzzleForCausalLM:
        """A randomly initialised model of ``arch`` (``hf_kwargs`` go to :class:`PuzzleConfig`)."""
        return cls(PuzzleConfig.from_architecture(arch, **hf_kwargs))

    @property
    def architecture(self) -> Architecture:
        """The current layers' blocks as an :class:`~puzzlekit.Architecture` (follows swapped layers)."""
        return Architecture(self.config.parent_spec, tuple(layer.block for layer in self.model.layers))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_hidden_states: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, cache: Cache | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits (and the LM loss with ``labels``, shifted inside), the cache, the hidden states.

        ``cache`` is transformers 5's name for ``past_key_values``; either works.
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, cache=cache, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, output_hidden_states=output_hidden_states)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep]
        logits = self.lm_head(follow(device_of(self.lm_head), h)[0])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states)


def num_params(model: nn.Module) -> int:
    """Parameters of a model (tied tensors counted once; works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(spec: ParentSpec, block: BlockConfig, context: int) -> float:
    """Forward FLOPs of one layer for one token at ``context`` tokens of context (see module doc)."""
    H, nh, d = spec.hidden_size, spec.num_attention_heads, spec.head_dim
    att, ffn = block.attention, block.ffn
    f = 0.0
    if att.kind == "gqa":
        f += 2 * (2 * H * nh * d + 2 * H * att.num_kv_heads * d) + 4 * nh * d * context
    elif att.linear:
        f += 2 * H * H
    if ffn.kind == "swiglu":
        f += 6 * H * ffn.intermediate_size
    elif ffn.linear:
        f += 2 * H * H
    return f


AutoConfig.register(PuzzleConfig.model_type, PuzzleConfig, exist_ok=True)
AutoModelForCausalLM.register(PuzzleConfig, PuzzleForCausalLM, exist_ok=True)

