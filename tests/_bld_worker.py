"""Subprocess entry for the BLD kill/resume test: one BLD run in a fresh interpreter (not a test module)."""

from __future__ import annotations

import sys

import torch


def main() -> None:
    run_dir, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    from test_bld import worker_setup

    from puzzlekit.bld import run_bld

    parent, data, space, cfg = worker_setup(mode)
    run_bld(parent, data, run_dir, space, cfg, progress=False)


if __name__ == "__main__":
    main()
