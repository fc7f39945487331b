"""Healing under PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``): sharded child and parent,
mixed precision, activation checkpointing, sharded ``torch.distributed.checkpoint`` checkpoints.

:func:`~puzzlekit.distill.distill` takes this path with ``DistillConfig(fsdp=True)``, launched with
``torchrun`` (any number of processes, one per GPU; on CPU each process uses gloo)::

    torchrun --nproc_per_node 8 examples/gkd/recipe.py --config my.yaml fsdp=true

* **Child**: each decoder layer is its own FSDP unit, and so are the embedding and the LM head when
  they are not tied (the root keeps the final norm): a process holds ``1/world`` of every tensor, and
  a layer's full weights only while it runs.  Its parameters, gradients and AdamW state stay fp32.
* **Parent**: frozen and sharded the same way, so a parent larger than one device's memory works
  (each process holds ``1/world`` of it); its root is re-sharded after every forward.
* **Mixed precision**: ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` on a
  bf16-capable GPU (``mixed_precision="auto"``), none on CPU.
* **Activation checkpointing** (``activation_checkpointing=True``): each decoder layer's forward is
  recomputed in backward (``torch.utils.checkpoint``, non-reentrant); only the layer inputs are kept.
* **Checkpoints**: every process writes its own shards of the model and the AdamW state with
  ``torch.distributed.checkpoint`` (nothing is gathered on one rank); any number of processes reads
  them back (DCP re-shards).  Only tensors are stored; the optimizer's hyper-parameters go into
  ``state.json`` and DCP's metadata is written as JSON, so resuming unpickles nothing.
* **The final child**: :func:`full_model` gathers it once, at the end, as an ordinary model on rank 0
  (CPU), for :func:`puzzlekit.model.save_model`.

:func:`load_sharded` builds a model from a Hugging Face / Nemotron-NAS folder straight into its
shards: each process reads only its slices of the safetensors files, so no process ever holds a whole
70B parent.  Models must be ``*ForCausalLM`` models with their decoder layers in ``model.model.layers``
(Llama-family transformers models and :class:`~puzzlekit.model.PuzzleForCausalLM`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, UnsafeInputError
from .checkpoint import DCP_DIR, dcp_reader, dcp_writer

__all__ = ["FSDPBackend", "ensure_process_group", "shard_model", "load_sharded", "full_model",
           "enable_activation_checkpointing", "decoder_layers", "local_parameter_count", "is_sharded"]

logger = logging.getLogger(__name__)
_VIEW_WARNING = r"FSDP2-wrapped module .* returned a view tensor"


# ---- process group, device, mesh ----------------------------------------------------------------

def ensure_process_group() -> bool:
    """Join the launcher's process group (``torchrun`` sets ``WORLD_SIZE``), or make a one-process
    group when not launched (FSDP needs a group even for one process).  Returns True when it created
    one (then torn down at exit)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    cuda = torch.cuda.is_available()
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    atexit.register(_teardown)
    return True


def _teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


_MESHES: dict[tuple[str, int], Any] = {}


def _mesh(device: torch.device) -> Any:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    key = (device.type, dist.get_world_size())
    if key not in _MESHES:
        _MESHES[key] = init_device_mesh(device.type, (key[1],))
    return _MESHES[key]


def mixed_precision_policy(requested: str, device: torch.device) -> tuple[Any, str]:
    """The ``MixedPrecisionPolicy`` for ``DistillConfig.mixed_precision`` and what it resolved to."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    mp = requested
    if mp == "auto":
        mp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if mp == "fp16":
        raise ConfigError("DistillConfig(fsdp=True, mixed_precision='fp16'): fp16 needs loss scaling, which the "
                          "FSDP path does not do; use 'bf16' (or 'auto')")
    if mp == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32), mp
    return MixedPrecisionPolicy(), mp


# ---- sharding -------------------------------------------------------------------------------------

def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a ``*ForCausalLM`` model (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return list(layers)
    raise ConfigError(f"{type(model).__name__}: no decoder layers at model.model.layers; the FSDP path and "
                      "activation checkpointing take a Llama-family *ForCausalLM or a PuzzleForCausalLM")


def is_sharded(model: Any) -> bool:
    """Whether ``model`` has been through ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _tied(model: nn.Module) -> bool:
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    return head is not None and emb is not None and head.weight is emb.weight


def shard_model(model: nn.Module, mesh: Any, mp_policy: Any = None, *, frozen: bool = False) -> nn.Module:
    """``fully_shard`` ``model`` in place: each decoder layer, the embedding and the LM head (when
    untied) are FSDP units, the root holds the rest.  ``frozen``: no gradients (the parent)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_sharded(model):
        return model
    if frozen:
        model.eval().requires_grad_(False)
    kw = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy(), "reshard_after_forward": True}
    for layer in decoder_layers(model):
        if next(layer.parameters(), None) is not None:  # a layer with both sub-blocks removed has none
            fully_shard(layer, **kw)
    if not _tied(model):
        fully_shard(model.get_input_embeddings(), **kw)
        if model.get_output_embeddings() is not None:
            fully_shard(model.get_output_embeddings(), **kw)
    fully_shard(model, **kw)
    return model


@contextlib.contextmanager
def quiet_view_warning() -> Any:
    """Silence FSDP2's warning that a sharded model returned a view (the GKD loss never changes a
    model output in place, which is what the warning is about)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_VIEW_WARNING)
        yield


def reshard(model: Any) -> None:
    """Free the gathered weights an FSDP root keeps after a forward that has no backward."""
    if is_sharded(model):
        model.reshard()


def local_parameter_count(model: nn.Module) -> tuple[int, int]:
    """``(elements this process holds, elements of the whole model)`` over the model's parameters."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return local, total


def enable_activation_checkpointing(model: nn.Module) -> Callable[[], None]:
    """Recompute each decoder layer's forward in backward (non-reentrant ``torch.utils.checkpoint``;
    the layer's input is kept, its intermediate activations are not).  Works with and without FSDP
    (apply before sharding).  Returns a function that undoes it."""
    from torch.utils.checkpoint import checkpoint

    layers = [m for m in decoder_layers(model) if "forward" not in m.__dict__]
    for layer in layers:
        orig = layer.forward

        def fwd(*args: Any, _orig: Callable = orig, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_orig, *args, use_reentrant=False, **kwargs)
            return _orig(*args, **kwargs)

        layer.forward = fwd

    def undo() -> None:
        for layer in layers:
            layer.__dict__.pop("forward", None)
    return undo


# ---- loading into shards, gathering at the end ----------------------------------------------------

def _puzzle_config(folder: Path) -> Any:
    from ..architecture import load_config_dict
    from ..model import PuzzleConfig
    from ..model.parent import puzzle_config_from_hf

    d = load_config_dict(folder)
    if d.get("model_type") in ("nemotron-nas", "deci", "puzzle"):
        raw = {k: v for k, v in d.items() if k not in ("model_type", "architectures", "transformers_version")}
        return PuzzleConfig(**raw)
    return puzzle_config_from_hf(d)


def load_sharded(folder: str | os.PathLike, *, frozen: bool = False, dtype: torch.dtype | None = None,
                 mixed_precision: str = "auto", activation_checkpointing: bool = False,
                 device: torch.device | None = None) -> nn.Module:
    """A :class:`~puzzlekit.model.PuzzleForCausalLM` from a Hugging Face (Llama, Qwen2, Mistral) or
    Nemotron-NAS folder, built on the meta device, sharded with :func:`shard_model`, then filled
    from the safetensors files: each process reads only its own slices (DCP's
    ``HuggingFaceStorageReader``).  Collective: every process calls it.

    ``frozen``: for the parent (no gradients).  ``dtype``: the parameters' dtype (default the
    model's fp32; ``torch.bfloat16`` for a frozen parent halves its memory).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from ..model.parent import checkpoint_files, empty_model

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; load_sharded takes a Hugging Face / Nemotron-NAS model folder")
    checkpoint_files(folder)  # refuses pickle-only folders with the usual message
    ensure_process_group()
    device = device or default_device()
    mp, _ = mixed_precision_policy(mixed_precision, device)
    model = empty_model(_puzzle_config(folder))  # parameters on meta, RoPE buffers real
    if dtype is not None:
        for m in model.modules():
            for n, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[n] = nn.Parameter(p.to(dtype), requires_grad=p.requires_grad)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    shard_model(model, _mesh(device), mp, frozen=frozen)
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    sd = get_model_state_dict(model)
    if _tied(model):
        sd.pop("lm_head.weight", None)
    dcp.load(sd, storage_reader=HuggingFaceStorageReader(str(folder)))
    set_model_state_dict(model, sd)
    return model.eval() if frozen else model


def full_model(model: nn.Module) -> nn.Module | None:
    """The whole model, gathered once: an ordinary (unsharded) copy on CPU on rank 0, None on the
    other ranks; ``model`` itself when it is not sharded.  Collective: every process calls it.
    Save it with :func:`puzzlekit.model.save_model` (a Nemotron-NAS folder of safetensors)."""
    import torch.distributed as dist
    from accelerate import init_empty_weights
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if not is_sharded(model):
        return model
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with init_empty_weights(include_buffers=False):
        plain = cls(model.config)
    if _tied(model):
        sd.pop("lm_head.weight", None)
    plain.load_state_dict(sd, assign=True, strict=not _tied(model))
    if _tied(model):
        plain.get_output_embeddings().weight = plain.get_input_embeddings().weight
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise ConfigError(f"full_model: {len(missing)} parameters were not gathered (e.g. {missing[0]!r})")
    return plain.eval()


# ---- sharded checkpoints --------------------------------------------------------------------------

def _jsonable_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]


def _groups_from_json(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups]


def _tensor_planner(path: Path) -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class _Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            raise UnsafeInputError(f"{path}: {read_item.dest_index.fqn} is stored as a pickled object, not a "
                                   "tensor; refused. Delete this checkpoint folder to resume from the previous one")

    return _Planner()


def save_dcp(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Write this process's shards of the model and optimizer state under ``path`` (collective);
    returns the optimizer's param groups (hyper-parameters) for ``state.json``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": {"state": osd["state"]}}, storage_writer=dcp_writer(path))
    return _jsonable_groups(osd["param_groups"])


def load_dcp(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Read the model and optimizer state of a :func:`save_dcp` folder into this process's shards
    (collective; the writing run may have had another number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optim": {"state": osd["state"]}}
    dcp.load(sd, storage_reader=dcp_reader(path), planner=_tensor_planner(path))
    set_state_dict(model, optimizer, model_state_dict=sd["model"],
                   optim_state_dict={"state": sd["optim"]["state"], "param_groups": _groups_from_json(groups)})


# ---- the backend distill() runs on ------------------------------------------------------------------

class FSDPBackend:
    """What :func:`~puzzlekit.distill.distill` needs from FSDP2 (the other backend is accelerate)."""

    kind = "dcp"

    def __init__(self, mixed_precision: str, accelerator: Any = None) -> None:
        import torch.distributed as dist

        ensure_process_group()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.device = accelerator.device if accelerator is not None else default_device()
        self.mesh = _mesh(self.device)
        self.mp_policy, self.mixed_precision = mixed_precision_policy(mixed_precision, self.device)

    def setup(self, child: nn.Module, parent: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
        shard_model(child, self.mesh, self.mp_policy)
        if parent is not None:
            shard_model(parent, self.mesh, self.mp_policy, frozen=True)
        local, total = local_parameter_count(child)
        logger.info("FSDP: %d processes, child %d of %d parameters on rank %d, mixed precision %s",
                    self.world, local, total, self.rank, self.mixed_precision)
        return child, parent

    def prepare(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        return model, optimizer

    def micro_step(self, model: nn.Module, sync: bool) -> Any:
        return contextlib.nullcontext()  # gradients are reduce-scattered every micro-step (no unsharded copies)

    def autocast(self) -> Any:
        return contextlib.nullcontext()  # the MixedPrecisionPolicy casts the gathered weights

    def forward(self) -> Any:
        return quiet_view_warning()

    def after_parent_forward(self, parent: nn.Module) -> None:
        reshard(parent)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self, model: nn.Module, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.world > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def write(self, tmp: Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
        return {"optimizer_param_groups": save_dcp(tmp / DCP_DIR, model, optimizer)}

    def load(self, ckpt: Path, model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
        groups = state.get("optimizer_param_groups")
        if not isinstance(groups, list):
            raise ConfigError(f"{ckpt / 'state.json'}: no optimizer_param_groups; not a checkpoint of this "
                              "FSDP loop. Delete it to resume from the previous one")
        load_dcp(ckpt / DCP_DIR, model, optimizer, groups)
