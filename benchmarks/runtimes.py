"""ONNX Runtime vs ExecuTorch/XNNPACK on the same models, FP32 and static INT8, side by side in one run.

    python benchmarks/runtimes.py        # writes benchmarks/results/runtimes.{json,md}

Models on MNIST-5k: the default recipe's baseline (mnist_cnn, 15 epochs) and ResNet-20 at half width (5 epochs).
Each model is exported for both runtimes; INT8 is ``quant.ptq`` with its defaults in each backend (ONNX Runtime
QDQ, XNNPACK quantizer), calibrated on the same 256 training inputs. Every artifact is measured the same way:
accuracy in its runtime on the 1,000 test images, bytes on disk, p50 latency at batch 1 and throughput at batch
32, one thread, in a fresh benchmark process.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/runtimes.py"
MODELS = {
    "mnist_cnn (default baseline)": {"zoo": "mnist_cnn", "pretrain": {"epochs": 15, "lr": 0.05}},
    "resnet20 w0.5": {"zoo": "resnet20", "kwargs": {"width": 0.5}, "pretrain": {"epochs": 5, "lr": 0.05}},
}


def _rows(name: str, model_spec: dict, out: Path) -> list[dict]:
    from edgecompress import baseline
    from edgecompress.data import data_spec, load_task
    from edgecompress.runcompare import compare_runtimes
    from edgecompress.recipe import parse_recipe
    from edgecompress.settings import ExportSettings

    recipe = parse_recipe({"name": "runtimes", "model": model_spec, "data": {"dataset": "mnist5k"}, "stages": []})
    task = load_task(data_spec(dataset="mnist5k"))
    model = baseline.load(recipe, task, progress=False)
    settings = ExportSettings(threads=1, batch=1, warmup=20, repeats=300)
    rows = compare_runtimes(model, task, settings, out / name.split()[0], int8=True, throughput_batch=32)
    return [{"model": name, **row} for row in rows]


def _table(rows: list[dict]) -> str:
    header = ("| model | precision | runtime | accuracy % | bytes | p50 ms (b1) | throughput/s (b32) | XNNPACK nodes | "
              "portable ops | ET/ORT p50 | ET/ORT throughput | ET/ORT bytes |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    ort = {(r["model"], r["precision"]): r for r in rows if r["runtime"] == "onnxruntime"}
    for r in rows:
        ref = ort[(r["model"], r["precision"])]
        ratios = ("", "", "") if r is ref else (
            f"{r['latency_p50_ms'] / ref['latency_p50_ms']:.2f}x", f"{r['throughput_sps'] / ref['throughput_sps']:.2f}x",
            f"{r['size_bytes'] / ref['size_bytes']:.2f}x")
        portable = ", ".join(f"{op} x{n}" for op, n in r.get("portable_ops", {}).items()) or ("-" if r is ref else "none")
        lines.append(f"| {r['model']} | {r['precision']} | {r['runtime']} | {100 * r['accuracy']:.2f} | "
                     f"{r['size_bytes']:,} | {r['latency_p50_ms']:.3f} | {r['throughput_sps']:,.0f} | "
                     f"{r.get('xnnpack_nodes', '-')} | {portable} | {' | '.join(ratios)} |")
    return "\n".join(lines)


def main() -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    out = Path(tempfile.mkdtemp(prefix="ec-runtimes-"))
    rows = [row for name, spec in MODELS.items() for row in _rows(name, spec, out)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average " \
              f"{os.getloadavg()[0]:.1f} at the end (shared with other jobs)"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtimes.json").write_text(json.dumps(
        {"command": COMMAND, "machine": machine, "wall_seconds": wall, "cpu_seconds": cpu, "rows": rows},
        indent=2) + "\n")
    (RESULTS / "runtimes.md").write_text(
        f"# ONNX Runtime vs ExecuTorch/XNNPACK (FP32 and static INT8)\n\nMade by `{COMMAND}` on {machine}; "
        f"{wall:.0f} s wall, {cpu:.0f} s CPU in the main process (benchmark subprocesses not counted).\n\n"
        "MNIST-5k test split (1,000 images); INT8 = `quant.ptq` defaults in each backend, same 256 calibration "
        "inputs; latency p50 at batch 1 and throughput at batch 32, 1 thread, fresh process per measurement. "
        "ET/ORT: ExecuTorch divided by ONNX Runtime at the same precision (p50 below 1 and throughput above 1 "
        "favour ExecuTorch).\n\n" + _table(rows) + "\n")
    print(_table(rows))


if __name__ == "__main__":
    main()
