"""The composite (structured) stage against the dense model on SmolLM2-135M: parameters, bytes on disk, held-out
perplexity, CPU latency per generated token and peak memory.

Each variant is Mosaic at 50% (per-projection allocation + SparseGPT) followed by ``prune.composite`` at some
MLP / attention-group share, saved with ``save_pretrained``. Latency: every saved model is reloaded with plain
``transformers.AutoModelForCausalLM.from_pretrained`` (no edgecompress import) in one process and timed in
interleaved rounds (speed-ups: the median of the per-round ratios to dense, with their range): decoding (greedy, KV cache, batch 1, 32-token prompt, 32 new tokens; per token, the
1-token run subtracted) and prefill (one 128-token forward pass). Peak memory: a fresh process per model that
loads it and runs the same (its VmHWM).

    python benchmarks/llm_composite.py
    python benchmarks/llm_composite.py --reuse /tmp/llm-composite-XXXX --rounds 9   # re-time saved models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {  # name -> (mosaic sparsity or None, composite mlp share, attention share, compensate)
    "dense": (None, 0.0, 0.0, False),
    "mosaic 50%": (0.5, 0.0, 0.0, False),
    "mosaic 50% + mlp 25%": (0.5, 0.25, 0.0, True),
    "mosaic 50% + mlp 37.5% + 1/3 kv groups": (0.5, 0.375, 0.34, True),
    "mosaic 50% + mlp 50% + 1/3 kv groups": (0.5, 0.5, 0.34, True),
    "mosaic 50% + mlp 37.5% + 1/3 kv groups, no least squares": (0.5, 0.375, 0.34, False),
}

MEASURE = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from transformers import AutoModelForCausalLM
paths = json.loads(sys.argv[1])
models = {k: AutoModelForCausalLM.from_pretrained(p).eval() for k, p in paths.items()}
prompt = torch.arange(100, 132).unsqueeze(0)
long = torch.arange(100, 228).unsqueeze(0)
decode, prefill = {k: [] for k in models}, {k: [] for k in models}
def run(m, n):
    t = time.perf_counter()
    with torch.no_grad():
        m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                   do_sample=False, pad_token_id=0)
    return time.perf_counter() - t
def forward(m):
    t = time.perf_counter()
    with torch.no_grad():
        m(input_ids=long, use_cache=False)
    return time.perf_counter() - t
for m in models.values():
    run(m, 2)
for _ in range(int(sys.argv[3])):
    for k, m in models.items():
        decode[k].append((run(m, 33) - run(m, 1)) / 32)
        prefill[k].append(forward(m))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"decode": decode, "prefill": prefill,
                  "peak_rss_mib": hwm / 1024}))
"""


def build(args) -> tuple[list[dict], dict[str, str]]:
    """Prune and save every variant; its row (parameters, perplexity, sample, bytes) and saved folder."""
    from edgecompress.llm import evaluate, models
    from edgecompress.llm.composite import CompositeConfig, composite
    from edgecompress.llm.prune import LLMPruneConfig, prune_llm

    dense, tok = models.smollm2()
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    calib = evaluate.calibration_batches(tok, args.samples, 256, 8)
    ids, mask = evaluate.windows(tok, "heldout", 256, args.eval)
    rows, paths = [], {}
    work = Path(tempfile.mkdtemp(prefix="llm-composite-"))
    for name, (sparsity, mlp, attention, compensate) in VARIANTS.items():
        model, _ = models.smollm2()
        model.load_state_dict(state)
        row = {"variant": name}
        if sparsity:
            row["prune_seconds"] = round(prune_llm(model, calib, LLMPruneConfig(
                sparsity=sparsity, allocation="mosaic", samples=args.samples)).seconds, 1)
        if mlp or attention:
            result = composite(model, calib, CompositeConfig(mlp=mlp, attention=attention, compensate=compensate,
                                                             samples=args.samples))
            row["composite_seconds"] = round(result.seconds, 1)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        row["perplexity"] = round(evaluate.perplexity(model, ids, mask), 3)
        row["sample"] = evaluate.generate(model, tok, "The capital of France is", 12)
        paths[name] = str(work / str(len(paths)))
        model.save_pretrained(paths[name])
        row["bytes"] = sum(f.stat().st_size for f in Path(paths[name]).iterdir())
        print(row, flush=True)
        rows.append(row)
    print(f"saved in {work}", flush=True)
    return rows, paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--eval", type=int, default=48)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_composite")
    p.add_argument("--reuse", type=Path, help="measure the models saved by an earlier run in this folder")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from edgecompress.llm import models

    if args.reuse:  # measure the models an earlier run saved (its JSON rows, its folder)
        rows = json.loads(args.out.with_suffix(".json").read_text())["rows"]
        paths = {r["variant"]: str(args.reuse / str(i)) for i, r in enumerate(rows)}
    else:
        rows, paths = build(args)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(paths), str(args.threads), str(args.rounds)],
                         capture_output=True, text=True, env=env, check=True)
    timing = json.loads(out.stdout.strip().splitlines()[-1])
    for row in rows:
        one = subprocess.run([sys.executable, "-c", MEASURE, json.dumps({row["variant"]: paths[row["variant"]]}),
                              str(args.threads), "1"], capture_output=True, text=True, env=env, check=True)
        row["peak_rss_mib"] = round(json.loads(one.stdout.strip().splitlines()[-1])["peak_rss_mib"], 1)
        row["ms_per_token"] = round(statistics.median(timing["decode"][row["variant"]]) * 1e3, 2)
        row["ms_prefill_128"] = round(statistics.median(timing["prefill"][row["variant"]]) * 1e3, 1)
    base = rows[0]
    for row in rows:
        for kind, key in (("decode", "speedup"), ("prefill", "prefill_speedup")):  # per interleaved round
            ratios = [b / v for b, v in zip(timing[kind][base["variant"]], timing[kind][row["variant"]])]
            row[key] = round(statistics.median(ratios), 2)
            row[key + "_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
        row["parameters_saved"] = round(1 - row["parameters"] / base["parameters"], 3)
    setup = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
             "cpus": os.cpu_count(), "threads": args.threads, "rounds": args.rounds,
             "note": models.SMOLLM2_NOTE}
    args.out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    lines = ["# Composite stage vs dense, SmolLM2-135M", "", f"`{setup['command']}`", "", json.dumps(setup), "",
             "| variant | parameters | saved | bytes on disk | perplexity | ms/token (decode) | speed-up | "
             "ms prefill 128 | speed-up | peak RSS MiB | sample |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['parameters'] / 1e6:.1f}M | {r['parameters_saved']:.1%} | "
                     f"{r['bytes'] / 2**20:.0f} MiB | {r['perplexity']} | {r['ms_per_token']} | {r['speedup']}x "
                     f"({r['speedup_range'][0]}-{r['speedup_range'][1]}) | {r['ms_prefill_128']} | "
                     f"{r['prefill_speedup']}x ({r['prefill_speedup_range'][0]}-{r['prefill_speedup_range'][1]}) | "
                     f"{r['peak_rss_mib']} | {r['sample']!r} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
