"""How much of a network's latency does not shrink with its channels: the floor that channel pruning cannot remove.

    python benchmarks/latency_floor.py      # writes benchmarks/results/latency_floor.{json,md}

Each network (random weights) is compared with itself thinned to 1/8 of its channels (``prune.structured``, L2,
ratio 0.875, ``round_to: auto``, so the thin layers stay on the runtime's vector blocks), both timed side by side in
ONNX Runtime (2 threads, 9 interleaved rounds of about 0.1 s of the dense model) at batch 1 and 16. The share of
the latency the thin model keeps, against the share of the MACs, shows how much of the time does not shrink with
channels (operator dispatch, per-run costs, layout reorders, memory-bound elementwise work): only removing operators
(whole blocks) takes that part away.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.measure.counts import count_macs
from edgecompress.measure.latency import burst_runs, interleaved
from edgecompress.registry import get
from edgecompress.runtimes import export
from edgecompress.settings import ExportSettings

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MODELS = {"resnet20": (3, 32, 32), "resnet18": (3, 32, 32), "mobilenet_v2": (3, 224, 224)}


def main() -> None:
    rows, out = [], Path(tempfile.mkdtemp(prefix="ec-latency-floor-"))
    for name, shape in MODELS.items():
        torch.manual_seed(0)
        dense = zoo.build(name, shape, 10).eval()
        task = load_task(data_spec(dataset="synthetic", input_shape=list(shape), num_classes=10, samples=32))
        stage, example = get("prune.structured"), task.example_inputs(1)
        thin = stage(dense, stage.config(ratio=0.875), StageContext(task=task, progress=False)).eval()
        arts = [export(m, example, out / f"{name}-{i}", ExportSettings()) for i, m in enumerate((dense, thin))]
        macs = count_macs(thin, example) / count_macs(dense, example)
        for batch in (1, 16):
            burst = burst_runs(arts[0], shape, threads=2, batch=batch)
            d, t = interleaved(arts, shape, threads=2, batch=batch, rounds=9, repeats=9 * burst, warmup=5)
            ratios = sorted(b / a for a, b in zip(d, t))
            floor = statistics.median(ratios)
            rows.append({"model": name, "batch": batch, "macs_kept": round(macs, 4), "latency_kept": round(floor, 3),
                         "iqr": [round(q, 3) for q in statistics.quantiles(ratios, n=4)[::2]],
                         "dense_ms": round(statistics.median(d), 3)})
            print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python benchmarks/latency_floor.py", "load_average_1min": os.getloadavg()[0], "rows": rows}
    (RESULTS / "latency_floor.json").write_text(json.dumps(doc, indent=1))
    lines = ["| model | batch | MACs kept | latency kept (IQR) | dense ms |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['macs_kept']:.3f} | {r['latency_kept']:.3f} "
                     f"({r['iqr'][0]:.3f}-{r['iqr'][1]:.3f}) | {r['dense_ms']:.2f} |")
    text = (f"# Latency floor of channel pruning\n\n{__doc__.split(chr(10), 3)[3].strip()}\n\n" + "\n".join(lines)
            + f"\n\n1-minute load average at the end: {doc['load_average_1min']:.1f}. Made by `{doc['command']}`.\n")
    (RESULTS / "latency_floor.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
