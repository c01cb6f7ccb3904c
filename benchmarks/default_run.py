"""Run the embedded default recipe from a cold cache (baseline training included) and record its figures.

    python benchmarks/default_run.py            # writes benchmarks/results/default_run.{json,md}
    python benchmarks/default_run.py --readme   # also refreshes the results table in README.md

The table is the per-stage measurement of the run: accuracy on the held-out MNIST-5k test split and latency
of each stage's exported artifact in ONNX Runtime (1 thread, batch 1); the last row is the INT8 ONNX model. The
speed-up over the baseline comes from the run's side-by-side timing of every artifact (interleaved rounds): the
median per-round ratio and its interquartile range.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/default_run.py --readme"


def table(metrics: dict, wall: float, cpu: float) -> str:
    from edgecompress.report.table import fmt_speedup

    base = metrics["history"][0]["metrics"]
    rows = ["| stage | accuracy % | macro-F1 % | params | MACs | size on disk | p50 latency ms | speed-up (IQR) | "
            "stage time s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for h in metrics["history"]:
        m = h["metrics"]
        rows.append(f"| {h['name']} ({m['precision']}) | {m['accuracy'] * 100:.2f} | {m['f1_macro'] * 100:.2f} | "
                    f"{m['params']:,} | {m['macs'] / 1e6:.2f} M | {m['size_bytes'] / 1024:.1f} KiB | "
                    f"{m['latency_p50_ms']:.3f} | {fmt_speedup(m.get('speedup'))} | {m['stage_seconds']:.1f} |")
    s = metrics["summary"]
    checks = "; ".join(f"{c['target']} {c['wanted']} → {c['got']} {'PASS' if c['passed'] else 'FAIL'}"
                       for c in metrics["checks"])
    return "\n".join(rows) + (
        f"\n\nFinal vs baseline: **{s['size_reduction']:.1f}x smaller on disk** (INT8 ONNX {base['size_bytes']:,} → "
        f"{metrics['history'][-1]['metrics']['size_bytes']:,} bytes vs FP32 ONNX), **{s['macs_reduction']:.2f}x fewer "
        f"MACs**, accuracy drop **{s['accuracy_drop_points']:.2f} points**, latency "
        f"speed-up {fmt_speedup(s['latency_speedup_spread'])}x (median of interleaved rounds, IQR; ≈1: no measurable "
        f"difference); whole run {wall:.0f} s wall ({cpu:.0f} s CPU) on {os.cpu_count()} cores, baseline training "
        f"included.\nTargets: {checks}.\n\nMade by `{COMMAND}`.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="refresh the README results table")
    args = parser.parse_args()
    os.environ["EDGECOMPRESS_CACHE"] = tempfile.mkdtemp(prefix="ec-cold-cache-")  # cold: train the baseline
    from edgecompress.pipeline import Pipeline
    from edgecompress.recipe import load_recipe

    out = Path(tempfile.mkdtemp(prefix="ec-default-")) / "run"
    wall, cpu = time.perf_counter(), time.process_time()
    Pipeline(load_recipe("default"), out, progress=sys.stderr.isatty()).run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    metrics = json.loads((out / "metrics.json").read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "default_run.json").write_text(json.dumps({**metrics, "wall_seconds": wall, "cpu_seconds": cpu},
                                                         indent=2))
    md = table(metrics, wall, cpu)
    (RESULTS / "default_run.md").write_text(f"# Default run\n\n{md}\n")
    if args.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        text = re.sub(r"(<!-- results:start -->\n).*?(\n<!-- results:end -->)", lambda m: m[1] + md + m[2], text,
                      flags=re.S)
        readme.write_text(text)
    print(md)


if __name__ == "__main__":
    main()
