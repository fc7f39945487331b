"""The FFN Fusion pass on a ``PuzzleForCausalLM``: find what to fuse, fuse it exactly, check it.

``plan = find_fusable(model, data)`` measures the dependency matrix of every
FFN run on calibration data and chooses groups (:func:`make_plan`);
``fused, changes = fuse_ffns(model, plan)`` replaces each group with one wide
SwiGLU FFN.  For a group of FFNs ``f_k(x) = down_k(silu(gate_k(n_k(x))) * up_k(n_k(x)))``
with RMSNorms ``n_k(x) = g_k ⊙ x / rms(x)`` (same ``eps``), the wide FFN is::

    gate = [gate_1 · diag(g_1); …; gate_n · diag(g_n)]     (stacked along the intermediate dim)
    up   = [up_1   · diag(g_1); …; up_n   · diag(g_n)]
    down = [down_1, …, down_n]                              (concatenated along its input dim)
    norm weight = 1

so ``fused(x) = Σ_k f_k(x)`` exactly: the semantic change (every FFN of the
group reads the group's input instead of its predecessor's output) is the
approximation; the rewrite itself is exact.  As in Llama-Nemotron Ultra-253B
the layer count is kept: the wide FFN sits in the group's last layer (whose
attention is a no-op) and the other layers of the group lose their FFN.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from ..blocks import AttentionConfig, BlockConfig, FFNConfig
from ..errors import ConfigError
from .dependency import DependencyReport, dependency_matrix
from .plan import FusionPlan, fused_architecture, make_plan

__all__ = ["find_fusable", "fuse_ffns", "FusionResult", "FusedGroup", "WideSwiGLU", "enable_triton_swiglu",
           "POSTCONDITION_TOL"]

#: Largest relative error ``‖fused(x) - Σ f_k(x)‖ / ‖Σ f_k(x)‖`` accepted, per weight dtype.
POSTCONDITION_TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@dataclass
class FusedGroup:
    """What one group became: its layers, the layer holding the wide FFN, its width and the check."""

    layers: tuple[int, ...]
    target_layer: int
    intermediate_sizes: tuple[int, ...]
    intermediate_size: int
    rel_error: float
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "target_layer": self.target_layer,
                "intermediate_sizes": list(self.intermediate_sizes), "intermediate_size": self.intermediate_size,
                "rel_error": self.rel_error, "tolerance": self.tolerance}


class FusionResult(NamedTuple):
    """``(model, changes)``: the fused model and one :class:`FusedGroup` per fused group."""

    model: Any
    changes: list[FusedGroup]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass
class _Parts:
    gate: list[torch.Tensor] = field(default_factory=list)
    up: list[torch.Tensor] = field(default_factory=list)
    down: list[torch.Tensor] = field(default_factory=list)
    gate_b: list[torch.Tensor] = field(default_factory=list)
    up_b: list[torch.Tensor] = field(default_factory=list)
    down_b: list[torch.Tensor] = field(default_factory=list)


class WideSwiGLU(nn.Module):
    """A SwiGLU FFN (same parameter names as the model's) that runs the Triton kernel on CUDA.

    ``down(silu(gate(x)) * up(x))``: on a CUDA device with Triton, the gate/up
    products, SiLU and multiply run as one kernel (:mod:`~puzzlekit.fusion.triton_swiglu`);
    elsewhere, or under autograd, plain torch.  State dicts are interchangeable with
    the model's own SwiGLU, so a saved fused model reloads without this class.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.intermediate_size = intermediate_size
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias, **kw)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias, **kw)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias, **kw)
        self.use_triton: bool | None = None  # None: automatic (CUDA only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and self.gate_proj.bias is None and self.use_triton is not False:
            from .triton_swiglu import wide_swiglu

            return wide_swiglu(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight,
                               use_triton=self.use_triton)
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def enable_triton_swiglu(model: Any, min_intermediate_size: int = 0) -> int:
    """Swap every SwiGLU FFN at least ``min_intermediate_size`` wide for a :class:`WideSwiGLU`
    (weights shared, not copied), e.g. after reloading a saved fused model; returns how many."""
    n = 0
    for layer in model.model.layers:
        mlp = getattr(layer, "mlp", None)
        if mlp is None or isinstance(mlp, WideSwiGLU) or not hasattr(mlp, "gate_proj"):
            continue
        if mlp.gate_proj.out_features < min_intermediate_size:
            continue
        w = WideSwiGLU.__new__(WideSwiGLU)
        nn.Module.__init__(w)
        w.intermediate_size = mlp.gate_proj.out_features
        w.gate_proj, w.up_proj, w.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        w.use_triton = None
        layer.mlp = w
        n += 1
    return n


def find_fusable(model: Any, data: Any = None, *, threshold: float | None = None, target_steps: int | None = None,
                 leave_last: bool = False, max_group: int | None = None, max_tokens: int | None = 4096,
                 dependency: DependencyReport | None = None) -> FusionPlan:
    """Choose FFN groups to fuse in ``model`` (or an Architecture, without data).

    With calibration ``data`` (token ids) the dependency matrix of every run is
    measured and groups are merged greedily while their worst pairwise dependency
    stays ≤ ``threshold`` or until the runs take ``target_steps`` sequential FFN
    steps.  Without data or a threshold / target, whole runs are fused.  The
    measured matrices are kept in ``plan.meta["dependency"]``.
    """
    if dependency is None and data is not None:
        dependency = dependency_matrix(model, data, max_tokens=max_tokens)
    plan = make_plan(model, dependency, threshold=threshold, target_steps=target_steps, leave_last=leave_last,
                     max_group=max_group)
    if dependency is not None:
        plan.meta["dependency"] = dependency.to_dict()
    return plan


def _check_group(layers: nn.ModuleList, g: tuple[int, ...]) -> tuple[int, float, torch.dtype, torch.device, bool]:
    """Preconditions of one group; returns (hidden, eps, dtype, device, bias)."""
    hidden = eps = dtype = device = bias = None
    for pos, i in enumerate(g):
        layer = layers[i]
        mlp, norm = getattr(layer, "mlp", None), getattr(layer, "post_attention_layernorm", None)
        if mlp is None or norm is None or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            raise ConfigError(f"layer {i}: fusion needs a SwiGLU FFN with its RMSNorm; this layer has "
                              f"{type(mlp).__name__ if mlp is not None else 'no FFN'}")
        if pos > 0 and getattr(layer, "self_attn", None) is not None:
            raise ConfigError(f"layer {i}: has attention inside the group {list(g)}; only attention-free FFNs fuse")
        gw, uw, dw = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
        h = gw.shape[1]
        if uw.shape != gw.shape or dw.shape != (h, gw.shape[0]):
            raise ConfigError(f"layer {i}: SwiGLU shapes disagree: gate {tuple(gw.shape)}, up {tuple(uw.shape)}, "
                              f"down {tuple(dw.shape)}; expected (I, H), (I, H), (H, I)")
        w = getattr(norm, "weight", None)
        e = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        if w is None or w.shape != (h,) or e is None or getattr(norm, "bias", None) is not None:
            raise ConfigError(f"layer {i}: post_attention_layernorm must be an RMSNorm with a ({h},) weight and no "
                              f"bias to fold into the gate/up columns; got {type(norm).__name__}")
        b = mlp.gate_proj.bias is not None
        if hidden is None:
            hidden, eps, dtype, device, bias = h, float(e), gw.dtype, gw.device, b
        elif h != hidden:
            raise ConfigError(f"layer {i}: hidden size {h} differs from layer {g[0]}'s {hidden}")
        elif float(e) != eps:
            raise ConfigError(f"layer {i}: RMSNorm eps {float(e)} differs from layer {g[0]}'s {eps}; the norms "
                              "must agree for the shared normalisation to be exact")
        elif gw.dtype != dtype or gw.device != device:
            raise ConfigError(f"layer {i}: weights are {gw.dtype} on {gw.device}, layer {g[0]}'s {dtype} on {device}; "
                              "cast the model to one dtype and device first")
        elif b != bias:
            raise ConfigError(f"layer {i}: FFN bias presence differs from layer {g[0]}'s")
    return hidden, eps, dtype, device, bias


@torch.no_grad()
def _fuse_group(layers: nn.ModuleList, g: tuple[int, ...], check_inputs: torch.Tensor | None,
                tol: float | None) -> FusedGroup:
    hidden, eps, dtype, device, bias = _check_group(layers, g)
    parts = _Parts()
    sizes = []
    for i in g:
        layer = layers[i]
        mlp, gvec = layer.mlp, layer.post_attention_layernorm.weight.double()
        # fold the norm weight into the gate/up columns, in float64, then round once
        parts.gate.append(mlp.gate_proj.weight.double() * gvec[None, :])
        parts.up.append(mlp.up_proj.weight.double() * gvec[None, :])
        parts.down.append(mlp.down_proj.weight.double())
        if bias:
            parts.gate_b.append(mlp.gate_proj.bias.double())
            parts.up_b.append(mlp.up_proj.bias.double())
            parts.down_b.append(mlp.down_proj.bias.double())
        sizes.append(mlp.gate_proj.weight.shape[0])
    total = sum(sizes)
    target = g[-1]
    old = [layers[i] for i in g]
    spec = getattr(old[-1], "spec", None)
    wide = WideSwiGLU(hidden, total, bias=bias, dtype=dtype, device=device)
    wide.gate_proj.weight.copy_(torch.cat(parts.gate, 0))
    wide.up_proj.weight.copy_(torch.cat(parts.up, 0))
    wide.down_proj.weight.copy_(torch.cat(parts.down, 1))
    if bias:
        wide.gate_proj.bias.copy_(torch.cat(parts.gate_b))
        wide.up_proj.bias.copy_(torch.cat(parts.up_b))
        wide.down_proj.bias.copy_(torch.stack(parts.down_b).sum(0))

    # the postcondition, in float32 at least: fused(x) == Σ_k f_k(x) on a shared input
    if check_inputs is None:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(64, hidden, generator=gen)
    else:
        x = check_inputs.reshape(-1, check_inputs.shape[-1])
        if x.shape[-1] != hidden:
            raise ConfigError(f"check_inputs: last dimension {x.shape[-1]} must be the hidden size {hidden}")
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = x.to(device=device, dtype=cdt)
    ref = sum(copy.deepcopy(layer).to(cdt).ffn_delta(x) for layer in old)
    norm = copy.deepcopy(old[-1].post_attention_layernorm).to(cdt)
    norm.weight.fill_(1.0)
    wide_c = copy.deepcopy(wide).to(cdt)
    wide_c.use_triton = False
    got = wide_c(norm(x))
    rel = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
    limit = tol if tol is not None else POSTCONDITION_TOL.get(dtype, 1e-5)
    if not rel <= limit:
        raise ConfigError(f"fusion of layers {list(g)} failed its postcondition: relative error {rel:.3e} > {limit:.1e} "
                          "between the wide FFN and the sum of the original FFNs; the layers are left unchanged")

    # rewrite: earlier layers lose their FFN, the last holds the wide one with a unit norm
    from ..model import PuzzleDecoderLayer

    for i in g[:-1]:
        layer = layers[i]
        blk = BlockConfig(layer.block.attention, FFNConfig.make_no_op())
        new = PuzzleDecoderLayer(layer.spec, blk, layer.layer_idx).to(device=device, dtype=dtype)
        keep = {k: v for k, v in layer.state_dict().items()
                if not k.startswith(("mlp.", "post_attention_layernorm."))}
        new.load_state_dict(keep, strict=True)
        new.train(layer.training)
        layers[i] = new
    blk = BlockConfig(AttentionConfig.make_no_op(), FFNConfig.swiglu(total))
    with torch.device("meta"):
        new = PuzzleDecoderLayer(spec, blk, old[-1].layer_idx)
    new.post_attention_layernorm = copy.deepcopy(old[-1].post_attention_layernorm)
    new.post_attention_layernorm.weight.fill_(1.0)
    new.mlp = wide
    new.train(old[-1].training)
    layers[target] = new
    return FusedGroup(tuple(g), target, tuple(sizes), total, rel, limit)


def fuse_ffns(model: Any, plan: FusionPlan | list, *, inplace: bool = False,
              check_inputs: torch.Tensor | None = None, tol: float | None = None) -> FusionResult:
    """Fuse each group of ``plan`` into one wide SwiGLU FFN; return ``(model, changes)``.

    Copies the model unless ``inplace=True``.  Preconditions (raised as
    :class:`ConfigError` before anything changes): the plan fits the model's FFN
    runs, every FFN is a SwiGLU with an RMSNorm of the same ``eps``, shapes,
    dtypes and devices agree, no attention inside a group.  Postcondition, per
    group: ``‖fused(x) - Σ_k f_k(x)‖ / ‖Σ_k f_k(x)‖ ≤ tol`` on a shared input
    (``check_inputs``, default 64 random vectors), computed in fp32 (default
    ``tol``: 1e-5 for fp32 weights, looser for 16-bit weights, see
    :data:`POSTCONDITION_TOL`).  The model's config follows, so
    ``save_pretrained`` writes the fused Nemotron-NAS config (large ``ffn_mult``).
    """
    if isinstance(plan, list):
        plan = FusionPlan(plan)
    if not isinstance(plan, FusionPlan):
        raise ConfigError(f"fuse_ffns: plan must be a FusionPlan or a list of layer groups, got {type(plan).__name__}")
    layers_attr = getattr(getattr(model, "model", None), "layers", None)
    if layers_attr is None or not hasattr(model, "config"):
        raise ConfigError(f"fuse_ffns: expected a PuzzleForCausalLM, got {type(model).__name__}; "
                          "load one with puzzlekit.model.load_parent")
    arch = model.architecture
    new_arch = fused_architecture(arch, plan)  # validates the plan against the runs
    for g in plan.groups:  # all preconditions before any change
        _check_group(layers_attr, g)
    if not plan.groups:
        return FusionResult(model, [])
    out = model if inplace else copy.deepcopy(model)
    layers = out.model.layers
    changes = [_fuse_group(layers, tuple(g), check_inputs, tol) for g in plan.groups]
    if out.architecture.blocks != new_arch.blocks:  # pragma: no cover - internal consistency
        raise ConfigError("fuse_ffns: the rewritten layers do not match the fused architecture")
    from ..model import PuzzleConfig

    out.config.block_configs = PuzzleConfig.from_architecture(new_arch).block_configs
    return FusionResult(out, changes)

