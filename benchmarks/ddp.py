"""Data-parallel fine-tuning and calibration on 2 CPU processes (gloo) vs one process, MNIST-5k.

1. Fine-tuning: the same recipe (mnist_cnn baseline, ``prune.structured`` 50%, ``finetune`` 4 epochs distilling
   from the baseline, INT8 ``quant.ptq``) run by ``edgecompress run`` and by ``torchrun --nproc-per-node 2 edgecompress run`` (no recipe
   change; the baseline comes from the cache the first run filled). Compared: test accuracy of each stage's
   artifact in ONNX Runtime, the finetune stage's wall time, and that only rank 0 wrote a run directory.
2. Calibration: GPTQ (4-bit, ``quant.weight``'s engine) of the same trained model on 512 calibration images in
   one process and split over 2 processes (each rank observes half of the batches; the Hessians are all-reduced).
   Compared: the largest absolute difference of any quantized weight.

    python benchmarks/ddp.py                  # writes benchmarks/results/ddp.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
RECIPE = """\
name: ddp-bench
model: {zoo: mnist_cnn, pretrain: {epochs: 4, lr: 0.05}}
data: {dataset: mnist5k}
threads: 1
stages:
  - {method: prune.structured, ratio: 0.5}
  - {method: finetune, epochs: 4, lr: 0.02, distill: {temperature: 4.0, alpha: 0.7}}
  - {method: quant.ptq, calib_samples: 256}
export: {threads: 1, repeats: 20, warmup: 5}
"""
LAYERS = ["features.0", "features.4", "features.8", "features.11", "classifier"]


def calibrate(out: Path) -> None:
    """GPTQ of a seeded 2-epoch mnist_cnn; run in one process or under torchrun (rank 0 saves the result)."""
    from edgecompress import distributed, zoo
    from edgecompress.data import data_spec, load_task
    from edgecompress.quant.weights.model import quantize_layers
    from edgecompress.quant.weights.quantizer import QuantSpec
    from edgecompress.train import train

    torch.set_num_threads(1)
    task = load_task(data_spec(dataset="mnist5k"))
    torch.manual_seed(0)
    model = zoo.build("mnist_cnn", task.input_shape, task.num_classes).eval()
    train(model, task, epochs=2, lr=0.05, progress=False)  # before the process group: every rank the same model
    distributed.start("cpu")
    x = task.calibration(512, seed=0)
    began = time.perf_counter()
    quantize_layers(model.eval(), {n: QuantSpec(bits=4) for n in LAYERS}, x, "gptq")
    seconds = time.perf_counter() - began
    if distributed.is_main():
        torch.save({"state": model.state_dict(), "seconds": seconds, "world": distributed.world()}, out)
    distributed.stop()


def run_recipe(recipe: Path, out: Path, procs: int) -> tuple[dict, float]:
    exe = shutil.which("edgecompress")
    cmd = ([exe] if procs == 1 else [shutil.which("torchrun"), "--nproc-per-node", str(procs), exe])
    began = time.perf_counter()
    subprocess.run([*cmd, "run", str(recipe), "--out", str(out), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate-to", type=Path, help=argparse.SUPPRESS)  # the torchrun worker
    args = parser.parse_args()
    if args.calibrate_to:
        return calibrate(args.calibrate_to)
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = tmp / "recipe.yaml"
        recipe.write_text(RECIPE)
        runs = {}
        for procs in (1, 2):
            metrics, wall = run_recipe(recipe, tmp / f"run{procs}", procs)
            runs[procs] = {"wall_seconds": round(wall, 1), "stages": [
                {"stage": h["name"], "test_accuracy": h["metrics"].get("accuracy"),
                 "stage_seconds": h["metrics"].get("stage_seconds")} for h in metrics["history"]]}
        written = sorted(p.name for p in tmp.iterdir() if p.name.startswith("run"))
        scratch_left = [str(p) for p in Path(tempfile.gettempdir()).glob("edgecompress-rank1-*")]
        calib = {}
        for procs in (1, 2):
            out = tmp / f"calib{procs}.pt"
            script = [sys.executable, __file__, "--calibrate-to", str(out)]
            cmd = script if procs == 1 else [shutil.which("torchrun"), "--nproc-per-node", "2", *script[1:]]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            calib[procs] = torch.load(out)
        diff = max(float((calib[1]["state"][k] - calib[2]["state"][k]).abs().max()) for k in calib[1]["state"])
    fine = {p: next(s for s in runs[p]["stages"] if s["stage"] == "finetune") for p in runs}
    doc = {"command": "python benchmarks/ddp.py", "recipe": RECIPE, "runs": runs, "run_dirs_written": written,
           "rank1_scratch_left": scratch_left,
           "finetune_accuracy_gap_points": round(100 * (fine[2]["test_accuracy"] - fine[1]["test_accuracy"]), 2),
           "calibration": {"max_abs_weight_difference": diff, "seconds_1": round(calib[1]["seconds"], 2),
                           "seconds_2": round(calib[2]["seconds"], 2), "world": calib[2]["world"]}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ddp.json").write_text(json.dumps(doc, indent=2))
    (RESULTS / "ddp.md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    runs = {int(k): v for k, v in doc["runs"].items()}  # JSON keys are strings
    lines = ["# Data-parallel fine-tuning and calibration: 2 CPU processes (gloo) vs 1", "",
             f"Command: `{doc['command']}`. Machine: 2 cores shared with other agents (timings are indicative "
             "only), torch 1 thread per process, MNIST-5k (4,000 train / 1,000 test images).", "",
             "| stage | test acc % (1 process) | test acc % (2 processes) | stage s (1) | stage s (2) |",
             "|---|---:|---:|---:|---:|"]
    for a, b in zip(runs[1]["stages"], runs[2]["stages"]):
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        lines.append(f"| {a['stage']} | {pct(a['test_accuracy'])} | {pct(b['test_accuracy'])} | "
                     f"{a['stage_seconds']} | {b['stage_seconds']} |")
    c = doc["calibration"]
    lines += ["", f"Fine-tuning accuracy gap (2 - 1 processes): {doc['finetune_accuracy_gap_points']:+.2f} points "
                  f"(target: within +-0.5). Whole runs: {runs[1]['wall_seconds']} s vs {runs[2]['wall_seconds']} s. "
                  f"Run directories in the output folder: {', '.join(doc['run_dirs_written'])} (one per run: rank 1 of the "
                  f"torchrun run wrote a scratch copy, left behind: {doc.get('rank1_scratch_left', 'not checked')}).",
              "", f"GPTQ calibration split over {c['world']} processes vs one: largest absolute weight difference "
                  f"{c['max_abs_weight_difference']:.2e} (target: <= 1e-6); {c['seconds_1']} s vs {c['seconds_2']} s.",
              "", "Recipe:", "", "```yaml", doc["recipe"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
