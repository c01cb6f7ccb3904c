"""Latency-aware structured pruning on a trained network: accuracy at the same measured speed.

ResNet-20 trained on MNIST-5k (cached after the first run) is pruned three ways, each followed by
``recover.bn`` and then one epoch of fine-tuning with distillation from the dense model (the same for all):
  uniform = ``prune.structured`` (L2, one ratio, ``round_to: auto``);
  sensitivity (MACs) = ``scope: sensitivity`` (activation importance) with the MACs of the uniform model as its
  budget;
  latency-aware = ``scope: sensitivity`` with ``target_latency_ratio`` = the uniform model's latency ratio as
  the stage measures it, and ``remove_blocks`` (whole residual blocks weighed against thinning).
All are exported to ONNX and timed side by side with the dense model in interleaved rounds (ONNX Runtime,
1 thread, batch 1, the export settings the latency-aware stage measured at; bursts of 200 runs, i.e. about
0.1 s of the dense model). Accuracy: the 1,000 test images.

    python benchmarks/latency_aware_pruning.py      # writes benchmarks/results/latency_aware_pruning.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from edgecompress import zoo
from edgecompress.baseline import cache_dir
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.measure.counts import count_macs, count_params
from edgecompress.measure.latency import interleaved, speedup
from edgecompress.prune.latency_cost import LatencyCost
from edgecompress.registry import get
from edgecompress.runtimes import export
from edgecompress.settings import ExportSettings
from edgecompress.train import accuracy, train

RESULTS = Path(__file__).parent / "results"
COMMAND = "python benchmarks/latency_aware_pruning.py"


def baseline(task, epochs: int) -> torch.nn.Module:
    model = zoo.build("resnet20", task.input_shape, task.num_classes)
    path = cache_dir() / f"bench-latency-aware-resnet20-mnist5k-e{epochs}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model, task, epochs=epochs, lr=0.05, seed=0, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="the uniform variant's channel ratio")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_task(data_spec(dataset="mnist5k"))
    dense = baseline(task, args.pretrain_epochs)
    settings = ExportSettings(threads=1, batch=1)
    example = task.example_inputs(1)
    stage, bn = get("prune.structured"), get("recover.bn")

    def prune(**options) -> tuple[torch.nn.Module, dict, float]:
        ctx = StageContext(task=task, progress=False, export=settings, teacher=dense)
        start = time.process_time()
        model = stage(dense, stage.config(**options), ctx)
        model = bn(model, bn.config(), StageContext(task=task, progress=False))
        return model, ctx.info, time.process_time() - start

    models, info, cpu = {}, {}, {}
    models["uniform"], info["uniform"], cpu["uniform"] = prune(ratio=args.ratio)
    macs_ratio = count_macs(models["uniform"], example) / count_macs(dense, example)
    uniform_latency = LatencyCost(dense, "onnxruntime", 1, 1, task.input_shape, "benchmark")(models["uniform"])
    models["sensitivity (MACs)"], info["sensitivity (MACs)"], cpu["sensitivity (MACs)"] = prune(
        scope="sensitivity", criterion="activation", target_macs_ratio=macs_ratio)
    models["latency-aware"], info["latency-aware"], cpu["latency-aware"] = prune(
        scope="sensitivity", criterion="activation", target_latency_ratio=round(uniform_latency, 3),
        remove_blocks=True)
    rows = {"dense": {"accuracy": accuracy(dense, task, "test"), "macs": count_macs(dense, example),
                      "params": count_params(dense)}}
    for name, model in models.items():
        rows[name] = {"accuracy_bn": accuracy(model, task, "test"), "macs": count_macs(model, example),
                      "params": count_params(model), "prune_cpu_s": round(cpu[name], 1),
                      "removed_blocks": [b for s in info[name].get("sensitivity", {}).get("steps", [])
                                         for b in s["removed_blocks"]]}
        train(model, task, epochs=1, lr=0.01, teacher=dense, alpha=0.5, seed=0, progress=False)
        rows[name]["accuracy"] = accuracy(model.eval(), task, "test")
    out = Path(tempfile.mkdtemp(prefix="ec-latency-aware-"))
    arts = [export(m, example, out / n.replace(" ", "_"), settings) for n, m in [("dense", dense), *models.items()]]
    ms = interleaved(arts, task.input_shape, threads=1, batch=1, rounds=args.rounds, repeats=200 * args.rounds)
    for name, times in zip(rows, ms):
        rows[name]["speedup"] = speedup(ms[0], times)
    doc = {"command": COMMAND + (f" --ratio {args.ratio}" if args.ratio != 0.5 else ""),
           "uniform_latency_ratio_in_stage": uniform_latency, "macs_ratio": macs_ratio,
           "latency_aware_stage": info["latency-aware"].get("latency"), "load_average_1min": os.getloadavg()[0],
           "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency_aware_pruning.json").write_text(json.dumps(doc, indent=1))
    lines = ["| variant | MACs ÷ | params | speed-up (IQR) | accuracy after recover.bn | after 1 epoch KD | blocks "
             "removed | prune CPU s |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    macs0 = rows["dense"]["macs"]
    for name, r in rows.items():
        s = r["speedup"]
        lines.append(f"| {name} | {macs0 / r['macs']:.2f} | {r['params']:,} | {s['median']:.2f} ({s['q1']:.2f}–"
                     f"{s['q3']:.2f}) | {100 * r.get('accuracy_bn', r['accuracy']):.1f}% | "
                     f"{100 * r['accuracy']:.1f}% | {', '.join(r.get('removed_blocks', [])) or '-'} | "
                     f"{r.get('prune_cpu_s', '')} |")
    text = (f"# Latency-aware structured pruning: accuracy at the same measured speed\n\n"
            f"{__doc__.split(chr(10), 2)[2].strip()}\n\nThe uniform model measured {uniform_latency:.3f}x the dense "
            f"latency in the stage's own side-by-side timing; that is the latency-aware target. The machine was "
            f"shared with other jobs (1-minute load average {doc['load_average_1min']:.1f}), so only ratios timed "
            f"side by side are meaningful.\n\n" + "\n".join(lines) + f"\n\nMade by `{doc['command']}`.\n")
    (RESULTS / "latency_aware_pruning.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
