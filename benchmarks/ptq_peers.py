"""Static INT8 PTQ, ours vs peers, on the same trained model and the same 256 calibration images.

Per model: ours (``quant.ptq`` defaults through ``ec.apply``: ONNX Runtime QDQ, and the torchao backend),
onnxruntime ``quantize_static`` after ``quant_pre_process`` with its defaults and with the settings its
documentation recommends for x86 (``ort_static``), torchao PT2E with the ``X86InductorQuantizer`` defaults, NNCF (``nncf.quantize`` on a ``torch.export`` graph) and neural-compressor
(``neural-compressor-pt`` 3.x PT2E static quantization, default config). Each artifact is measured in its own
runtime: test accuracy, bytes on disk (all files), p50 latency at batch 1, 1 thread (our ``measure.benchmark``,
a fresh process per artifact). A DFQ ablation of ``quant.ptq`` (per tensor, + cross-layer equalization,
+ bias correction, per channel) runs on the same models. Peers that are not installed are skipped and listed
(``pip install -e ".[peers]"``).

``--calib-seeds N`` repeats the cheap flows (ours: defaults, + CLE + BC, ``reduce_range: off`` with and without
CLE + BC; onnxruntime defaults and x86-recommended; torchao X86) on N calibration draws (draw s = ``task.calibration(256, seed=s)``,
the same draw for every method), on the same trained model. NNCF and neural-compressor run on draw 0 only. Per
draw: test accuracy and argmax agreement with the FP32 model; per method mean +- std; ours - best peer paired by
draw (mean +- standard error).

    python benchmarks/ptq_peers.py --repeats 100 --calib-seeds 5   # the committed runs (mnist_cnn on MNIST-5k,
                                                                   # mobilenet_v2 x0.5 on digits; --out names them)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import edgecompress as ec
from edgecompress import baseline
from edgecompress.data import load_task
from edgecompress.tasks import Task, torch_predictor
from edgecompress.export.artifact import Artifact
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.measure.latency import benchmark
from edgecompress.quant.ptq import cpu_has_vnni, save_program
from edgecompress.recipe import load_recipe, parse_recipe
from edgecompress.settings import ExportSettings

RESULTS = Path(__file__).parent / "results"
CALIB = 256
MODELS = {
    "mnist_cnn": lambda: load_recipe("default"),
    "mobilenet_v2": lambda: parse_recipe({
        "name": "ptq-peers-mobilenet", "seed": 0, "data": {"dataset": "digits"},
        "model": {"zoo": "mobilenet_v2", "kwargs": {"width_mult": 0.5, "dropout": 0.0},
                  "pretrain": {"epochs": 8, "lr": 0.05}},
        "stages": [{"method": "quant.ptq"}],
    }),
}
PEER_PACKAGES = {"nncf": "nncf", "neural-compressor": "neural_compressor"}
_BATCH = ({0: torch.export.Dim("batch", min=1)},)


def _pt2(module: torch.nn.Module, calib: torch.Tensor, path: Path) -> Artifact:
    """A peer's converted graph saved the documented way (``torch.export.save``), run by PyTorch."""
    return save_program(module, calib[:2].clone(), path, "int8")


def ours(**cfg) -> Callable:
    """``quant.ptq`` through ``ec.apply``; its calibration draw is ``task.calibration(CALIB, seed)``, as ``calib``."""
    def run(model, task, calib, work: Path, seed: int = 0) -> Artifact:
        return ec.apply("quant.ptq", model, task, seed=seed, workdir=work, calib_samples=CALIB, **cfg).artifact
    return run


def ort_static(per_channel: bool | None = None, activations: str = "QInt8") -> Callable:
    """onnxruntime ``quantize_static`` after ``quant_pre_process``; ``per_channel=None``: its defaults untouched.

    Otherwise the settings its documentation recommends for x86 CPUs: QDQ format, S8S8 first (``activations``
    "QUInt8" gives U8S8, the format of the x86 u8*s8 instructions), MinMax calibration, ``reduce_range`` only
    with per-channel weights on a CPU without VNNI (7-bit weights against the int16 saturation of vpmaddubsw).
    """
    def run(model, task, calib, work: Path, seed: int = 0) -> Artifact:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

        fp32 = export_onnx(model, calib[:1], work / "fp32.onnx")
        quant_pre_process(str(fp32.path), str(work / "prep.onnx"))
        batches = iter([{"input": b.numpy()} for b in calib.split(32)])
        reader = type("Reader", (), {"get_next": lambda self: next(batches, None)})()
        options = {} if per_channel is None else {
            "quant_format": QuantFormat.QDQ, "activation_type": QuantType[activations], "weight_type": QuantType.QInt8,
            "per_channel": per_channel, "reduce_range": per_channel and not cpu_has_vnni(),
            "calibrate_method": CalibrationMethod.MinMax}
        quantize_static(str(work / "prep.onnx"), str(work / "int8.onnx"), reader, **options)
        return Artifact(work / "int8.onnx", "onnx", "onnxruntime", "int8")
    return run


ort_defaults = ort_static()
ORT_RECOMMENDED = {  # label -> flow, onnxruntime's documented x86 settings (see ort_static)
    "onnxruntime x86 recommended: S8S8 per-channel": ort_static(per_channel=True),
    "onnxruntime x86 recommended: U8S8 per-channel": ort_static(per_channel=True, activations="QUInt8"),
}


def torchao_x86(model, task, calib, work: Path, seed: int = 0) -> Artifact:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (calib[:2],), dynamic_shapes=_BATCH).module(), quantizer)
    for b in calib.split(32):
        prepared(b)
    return _pt2(convert_pt2e(prepared), calib, work / "int8.pt2")


def nncf_fx(model, task, calib, work: Path, seed: int = 0) -> Artifact:
    import nncf

    graph = torch.export.export(model, (calib[:2],), dynamic_shapes=_BATCH).module()
    quantized = nncf.quantize(graph, nncf.Dataset(list(calib.split(1))), subset_size=len(calib))
    return _pt2(quantized, calib, work / "int8.pt2")


def inc_pt2e(model, task, calib, work: Path, seed: int = 0) -> Artifact:
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import convert, get_default_static_config, prepare

    prepared = prepare(export(model, example_inputs=(calib[:2],), dynamic_shapes=_BATCH),
                       get_default_static_config())
    for b in calib.split(32):
        prepared(b)
    return _pt2(convert(prepared), calib, work / "int8.pt2")


METHODS: dict[str, tuple[str, Callable]] = {
    "ours (quant.ptq, onnxruntime)": ("ours", ours()),
    "ours (quant.ptq, torchao backend)": ("ours", ours(export=ExportSettings(format="pytorch", runtime="torch"))),
    "onnxruntime quantize_static defaults": ("peer", ort_defaults),
    **{label: ("peer", fn) for label, fn in ORT_RECOMMENDED.items()},
    "torchao PT2E X86InductorQuantizer": ("peer", torchao_x86),
    "NNCF 3.4 (torch.export)": ("nncf", nncf_fx),
    "neural-compressor 3.10 (PT2E static)": ("neural-compressor", inc_pt2e),
}
ABLATION = {
    "per tensor": {"per_channel": False},
    "per tensor + CLE": {"per_channel": False, "equalize": True},
    "per tensor + CLE + BC": {"per_channel": False, "equalize": True, "bias_correction": True},
    "per channel (default)": {},
    "per channel + CLE + BC": {"equalize": True, "bias_correction": True},
}
CLE_BC = {"equalize": True, "bias_correction": True}
# the calibration-draw study: label -> (kind, flow); draw 0 reuses the main table / ablation where they overlap
STUDY: dict[str, tuple[str, Callable]] = {
    "ours (quant.ptq defaults)": ("ours", ours()),
    "ours + CLE + BC": ("ours", ours(**CLE_BC)),
    "ours, reduce_range off": ("ours", ours(reduce_range="off")),
    "ours, reduce_range off + CLE + BC": ("ours", ours(reduce_range="off", **CLE_BC)),
    "ours, percentile calibration + CLE + BC": ("ours", ours(calibration="percentile", **CLE_BC)),
    "ours, entropy calibration + CLE + BC": ("ours", ours(calibration="entropy", **CLE_BC)),
    "onnxruntime quantize_static defaults": ("peer", ort_defaults),
    **{label: ("peer", fn) for label, fn in ORT_RECOMMENDED.items()},
    "torchao PT2E X86InductorQuantizer": ("peer", torchao_x86),
}
DRAW0 = {"ours (quant.ptq, onnxruntime)": "ours (quant.ptq defaults)", "per channel + CLE + BC": "ours + CLE + BC",
         "onnxruntime quantize_static defaults": "onnxruntime quantize_static defaults",
         "torchao PT2E X86InductorQuantizer": "torchao PT2E X86InductorQuantizer", **{k: k for k in ORT_RECOMMENDED}}


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def argmax(predict: Callable, task: Task) -> np.ndarray:
    x = task.split("test").tensors[0]
    return np.concatenate([predict(x[i : i + 256].numpy()).argmax(axis=1) for i in range(0, len(x), 256)])


def quality(artifact: Artifact, task: Task, ref: np.ndarray) -> dict:
    """Test accuracy, and argmax agreement with the FP32 model's predictions ``ref``."""
    pred = argmax(artifact.runner(), task)
    return {"accuracy": float((pred == task.split("test").tensors[1].numpy()).mean()),
            "agreement": float((pred == ref).mean()), "bytes": artifact.size_bytes}


def measure(artifact: Artifact, task: Task, repeats: int, ref: np.ndarray) -> dict:
    lat = benchmark(artifact, task.input_shape, threads=1, batch=1, repeats=repeats)
    return {**quality(artifact, task, ref), "latency_p50_ms": round(lat["latency_p50_ms"], 4)}


def run_model(name: str, args, work: Path) -> dict:
    recipe = MODELS[name]()
    task = load_task(recipe.data)
    (model, train_s, _) = timed(lambda: baseline.load(recipe, task, progress=False))
    model.eval()
    calib = task.calibration(CALIB, seed=0).float()
    ref = argmax(torch_predictor(model), task)
    fp32 = export_onnx(model, calib[:1], work / name / "fp32.onnx")
    rows = {"FP32 ONNX (reference)": {**measure(fp32, task, args.repeats, ref), "kind": "fp32"}}
    fp32_pt2 = save_program(model, calib[:2].clone(), work / name / "fp32.pt2", "fp32")
    rows["FP32 torch.export (reference)"] = {**measure(fp32_pt2, task, args.repeats, ref), "kind": "fp32"}
    skipped = {}
    for label, (kind, fn) in METHODS.items():
        if kind in PEER_PACKAGES and importlib.util.find_spec(PEER_PACKAGES[kind]) is None:
            skipped[label] = f"{kind} not installed (pip install -e '.[peers]')"
            continue
        folder = work / name / label.split()[0] / str(len(rows))
        folder.mkdir(parents=True)
        try:
            artifact, wall, cpu = timed(lambda: fn(model, task, calib, folder))  # noqa: B023
        except Exception as err:  # noqa: BLE001  (a peer's failure is a result, not a crash of the benchmark)
            skipped[label] = f"failed: {type(err).__name__}: {str(err)[:200]}"
            continue
        rows[label] = {**measure(artifact, task, args.repeats, ref), "kind": "ours" if kind == "ours" else "peer",
                       "quantize_s": round(wall, 2), "quantize_cpu_s": round(cpu, 2)}
        print(name, label, rows[label], flush=True)
    ablation = {}
    for label, cfg in ABLATION.items():
        out = ec.apply("quant.ptq", model, task, workdir=work / name / f"abl{len(ablation)}", calib_samples=CALIB, **cfg)
        ablation[label] = quality(out.artifact, task, ref)
    print(name, "ablation", ablation, flush=True)
    draws = calib_draws(model, task, ref, args.calib_seeds, work / name / "draws",
                        {DRAW0[k]: {"accuracy": v["accuracy"], "agreement": v["agreement"], "bytes": v["bytes"]}
                         for k, v in {**rows, **ablation}.items() if k in DRAW0})
    return {"dataset": recipe.data.dataset, "baseline_s": round(train_s, 1), "rows": rows,
            "skipped": skipped, "dfq_ablation": ablation, "calib_draws": draws}


def calib_draws(model, task: Task, ref: np.ndarray, n: int, work: Path, draw0: dict) -> list[dict]:
    """The STUDY flows on calibration draws 0..n-1 (draw 0 taken from the main table where it has the flow)."""
    draws = []
    for seed in range(n):
        calib, draw = task.calibration(CALIB, seed=seed).float(), dict(draw0) if seed == 0 else {}
        for label, (_, fn) in STUDY.items():
            if label not in draw:
                folder = work / str(seed) / str(len(draw))
                folder.mkdir(parents=True)
                draw[label] = quality(fn(model, task, calib, folder, seed), task, ref)
        draws.append({label: draw[label] for label in STUDY})
        print("draw", seed, {k: (round(v["accuracy"], 4), round(v["agreement"], 4)) for k, v in draw.items()}, flush=True)
    return draws


def stats(x: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return float(np.mean(x)), float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def draw_summary(draws: list[dict]) -> dict:
    """Per flow mean/std of accuracy and agreement; each ours flow minus the best peer (highest mean accuracy,
    smaller on ties), paired by draw: mean, standard error, draws where ours >= peer, verdict."""
    per = {k: {m: stats([d[k][m] for d in draws]) for m in ("accuracy", "agreement")} for k in STUDY}
    peers = [k for k, (kind, _) in STUDY.items() if kind == "peer"]
    best = max(peers, key=lambda k: (per[k]["accuracy"][0], -draws[0][k]["bytes"]))
    paired = {}
    for k, (kind, _) in STUDY.items():
        if kind != "ours":
            continue
        diff = [100 * (d[k]["accuracy"] - d[best]["accuracy"]) for d in draws]
        agr = [100 * (d[k]["agreement"] - d[best]["agreement"]) for d in draws]
        mean, sd = stats(diff)
        se = sd / np.sqrt(len(diff))
        verdict = "met" if mean >= -1e-9 else "within noise" if mean + 2 * se >= -1e-9 else "MISSED"
        paired[k] = {"vs": best, "diff_pts": diff, "mean_pts": mean, "se_pts": se,
                     "ours_ge_peer": sum(x >= -1e-9 for x in diff), "agreement_diff_pts": stats(agr),
                     "size_ratio": draws[0][k]["bytes"] / draws[0][best]["bytes"],
                     "verdict": verdict if draws[0][k]["bytes"] <= draws[0][best]["bytes"] else "MISSED (size)"}
    return {"per_method": per, "best_peer": best, "paired": paired}


def targets(results: dict) -> list[dict]:
    """Ours (defaults, and with equalize + bias_correction) against the most accurate peer (smaller on ties)."""
    out = []
    for name, r in results.items():
        peers = {k: v for k, v in r["rows"].items() if v["kind"] == "peer"}
        best_label = max(peers, key=lambda k: (peers[k]["accuracy"], -peers[k]["bytes"]))
        best = peers[best_label]
        for ours_label, ours in (("quant.ptq defaults", r["rows"]["ours (quant.ptq, onnxruntime)"]),
                                 ("quant.ptq equalize + bias_correction", r["dfq_ablation"]["per channel + CLE + BC"])):
            acc_margin = 100 * (ours["accuracy"] - best["accuracy"])
            out.append({"model": name, "ours": ours_label, "best_peer": best_label,
                        "accuracy_margin_pts": round(acc_margin, 2),
                        "size_ratio_vs_best_peer": round(ours["bytes"] / best["bytes"], 3),
                        "met": acc_margin >= -1e-9 and ours["bytes"] <= best["bytes"]})
    return out


def markdown(results: dict, tgts: list[dict], command: str, wall: float, cpu: float) -> str:
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads for quantization, latency 1 thread "
               f"batch 1; VNNI/AMX: {'yes' if cpu_has_vnni() else 'no (AVX2 only: INT8 kernels are not faster here)'}")
    lines = ["# Static INT8 PTQ: ours vs peers", "", f"Command: `{command}`", "",
             (f"Machine: {machine}. Shared 2-core machine; the whole run took {wall:.0f} s wall, {cpu:.0f} s CPU "
              f"(this process; latency workers run in their own processes)."), "",
             (f"Same trained model and the same {CALIB} training images for every method; accuracy of each artifact "
              "in its own runtime on the held-out test split; size = every file of the artifact."), ""]
    for name, r in results.items():
        lines += [f"## {name} ({r['dataset']})", "",
                  "| method | runtime | accuracy % | bytes | p50 ms | quantize s (CPU s) |", "|---|---|---:|---:|---:|---:|"]
        for label, row in r["rows"].items():
            runtime = "onnxruntime" if label.startswith(("FP32 ONNX", "ours (quant.ptq, onnx", "onnxruntime")) else "torch"
            q = f"{row['quantize_s']} ({row['quantize_cpu_s']})" if "quantize_s" in row else "-"
            lines.append(f"| {label} | {runtime} | {100 * row['accuracy']:.2f} | {row['bytes']:,} | "
                         f"{row['latency_p50_ms']:.3f} | {q} |")
        for label, why in r["skipped"].items():
            lines.append(f"| {label} | - | skipped: {why} | | | |")
        lines += ["", "DFQ ablation of `quant.ptq` (ONNX Runtime, CLE = equalize, BC = bias_correction):", "",
                  "| config | accuracy % | bytes |", "|---|---:|---:|"]
        lines += [f"| {k} | {100 * v['accuracy']:.2f} | {v['bytes']:,} |" for k, v in r["dfq_ablation"].items()]
        lines += [""] + (draw_markdown(r["calib_draws"], r["draw_summary"]) if len(r["calib_draws"]) > 1 else [])
    lines += ["## Target: our accuracy >= the best peer's, at no larger size (calibration draw 0 only)", "",
              "| model | ours | best peer | accuracy margin (pts) | our size / its size | met |",
              "|---|---|---|---:|---:|---|"]
    lines += [f"| {t['model']} | {t['ours']} | {t['best_peer']} | {t['accuracy_margin_pts']:+.2f} | "
              f"{t['size_ratio_vs_best_peer']} | {'met' if t['met'] else 'MISSED'} |" for t in tgts]
    lines += ["", "Notes:", "",
              ("- Peer `.pt2` files are each flow's converted graph saved with `torch.export.save`. torchao's "
              "`convert_pt2e` leaves the float weights attached beside their int8 copies, so that file is larger "
              "than FP32 (our torchao backend drops them); neural-compressor, built on the same PT2E convert, is "
              "larger than FP32 too."),
              ("- The `.pt2` rows run Q/DQ ops unfused in eager PyTorch (milliseconds); their int8 kernels need "
              "`torch.compile` (Inductor), not used here. The ONNX Runtime rows are the deployable speed."),
              ("- onnxruntime rows: `defaults` = `quantize_static` untouched (QDQ, S8S8, per-tensor, MinMax); "
               "`x86 recommended` = its documentation's x86 settings: QDQ with S8S8 first (U8S8 as the x86 "
               "u8*s8 format), per-channel weights (its advice when accuracy drops), MinMax, `reduce_range` only "
               "on a CPU without VNNI (not on this one if VNNI is 'yes' above). torchao: the default "
               "X86InductorQuantizer recipe (per-channel int8 weights, u8 activations, histogram observer)."),
              "- Test splits: digits 360 images (1 image = 0.28 points), MNIST-5k 1000 (0.1 points).",
              ("- Per-tensor PTQ does not collapse on these models (trained here, ReLU, moderate folded ranges). The "
              "collapse and its repair by `equalize` are shown in `tests/test_equalize.py` (a function-preserving "
              "100x channel skew: per-tensor INT8 55% -> 98.3% in ONNX Runtime on digits).")]
    return "\n".join(lines) + "\n"


def draw_markdown(draws: list[dict], summary: dict) -> list[str]:
    n, best = len(draws), summary["best_peer"]
    lines = [f"Calibration draws: {n} draws of {CALIB} training images (seeds 0..{n - 1}), same trained model; "
             "NNCF and neural-compressor on draw 0 only. Cell = test accuracy % / argmax agreement with FP32 %.", "",
             "| method | " + " | ".join(f"draw {i}" for i in range(n)) + " | accuracy mean ± std | agreement mean ± std |",
             "|---|" + "---:|" * (n + 2)]
    for k, v in summary["per_method"].items():
        (am, asd), (gm, gsd) = v["accuracy"], v["agreement"]
        lines.append(f"| {k} | " + " | ".join(f"{100 * d[k]['accuracy']:.2f} / {100 * d[k]['agreement']:.2f}"
                                              for d in draws)
                     + f" | {100 * am:.2f} ± {100 * asd:.2f} | {100 * gm:.2f} ± {100 * gsd:.2f} |")
    lines += ["", f"Ours − best peer ({best}, highest mean accuracy), paired by draw, in points:", "",
              "| ours | per draw | mean ± SE | ours ≥ peer | agreement diff mean ± std | size ratio | verdict |",
              "|---|---|---:|---:|---:|---:|---|"]
    for k, v in summary["paired"].items():
        lines.append(f"| {k} | {', '.join(f'{x:+.2f}' for x in v['diff_pts'])} | {v['mean_pts']:+.2f} ± "
                     f"{v['se_pts']:.2f} | {v['ours_ge_peer']}/{n} | {v['agreement_diff_pts'][0]:+.2f} ± "
                     f"{v['agreement_diff_pts'][1]:.2f} | {v['size_ratio']:.3f} | {v['verdict']} |")
    return lines + ["", ("Verdict: met if the paired mean ≥ 0 (at no larger size); within noise if mean + 2 SE ≥ 0; "
                         "else MISSED."), ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=200, help="timed runs per latency measurement")
    p.add_argument("--calib-seeds", type=int, default=1,
                   help="calibration draws for the cheap flows (ours, onnxruntime, torchao); NNCF/INC on draw 0 only")
    p.add_argument("--out", default="ptq_peers")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        results, wall, cpu = timed(lambda: {m: run_model(m, args, Path(tmp)) for m in args.models})
    for r in results.values():
        r["draw_summary"] = draw_summary(r["calib_draws"])
    tgts = targets(results)
    command = ("python benchmarks/ptq_peers.py " + " ".join(sys.argv[1:])).strip()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {"command": command, "args": vars(args), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
         "vnni": cpu_has_vnni(), "results": results, "targets": tgts}, indent=1))
    md = markdown(results, tgts, command, wall, cpu)
    (RESULTS / f"{args.out}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
