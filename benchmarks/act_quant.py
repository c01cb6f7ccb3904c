"""Activation quantization benchmark: DQA vs direct uniform vs power-of-two vs NoisyQuant, one process.

Per architecture: train once on real data, draw one labeled calibration set, then at each bit width quantize
every residual block's output with each method and measure test accuracy (simulated activation quantization
in PyTorch, dynamic per-batch scales, test batches of 256). DQA ranks its channels once (the ranking is done
at 3 bits and reused for every n) — with the whole calibration set (paper) and on a subset (shortcut) — and
the quantization time compares that ranking with NoisyQuant's per-bit-width search (wall and process CPU time;
the machine is shared, CPU time is the steadier number). DQA's stored bytes (n-bit packed tensor, Huffman
streams and tables, scales) are measured on calibration activations.

    python benchmarks/act_quant.py            # the committed run (digits, resnet20 + mobilenet_v2 x0.5)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

from edgecompress import zoo
from edgecompress.data import DataSpec, load_task
from edgecompress.quant.actquant import find_blocks, install, noisyquant_search, pow2, uniform
from edgecompress.quant.dqa import rank_channels, set_dqa, storage_report
from edgecompress.train import accuracy, train

ARCHS = {"resnet20": {"width": 1.0}, "mobilenet_v2": {"width_mult": 0.5, "dropout": 0.0}}
RESULTS = Path(__file__).parent / "results"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_arch(name: str, task, args) -> dict:
    torch.manual_seed(args.seed)
    model = zoo.build(name, task.input_shape, task.num_classes, **ARCHS[name])
    train(model, task, epochs=args.epochs, lr=0.05, seed=args.seed, progress=False)
    model.eval()
    fp32 = accuracy(model, task, "test")
    xs, ys = task.train.tensors
    idx = torch.randperm(len(xs), generator=torch.Generator().manual_seed(args.seed))[: args.calib]
    x, y = xs[idx], ys[idx]

    def fresh():
        m = copy.deepcopy(model)
        return m, install(m, find_blocks(m))

    dqa_model, dqa_w = fresh()
    orders, full_s, full_cpu = timed(lambda: rank_channels(dqa_model, dqa_w, x, y, "accuracy"))
    sub_model, sub_w = fresh()
    n_sub = args.ranking_samples
    sub_orders, sub_s, sub_cpu = timed(lambda: rank_channels(sub_model, sub_w, x[:n_sub], y[:n_sub], "accuracy"))
    rows = []
    for bits in args.bits:
        row = {"bits": bits}
        set_dqa(dqa_w, orders, bits, args.extra_bits, args.important_share)
        row["dqa"] = accuracy(dqa_model, task, "test")
        row["storage"] = storage_report(dqa_model, dqa_w, x[:16])
        set_dqa(sub_w, sub_orders, bits, args.extra_bits, args.important_share)
        row["dqa_subset"] = accuracy(sub_model, task, "test")
        for method, fn in (("uniform", uniform), ("pow2", pow2)):
            m, ws = fresh()
            for w in ws:
                w.quantizer = partial(fn, bits=bits)
            row[method] = accuracy(m, task, "test")
        m, ws = fresh()
        _, nq_s, nq_cpu = timed(lambda: noisyquant_search(m, ws, bits, x, args.seed))  # noqa: B023
        row["noisyquant"] = accuracy(m, task, "test")
        row["noisyquant_seconds"], row["noisyquant_cpu_seconds"] = round(nq_s, 2), round(nq_cpu, 2)
        print(name, row["bits"], {k: row[k] for k in ("dqa", "dqa_subset", "uniform", "pow2", "noisyquant")},
              f"nq {nq_cpu:.1f}s cpu", flush=True)
        rows.append(row)
    return {"fp32": fp32, "blocks": len(dqa_w), "ranking_passes": sum(len(o) for o in orders),
            "dqa_ranking_seconds": round(full_s, 2), "dqa_ranking_cpu_seconds": round(full_cpu, 2),
            "dqa_subset_ranking_seconds": round(sub_s, 2), "dqa_subset_ranking_cpu_seconds": round(sub_cpu, 2),
            "noisyquant_passes_per_bit": 200 * len(dqa_w), "rows": rows}


def targets(results: dict) -> list[dict]:
    out = []
    for arch, r in results.items():
        worst = min(row["dqa"] - max(row[m] for m in ("uniform", "pow2", "noisyquant")) for row in r["rows"])
        low = min(row["dqa"] - max(row[m] for m in ("uniform", "pow2", "noisyquant"))
                  for row in r["rows"] if row["bits"] <= 4)
        nq_cpu = min(row["noisyquant_cpu_seconds"] for row in r["rows"])
        out += [
            {"arch": arch, "target": "DQA >= every baseline at every bit width",
             "measured": f"min margin {100 * worst:+.2f} pts", "met": worst >= 0},
            {"arch": arch, "target": "DQA clearly ahead at 3-4 bits (>= +1 pt over the best baseline)",
             "measured": f"min margin {100 * low:+.2f} pts", "met": low >= 0.01},
            {"arch": arch, "target": "DQA quantization >= 10x faster than NoisyQuant (CPU time, paper ranking)",
             "measured": f"{nq_cpu / r['dqa_ranking_cpu_seconds']:.1f}x",
             "met": nq_cpu / r["dqa_ranking_cpu_seconds"] >= 10},
            {"arch": arch, "target": "same, ranking on a calibration subset (shortcut)",
             "measured": f"{nq_cpu / r['dqa_subset_ranking_cpu_seconds']:.1f}x",
             "met": nq_cpu / r["dqa_subset_ranking_cpu_seconds"] >= 10},
        ]
    return out


def markdown(results: dict, tgts: list[dict], args, command: str) -> str:
    intro = (f"Simulated per-channel activation quantization of every residual block output, measured in PyTorch "
             f"(test accuracy, %). Calibration: {args.calib} labeled training samples shared by all methods; DQA "
             f"m={args.extra_bits}, important share {args.important_share}; `DQA sub` ranks on the first "
             f"{args.ranking_samples} of them (shortcut). Times are process CPU seconds (wall in the JSON), "
             f"torch threads = 1, on a shared 2-core machine.")
    lines = [f"# Activation quantization: DQA vs baselines ({args.dataset})", "", f"Command: `{command}`", "",
             intro, ""]
    for arch, r in results.items():
        summary = (f"DQA ranking: {r['ranking_passes']} calibration passes, {r['dqa_ranking_cpu_seconds']} s CPU "
                   f"(subset: {r['dqa_subset_ranking_cpu_seconds']} s); NoisyQuant: "
                   f"{r['noisyquant_passes_per_bit']} passes per bit width.")
        header = ("| bits | DQA | DQA sub | uniform | pow2 | NoisyQuant | NoisyQuant CPU s | DQA bytes/act "
                  "| vs FP32 | vs plain n-bit | Huffman bytes (stream+tables) |")
        lines += [f"## {arch} (FP32 {100 * r['fp32']:.2f}%, {r['blocks']} blocks)", "", summary, "", header,
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            s = row["storage"]
            lines.append(f"| {row['bits']} | {100 * row['dqa']:.2f} | {100 * row['dqa_subset']:.2f} | "
                         f"{100 * row['uniform']:.2f} | {100 * row['pow2']:.2f} | {100 * row['noisyquant']:.2f} | "
                         f"{row['noisyquant_cpu_seconds']} | {s['bytes_per_activation']} | {s['vs_fp32']} | "
                         f"{s['vs_plain_nbit']} | {s['huffman_overhead_bytes']} of {s['bytes']['total']} |")
        lines.append("")
    lines += ["## Targets", "", "| arch | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['arch']} | {t['target']} | {t['measured']} | {'met' if t['met'] else 'MISSED'} |" for t in tgts]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--bits", nargs="+", type=int, default=[3, 4, 5, 6, 8])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--ranking-samples", type=int, default=32)
    p.add_argument("--extra-bits", type=int, default=3)
    p.add_argument("--important-share", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="resnet20 only, bits 3 and 4, 4 epochs")
    p.add_argument("--out", default="act_quant")
    args = p.parse_args()
    if args.quick:
        args.archs, args.bits, args.epochs = ["resnet20"], [3, 4], 4
    torch.set_num_threads(1)
    task = load_task(DataSpec(dataset=args.dataset))
    results = {arch: run_arch(arch, task, args) for arch in args.archs}
    tgts = targets(results)
    command = "python benchmarks/act_quant.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {"command": command.strip(), "args": vars(args), "results": results, "targets": tgts}, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(results, tgts, args, command.strip()))
    print(markdown(results, tgts, args, command.strip()))


if __name__ == "__main__":
    main()
