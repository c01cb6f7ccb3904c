"""INT8 that keeps a model's answers (issue 12): top-1 agreement of each INT8 artifact with its FP32 model, ours
(every ``quant.ptq`` option and combination) beside the peers, on the same calibration and test inputs.

Models: EfficientNet-Lite2 with its ImageNet weights on ``photos`` crops (calibration crops and test crops come
from disjoint photos), and the zoo's MobileNetV2 (x0.5) trained here on digits (``ptq_peers``' recipe; test split).
Calibration: the first 64 or 256 inputs of the training split, unlabeled. Rows: ONNX Runtime ``quantize_static``
defaults; ONNX Runtime with the settings its documentation recommends for this CPU (per-channel weights, QDQ,
no reduce_range on an AVX-512 VNNI CPU) and each of its calibrators; torchao PT2E with ``X86InductorQuantizer``
(it does not export to ONNX Runtime: measured in PyTorch on the converted graph); ``quant.ptq`` options. Every
ONNX row is measured on the INT8 ONNX file in ONNX Runtime. Columns: top-1 agreement, top-5 overlap, output
cosine with the FP32 model, quantization wall time on this shared machine, bytes of the INT8 file.

    python benchmarks/int8_agreement.py      # the committed run
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset
from pretrained_unlabeled import cpu_name
from ptq_peers import MODELS, ort_defaults, torchao_x86

from edgecompress import baseline, zoo
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.quant.ptq import cpu_has_vnni
from edgecompress.registry import get
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.tasks import torch_predictor
from edgecompress.tasks.unlabeled import agreement_metrics
from edgecompress.zoo.efficientnet import MEAN, STD

RESULTS = Path(__file__).parent / "results"
TARGET = 0.95
FAST_ADAROUND = {"rounding": "adaround", "adaround_steps": 100}


def ours(**options) -> Callable:
    """``quant.ptq`` with ``options``; returns the artifact and what its report says about the new options."""
    def run(model, task, calib: torch.Tensor, work: Path):
        ctx = StageContext(task=task, workdir=work)
        stage = get("quant.ptq")
        artifact = stage(model, stage.config(calib_samples=len(calib), **options), ctx).artifact
        info = {}
        if "per_tensor" in ctx.info:
            report = ctx.info["per_tensor"]
            info["per_tensor"] = {**{k: v for k, v in report.items() if k != "tensors"},
                                  "choices": dict(Counter(t["choice"] for t in report["tensors"].values())),
                                  "tensors": {t: r["choice"] for t, r in report["tensors"].items()}}
        if "float_fallback" in ctx.info:
            report = ctx.info["float_fallback"]
            info["float_fallback"] = {"layers": [v["module"] for v in report["layers"].values()],
                                      "kept": report["kept"], "output_error": [report["all_int8"]["output_error"],
                                                                               report["with_fallback"]["output_error"]]}
        return artifact, info
    return run


def ort_best(method: str, **extra) -> Callable:
    """``quantize_static`` after ``quant_pre_process`` with per-channel weights, QDQ, and reduce_range only
    without VNNI (ONNX Runtime's documented advice), calibrated by ``method``."""
    def run(model, task, calib: torch.Tensor, work: Path):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quant_pre_process, quantize_static

        from edgecompress.export.artifact import Artifact

        export_onnx(model, calib[:1], work / "fp32.onnx")
        quant_pre_process(str(work / "fp32.onnx"), str(work / "prep.onnx"))
        batches = iter([{"input": b.numpy()} for b in calib.split(32)])
        reader = type("Reader", (), {"get_next": lambda self: next(batches, None)})()
        quantize_static(str(work / "prep.onnx"), str(work / "int8.onnx"), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=not cpu_has_vnni(),
                        calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
        return Artifact(work / "int8.onnx", "onnx", "onnxruntime", "int8")
    return run


METHODS: dict[str, Callable] = {
    "onnxruntime quantize_static defaults": lambda m, t, c, w: ort_defaults(m, t, c, w),
    "onnxruntime per-channel QDQ, MinMax": ort_best("MinMax"),
    "onnxruntime per-channel QDQ, MinMax, CalibMovingAverage": ort_best("MinMax", CalibMovingAverage=True),
    "onnxruntime per-channel QDQ, Percentile": ort_best("Percentile"),
    "onnxruntime per-channel QDQ, Entropy": ort_best("Entropy"),
    "torchao PT2E X86InductorQuantizer (PyTorch)": lambda m, t, c, w: torchao_x86(m, t, c, w),
    "quant.ptq defaults": ours(),
    "quant.ptq symmetric_activations": ours(symmetric_activations=True),
    "quant.ptq calibration: per_tensor": ours(calibration="per_tensor"),
    "quant.ptq bias_correction": ours(bias_correction=True),
    "quant.ptq per_tensor + bias_correction": ours(calibration="per_tensor", bias_correction=True),
    "quant.ptq adaround (100 steps, 32x32 windows)": ours(**FAST_ADAROUND),
    "quant.ptq adaround + per_tensor": ours(calibration="per_tensor", **FAST_ADAROUND),
    "quant.ptq adaround + per_tensor + float_fallback 3": ours(calibration="per_tensor", float_fallback=3,
                                                              **FAST_ADAROUND),
    "quant.ptq float_fallback 3": ours(float_fallback=3),
    "quant.ptq float_fallback 8": ours(float_fallback=8),
}


def efficientnet(calib_max: int):
    spec = {"dataset": "photos", "input_shape": [3, 260, 260], "mean": list(MEAN), "std": list(STD),
            "num_classes": 1000, "crops": [calib_max, 8, 256]}
    task = load_task(data_spec(**spec))
    return zoo.build("efficientnet_lite", (3, 260, 260), 1000, pretrained=True).eval(), task


def mobilenet(calib_max: int):
    recipe = MODELS["mobilenet_v2"]()
    task = load_task(recipe.data)
    return baseline.load(recipe, task, progress=False).eval(), task


def outputs(predict: Callable, x: torch.Tensor) -> np.ndarray:
    return np.concatenate([predict(x[i:i + 64].numpy()) for i in range(0, len(x), 64)])


def run_model(name: str, model, task, args, work: Path, result: dict, save: Callable) -> None:
    x = task.split("test").tensors[0]
    reference = outputs(torch_predictor(model), x)
    train = task.split("train")
    for n in args.calib:  # every flow gets exactly these n inputs: ours through a task whose training split they are
        calib = train.tensors[0][:n].float()
        calib_task = task.with_splits(f"{task.name}-calib{n}", train=TensorDataset(*(t[:n] for t in train.tensors)))
        rows = result.setdefault(name, {}).setdefault(str(n), {})
        for label, fn in METHODS.items():
            if args.only and label not in args.only or label in rows:
                continue
            folder = Path(tempfile.mkdtemp(dir=work))
            start = time.perf_counter()
            try:
                made = fn(model, calib_task, calib, folder)
            except Exception as err:  # noqa: BLE001  (a failing flow is a result, not a crash of the benchmark)
                rows[label] = {"failed": f"{type(err).__name__}: {str(err)[:200]}"}
                continue
            seconds = time.perf_counter() - start
            artifact, info = made if isinstance(made, tuple) else (made, {})
            metrics = agreement_metrics(outputs(artifact.runner(), x), reference)
            rows[label] = {**{k: round(float(v), 4) for k, v in metrics.items()}, "seconds": round(seconds, 1),
                           "bytes": artifact.size_bytes, "runtime": artifact.runtime, **info}
            print(name, n, label, rows[label], flush=True)
            save()


def markdown(result: dict) -> str:
    lines = ["# INT8 agreement with the FP32 model: quant.ptq options and peers (issue 12)", "",
             "Commands (in this order; each adds its rows): " + ", ".join(f"`{c}`" for c in result["commands"]), "", f"Machine: {result['machine']}", "",
             f"Target: top-1 agreement >= {TARGET:.0%} on EfficientNet-Lite2 with 64 calibration images.", ""]
    for name, by_calib in result["models"].items():
        for n, rows in by_calib.items():
            lines += [f"## {name}, {n} calibration inputs", "",
                      "| method | runtime | top-1 agreement | top-5 overlap | output cosine | time s | INT8 bytes |",
                      "|---|---|---:|---:|---:|---:|---:|"]
            for label, r in rows.items():
                if "failed" in r:
                    lines.append(f"| {label} | failed: {r['failed']} | | | | | |")
                    continue
                lines.append(f"| {label} | {r['runtime']} | {100 * r['agreement_top1']:.2f}% | "
                             f"{100 * r['top5_overlap']:.2f}% | {r['output_cosine']:.4f} | {r['seconds']} | "
                             f"{r['bytes']:,} |")
            for label, r in rows.items():
                if "float_fallback" in r:
                    f = r["float_fallback"]
                    lines.append(f"\n{label}: float layers {', '.join(f['layers'])} (file kept: {f['kept']}; output "
                                 f"error {f['output_error'][0]:.4g} -> {f['output_error'][1]:.4g})")
                if "per_tensor" in r:
                    p = r["per_tensor"]
                    lines.append(f"\n{label}: ranges chosen {p['choices']} (output error on {p['search_samples']} "
                                 f"calibration inputs {p['output_error_minmax']:.4g} -> {p['output_error_chosen']:.4g};"
                                 " every tensor's choice in the .json)")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["efficientnet_lite2", "mobilenet_v2"])
    parser.add_argument("--calib", nargs="*", type=int, default=[64, 256])
    parser.add_argument("--only", nargs="*", default=[], help="run only these rows (their labels)")
    parser.add_argument("--out", default="int8_agreement")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out = RESULTS / f"{args.out}.json"
    result = json.loads(out.read_text()) if out.exists() else {"models": {}}  # rows already measured are kept
    command = shlex.join(["python", "benchmarks/int8_agreement.py", *sys.argv[1:]])
    result["commands"] = [*result.get("commands", []), command]  # runs add to the same file
    result["machine"] = (f"{cpu_name()}, x86_64, VNNI: {cpu_has_vnni()}; torch 1 thread, ONNX Runtime 1 thread; "
                         "2 cores shared with two other agents' jobs (times are wall seconds under that load)")

    def save() -> None:
        out.write_text(json.dumps(result, indent=1))
        (RESULTS / f"{args.out}.md").write_text(markdown(result))

    work = Path(tempfile.mkdtemp(prefix="int8-agreement-"))
    builders = {"efficientnet_lite2": efficientnet, "mobilenet_v2": mobilenet}
    for name in args.models:
        model, task = builders[name](max(args.calib))
        run_model(name, model, task, args, work, result["models"], save)
    save()


if __name__ == "__main__":
    main()
