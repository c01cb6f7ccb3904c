"""Label-free accuracy recovery after global magnitude pruning (issue 6), side by side in one process.

For each architecture: train the dense baseline once, prune it globally (prune.magnitude, scope global) at each
sparsity, then recover with: nothing, recover.bn, recover.bias, recover.mimic on unlabeled task inputs,
recover.mimic data-free (BN-statistics inversion), and label-based finetune (reference). Reports test accuracy,
labels and inputs used, recovery FLOPs (each stage's ``recovery_flops``), wall and process CPU time.

    recovered = (acc_method - acc_pruned) / (acc_finetune - acc_pruned)     (share of fine-tuning's gain)
    flops_vs_ft = recovery_flops_method / recovery_flops_finetune

Timings: wall time and process CPU time (``time.process_time``) on a shared machine; compare CPU times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

import edgecompress as ec
import edgecompress.prune  # registers prune.* before recover.*
from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.registry import get
from edgecompress.train import train

RESULTS = Path(__file__).parent / "results"
ARCHS = {"mnist_cnn": {}, "resnet20": {"width": 0.5}, "mobilenet_v2": {"width_mult": 0.5}}


def methods(args) -> dict[str, tuple[str, dict]]:
    calib = {"calib_samples": args.calib, "batch_size": 64}
    return {
        "none": ("", {}),
        "recover.bn": ("recover.bn", calib),
        "recover.bias": ("recover.bias", calib),
        "mimic (unlabeled)": ("recover.mimic", {**calib, "recalibrate_bn": True}),
        "mimic (unlabeled, no BN re-est.)": ("recover.mimic", {**calib, "recalibrate_bn": False}),
        "mimic (data-free)": ("recover.mimic", {"calib_samples": args.synth_samples, "batch_size": 64,
                                                "data": "synthetic", "synth_steps": args.synth_steps,
                                                "recalibrate_bn": True}),
        f"finetune {args.ft_epochs} ep (labels)": ("finetune", {"epochs": args.ft_epochs, "lr": args.ft_lr}),
    }


def run_method(stage: str, config: dict, pruned, dense, task, seed: int) -> dict:
    if not stage:
        return {"model": pruned, "info": {"recovery_flops": 0, "labels_used": 0, "samples_used": 0}, "wall": 0.0,
                "cpu": 0.0}
    s = get(stage)
    ctx = StageContext(task=task, teacher=dense, seed=seed, progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = s(pruned, s.config(**config), ctx)
    return {"model": model, "info": ctx.info, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def bench_arch(arch: str, args) -> list[dict]:
    task = load_task(data_spec(dataset=args.dataset))
    dense = zoo.build(arch, task.input_shape, task.num_classes, **ARCHS[arch])
    start = time.perf_counter()
    train(dense, task, epochs=args.base_epochs, lr=0.05, seed=0, progress=False)
    dense.eval()
    dense_acc = task.evaluate_model(dense)["accuracy"]
    print(f"{arch}: dense test accuracy {dense_acc:.4f} (trained in {time.perf_counter() - start:.0f}s)", flush=True)
    rows = []
    for sparsity in args.sparsities:
        pruned = ec.apply("prune.magnitude", dense, task, sparsity=sparsity, scope="global")
        for label, (stage, config) in methods(args).items():
            r = run_method(stage, config, pruned, dense, task, seed=0)
            info = r["info"]
            row = {"arch": arch, "sparsity": sparsity, "method": label, "dense_acc": dense_acc,
                   "acc": task.evaluate_model(r["model"])["accuracy"], "recovery_flops": info["recovery_flops"],
                   "labels_used": info["labels_used"], "samples_used": info["samples_used"],
                   "data": info.get("data", "train split (labelled)" if stage == "finetune" else "-"),
                   "wall_s": r["wall"], "cpu_s": r["cpu"], "skipped": info.get("skipped", {})}
            rows.append(row)
            print(f"  {sparsity:.0%} {label:32s} acc {row['acc']:.4f} flops {row['recovery_flops'] / 1e9:8.2f}G "
                  f"cpu {row['cpu_s']:6.1f}s wall {row['wall_s']:6.1f}s", flush=True)
    return rows


def add_ratios(rows: list[dict]) -> None:
    for row in rows:
        group = [r for r in rows if r["arch"] == row["arch"] and r["sparsity"] == row["sparsity"]]
        pruned = next(r for r in group if r["method"] == "none")
        ft = next(r for r in group if r["method"].startswith("finetune"))
        gain = ft["acc"] - pruned["acc"]
        row["recovered"] = (row["acc"] - pruned["acc"]) / gain if gain > 0 else None
        row["flops_vs_ft"] = row["recovery_flops"] / ft["recovery_flops"]


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Label-free recovery after global magnitude pruning (issue 6)", "",
             f"Command: `{command}`", "",
             ("recovered = (acc − acc_pruned) / (acc_finetune − acc_pruned); FLOPs ratio = recovery FLOPs / "
              "fine-tuning's recovery FLOPs. Accuracy: test split. CPU = process CPU time (shared machine)."), "",
             ("| arch | sparsity | method | test acc | recovered | labels | inputs | data | recovery GFLOPs | "
              "FLOPs vs ft | CPU s | wall s |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "-" if r["recovered"] is None else f"{r['recovered']:.0%}"
        lines.append(f"| {r['arch']} | {r['sparsity']:.0%} | {r['method']} | {r['acc']:.4f} | {rec} | "
                     f"{r['labels_used']} | {r['samples_used']} | {r['data']} | {r['recovery_flops'] / 1e9:.2f} | "
                     f"{r['flops_vs_ft']:.1%} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CPU-sized default configuration (this is the default)")
    p.add_argument("--archs", nargs="+", default=["mnist_cnn", "resnet20"], choices=list(ARCHS))
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.8, 0.9])
    p.add_argument("--base-epochs", type=int, default=3)
    p.add_argument("--calib", type=int, default=128, help="unlabeled calibration inputs")
    p.add_argument("--synth-samples", type=int, default=64, help="data-free: synthetic inputs")
    p.add_argument("--synth-steps", type=int, default=20, help="data-free: Adam steps")
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="mimic_recovery")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [row for arch in args.archs for row in bench_arch(arch, args)]
    add_ratios(rows)
    command = "python benchmarks/mimic_recovery.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "args": vars(args), "total_wall_s": time.perf_counter() - start,
            "torch": torch.__version__}
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(rows, command) + f"\nTotal wall time {meta['total_wall_s']:.0f}s.\n")
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
