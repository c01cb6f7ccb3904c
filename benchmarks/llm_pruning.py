"""Language-model pruning side by side: magnitude, Wanda, SparseGPT, Wanda+OWL, SparseGPT+OWL and Mosaic
(per-projection allocation + SparseGPT) on SmolLM2-135M (held-out perplexity) and all-MiniLM-L6-v2 (cosine
fidelity to the dense embeddings, retrieval), at several sparsities, with the time and peak memory of each run.

Every pruning run is its own process (``--one``), so its peak resident memory is its own; results are appended to
the JSON as they finish, and a rerun skips what is there (delete the JSON to start over).

    python benchmarks/llm_pruning.py                      # SmolLM2 and MiniLM, 50-80%
    python benchmarks/llm_pruning.py --models minilm --sparsities 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = {  # name -> (criterion, allocation)
    "magnitude": ("magnitude", "uniform"),
    "wanda": ("wanda", "uniform"),
    "sparsegpt": ("sparsegpt", "uniform"),
    "wanda+owl": ("wanda", "owl"),
    "sparsegpt+owl": ("sparsegpt", "owl"),
    "mosaic": ("sparsegpt", "mosaic"),
}
MODELS = {"smollm2": "smollm2-135m", "minilm": "all-minilm-l6-v2"}
DEFAULTS = (0.08, 5.0)  # OWL's lambda and M, the published values (LLaMA-7B)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(model_key: str, method: str | None, sparsity: float, args) -> dict:
    """One run in this process: load, (prune,) evaluate."""
    import torch

    torch.set_num_threads(args.threads)
    from edgecompress.llm import evaluate, models
    from edgecompress.llm.prune import LLMPruneConfig, prune_llm

    model, tok = models.load(MODELS[model_key])
    loaded = rss_mib()
    calib = evaluate.calibration_batches(tok, args.samples, args.seq_len, 8)
    ids, mask = evaluate.windows(tok, "heldout", args.seq_len, args.eval)
    row: dict = {"model": model_key, "method": method or "dense", "sparsity": sparsity if method else 0.0}
    if method and METHODS[method][1] != "uniform" and (args.lam, args.outlier_m) != DEFAULTS:
        row.update(lam=args.lam, outlier_m=args.outlier_m)
    if model_key == "minilm":
        dense = evaluate.embeddings(model, ids, mask)
    if method:
        criterion, alloc = METHODS[method]
        result = prune_llm(model, calib, LLMPruneConfig(sparsity=sparsity, criterion=criterion, allocation=alloc,
                                                        samples=args.samples, lam=args.lam, outlier_m=args.outlier_m))
        row.update(prune_seconds=round(result.seconds, 2), reached=round(result.sparsity, 4),
                   peak_rss_mib=round(rss_mib(), 1), rss_after_load_mib=round(loaded, 1))
    if model_key == "smollm2":
        row["perplexity"] = round(evaluate.perplexity(model, ids, mask), 3)
    else:
        row.update({k: round(v, 4) for k, v in evaluate.fidelity(dense, evaluate.embeddings(model, ids, mask)).items()})
    return row


def table(rows: list[dict], model_key: str) -> str:
    metric = "perplexity" if model_key == "smollm2" else "cosine_mean"
    sparsities = sorted({r["sparsity"] for r in rows if r["model"] == model_key and r["method"] != "dense"})
    dense = next((r for r in rows if r["model"] == model_key and r["method"] == "dense"), None)
    head = "| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " | prune s (at 70%) | peak RSS MiB |"
    lines = [head, "|" + "---|" * (len(sparsities) + 3)]
    if dense:
        lines.append(f"| dense | {dense[metric]} " + "| " * len(sparsities) + "| |")
    for method in METHODS:
        cells, at70 = [], None
        for s in sparsities:
            r = next((r for r in rows if r["model"] == model_key and r["method"] == method and r["sparsity"] == s
                      and "lam" not in r), None)
            cells.append(str(r[metric]) if r else "")
            at70 = r if r and s == 0.7 else at70
        if not any(cells):
            continue
        lines.append(f"| {method} | " + " | ".join(cells) +
                     f" | {at70['prune_seconds'] if at70 else ''} | {at70['peak_rss_mib'] if at70 else ''} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.6, 0.7, 0.8])
    p.add_argument("--samples", type=int, default=32, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval", type=int, default=64, help="held-out windows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lam", type=float, default=DEFAULTS[0], help="OWL/Mosaic lambda (a sweep: rows keep it)")
    p.add_argument("--outlier-m", type=float, default=DEFAULTS[1], help="OWL/Mosaic outlier threshold M")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_pruning")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "METHOD", "SPARSITY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        model_key, method, sparsity = args.one
        print(json.dumps(one(model_key, None if method == "dense" else method, float(sparsity), args)))
        return
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    data["setup"] = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
                     "cpus": os.cpu_count(), "threads": args.threads, "calibration": f"{args.samples} x {args.seq_len} "
                     "tokens, Python docs train topics", "evaluation": f"{args.eval} x {args.seq_len} tokens, held-out "
                     "topics (val + test)"}
    key = lambda r: (r["model"], r["method"], r["sparsity"], r.get("lam"), r.get("outlier_m"))  # noqa: E731
    done = {key(r) for r in data["rows"]}
    tuned = (args.lam, args.outlier_m) != DEFAULTS
    todo = [(m, "dense", 0.0) for m in args.models] + [
        (m, meth, s) for m in args.models for s in args.sparsities for meth in args.methods]
    for model_key, method, s in todo:
        sweep = tuned and method != "dense" and METHODS[method][1] != "uniform"
        if (model_key, method, s, *((args.lam, args.outlier_m) if sweep else (None, None))) in done:
            continue
        start = time.perf_counter()
        cmd = [sys.executable, __file__, "--one", model_key, method, str(s), "--samples", str(args.samples),
               "--seq-len", str(args.seq_len), "--eval", str(args.eval), "--threads", str(args.threads),
               "--lam", str(args.lam), "--outlier-m", str(args.outlier_m)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{model_key} {method} {s} failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{model_key:8} {method:14} {s:.0%} {time.perf_counter() - start:6.1f}s  {row}", flush=True)
        data["rows"].append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
    md = [f"# Language-model pruning\n\n`{data['setup']['command']}`\n\n{json.dumps(data['setup'])}\n"]
    for model_key in args.models:
        what = "held-out perplexity (lower is better)" if model_key == "smollm2" else "mean cosine to dense embeddings"
        md.append(f"## {MODELS[model_key]}: {what}\n\n{table(data['rows'], model_key)}\n")
    sweep = [r for r in data["rows"] if "lam" in r]
    if sweep:
        md.append("## OWL / Mosaic hyper-parameters (lambda, M) against the published (0.08, 5)\n\n"
                  "| model | method | sparsity | lambda | M | perplexity / cosine |\n|---|---|---|---|---|---|")
        md += [f"| {r['model']} | {r['method']} | {r['sparsity']:.0%} | {r['lam']} | {r['outlier_m']} | "
               f"{r.get('perplexity', r.get('cosine_mean'))} |" for r in sweep]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
