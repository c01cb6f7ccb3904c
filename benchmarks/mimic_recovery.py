"""Label-free accuracy recovery after global magnitude pruning (issue 6), side by side in one process.

For each architecture: train the dense baseline once, prune it globally (prune.magnitude, scope global) at each
sparsity, then recover with: nothing, recover.bn, recover.bias, recover.mimic on unlabeled task inputs,
recover.mimic data-free (BN-statistics inversion), a short label-based finetune and a converged one (fine-tuned
until the validation accuracy stops improving, see ``converged_finetune``). Reports test accuracy, labels and
inputs used, recovery FLOPs (each stage's ``recovery_flops``), wall and process CPU time. ``--datafree-seeds N``
repeats the data-free rows with stage seeds 0..N-1 on the same pruned model (synthetic inputs and mimic's
sampled positions change with the seed).

    recovered = (acc_method - acc_pruned) / (acc_finetune - acc_pruned)     (share of fine-tuning's gain)
    flops_vs_ft = recovery_flops_method / recovery_flops_finetune
    against the converged fine-tune: gap = acc_method - acc_converged; recovered, FLOPs and CPU-time shares alike

Timings: wall time and process CPU time (``time.process_time``) on a shared machine; compare CPU times.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.utils.prune as tprune

import edgecompress as ec
import edgecompress.prune  # registers prune.* before recover.*
from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.measure import count_macs
from edgecompress.recover.flops import forward_flops, training_flops
from edgecompress.registry import get
from edgecompress.train import mask_zeros, train

RESULTS = Path(__file__).parent / "results"
ARCHS = {"mnist_cnn": {}, "resnet20": {"width": 0.5}, "mobilenet_v2": {"width_mult": 0.5}}
CONVERGED = "finetune converged (labels)"


def methods(args) -> dict[str, tuple[str, dict]]:
    calib = {"calib_samples": args.calib, "batch_size": 64}
    synth = {"calib_samples": args.synth_samples, "batch_size": 64, "data": "synthetic"}
    return {
        "none": ("", {}),
        "recover.bn": ("recover.bn", calib),
        "recover.bias": ("recover.bias", calib),
        "mimic (unlabeled)": ("recover.mimic", {**calib, "recalibrate_bn": True}),
        "mimic (unlabeled, no BN re-est.)": ("recover.mimic", {**calib, "recalibrate_bn": False}),
        "mimic (data-free)": ("recover.mimic", {**synth, "synth_steps": args.synth_steps}),
        "mimic (data-free, BN re-est.)": ("recover.mimic", {**synth, "synth_steps": args.synth_steps,
                                                            "recalibrate_bn": True}),
        "mimic (data-free, 20 steps)": ("recover.mimic", {**synth, "synth_steps": 20}),
        "mimic (data-free, 20 steps + BN re-est.)": ("recover.mimic", {**synth, "synth_steps": 20,
                                                                       "recalibrate_bn": True}),
        f"finetune {args.ft_epochs} ep (labels)": ("finetune", {"epochs": args.ft_epochs, "lr": args.ft_lr}),
    }


def datafree_labels(args) -> list[str]:
    """The rows repeated over ``--datafree-seeds`` stage seeds."""
    return [label for label, (_, config) in methods(args).items() if config.get("data") == "synthetic"]


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


def converged_finetune(pruned, task, args, seed: int = 0) -> dict:
    """Fine-tune with labels until the validation accuracy stops improving (validation split, not the test split).

    SGD at a constant learning rate (``--ft-lr``), one epoch per ``train`` call (shuffled with seed + epoch);
    after ``--ftc-patience`` epochs without a new best validation accuracy the rate is divided by 10, and after
    ``--ftc-decays`` such cuts the next plateau stops the run (or ``--ftc-max-epochs``). The weights of the best
    validation epoch are kept; zeros stay zero. FLOPs: training for every epoch run plus one validation pass per
    epoch; labels: the train split and the validation split (early stopping reads its labels).
    """
    model = copy.deepcopy(pruned)
    masked = mask_zeros(model)
    lr, best, best_epoch, state, stale, cuts, history = args.ft_lr, -1.0, 0, None, 0, 0, []
    wall, cpu = time.perf_counter(), time.process_time()
    for epoch in range(1, args.ftc_max_epochs + 1):
        val = train(model, task, epochs=1, lr=lr, schedule="constant", seed=seed + epoch,
                    progress=False)[-1]["val_accuracy"]
        history.append({"epoch": epoch, "lr": lr, "val_accuracy": val})
        if val > best:
            best, best_epoch, state, stale = val, epoch, copy.deepcopy(model.state_dict()), 0
            continue
        stale += 1
        if stale >= args.ftc_patience:
            if cuts == args.ftc_decays:
                break
            lr, cuts, stale = lr / 10, cuts + 1, 0
    model.load_state_dict(state)
    for m in masked:
        tprune.remove(m, "weight")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    macs, train_n, val_n = count_macs(model, task.example_inputs()), len(task.train), len(task.split("val"))
    flops = training_flops(macs, train_n, len(history)) + forward_flops(macs, val_n) * len(history)
    info = {"recovery_flops": flops, "labels_used": train_n + val_n, "samples_used": train_n + val_n,
            "data": "train split (labelled) + val split (early stopping)", "epochs": len(history),
            "best_epoch": best_epoch, "history": history}
    return {"model": model.eval(), "info": info, "wall": wall, "cpu": cpu}


def recover(label: str, pruned, dense, task, args, seed: int = 0) -> dict:
    """Run the method ``label`` on the pruned model: ``{"model", "info", "wall", "cpu"}``."""
    if label == CONVERGED:
        return converged_finetune(pruned, task, args, seed)
    stage, config = methods(args)[label]
    return run_method(stage, config, pruned, dense, task, seed)


def row_of(arch: str, sparsity: float, label: str, r: dict, task, dense_acc: float) -> dict:
    info = r["info"]
    return {"arch": arch, "sparsity": sparsity, "method": label, "dense_acc": dense_acc,
            "acc": task.evaluate_model(r["model"])["accuracy"], "recovery_flops": info["recovery_flops"],
            "labels_used": info["labels_used"], "samples_used": info["samples_used"],
            "data": info.get("data", "train split (labelled)" if label.startswith("finetune") else "-"),
            "wall_s": r["wall"], "cpu_s": r["cpu"], "skipped": info.get("skipped", {}),
            **{k: info[k] for k in ("epochs", "best_epoch", "history", "synthesis") if k in info}}


def bench_arch(arch: str, args) -> list[dict]:
    task = load_task(data_spec(dataset=args.dataset))
    torch.manual_seed(0)  # the dense model's initial weights (unseeded, every run pruned a different model)
    dense = zoo.build(arch, task.input_shape, task.num_classes, **ARCHS[arch])
    start = time.perf_counter()
    train(dense, task, epochs=args.base_epochs, lr=0.05, seed=0, progress=False)
    dense.eval()
    dense_acc = task.evaluate_model(dense)["accuracy"]
    print(f"{arch}: dense test accuracy {dense_acc:.4f} (trained in {time.perf_counter() - start:.0f}s)", flush=True)
    rows = []
    for sparsity in args.sparsities:
        pruned = ec.apply("prune.magnitude", dense, task, sparsity=sparsity, scope="global")
        for label in [*methods(args), CONVERGED]:
            row = row_of(arch, sparsity, label, recover(label, pruned, dense, task, args), task, dense_acc)
            if label in datafree_labels(args):
                row["seed_accs"] = [row["acc"]] + [
                    task.evaluate_model(recover(label, pruned, dense, task, args, seed)["model"])["accuracy"]
                    for seed in range(1, args.datafree_seeds)]
            rows.append(row)
            print(f"  {sparsity:.0%} {label:32s} acc {row['acc']:.4f} flops {row['recovery_flops'] / 1e9:8.2f}G "
                  f"cpu {row['cpu_s']:6.1f}s wall {row['wall_s']:6.1f}s {row.get('seed_accs', '')}", flush=True)
    return rows


def share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def add_ratios(rows: list[dict]) -> None:
    """Each row against the short fine-tune (``recovered``, ``flops_vs_ft``) and the converged one (``*_conv``)."""
    for row in rows:
        group = [r for r in rows if r["arch"] == row["arch"] and r["sparsity"] == row["sparsity"]]
        pruned = next(r for r in group if r["method"] == "none")
        ft = next(r for r in group if r["method"].startswith("finetune") and r["method"] != CONVERGED)
        conv = next(r for r in group if r["method"] == CONVERGED)
        row["recovered"] = share(row["acc"] - pruned["acc"], ft["acc"] - pruned["acc"])
        row["flops_vs_ft"] = row["recovery_flops"] / ft["recovery_flops"]
        row["gap_conv_pts"] = 100 * (row["acc"] - conv["acc"])
        row["recovered_conv"] = share(row["acc"] - pruned["acc"], conv["acc"] - pruned["acc"])
        row["flops_vs_conv"] = row["recovery_flops"] / conv["recovery_flops"]
        row["cpu_vs_conv"] = row["cpu_s"] / conv["cpu_s"]
        if "seed_accs" in row:
            rec = [share(a - pruned["acc"], conv["acc"] - pruned["acc"]) for a in row["seed_accs"]]
            row["seed_recovered_conv"] = rec


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def spread(xs: list[float | None], scale: float = 1.0, fmt: str = ".2f") -> str:
    """mean ± sample std (min-max) of the values that are not None ("-" if none is)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return (f"{scale * statistics.mean(xs):{fmt}} ± {scale * sd:{fmt}} "
            f"({scale * min(xs):{fmt}}-{scale * max(xs):{fmt}})")


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Label-free recovery after global magnitude pruning (issue 6)", "",
             f"Command: `{command}`", "",
             ("recovered = (acc − acc_pruned) / (acc_finetune − acc_pruned); FLOPs ratio = recovery FLOPs / "
              "fine-tuning's recovery FLOPs. Accuracy: test split. CPU = process CPU time (shared machine)."), "",
             ("| arch | sparsity | method | test acc | recovered | labels | inputs | data | recovery GFLOPs | "
              "FLOPs vs ft | CPU s | wall s |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['sparsity']:.0%} | {r['method']} | {r['acc']:.4f} | {pct(r['recovered'])} | "
                     f"{r['labels_used']} | {r['samples_used']} | {r['data']} | {r['recovery_flops'] / 1e9:.2f} | "
                     f"{r['flops_vs_ft']:.1%} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} |")
    lines += ["", "## Against the converged fine-tune", "",
              ("Converged = fine-tuned with labels until the validation accuracy (500 held-out training images, not "
               "the test split) stops improving: constant learning rate, divided by 10 on each plateau, best "
               "validation epoch kept (`converged_finetune`). gap = test accuracy − the converged fine-tune's, in "
               "points; shares = the method's / the converged fine-tune's."), "",
              "| arch | sparsity | converged: epochs (best) | its test acc | GFLOPs | CPU s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['sparsity']:.0%} | {r['epochs']} ({r['best_epoch']}) | {r['acc']:.4f} | "
              f"{r['recovery_flops'] / 1e9:.1f} | {r['cpu_s']:.1f} |" for r in rows if r["method"] == CONVERGED]
    lines += ["", "| arch | sparsity | method | test acc | gap (pts) | recovered | FLOPs share | CPU share |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['sparsity']:.0%} | {r['method']} | {r['acc']:.4f} | {r['gap_conv_pts']:+.1f} | "
              f"{pct(r['recovered_conv'])} | {r['flops_vs_conv']:.2%} | {r['cpu_vs_conv']:.2%} |"
              for r in rows if r["method"] not in ("none", CONVERGED)]
    seeded = [r for r in rows if len(r.get("seed_accs", [])) > 1]
    if seeded:
        lines += ["", f"## Data-free rows over {len(seeded[0]['seed_accs'])} stage seeds", "",
                  ("Same dense model and pruned model; the stage seed draws the synthetic inputs' starting noise and "
                   "mimic's sampled output positions. Seed 0 is the row in the tables above. Spread: mean ± sample "
                   "std (min-max)."), "",
                  "| arch | sparsity | method | test acc per seed | test acc | recovered of converged's gain (%) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['arch']} | {r['sparsity']:.0%} | {r['method']} | "
                  f"{', '.join(f'{a:.3f}' for a in r['seed_accs'])} | {spread(r['seed_accs'], 1, '.4f')} | "
                  f"{spread(r['seed_recovered_conv'], 100, '.0f')} |" for r in seeded]
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
    p.add_argument("--synth-steps", type=int, default=50, help="data-free: Adam steps (the stage's default)")
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--ft-lr", type=float, default=0.01, help="fine-tuning learning rate (both fine-tunes)")
    p.add_argument("--ftc-max-epochs", type=int, default=30, help="converged fine-tune: epoch cap")
    p.add_argument("--ftc-patience", type=int, default=2, help="converged fine-tune: epochs without a new best "
                                                                 "validation accuracy before the rate is cut")
    p.add_argument("--ftc-decays", type=int, default=2, help="converged fine-tune: rate cuts before it stops")
    p.add_argument("--datafree-seeds", type=int, default=1, help="stage seeds for the data-free rows")
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
