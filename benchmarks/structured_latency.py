"""Real speed-up of structured pruning in ONNX Runtime: channel alignment on vs off vs plain torch-pruning.

    python benchmarks/structured_latency.py      # writes benchmarks/results/structured_latency.{json,md}

Per model (resnet18 at 32x32, mobilenet_v2 at 224x224, resnet20 at 32x32; random weights: latency does not
depend on them) and channel ratio (30%, 50%), four ONNX models are timed side by side in interleaved rounds in
one ONNX Runtime process (2 threads), at batch 1 and batch 16:
  dense; ours = ``prune.structured`` (L2, uniform) with its default ``round_to: auto`` (the export runtime's
  channel multiple on this CPU); ours without alignment (``round_to: 1``, the old default); the peer = plain
  torch-pruning ``MetaPruner`` (L2, uniform) with ``round_to=8`` as its README recommends; and ours,
  latency-aware = ``prune.structured`` with ``scope: sensitivity, target_latency_ratio, remove_blocks`` asked for
  the latency that ours' MAC reduction promises (target = ours' MAC ratio), pruned separately for each batch size
  (the latency it measures is the export's batch), 8 calibration images, ratios up to 7/8 per layer.
Efficiency = measured speed-up over dense / MAC reduction (1.0: latency falls exactly as MACs do). A speed-up is
the median of the per-round ratios (each round: a burst of runs of each model, about 0.1 s of the dense model and at
least 3 runs, its median run); the table also gives its interquartile range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/structured_latency.py"
MODELS = {"resnet18": ((3, 32, 32), 10), "mobilenet_v2": ((3, 224, 224), 1000), "resnet20": ((3, 32, 32), 10)}
RATIOS = (0.3, 0.5)
BATCHES = (1, 16)
LATENCY_AWARE = "ours, latency-aware"


def _variants(name: str, ratio: float, out: Path) -> dict:
    """The four models of one cell, exported to ONNX: {variant: (artifact, MACs)}."""
    import torch
    import torch_pruning as tp

    from edgecompress import zoo
    from edgecompress.context import StageContext
    from edgecompress.data import data_spec, load_task
    from edgecompress.measure.counts import count_macs
    from edgecompress.prune.analysis import output_layers
    from edgecompress.nn.layers import build_graph
    from edgecompress.registry import get
    from edgecompress.runtimes import export
    from edgecompress.settings import ExportSettings

    shape, classes = MODELS[name]
    torch.manual_seed(0)
    dense = zoo.build(name, shape, classes).eval()
    task = load_task(data_spec(dataset="synthetic", input_shape=list(shape), num_classes=classes, samples=32))
    example = task.example_inputs(1)
    stage = get("prune.structured")
    models = {"dense": dense}
    for variant, round_to in (("ours (round_to auto)", "auto"), ("ours, no alignment", 1)):
        ctx = StageContext(task=task, progress=False)
        models[variant] = stage(dense, stage.config(ratio=ratio, round_to=round_to), ctx).eval()
    peer = __import__("copy").deepcopy(dense)
    pruner = tp.pruner.MetaPruner(peer, example, tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                  ignored_layers=list(output_layers(build_graph(peer, example))), round_to=8)
    pruner.step()
    models["torch-pruning round_to=8"] = peer.eval()
    settings = ExportSettings()
    return {v: (export(m, example, out / f"{name}-{ratio}-{i}", settings), count_macs(m, example))
            for i, (v, m) in enumerate(models.items())}


def _latency_aware(name: str, ratio: float, batch: int, target: float, out: Path) -> tuple:
    """ours, latency-aware, for ``batch``: (artifact, MACs, measured latency ratio in the stage) or None with the
    stage's error when the target is out of reach."""
    import torch

    from edgecompress import zoo
    from edgecompress.context import StageContext
    from edgecompress.data import data_spec, load_task
    from edgecompress.errors import EdgeCompressError
    from edgecompress.measure.counts import count_macs
    from edgecompress.registry import get
    from edgecompress.runtimes import export
    from edgecompress.settings import ExportSettings

    shape, classes = MODELS[name]
    torch.manual_seed(0)
    dense = zoo.build(name, shape, classes).eval()
    task = load_task(data_spec(dataset="synthetic", input_shape=list(shape), num_classes=classes, samples=32))
    settings = ExportSettings(threads=2, batch=batch)
    ctx, stage = StageContext(task=task, progress=False, export=settings), get("prune.structured")
    config = stage.config(scope="sensitivity", target_latency_ratio=round(target, 4), remove_blocks=True,
                          calib_samples=8, sensitivity_ratios=[0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875])
    try:
        model = stage(dense, config, ctx).eval()
    except EdgeCompressError as exc:
        return None, str(exc).splitlines()[0]
    example = task.example_inputs(1)
    removed = [n for step in ctx.info["sensitivity"]["steps"] for n in step["removed_blocks"]]
    return (export(model, example, out / f"{name}-{ratio}-latency-b{batch}", settings), count_macs(model, example),
            ctx.info["latency"], removed), None


def _cell(name: str, ratio: float, out: Path, rounds: int, seconds: float, aware: bool) -> list[dict]:
    from edgecompress.measure.latency import burst_runs, interleaved, speedup

    variants = _variants(name, ratio, out)
    macs0 = variants["dense"][1]
    rows = []
    for batch in BATCHES:
        cell, extra = dict(variants), {}
        if aware:
            built, error = _latency_aware(name, ratio, batch, variants["ours (round_to auto)"][1] / macs0, out)
            if built is None:
                rows.append({"model": name, "ratio": ratio, "batch": batch, "variant": LATENCY_AWARE, "error": error})
            else:
                cell[LATENCY_AWARE] = built[:2]
                extra = {"stage_latency": built[2], "removed_blocks": built[3]}
        names, arts = list(cell), [a for a, _ in cell.values()]
        burst = burst_runs(arts[0], MODELS[name][0], threads=2, batch=batch, seconds=seconds)
        ms = interleaved(arts, MODELS[name][0], threads=2, batch=batch, rounds=rounds, repeats=rounds * burst,
                         warmup=5)
        peer = ms[names.index("torch-pruning round_to=8")]
        for v, times in zip(names[1:], ms[1:]):
            s, macs = speedup(ms[0], times), cell[v][1]
            rows.append({"model": name, "ratio": ratio, "batch": batch, "variant": v, "macs_reduction":
                         round(macs0 / macs, 3), "speedup": s, "efficiency": round(s["median"] * macs / macs0, 3),
                         "vs_peer": speedup(peer, times), "ms": round(sorted(times)[len(times) // 2], 3),
                         "dense_ms": round(sorted(ms[0])[len(ms[0]) // 2], 3),
                         **(extra if v == LATENCY_AWARE else {})})
    return rows


def _table(rows: list[dict]) -> str:
    lines = ["| model | ratio | batch | variant | MACs ÷ | speed-up (IQR) | efficiency | vs peer (IQR) | ms (dense) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['ratio']:.0%} | {r['batch']} | {r['variant']} | | {r['error']} | | | |")
            continue
        s, p = r["speedup"], r["vs_peer"]
        lines.append(f"| {r['model']} | {r['ratio']:.0%} | {r['batch']} | {r['variant']} | {r['macs_reduction']:.2f} | "
                     f"{s['median']:.2f} ({s['q1']:.2f}–{s['q3']:.2f}) | **{r['efficiency']:.2f}** | "
                     f"{p['median']:.2f} ({p['q1']:.2f}–{p['q3']:.2f}) | {r['ms']:.2f} ({r['dense_ms']:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.1, help="length of a burst (dense model's runs)")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--no-latency-aware", action="store_true", help="skip the latency-aware variant")
    parser.add_argument("--out", default="structured_latency", help="results file name (benchmarks/results/OUT.md)")
    args = parser.parse_args()
    from edgecompress.prune.align import cpu_float_lanes, resolve

    out = Path(tempfile.mkdtemp(prefix="ec-structured-latency-"))
    rows = [r for name in args.models for ratio in RATIOS
            for r in _cell(name, ratio, out, args.rounds, args.seconds, not args.no_latency_aware)]
    verdicts = []
    for variant in ("ours (round_to auto)", LATENCY_AWARE):
        ours = [r for r in rows if r["variant"] == variant and "error" not in r]
        if ours:
            met = sum(r["efficiency"] >= 0.9 for r in ours)
            beat = sum(r["vs_peer"]["median"] >= 1.0 or not r["vs_peer"]["measurable"] for r in ours)
            cells = len({(r["model"], r["ratio"], r["batch"]) for r in rows})
            verdicts.append(f"{variant}: efficiency >= 0.9 in {met} of {cells} cells; at least as fast as the peer "
                            f"(or no measurable difference) in {beat} of {cells}.")
    load = os.getloadavg()[0]
    command = COMMAND + (" --no-latency-aware" if args.no_latency_aware else "") + \
        (f" --rounds {args.rounds}" if args.rounds != 9 else "") + (f" --seconds {args.seconds}" if args.seconds != 0.1 else "") + \
        (f" --models {' '.join(args.models)}" if args.models != list(MODELS) else "") + \
        (f" --out {args.out}" if args.out != "structured_latency" else "")
    doc = {"command": command, "cpu": platform.processor() or platform.machine(), "float_lanes": cpu_float_lanes(),
           "round_to_auto": resolve("auto", "onnxruntime", "benchmark"), "load_average_1min": load, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=1))
    text = (f"# Structured pruning: real speed-up in ONNX Runtime\n\n{__doc__.split(chr(10), 3)[3].strip()}\n\n"
            f"This CPU: {cpu_float_lanes()} float32 lanes, so `round_to: auto` = {doc['round_to_auto']} for ONNX "
            f"Runtime. The machine was shared with other jobs (1-minute load average {load:.1f} at the end), so "
            f"only the interleaved ratios are meaningful.\n\n"
            + "\n".join(f"- {v}" for v in verdicts) + f"\n\n{_table(rows)}\n\nMade by `{command}`.\n")
    (RESULTS / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
