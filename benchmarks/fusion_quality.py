"""Quality of FFN Fusion on a small trained model: KL to the unfused model, dependency-chosen vs random.

Trains a model with two long attention-free FFN runs on a structured synthetic
language (a random Markov chain; order 2 needs attention to predict) for a
few minutes on CPU, measures the dependency matrix on calibration sequences,
then for several budgets (sequential FFN steps saved) fuses

* the groups :func:`make_plan` picks from the dependency matrix, and
* ``--draws`` random plans saving the same number of steps (same runs),

and reports the mean per-token KL(unfused ‖ fused) on held-out sequences, plus
the whole-run plans with and without leaving each run's last FFN unfused.

    python benchmarks/fusion_quality.py            # ~2-4 min on 2 busy cores
    python benchmarks/fusion_quality.py --json --steps 400
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from puzzlekit import Architecture, AttentionConfig, BlockConfig, FFNConfig, ParentSpec
from puzzlekit.fusion import dependency_matrix, find_ffn_runs, make_plan
from puzzlekit.fusion.quality import markov_data, plan_kl, random_plan, train_toy_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pattern", default="AFFFFFFAFFFFFF", help="A = attention + FFN, F = FFN only")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--order", type=int, default=1, choices=[1, 2], help="Markov order (2 needs attention and much longer training)")
    ap.add_argument("--steps", type=int, default=150, help="training steps")
    ap.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    ap.add_argument("--draws", type=int, default=8, help="random plans per budget")
    ap.add_argument("--budgets", default="2,4,6,8,10", help="sequential FFN steps saved")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    parent = ParentSpec(hidden_size=args.hidden, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=args.hidden // 4, intermediate_size=args.intermediate, vocab_size=args.vocab,
                        num_hidden_layers=len(args.pattern))
    gqa, noop = AttentionConfig.gqa(2), AttentionConfig.make_no_op()
    arch = Architecture(parent, tuple(BlockConfig(gqa if c == "A" else noop, FFNConfig.swiglu(args.intermediate))
                                      for c in args.pattern))
    train = markov_data(2048, 32, args.vocab, seed=args.seed, order=args.order)
    calib = markov_data(32, 32, args.vocab, seed=args.seed + 1, order=args.order)
    heldout = markov_data(64, 32, args.vocab, seed=args.seed + 2, order=args.order)
    t0 = time.perf_counter()
    model = train_toy_model(arch, train, steps=args.steps, batch_size=32, lr=args.lr, seed=args.seed)
    with torch.no_grad():
        loss = model(input_ids=heldout, labels=heldout).loss.item()
    train_s = time.perf_counter() - t0
    dep = dependency_matrix(model, calib)
    total = sum(len(r) for r in find_ffn_runs(model))

    rows = []
    for s in (int(x) for x in args.budgets.split(",")):
        plan = make_plan(model, dep, target_steps=total - s)
        kl_dep = plan_kl(model, plan, heldout)
        rand = [plan_kl(model, random_plan(model, plan.steps_saved, seed=1000 + d), heldout) for d in range(args.draws)]
        rows.append({"steps_saved": plan.steps_saved, "groups": [list(g) for g in plan.groups],
                     "kl_dependency": kl_dep, "kl_random_mean": float(np.mean(rand)),
                     "kl_random_min": float(np.min(rand)), "kl_random_max": float(np.max(rand)),
                     "random_worse_fraction": float(np.mean([r > kl_dep for r in rand]))})
    whole = {ll: make_plan(model, leave_last=ll) for ll in (False, True)}
    whole_kl = {("leave_last" if ll else "whole_runs"): {"groups": [list(g) for g in p.groups],
                                                         "steps_saved": p.steps_saved, "kl": plan_kl(model, p, heldout)}
                for ll, p in whole.items()}
    res = {"pattern": args.pattern, "train_seconds": train_s, "heldout_loss": loss,
           "best_possible_loss": math.log(3), "uniform_loss": math.log(args.vocab),
           "dependency": dep.to_dict(), "budgets": rows, "whole_runs": whole_kl}
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"model {args.pattern} (hidden {args.hidden}), trained {train_s:.0f} s: held-out loss {loss:.3f} "
          f"(best possible {math.log(3):.3f}, uniform {math.log(args.vocab):.3f})")
    print(dep)
    print(f"{'saved':>5} {'KL dependency':>14} {'KL random mean':>15} {'random min..max':>20} {'random worse':>13}  groups")
    for r in rows:
        print(f"{r['steps_saved']:>5} {r['kl_dependency']:>14.5f} {r['kl_random_mean']:>15.5f} "
              f"{r['kl_random_min']:>9.5f}..{r['kl_random_max']:<9.5f} {r['random_worse_fraction']:>12.0%}  {r['groups']}")
    for name, w in whole_kl.items():
        print(f"{name}: groups {w['groups']} ({w['steps_saved']} steps saved): KL {w['kl']:.5f}")


if __name__ == "__main__":
    main()
