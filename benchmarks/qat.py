"""QAT vs PTQ on the default baseline (MNIST-5k, mnist_cnn) at 8, 4 and 3 weight bits, measured in ONNX Runtime.

PTQ is ``quant.qat`` with ``epochs: 0`` (the calibrated fake-quant model, exported the same way); QAT trains it
for a few epochs. Extra rows at 3 bits: QAT with distillation from the FP32 model, QAT with BN trained on batch
statistics (PT2E simulated folding) instead of folded; and ``quant.ptq`` (ONNX Runtime quantize_static) as the
8-bit reference. Accuracy is on the held-out test split, run by ONNX Runtime (1 thread); torch uses 1 thread.

    python benchmarks/qat.py            # writes benchmarks/results/qat.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from edgecompress import baseline
from edgecompress.context import StageContext
from edgecompress.data import load_task
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.quant.ptq import cpu_has_vnni
from edgecompress.recipe import load_recipe
from edgecompress.registry import get

RESULTS = Path(__file__).parent / "results"
COMMAND = "python benchmarks/qat.py"


def run(name: str, method: str, model, task, teacher, workdir: Path, **config) -> dict:
    ctx = StageContext(task=task, teacher=teacher, workdir=workdir / name, progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    stage = get(method)
    out = stage(model, stage.config(**config), ctx)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    acc = task.evaluate(out.artifact.runner(), "test")["accuracy"]
    row = {"name": name, "method": method, "config": config, "test_accuracy": acc,
           "val_accuracy_before": ctx.info.get("val_accuracy_before"),
           "val_accuracy_after": ctx.info.get("val_accuracy_after"), "bytes": out.artifact.size_bytes,
           "weight_range": ctx.info.get("weight_range"), "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], fp32: dict) -> str:
    header = ("| run | weight bits (grid) | epochs | test accuracy % (ONNX Runtime) | vs FP32 (points) | size KiB | "
              "stage wall s | stage CPU s |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines.append(f"| FP32 ONNX | 32 | - | {fp32['test_accuracy'] * 100:.2f} | 0.00 | {fp32['bytes'] / 1024:.1f} "
                 "| - | - |")
    for r in rows:
        grid = (f"{r['config'].get('weight_bits', 8)} ({r['weight_range']})" if r["weight_range"] else
                f"{r['config']['bits']} (GPTQ)" if "bits" in r["config"] else "8 (ORT)")
        lines.append(f"| {r['name']} | {grid} | {r['config'].get('epochs', '-')} | {r['test_accuracy'] * 100:.2f} | "
                     f"{(r['test_accuracy'] - fp32['test_accuracy']) * 100:+.2f} | {r['bytes'] / 1024:.1f} | "
                     f"{r['wall_seconds']} | {r['cpu_seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="QAT epochs")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3])
    parser.add_argument("--render", action="store_true", help="only rewrite qat.md from qat.json")
    args = parser.parse_args()
    if args.render:
        return render(json.loads((RESULTS / "qat.json").read_text()))
    torch.set_num_threads(1)
    recipe = load_recipe("default")
    task = load_task(recipe.data)
    model = baseline.load(recipe, task, progress=sys.stderr.isatty()).eval()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"ec-qat-bench-{os.getpid()}"
    fp32_art = export_onnx(model, task.example_inputs(1), work / "fp32.onnx")
    fp32 = {"test_accuracy": task.evaluate(fp32_art.runner(), "test")["accuracy"], "bytes": fp32_art.size_bytes}
    total_wall, total_cpu = time.perf_counter(), time.process_time()
    rows = [run("quant.ptq (ONNX Runtime quantize_static)", "quant.ptq", model, task, model, work)]
    for bits in args.bits:
        rows.append(run(f"PTQ w{bits}", "quant.qat", model, task, model, work, weight_bits=bits, epochs=0))
        rows.append(run(f"QAT w{bits}", "quant.qat", model, task, model, work, weight_bits=bits, epochs=args.epochs))
    low = min(args.bits)
    for group, label in ((0, "per channel"), (32, "groups of 32")):  # the toolkit's strongest post-training method
        rows.append(run(f"GPTQ w{low} {label} (quant.weight, weight-only)", "quant.weight", model, task, model, work,
                        bits=low, group_size=group))
    for lr in (1e-3, 2e-4):  # the soft term is T^2-scaled (x16): at the plain-QAT lr its steps are too large
        rows.append(run(f"QAT w{low} + KD (T=4, alpha=0.7), lr {lr:g}", "quant.qat", model, task, model, work,
                        weight_bits=low, epochs=args.epochs, lr=lr, distill={"temperature": 4.0, "alpha": 0.7}))
    rows.append(run(f"QAT w{low}, BN trained 2 epochs", "quant.qat", model, task, model, work, weight_bits=low,
                    epochs=args.epochs, freeze_bn_after=2))
    total_wall, total_cpu = time.perf_counter() - total_wall, time.process_time() - total_cpu
    result = {"command": COMMAND, "fp32": fp32, "rows": rows, "wall_seconds": round(total_wall, 1),
              "cpu_seconds": round(total_cpu, 1), "cpus": os.cpu_count(), "torch_threads": 1,
              "cpu_has_vnni": cpu_has_vnni()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "qat.json").write_text(json.dumps(result, indent=2))
    render(result)


def render(result: dict) -> None:
    """Write qat.md from the results (``--render`` redoes it from qat.json without rerunning)."""
    by_name = {r["name"]: r["test_accuracy"] for r in result["rows"]}
    gains = ", ".join(f"w{b} {(by_name[f'QAT w{b}'] - by_name[f'PTQ w{b}']) * 100:+.2f}"
                      for b in sorted({int(n[5:]) for n in by_name if n.startswith("PTQ w")}, reverse=True))
    low = min(int(n[5:]) for n in by_name if n.startswith("PTQ w"))
    gptq_channel, gptq_group, qat_low = (f"{100 * by_name.get(n, float('nan')):.2f}%" for n in (
        f"GPTQ w{low} per channel (quant.weight, weight-only)", f"GPTQ w{low} groups of 32 (quant.weight, weight-only)",
        f"QAT w{low}"))
    qat, ptq, gptq = (by_name[n] for n in (f"QAT w{low}", f"PTQ w{low}",
                                           f"GPTQ w{low} per channel (quant.weight, weight-only)"))
    verdict = (f"at {low} bits QAT {100 * qat:.1f}% vs the same grid's PTQ {100 * ptq:.1f}% "
               f"({'met' if qat > ptq else 'missed'}); against the strongest post-training method, GPTQ at "
               f"{100 * gptq:.1f}%, QAT is {'ahead' if qat > gptq else 'not ahead'} "
               f"({100 * (qat - gptq):+.1f} points, 1,000 test images: 0.1 point is one image).")
    machine = ("VNNI CPU, 8-bit weights on the full grid" if result["cpu_has_vnni"] else
               "no VNNI, 8-bit weights on the 7-bit grid")
    intro = " ".join(line.strip() for line in __doc__.split("\n\n")[1].splitlines())
    md = f"""# QAT vs PTQ (MNIST-5k, mnist_cnn default baseline)

Command: `{result["command"]}` (one seed, {result["torch_threads"]} torch thread; VNNI on this CPU:
{"yes" if result["cpu_has_vnni"] else "no, so 8-bit weights train on the 7-bit grid (`reduce_range: auto`)"}).

{intro}

{table(result["rows"], result["fp32"])}

QAT minus PTQ (test accuracy points; 1000 test images, so 0.1 point is one image): {gains}.

Against the toolkit's strongest post-training method at {low} bits, GPTQ (`quant.weight`, weight-only: activations
stay float, so it is an upper bound for post-training W{low}A8): per channel {gptq_channel}, groups of 32
{gptq_group}; QAT w{low} {qat_low}.

Target (issue #5): QAT improves over PTQ at a low bit width: {verdict}

This run: {machine}. An earlier run on an AVX2 machine (7-bit grid for 8-bit weights, another baseline: 97.4%)
had PTQ w3 at 67.5% and QAT w3 at 97.3%: how much the 3-bit grid costs post-training depends on the trained
weights. With distillation the soft term is T^2-scaled (x16), so the plain-QAT learning rate takes steps too
large for the BN-folded network (compare the two KD learning rates). Training BN on batch statistics (PT2E
simulated folding) costs several times the stage CPU time (its pattern rewriting).
Sizes are the ONNX file: weights below 8 bits sit in int8 containers (no packing), hence the same size.

All runs: {result["wall_seconds"]:.0f} s wall, {result["cpu_seconds"]:.0f} s CPU on a shared {result["cpus"]}-core
machine (other jobs running).
"""
    (RESULTS / "qat.md").write_text(md)
    print(md)

if __name__ == "__main__":
    main()
