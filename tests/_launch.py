"""Launching test workers as several local processes (not a test module)."""

from __future__ import annotations

import socket
import sys


def torchrun(nproc: int = 2) -> list[str]:
    """torchrun's command prefix for ``nproc`` local processes.  ``--standalone``: its c10d rendezvous binds a
    free port itself (a port picked here and released could be taken by a concurrent test before torchrun
    binds it)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def free_port() -> int:
    """A free local port, for forked ranks that set ``MASTER_PORT`` themselves."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
