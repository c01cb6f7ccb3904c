"""GPU check of accelerator placement, prepared for a session that has the GPU machine. NOT RUN ON A GPU YET: it was
written and smoke-tested (``--smoke``) on a CPU-only machine, so its CUDA paths have never executed.

Three parts, within about 8 minutes of machine time (``budget_s``), written to benchmarks/results/gpu_check.json:

(a) ``finetune``: one ``finetune`` epoch of ResNet-56 (width 1) on MNIST-5k through the pipeline, once with
    ``device: cpu`` (all the machine's cores) and once with ``device: cuda``; the speed ratio is the CPU stage's wall
    seconds over the GPU stage's (``StageReport.wall_seconds``). Each leg is warmed up first (start-up costs
    are not timed). The model starts from random weights: speed does not depend on them, so no pretraining is spent.
    The GPU run also records the final model's ``gpu_latency_ms`` (CUDA events) and ``gpu_energy_mj`` (NVML, when
    nvidia-ml-py is installed), and every stage's ``report.device``.
(b) ``ice``: ``benchmarks/ice_pruning.py --device cuda`` at ResNet-56 (width 1) on MNIST-5k, one block per step (its
    default ``--ignored`` keeps the residual stream, so a step is one block's inner channels: 27 steps), seeds 0 1 2.
    Cut to fit: 2 of its 8 variants (``conventional`` and ``ice+bn``) and 10 pretraining epochs instead of 15. It
    gets what is left of the budget after (a) less ``ptq_reserve_s``; when it runs out it is stopped and the runs it
    finished (one JSON line each) are kept.
(c) ``ptq``: the INT8 comparisons of ``benchmarks/ptq_peers.py`` on this machine's CPU (its VNNI/AMX flags are
    recorded): ``mnist_cnn`` first, ``mobilenet_v2`` only if at least ``MOBILENET_MIN_S`` are left; one calibration
    draw (``--calib-seeds 1``, the committed run used 5), ``--repeats 100``; peers that are not installed are skipped.

    python benchmarks/gpu_check.py            # on the GPU machine (a CUDA build of torch)
    python benchmarks/gpu_check.py --smoke    # tiny sizes, any machine, under a minute: device auto (CPU here)

``--smoke`` uses mnist_cnn/ResNet-20 x0.25 on digits (ICE: 2 batches per fine-tune) within a 50 s budget and
writes to a temporary folder (printed) unless ``--out-dir`` is given. ptq_peers.py has no tiny size: on a slow
machine the smoke stops it at the budget (recorded as ``stopped``); a full smoke-size run of it took 118 s on the
2 shared cores it was written on (60 s of it training its baseline, cached after).
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
import time
from pathlib import Path

import torch

from edgecompress.pipeline import Pipeline
from edgecompress.placement import resolve_device
from edgecompress.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
MOBILENET_MIN_S = 90  # (c) runs mobilenet_v2 after mnist_cnn only with this much left
CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")

SIZES = {  # budget_s: the whole check; ptq_reserve_s: kept for (c) when (b) gets its share; repeats: CPU latency
    False: {"budget_s": 480, "ptq_reserve_s": 150, "repeats": 20,
            "data": "mnist5k", "model": {"zoo": "resnet56", "kwargs": {"width": 1.0}},
            "ice": ["--model", "resnet56", "--width", "1", "--dataset", "mnist5k", "--pretrain-epochs", "10",
                    "--seeds", "0", "1", "2"],
            "ptq": ["--repeats", "100", "--calib-seeds", "1"]},
    True: {"budget_s": 50, "ptq_reserve_s": 20, "repeats": 3,
           "data": "digits", "model": {"zoo": "mnist_cnn", "kwargs": {"width": 0.5}},
           "ice": ["--model", "resnet20", "--width", "0.25", "--dataset", "digits", "--pretrain-epochs", "1",
                   "--seeds", "0", "--max-batches", "2"],
           "ptq": ["--repeats", "5", "--calib-seeds", "1"]},
}


def machine() -> dict:
    """CPU model and int8 flags, torch and CUDA versions, the GPU and whether NVML can be read."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    lines = cpuinfo.splitlines()
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        import pynvml  # noqa: F401
        nvml = True
    except ImportError:
        nvml = False
    return {"cpu": name, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_int8_flags": {f: f in flags for f in CPU_FLAGS}, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "gpu": gpu, "nvidia_ml_py": nvml, "python": platform.python_version()}


# -- (a) fine-tuning speed, GPU vs CPU, through the pipeline ------------------------------------------------------


def warm_up(device: torch.device, size: dict) -> None:
    """Three training batches, a validation pass and a MAC count of the architecture on ``device``: the first calls
    import, initialise and pick kernels for these shapes (CUDA/cuDNN start-up too), so the timed legs do not."""
    from edgecompress import zoo
    from edgecompress.data import data_spec, load_task
    from edgecompress.measure import count_macs
    from edgecompress.train import train

    task = load_task(data_spec(dataset=size["data"]))
    net = zoo.build(size["model"]["zoo"], task.input_shape, task.num_classes, **size["model"]["kwargs"]).to(device)
    train(net, task, epochs=1, lr=0.01, max_batches=3, progress=False)
    count_macs(net, task.example_inputs(1).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finetune_leg(device: str, smoke: bool, work: Path) -> dict:
    """One pipeline run (baseline + one finetune epoch) on ``device``; the finetune stage's report and GPU metrics."""
    size = SIZES[smoke]
    recipe = parse_recipe({
        "name": f"gpu-check-{device.replace(':', '')}", "seed": 0, "device": device, "data": {"dataset": size["data"]},
        "model": size["model"], "stages": [{"method": "finetune", "epochs": 1, "lr": 0.01}],
        "export": {"repeats": size["repeats"], "warmup": 2}, "targets": {"max_accuracy_drop": None},
    })
    warm_up(resolve_device(device), size)
    result = Pipeline(recipe, work / recipe.name, progress=False, report=False).run()
    stage = result.history[1]
    return {"asked": device, "devices": [h["report"]["device"] for h in result.history],
            "wall_s": stage["report"]["wall_seconds"], "cpu_s": stage["report"]["cpu_seconds"],
            "val_accuracy_after": stage["info"]["val_accuracy_after"],
            **{k: v for k, v in stage["metrics"].items() if k.startswith("gpu_")}}


def part_finetune(smoke: bool, work: Path) -> dict:
    cpu = finetune_leg("cpu", smoke, work)
    gpu = finetune_leg("auto" if smoke else "cuda", smoke, work)
    return {"cpu": cpu, "gpu": gpu, "speed_ratio_cpu_over_gpu": round(cpu["wall_s"] / gpu["wall_s"], 2),
            "gpu_leg_ran_on": gpu["devices"][1]}


# -- (b) ICE at ResNet-56 on the GPU -------------------------------------------------------------------------------


def run_script(args: list[str], budget_s: float) -> tuple[list[dict], str | None]:
    """Run a benchmark script for at most ``budget_s``; the JSON lines it printed, and why it stopped early."""
    try:
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=budget_s)
        stdout = done.stdout
        stopped = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-800:]}"
    except subprocess.TimeoutExpired as err:
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        stopped = f"stopped after its budget of {budget_s:.0f} s"
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return rows, stopped


def part_ice(smoke: bool, out_dir: Path, budget_s: float) -> dict:
    variants = ["conventional", "ice+bn"]
    args = ["benchmarks/ice_pruning.py", "--device", "auto" if smoke else "cuda", *SIZES[smoke]["ice"],
            "--variants", *variants, "--name", str(out_dir / "gpu_check_ice")]
    rows, stopped = run_script(args, budget_s)
    means = {v: {k: statistics.mean(r[k] for r in rows if r["variant"] == v) for k in ("wall_s", "test_accuracy")}
             for v in variants if any(r["variant"] == v for r in rows)}
    speedup = (means["conventional"]["wall_s"] / means["ice+bn"]["wall_s"]) if len(means) == 2 else None
    return {"command": " ".join(["python", *args]), "budget_s": round(budget_s), "stopped": stopped,
            "runs_finished": len(rows), "means": means, "ice+bn_wall_speedup": speedup, "runs": rows}


# -- (c) INT8 peers on this machine's CPU --------------------------------------------------------------------------


def part_ptq(smoke: bool, out_dir: Path, budget_s: float) -> dict:
    results, began = {}, time.perf_counter()
    for model in ("mnist_cnn", "mobilenet_v2"):
        left = budget_s - (time.perf_counter() - began)
        if model != "mnist_cnn" and (smoke or left < MOBILENET_MIN_S):
            results[model] = {"skipped": "smoke run" if smoke else f"only {left:.0f} s of the budget left"}
            continue
        out = out_dir / f"gpu_check_ptq_peers_{model}"
        args = ["benchmarks/ptq_peers.py", "--models", model, *SIZES[smoke]["ptq"], "--out", str(out)]
        _, stopped = run_script(args, left)
        written = out.with_suffix(".json")
        doc = json.loads(written.read_text()) if stopped is None and written.is_file() else {}
        results[model] = {"command": " ".join(["python", *args]), "stopped": stopped, "vnni": doc.get("vnni"),
                          "targets": doc.get("targets"), "wall_s": doc.get("wall_s"),
                          "rows": doc.get("results", {}).get(model, {}).get("rows")}
    return results


def timed(fn, *args) -> dict:
    """``fn(*args)`` with its wall seconds; a failure is recorded and the other parts still run."""
    began = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as err:
        result = {"error": f"{type(err).__name__}: {err}"}
    return {**result, "seconds": round(time.perf_counter() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any machine (device auto), under a minute")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the results go (default: benchmarks/results; --smoke: a temporary folder)")
    args = parser.parse_args()
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.smoke else ROOT / "benchmarks"
                               / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    began, size = time.perf_counter(), SIZES[args.smoke]
    doc = {"note": "prepared without a GPU; see the module docstring", "smoke": args.smoke,
           "budget_s": size["budget_s"], "machine": machine(), "parts": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-runs-") as work:
        doc["parts"]["finetune"] = timed(part_finetune, args.smoke, Path(work))
    left = size["budget_s"] - (time.perf_counter() - began)
    doc["parts"]["ice"] = timed(part_ice, args.smoke, out_dir, max(15.0, left - size["ptq_reserve_s"]))
    left = size["budget_s"] - (time.perf_counter() - began)
    doc["parts"]["ptq"] = timed(part_ptq, args.smoke, out_dir, max(15.0, left))
    doc["total_s"] = round(time.perf_counter() - began, 1)
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: v for k, v in doc.items() if k != "parts"}, indent=1))
    for name, part in doc["parts"].items():
        print(name, json.dumps({k: v for k, v in part.items() if k not in ("runs", "cpu", "gpu")})[:600])
    print(f"written: {path}")


if __name__ == "__main__":
    main()
