"""Latency-model error: predictions of the per-unit lookup table against end-to-end measurement on held-out
architectures of ``search.nas``'s default space (MNIST shape 1x28x28, ONNX Runtime, 1 thread, batch 1).

The table times each unit (block, pooling, classifier) alone; ``--calibration`` random architectures timed whole
fit its affine correction; ``--held-out`` other random architectures are then predicted and timed whole
(interleaved rounds, median of the per-round medians). Reported: the share of predictions within +-10%, the
mean and worst relative error and Spearman's rank correlation, for the raw table, the calibrated table and, for
comparison, a MAC-count predictor fitted on the same calibration networks. Each held-out row shows its MAC
ratio beside its measured latency ratio to mnist_cnn (width 1).

    python benchmarks/latency_model.py        # writes benchmarks/results/latency_model.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from edgecompress import zoo
from edgecompress.measure import count_macs
from edgecompress.measure.latency_model import LatencyTable, measure_models, prediction_error
from edgecompress.search.nas_space import SearchSpace

RESULTS = Path(__file__).parent / "results"
SHAPE = (1, 28, 28)


def sample(space: SearchSpace, n: int, seed: int) -> list[list[dict]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=12)
    parser.add_argument("--held-out", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="latency_model", help="results file name (benchmarks/results/OUT.md)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace()
    build = lambda stages: zoo.build("nas_cnn", SHAPE, 10, stages=stages).eval()  # noqa: E731
    calib = [build(s) for s in sample(space, args.calibration, 1)]
    held_stages = sample(space, args.held_out, 2)
    held = [build(s) for s in held_stages]
    reference = zoo.build("mnist_cnn", SHAPE, 10).eval()
    example = torch.zeros(1, *SHAPE)

    started = time.perf_counter()
    table = LatencyTable(threads=1)
    # the units, the calibration networks and the held-out networks in the same interleaved rounds
    everything = table.prepare(calib + held, SHAPE, whole=calib + held + [reference], rounds=args.rounds)
    table_seconds = time.perf_counter() - started
    calib_measured, measured = everything[:len(calib)], everything[len(calib):-1]
    ref_ms = everything[-1]
    calib_raw = [table.raw(m, SHAPE) for m in calib]
    held_raw = [table.raw(m, SHAPE) for m in held]
    table.fit(calib_raw, calib_measured)
    calibrated = [table.scale * r + table.offset for r in held_raw]
    again = measure_models(held, SHAPE, 1, rounds=args.rounds)  # the noise floor: the same networks timed again
    macs_cal = [count_macs(m, example) for m in calib]
    macs = [count_macs(m, example) for m in held]
    slope, intercept = np.polyfit(macs_cal, calib_measured, 1)
    by_macs = [slope * m + intercept for m in macs]
    ref_macs = count_macs(reference, example)
    rows = [{"arch": "|".join(f"{s['block']}{s['kernel']}x{s['depth']}:{s['channels']}:{s['activation']}"
                              for s in stages),
             "macs": mc, "measured_ms": ms, "raw_ms": r, "predicted_ms": p, "macs_predicted_ms": q,
             "macs_x": ref_macs / mc, "latency_x": ref_ms / ms}
            for stages, mc, ms, r, p, q in zip(held_stages, macs, measured, held_raw, calibrated, by_macs)]
    doc = {"command": f"python benchmarks/latency_model.py --calibration {args.calibration} --held-out "
                      f"{args.held_out} --rounds {args.rounds}" + (f" --out {args.out}" if args.out != "latency_model" else ""),
           "units_timed": table.measured, "table_seconds": round(table_seconds, 1),
           "scale": table.scale, "offset_ms": table.offset, "reference_ms": ref_ms, "reference_macs": ref_macs,
           "errors": {"raw table": prediction_error(held_raw, measured),
                      "calibrated table": prediction_error(calibrated, measured),
                      "MAC count (linear fit)": prediction_error(by_macs, measured),
                      "the measurement, repeated (noise floor)": prediction_error(again, measured)},
           "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=2))
    (RESULTS / f"{args.out}.md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    lines = [
        "# Latency model: predicted vs measured ONNX Runtime latency", "",
        f"Command: `{doc['command']}`. Machine: 2 shared cores (other agents ran at the same time), ONNX Runtime "
        f"1 thread, batch 1, input 1x28x28. The table timed {doc['units_timed']} units in {doc['table_seconds']} s; "
        f"calibration: measured = {doc['scale']:.3f} x raw + {doc['offset_ms']:.4f} ms. Target: >= 90% of "
        "held-out predictions within +-10%, Spearman >= 0.95.", "",
        "| predictor | held-out networks | within +-10% | mean abs error | worst | Spearman |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, e in doc["errors"].items():
        lines.append(f"| {name} | {e['n']} | {100 * e['within']:.0f}% | {100 * e['mean_abs_rel_error']:.1f}% | "
                     f"{100 * e['max_abs_rel_error']:.1f}% | {e['spearman']:.3f} |")
    lines += ["", f"Per network (ratios to mnist_cnn width 1: {doc['reference_macs']:,} MACs, "
                  f"{doc['reference_ms']:.3f} ms measured):", "",
              "| architecture | MACs | MACs x | measured ms | p50 x | table ms | error |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(doc["rows"], key=lambda r: r["measured_ms"]):
        lines.append(f"| {r['arch']} | {r['macs']:,} | {r['macs_x']:.2f} | {r['measured_ms']:.3f} | "
                     f"{r['latency_x']:.2f} | {r['predicted_ms']:.3f} | "
                     f"{100 * (r['predicted_ms'] - r['measured_ms']) / r['measured_ms']:+.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
