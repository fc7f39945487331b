"""Process-group plumbing shared by the stages that shard work over processes (BLD, scoring).

Under ``accelerate launch`` / torchrun the environment carries ``WORLD_SIZE`` and ``RANK``; a stage
calls :func:`setup` (which joins a gloo group when there are several processes and none is set up
yet) and :func:`barrier` between its phases.  A group :func:`setup` created is torn down at exit
(:func:`teardown`, registered with ``atexit``): left to interpreter shutdown, gloo can abort with
"terminate called without an active exception".
"""

from __future__ import annotations

import atexit
import os

__all__ = ["setup", "barrier", "teardown"]


def setup() -> tuple[int, int]:
    """``(rank, world_size)`` from the launcher's environment; joins a gloo group when ``world_size > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
            atexit.register(teardown)
    return rank, world


def barrier(world: int) -> None:
    """Wait for every process (no-op for one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def teardown() -> None:
    """Destroy the default process group if one is up."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
