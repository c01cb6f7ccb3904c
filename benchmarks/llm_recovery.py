"""Label-free recovery of a pruned language model, and weight-only quantization after Mosaic, on SmolLM2-135M:
held-out perplexity dense / pruned / + recover.mimic (least squares) / + recover.kd (KL to the dense model),
the time each step took and the calibration used; then Mosaic 50% followed by GPTQ int8 and int4 weight-only
(perplexity and packed bytes).

Every configuration runs in its own process (``--one``); rows are appended to the JSON as they finish and a rerun
skips what is there (delete the JSON to start over).

    python benchmarks/llm_recovery.py                                  # wanda and sparsegpt at 50/60/70%, GPTQ
    python benchmarks/llm_recovery.py --criteria wanda --sparsities 0.5 --kd-epochs 0
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def one(kind: str, criterion: str, sparsity: float, args) -> dict:
    """One configuration in this process: load, prune, then recover (``recover``) or quantize (``quant``)."""
    import torch

    torch.set_num_threads(args.threads)
    from edgecompress.llm import evaluate, models
    from edgecompress.llm.distill import distill_llm
    from edgecompress.llm.mimic import mimic_llm
    from edgecompress.llm.prune import LLMPruneConfig, prune_llm
    from edgecompress.llm.quantize import gptq_llm
    from edgecompress.quant.weights.quantizer import QuantSpec

    dense, tok = models.smollm2()
    calib = evaluate.calibration_batches(tok, args.samples, args.seq_len, args.batch)
    ids, mask = evaluate.windows(tok, "heldout", args.seq_len, args.eval)
    ppl = lambda m: round(evaluate.perplexity(m, ids, mask), 3)  # noqa: E731
    say = lambda *a: print(f"[{kind} {criterion} {sparsity}]", *a, file=sys.stderr, flush=True)  # noqa: E731
    row: dict = {"kind": kind, "criterion": criterion, "sparsity": sparsity}
    if kind == "dense":
        return {**row, "perplexity": ppl(dense)}
    model = copy.deepcopy(dense)
    allocation = "mosaic" if kind == "quant" else "uniform"
    pruned = prune_llm(model, calib, LLMPruneConfig(sparsity=sparsity, criterion=criterion, allocation=allocation,
                                                    samples=args.samples))
    row.update(prune_seconds=round(pruned.seconds, 1), reached=round(pruned.sparsity, 4), pruned=ppl(model))
    say(row)
    if kind == "quant":
        for bits, group in ((8, 0), (4, 128)):
            q = copy.deepcopy(model)
            result = gptq_llm(q, calib, QuantSpec(bits, group))
            row[f"int{bits}"] = {"group_size": group, "perplexity": ppl(q), "packed_bytes": result.nbytes,
                                 "float_bytes": result.float_bytes}
            say(row)
        return row
    result = mimic_llm(model, dense, calib, args.damping)
    layers = sorted({int(k.split(".")[2]) for k in result.errors})
    per_layer = {i: [sum(v[j] for k, v in result.errors.items() if int(k.split(".")[2]) == i) / 7 for j in (0, 1)]
                 for i in layers}
    row.update(mimic_seconds=round(result.seconds, 1), mimic=ppl(model),
               cg_residual_max=round(max(result.residuals.values()), 5),
               layer_error={i: [round(b, 4), round(a, 4)] for i, (b, a) in per_layer.items()})
    say(row)
    if args.kd_epochs:
        kd = distill_llm(model, dense, calib, args.kd_epochs, args.kd_lr)
        row.update(kd_seconds=round(kd.seconds, 1), kd_steps=kd.steps, kd=ppl(model),
                   kd_loss=[round(v, 4) for v in kd.losses])
    return row


def recovery_table(rows: list[dict], dense: float | None) -> str:
    lines = [f"dense perplexity: {dense}", "",
             "| criterion | sparsity | pruned | + mimic | + kd | prune s | mimic s | kd s (steps) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["kind"] == "recover"), key=lambda r: (r["criterion"], r["sparsity"])):
        kd = f"{r['kd_seconds']} ({r['kd_steps']})" if "kd" in r else ""
        lines.append(f"| {r['criterion']} | {r['sparsity']:.0%} | {r['pruned']} | {r['mimic']} | {r.get('kd', '')} "
                     f"| {r['prune_seconds']} | {r['mimic_seconds']} | {kd} |")
    return "\n".join(lines)


def quant_table(rows: list[dict]) -> str:
    lines = ["| Mosaic sparsity | pruned | + GPTQ int8 (per channel) | + GPTQ int4 (group 128) | packed MB int8 / int4 "
             "(float32 MB) |", "|---|---|---|---|---|"]
    for r in (r for r in rows if r["kind"] == "quant"):
        mb = lambda b: f"{b / 1e6:.1f}"  # noqa: E731
        lines.append(f"| {r['sparsity']:.0%} | {r['pruned']} | {r['int8']['perplexity']} | {r['int4']['perplexity']} "
                     f"| {mb(r['int8']['packed_bytes'])} / {mb(r['int4']['packed_bytes'])} "
                     f"({mb(r['int8']['float_bytes'])}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--criteria", nargs="+", default=["wanda", "sparsegpt"])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.6])
    p.add_argument("--quant-sparsity", type=float, default=0.5, help="Mosaic sparsity before GPTQ (0: skip)")
    p.add_argument("--samples", type=int, default=16, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=4, help="calibration sequences per batch (and per kd step)")
    p.add_argument("--eval", type=int, default=32, help="held-out windows")
    p.add_argument("--damping", type=float, default=0.01, help="recover.mimic damping")
    p.add_argument("--kd-epochs", type=int, default=1, help="recover.kd passes over the calibration batches")
    p.add_argument("--kd-lr", type=float, default=3e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_recovery")
    p.add_argument("--one", nargs=3, metavar=("KIND", "CRITERION", "SPARSITY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], float(args.one[2]), args)))
        return
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    data["setup"] = {
        "command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "threads": args.threads, "note": "2-core machine shared with two other agents: "
        "seconds are wall time under load", "calibration": f"{args.samples} x {args.seq_len} tokens (Python docs "
        f"train topics), batches of {args.batch}", "evaluation": f"{args.eval} x {args.seq_len} tokens, held-out "
        "topics", "kd": f"{args.kd_epochs} epoch(s) of Adam steps at lr {args.kd_lr}, one step per batch",
        "damping": args.damping}
    done = {(r["kind"], r["criterion"], r["sparsity"]) for r in data["rows"]}
    todo = [("dense", "none", 0.0)] + [("recover", c, s) for s in args.sparsities for c in args.criteria]
    todo.insert(1 + len(args.criteria), ("quant", "sparsegpt", args.quant_sparsity))  # after the first sparsity
    todo = [t for t in todo if t[2] or t[0] == "dense"]
    for kind, criterion, sparsity in todo:
        if (kind, criterion, sparsity) in done:
            continue
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", kind, criterion, str(sparsity)],
                             stdout=subprocess.PIPE, text=True)  # progress goes to stderr
        if out.returncode:
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        data["rows"].append(row)
        path.write_text(json.dumps(data, indent=1))
    dense = next((r["perplexity"] for r in data["rows"] if r["kind"] == "dense"), None)
    text = (f"# LM recovery and weight-only quantization (SmolLM2-135M)\n\n`{data['setup']['command']}`\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in data["setup"].items() if k != "command")
            + "\n\n## Recovery after uniform pruning (held-out perplexity)\n\n" + recovery_table(data["rows"], dense)
            + "\n\n## GPTQ weight-only after Mosaic\n\n" + quant_table(data["rows"]) + "\n")
    path.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
