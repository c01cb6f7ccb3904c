"""Weight-only quantization benchmark: FP32 vs w8 / w4 / w3 / w2 (round-to-nearest vs GPTQ, per channel vs groups of 32)
vs a mixed 4/8-bit plan under a size budget between w4 and w8, on MNIST-5k, every artifact measured in ONNX
Runtime (test accuracy, file bytes, latency p50 at 1 thread, batch 1).

    python benchmarks/weight_quant.py            # writes benchmarks/results/weight_quant.{json,md}
    python benchmarks/weight_quant.py --quick    # mnist_cnn only

Models: the default recipe's cached mnist_cnn baseline (trained once by the pipeline's baseline cache) and
ResNet-20 at width 0.5 (trained once, cached as a state dict; the same file the ICE benchmark uses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from edgecompress import baseline, zoo
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.measure.latency import benchmark
from edgecompress.recipe import load_recipe
from edgecompress.registry import get
from edgecompress.train import train

RESULTS = Path(__file__).parent / "results"
G = 32
CONFIGS = {  # name -> (stage, config)
    "w8 RTN per-channel": ("quant.weight", {"bits": 8, "group_size": 0, "algorithm": "rtn"}),
    "w4 RTN per-channel": ("quant.weight", {"bits": 4, "group_size": 0, "algorithm": "rtn"}),
    "w4 GPTQ per-channel": ("quant.weight", {"bits": 4, "group_size": 0, "algorithm": "gptq"}),
    f"w4 RTN g{G}": ("quant.weight", {"bits": 4, "group_size": G, "algorithm": "rtn"}),
    f"w4 GPTQ g{G}": ("quant.weight", {"bits": 4, "group_size": G, "algorithm": "gptq"}),
    f"w3 RTN g{G}": ("quant.weight", {"bits": 3, "group_size": G, "algorithm": "rtn"}),
    f"w3 GPTQ g{G}": ("quant.weight", {"bits": 3, "group_size": G, "algorithm": "gptq"}),
    f"w2 RTN g{G}": ("quant.weight", {"bits": 2, "group_size": G, "algorithm": "rtn"}),
    f"w2 GPTQ g{G}": ("quant.weight", {"bits": 2, "group_size": G, "algorithm": "gptq"}),
    f"w3 GPTQ g{G} act_order": ("quant.weight", {"bits": 3, "group_size": G, "algorithm": "gptq", "act_order": True}),
    f"mixed 4/8 GPTQ g{G}, budget 0.20": ("quant.mixed", {"candidate_bits": [4, 8], "group_size": G,
                                                          "algorithm": "gptq", "size_budget": 0.20}),
    f"mixed 3/8 GPTQ g{G}, budget 0.20": ("quant.mixed", {"candidate_bits": [3, 8], "group_size": G,
                                                          "algorithm": "gptq", "size_budget": 0.20}),
}


def models(task, quick: bool) -> dict[str, torch.nn.Module]:
    out = {"mnist_cnn": baseline.load(load_recipe("default"), task, progress=False)}
    if not quick:
        net = zoo.build("resnet20", task.input_shape, task.num_classes, width=0.5)
        path = baseline.cache_dir() / "bench-ice-resnet20-w0.5-mnist5k-e15.pt"  # shared with ice_pruning.py
        if path.is_file():
            net.load_state_dict(torch.load(path, weights_only=True))
        else:
            train(net, task, epochs=15, lr=0.05, seed=0, progress=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), path)
        out["resnet20 (w0.5)"] = net.eval()
    return out


def logits(artifact, task) -> torch.Tensor:
    run = artifact.runner()
    return torch.cat([torch.from_numpy(run(b.numpy())) for b in task.test.tensors[0].split(256)])


def measure(artifact, task, repeats: int, reference: torch.Tensor | None = None) -> dict:
    """Test accuracy, KL divergence of the softmax outputs from the FP32 artifact's (``reference`` logits),
    file bytes and latency p50, all of the artifact in ONNX Runtime."""
    out = logits(artifact, task)
    kl = 0.0 if reference is None else float(torch.nn.functional.kl_div(
        out.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="batchmean"))
    lat = benchmark(artifact, task.input_shape, threads=1, batch=1, warmup=20, repeats=repeats)
    return {"accuracy": float((out.argmax(-1) == task.test.tensors[1]).float().mean()), "kl_to_fp32": kl,
            "file_bytes": artifact.size_bytes, "latency_p50_ms": lat["latency_p50_ms"], "precision": artifact.precision}


def run_model(name: str, model, task, work: Path, repeats: int) -> list[dict]:
    fp32 = export_onnx(model, task.example_inputs(1), work / f"{name.split()[0]}_fp32.onnx")
    reference = logits(fp32, task)
    rows = [{"config": "FP32", **measure(fp32, task, repeats)}]
    print(name, rows[-1], flush=True)
    for i, (label, (stage_name, config)) in enumerate(CONFIGS.items()):
        stage = get(stage_name)
        ctx = StageContext(task=task, seed=0, workdir=work / f"{name.split()[0]}_{i}", progress=False)
        wall, cpu = time.perf_counter(), time.process_time()
        out = stage(model, stage.config(**config), ctx)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        info = ctx.info
        row = {"config": label, **measure(out.artifact, task, repeats, reference), "quant_seconds": round(wall, 2),
               "quant_cpu_seconds": round(cpu, 2), "weight_bytes": info["weight_bytes"],
               "weight_bytes_fp32": info["weight_bytes_fp32"], "onnx_max_abs_diff": info["onnx_max_abs_diff"]}
        if stage_name == "quant.mixed":
            row.update(plan=info["plan"], budget_bytes=info["budget_bytes"], predicted_kl=info["predicted_kl"],
                       measured_kl=info["measured_kl"], sensitivity_kl=info["sensitivity_kl"])
        rows.append(row)
        print(name, {k: v for k, v in row.items() if k != "sensitivity_kl"}, flush=True)
    return rows


ACCURACY_SLACK = 0.002  # 2 of the 1,000 test images


def better(name: str, other: str, a: dict, b: dict) -> list[dict]:
    """``a`` closer to FP32 than ``b`` (KL), and at least as accurate up to ``ACCURACY_SLACK``."""
    return [{"check": f"{name} closer to FP32 than {other} (KL)", "met": a["kl_to_fp32"] < b["kl_to_fp32"],
             "measured": f"{a['kl_to_fp32']:.1e} vs {b['kl_to_fp32']:.1e}"},
            {"check": f"{name} accuracy >= {other} - 0.2 pts (2 of 1000 test images)",
             "met": a["accuracy"] >= b["accuracy"] - ACCURACY_SLACK,
             "measured": f"{100 * a['accuracy']:.2f} vs {100 * b['accuracy']:.2f}"}]


def checks(rows: list[dict]) -> list[dict]:
    by = {r["config"]: r for r in rows}
    out = []
    for bits in (4, 3, 2):
        out += better(f"w{bits} g{G} GPTQ", "RTN", by[f"w{bits} GPTQ g{G}"], by[f"w{bits} RTN g{G}"])
    for low in (4, 3):
        mixed = by[f"mixed {low}/8 GPTQ g{G}, budget 0.20"]
        out.append({"check": f"mixed {low}/8 weight bytes <= budget", "met": mixed["weight_bytes"] <= mixed["budget_bytes"],
                    "measured": f"{mixed['weight_bytes']:,} <= {mixed['budget_bytes']:,}"})
        out += better(f"mixed {low}/8", f"uniform w{low} GPTQ g{G}", mixed, by[f"w{low} GPTQ g{G}"])
    worst = max(r.get("onnx_max_abs_diff", 0.0) for r in rows)
    out.append({"check": "ONNX Runtime = PyTorch with dequantized weights (max abs diff <= 1e-4)",
                "measured": f"{worst:.1e}", "met": worst <= 1e-4})
    return out


def markdown(results: dict, command: str) -> str:
    lines = ["# Weight-only quantization (quant.weight, quant.mixed) on MNIST-5k", "", f"Command: `{command}`", "",
             (f"Machine: {results['machine']}. Accuracy: the ONNX artifact in ONNX Runtime on the MNIST-5k test split. "
             "Latency: ONNX Runtime, 1 thread, batch 1, p50 (a fresh process per artifact; the machine is shared, "
             "so ~0.1 ms figures move by 10-30% between runs). The test split has 1,000 images, so 0.1 points is one "
             "image; `KL to FP32` (mean KL divergence of the artifact's softmax outputs from the FP32 artifact's on "
             "the test split) is the finer measure of quantization error. `weight bytes`: packed codes + float32 scales of "
             "the quantized layers (FP32: 4 bytes per weight); 3-bit codes are stored in INT4 containers, so w3 "
             "has w4's bytes. Weight-only artifacts run DequantizeLinear on their weights at every inference, so on "
             "this CPU they are slower than FP32: they buy file size, not speed. Quantization time includes export "
             "and the ONNX Runtime check; the CPU total excludes the latency worker processes."), ""]
    for model, rows in results["models"].items():
        fp32 = rows[0]
        lines += [f"## {model}", "", ("| config | accuracy % | Δ pts | KL to FP32 | file bytes | x smaller | weight bytes | "
                  "p50 ms | quant s (CPU s) |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            wb = f"{r['weight_bytes']:,} / {r['weight_bytes_fp32']:,}" if "weight_bytes" in r else "-"
            qt = f"{r['quant_seconds']} ({r['quant_cpu_seconds']})" if "quant_seconds" in r else "-"
            lines.append(f"| {r['config']} | {100 * r['accuracy']:.2f} | {100 * (r['accuracy'] - fp32['accuracy']):+.2f}"
                         f" | {r['kl_to_fp32']:.1e} | {r['file_bytes']:,} | {fp32['file_bytes'] / r['file_bytes']:.2f} | {wb} | "
                         f"{r['latency_p50_ms']:.3f} | {qt} |")
        for r in rows:
            if "plan" in r:
                lines += ["", (f"{r['config']}: plan {r['plan']}; KL predicted (sum of per-layer) "
                          f"{r['predicted_kl']:.2e}, measured {r['measured_kl']:.2e}.")]
        lines += ["", "| check | measured | met |", "|---|---|---|"]
        lines += [f"| {c['check']} | {c['measured']} | {'yes' if c['met'] else 'NO'} |" for c in results["checks"][model]]
        lines.append("")
    lines.append(f"Total: {results['wall_seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mnist_cnn only")
    parser.add_argument("--repeats", type=int, default=300, help="timed runs per latency measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_task(data_spec(dataset="mnist5k"))
    wall, cpu = time.perf_counter(), time.process_time()
    work = Path(tempfile.mkdtemp(prefix="ec-weight-quant-"))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch 1 thread",
               "models": {}, "checks": {}}
    for name, model in models(task, args.quick).items():
        rows = run_model(name, model, task, work, args.repeats)
        results["models"][name] = rows
        results["checks"][name] = checks(rows)
    results["wall_seconds"], results["cpu_seconds"] = time.perf_counter() - wall, time.process_time() - cpu
    command = "python benchmarks/weight_quant.py" + (" --quick" if args.quick else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "weight_quant.json").write_text(json.dumps(results, indent=2))
    md = markdown(results, command)
    (RESULTS / "weight_quant.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
