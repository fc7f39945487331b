"""Subprocess entry for the BLD kill/resume and distributed tests (not a test module)."""

from __future__ import annotations

import sys

import torch


def main() -> None:
    run_dir, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    from test_bld import make_data, make_parent, small_space

    from puzzlekit.bld import BLDConfig, run_bld

    parent = make_parent()
    data = make_data()
    cfg = BLDConfig(mode=mode, tokens=16 * 4 * 24, batch_size=4, lr=2e-3, checkpoint_every=2, eval_sequences=4,
                    hybrid_keep=2)
    run_bld(parent, data, run_dir, small_space(parent), cfg, progress=False)


if __name__ == "__main__":
    main()
