"""Keyword spotting on a microcontroller: run the packaged ``kws-mcu`` recipe (DS-CNN on espeak-ng command words,
hw.adapt fit to the mcu target, INT8) and judge each step against the mcu profile (256 KiB SRAM, 1 MiB flash).

    python benchmarks/kws_mcu.py        # writes benchmarks/results/kws_mcu.{json,md}

Besides the run's own stages it quantizes the float baseline alone (quant.ptq, the recipe's settings) to show
whether INT8 without pruning would fit. Accuracy is on the held-out test voices; memory is from
``edgecompress.target`` on each exported ONNX graph (weights = every initializer; peak = activation bytes live at once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/kws_mcu.py"


def _int8_only(out: Path, checkpoint: str, recipe, task) -> dict:
    """quant.ptq (the recipe's settings) on the baseline alone: its accuracy and its fit to the target."""
    import onnx

    from edgecompress import registry
    from edgecompress.baseline import build_from_arch
    from edgecompress.checkpoint import load_model
    from edgecompress.context import StageContext
    from edgecompress.measure import measure
    from edgecompress.target.check import check_onnx
    from edgecompress.target.profiles import load_target

    base = load_model(out / checkpoint, build_from_arch)
    entry = next(s for s in recipe.stages if s.method == "quant.ptq")
    ctx = StageContext(task=task, progress=False, workdir=out / "int8-only", export=recipe.export, seed=recipe.seed)
    result = registry.get("quant.ptq")(base, entry.config, ctx)
    metrics = measure(result.model, result.artifact, task, recipe.export)
    check = check_onnx(onnx.load(str(result.artifact.path)), load_target(recipe.target))
    return {"accuracy": metrics["accuracy"], "latency_p50_ms": metrics["latency_p50_ms"], **check.to_json()}


def main() -> None:
    import onnx

    from edgecompress.data.datasets import load_task
    from edgecompress.pipeline import Pipeline
    from edgecompress.recipe import load_recipe
    from edgecompress.target.check import check_onnx
    from edgecompress.target.profiles import load_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="kws-mcu", help="recipe (a smaller one for a smoke run)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of kws_mcu.{json,md}")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    task = load_task(recipe.data)
    out = Path(tempfile.mkdtemp(prefix="ec-kws-")) / "run"
    wall = time.perf_counter()
    Pipeline(recipe, out, task=task, progress=sys.stderr.isatty()).run()
    wall = time.perf_counter() - wall
    metrics = json.loads((out / "metrics.json").read_text())
    profile = load_target(recipe.target)
    rows = []
    for h in metrics["history"]:
        art = out / h["artifact"]["path"]
        check = check_onnx(onnx.load(str(art)), profile) if art.suffix == ".onnx" else None
        m = h["metrics"]
        rows.append({"stage": h["name"], "precision": m["precision"], "accuracy": m["accuracy"], "params": m["params"],
                     "macs": m["macs"], "size_bytes": m["size_bytes"], "latency_p50_ms": m["latency_p50_ms"],
                     "weight_bytes": check.memory.weight_bytes, "peak_activation_bytes": check.memory.peak_bytes,
                     "fits": check.fits, "overflows": check.overflows,
                     "unsupported": [i.what for i in check.unsupported], "info": h.get("info", {})})
    int8_only = _int8_only(out, metrics["history"][0]["checkpoint"], recipe, task)
    doc = {"command": COMMAND, "recipe": recipe.to_yaml(), "wall_seconds": round(wall, 1), "cpus": os.cpu_count(),
           "dataset": {"train": len(task.train), "val": len(task.val), "test": len(task.test),
                       "input_shape": list(task.input_shape), "classes": task.num_classes},
           "target": profile.model_dump(mode="json"), "stages": rows, "int8_only": int8_only,
           "checks": metrics["checks"]}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "kws_mcu.json").write_text(json.dumps(doc, indent=2))
    md = report(doc)
    (args.results / "kws_mcu.md").write_text(md)
    print(md)


def report(doc: dict) -> str:
    t, d = doc["target"], doc["dataset"]
    kib = lambda b: f"{b / 1024:,.1f}"  # noqa: E731
    lines = [
        "# Keyword spotting on a microcontroller (DS-CNN, kws-mcu recipe)", "",
        f"Target `{t['name']}`: {t['description']}. Data: espeak-ng command words, {d['classes']} classes, input "
        f"{d['input_shape']} log-mel; {d['train']} train / {d['val']} val / {d['test']} test utterances, the test "
        "voices never trained on. Latency: ONNX Runtime, 1 thread, batch 1, on a 2-core machine shared with other "
        "jobs (indicative only).", "",
        "| stage | precision | test acc % | params | MACs | weights KiB | peak activations KiB | fits mcu | p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in doc["stages"]:
        why = "yes" if r["fits"] else "no: " + "; ".join(r["overflows"] + r["unsupported"])
        lines.append(f"| {r['stage']} | {r['precision']} | {100 * r['accuracy']:.2f} | {r['params']:,} | "
                     f"{r['macs'] / 1e6:.1f} M | {kib(r['weight_bytes'])} | {kib(r['peak_activation_bytes'])} | {why} | "
                     f"{r['latency_p50_ms']:.3f} |")
    o = doc["int8_only"]
    why = "yes" if o["fits"] else "no: " + "; ".join(o["overflows"] + [i["what"] for i in o["unsupported"]])
    lines.append(f"| baseline + INT8 only (no pruning) | int8 | {100 * o['accuracy']:.2f} | | | "
                 f"{kib(o['weight_bytes'])} | {kib(o['peak_activation_bytes'])} | {why} | {o['latency_p50_ms']:.3f} |")
    adapt = next((r["info"] for r in doc["stages"] if r["stage"] == "hw.adapt"), {})
    base, final = doc["stages"][0], doc["stages"][-1]
    lines += ["", f"hw.adapt removed {100 * adapt.get('fit_ratio', 0):.1f}% of the channels of every layer (the least "
              f"that fits at INT8), then {len(adapt.get('history', []))} epochs of distillation. "
              f"Accuracy: baseline {100 * base['accuracy']:.2f}% → final INT8 {100 * final['accuracy']:.2f}% "
              f"({100 * (base['accuracy'] - final['accuracy']):+.2f} points drop).",
              "", "Run checks: " + "; ".join(f"{c['target']}: wanted {c['wanted']}, got {c['got']} "
                                              f"({'PASS' if c['passed'] else 'FAIL'})" for c in doc["checks"]),
              "", f"Whole run {doc['wall_seconds']:.0f} s (baseline training included). Made by `{doc['command']}`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
