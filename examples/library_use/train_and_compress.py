"""An external training script that imports puzzlekit as a library, written from README.md and docs/ alone.

    python examples/library_use/train_and_compress.py --out runs/library_use            # ~1-2 min on a CPU
    python examples/library_use/train_and_compress.py --out runs/library_use --size small --parent-steps 400

The path a trainer takes: train a small Llama (plain torch + transformers, the trainer's own loop) →
BLD → replace-1-block scoring → analytic and measured profiles → search (best, diverse top-3, Pareto
front) → assembly → GKD → Nemotron-NAS save → reload with ``AutoModelForCausalLM`` → the same search
with a custom solver backend.  Every stage that can resume does (run it again: finished work is kept).
Prints one JSON summary and writes it to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from puzzlekit.solvers import Backend, SolveOptions, register

import puzzlekit as pk
from puzzlekit.bld import BLDConfig, SearchSpace, run_bld
from puzzlekit.data import read_texts
from puzzlekit.distill import DistillConfig, GKDWeights
from puzzlekit.errors import SolverError
from puzzlekit.post import char_tokenizer, tiny_llama
from puzzlekit.scoring import score_library
from puzzlekit.search import Status

REPO = Path(__file__).resolve().parents[2]
SIZES = {"tiny": dict(hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=192),
         "small": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384)}


# ---- 1. the trainer's own parent: a small Llama trained with a plain loop ---------------------------
def train_parent(out: Path, texts: list[str], size: str, steps: int, seq_len: int) -> Path:
    import torch

    if (out / "config.json").exists():
        return out
    tok = char_tokenizer("".join(sorted(set("".join(texts)))), model_max_length=1_000_000)
    data = pk.build_token_data(texts, tok, seq_len=seq_len)
    model = tiny_llama(len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **SIZES[size])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        ids = torch.from_numpy(data.train[rng.integers(0, len(data.train), 16)])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---- 11. a custom solver backend (docs/solvers.md) -----------------------------------------------
@register
class BruteForce(Backend):
    """Tries every architecture (single-layer candidates): exact, for tiny libraries."""

    name = "brute-force"
    capabilities = frozenset({"float_exact"})
    description = "exhaustive enumeration (tiny libraries only)"

    def solve(self, problem, options: SolveOptions):
        if not problem.single_layer:
            raise SolverError("brute-force: spanning candidates are not supported")
        G, h = problem.le_rows()
        best, best_c = None, np.inf
        for pick in itertools.product(*problem.layer_groups):
            x = np.array(pick)
            if problem.c[x].sum() < best_c and np.all(G[:, x].sum(axis=1) <= h + 1e-9 * (1 + np.abs(h))):
                best, best_c = x, problem.c[x].sum()
        status = Status.OPTIMAL if best is not None else Status.INFEASIBLE
        return problem.make_solution(best, status, solver=self.name, seconds=0.0, bound=best_c)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/library_use")
    ap.add_argument("--text", default=str(REPO / "docs"), help="training text: a file or folder (default: docs/)")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--parent-steps", type=int, default=150)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--bld-tokens", type=int, default=4096)
    ap.add_argument("--gkd-steps", type=int, default=20)
    ap.add_argument("--speedup", type=float, default=1.5, help="target: whole-model runtime / this")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def lap(name: str) -> None:
        stages[name] = round(time.perf_counter() - t0 - sum(stages.values()), 2)
    import torch

    torch.manual_seed(0)
    texts = read_texts(args.text)
    parent_dir = train_parent(out / "parent", texts, args.size, args.parent_steps, args.seq_len)
    lap("parent")

    # ---- 2-3. BLD and scoring: given a run directory, both persist there and resume ---------------------
    parent = pk.load_parent(parent_dir)
    spec = parent.config.parent_spec
    data = pk.build_token_data(texts, pk.load_tokenizer(parent_dir), seq_len=args.seq_len)
    space = SearchSpace(attention=(spec.parent_block().attention, pk.AttentionConfig.gqa(1),
                                   pk.AttentionConfig.make_no_op()),
                        ffn=(spec.parent_block().ffn, pk.FFNConfig.swiglu(spec.intermediate_size // 2),
                             pk.FFNConfig.swiglu(spec.intermediate_size // 4), pk.FFNConfig.make_no_op()))
    run = out / "run"
    lib = run_bld(parent, data, run, space, BLDConfig(tokens=args.bld_tokens, batch_size=4))
    lap("bld")
    lib = score_library(parent, lib, data, run, eval_sequences=8)
    lap("scoring")

    # ---- 4. analytic and measured profiles: objects only, so save the library afterwards -----------------
    h100 = pk.Scenario("h100-sxm", "bf16", batch=8, prefill=512, decode=64)
    cpu = pk.Scenario("local-cpu", "fp32", batch=1, prefill=32, decode=8)
    pk.profile_library(lib, h100)
    pk.profile_library(lib, cpu, profiler="measured", measure_options={"threads": 1, "repeats": 3}, default=True)
    lib.save(run / "library.json")
    lap("profiles")

    # ---- 5. search: whole-model runtimes (the non-block part included by default) -----------------------
    parent_sol = pk.search(lib, "kl_div")  # no budget: the parent itself (KL 0), costed as a whole model
    budget = {"runtime_ms": parent_sol.costs["runtime_ms"] / args.speedup}
    sol = pk.search(lib, "kl_div", budget)
    top3 = pk.search_diverse(lib, "kl_div", budget, num_solutions=3, min_diversity=2)
    front = pk.pareto_front(lib, "kl_div", "runtime_ms")
    h100_sol = pk.search(lib, "kl_div", {"memory_mib": 0.7 * pk.search(lib, "kl_div", scenario=h100).costs["memory_mib"]},
                         scenario=h100)
    lap("search")

    # ---- 6-8. assembly, GKD, Nemotron-NAS save ------------------------------------------------------
    child = pk.assemble(parent, None, lib, sol.candidates, init={"calib_input_ids": data.torch("train")[:8]})
    assert child.architecture.blocks == sol.blocks == lib.architecture(sol.candidates).blocks
    heldout = data.heldout[:16]
    before = pk.evaluate_kl(child, parent, heldout)
    res = pk.distill(child, parent, data.train, DistillConfig(
        max_steps=args.gkd_steps, batch_size=4, learning_rate=1e-3, weights=GKDWeights(cosine=1, kl=1, lm=0),
        eval_every=args.gkd_steps, save_every=args.gkd_steps, output_dir=str(out / "gkd")), eval_tokens=heldout)
    after = pk.evaluate_kl(child, parent, heldout)
    lap("assembly_gkd")
    if not (out / "child" / "config.json").exists():
        pk.save_model(child, out / "child", tokenizer_from=parent_dir)

    # ---- 9. reload with transformers' Auto classes (registered by `import puzzlekit`) ------------------
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(out / "child")
    ids = data.torch("heldout")[:2]
    with torch.no_grad():
        same = torch.allclose(back(input_ids=ids).logits, child.eval()(input_ids=ids).logits, atol=1e-5)

    # ---- 10. the same search with a custom backend -------------------------------------------------
    lap("save_reload")
    mine = pk.search(lib, "kl_div", budget, solver="brute-force")
    lap("custom_backend")

    summary = {
        "parent_params": parent_sol.costs["num_params"], "child_params": sol.costs["num_params"],
        "parent_runtime_ms": parent_sol.costs["runtime_ms"], "child_runtime_ms": sol.costs["runtime_ms"],
        "non_block_runtime_ms": sol.constants["runtime_ms"], "budget_ms": budget["runtime_ms"],
        "predicted_speedup": parent_sol.costs["runtime_ms"] / sol.costs["runtime_ms"],
        "kl_sum": sol.objective, "child_blocks": sol.block_keys,
        "top3": [s.objective for s in top3], "pareto_points": len(front),
        "h100_child_memory_mib": h100_sol.costs["memory_mib"],
        "kl_before_gkd": before["kl"], "kl_after_gkd": after["kl"], "gkd_steps": res.end_step,
        "reloaded_type": type(back).__name__, "reloaded_logits_equal": bool(same),
        "custom_backend": {"solver": mine.solver, "objective": mine.objective,
                           "same_as_default": abs(mine.objective - sol.objective) <= 1e-12},
        "seconds": time.perf_counter() - t0, "stage_seconds": stages,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
