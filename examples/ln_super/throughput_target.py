"""LN-Super's target as NVIDIA states it, on NVIDIA's Llama-3.3-70B block library: throughput at the batch that
fits one H100 (FP8, >= 300K cached tokens), searched exactly over batch x architecture; the published Super-49B
against our front; LN-Ultra's latency at TP 8 with and without FFN fusion.  No GPU, no weights (~1 min on 2 cores):

    python examples/ln_super/throughput_target.py [--library DIR] [--out runs/ln_throughput] [--plot F.png]

Library side: puzzlekit.search.ln_targets (ln_super_report, ln_ultra_report, plot_super_front).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from puzzlekit.io import atomic_write_json
from puzzlekit.search.ln_targets import (
    ln_super_report,
    ln_ultra_report,
    plot_super_front,
    super_markdown,
    ultra_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
#: beside the repository (or beside the folder holding its worktrees)
LIBRARY = next((p for p in (ROOT.parent / "shared/data/puzzle-llama-3.3-70b-block-library",
                            ROOT.parent.parent / "shared/data/puzzle-llama-3.3-70b-block-library")
                if (p / "block_library.json").exists()), ROOT.parent / "shared/data/puzzle-llama-3.3-70b-block-library")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", default=str(LIBRARY), help="NVIDIA's Llama-3.3-70B block library (folder)")
    ap.add_argument("--hardware", default="calibrated",
                    help="'calibrated' (the H100 roofline fitted to the library's measured runtimes), h100-sxm, or a JSON profile")
    ap.add_argument("--out", default="runs/ln_throughput", help="report.json, report.md and the plot go here")
    ap.add_argument("--plot", help="the plot's path (default OUT/ln_super_front.png)")
    ap.add_argument("--no-front", action="store_true", help="skip the front over batch sizes (and the plot)")
    a = ap.parse_args(argv)
    levels = () if a.no_front else tuple(x / 4 for x in range(4, 25))  # 1x, 1.25x, ..., 6x
    sup = ln_super_report(a.library, hardware=a.hardware, front_levels=levels,
                          front_batches=() if a.no_front else (128, 192, 256, 384, 512, 1024))
    ultra = ln_ultra_report()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = "## LN-Super\n\n" + super_markdown(sup) + "\n\n## LN-Ultra\n\n" + ultra_markdown(ultra) + "\n"
    atomic_write_json(out / "report.json", {"ln_super": sup, "ln_ultra": ultra}, indent=1)
    (out / "report.md").write_text(md)
    if levels:
        plot_super_front(sup, a.plot or out / "ln_super_front.png")
    print(md)
    return {"ln_super": sup, "ln_ultra": ultra}


if __name__ == "__main__":
    main()
