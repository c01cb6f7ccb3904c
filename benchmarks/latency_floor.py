"""How much of a network's latency does not shrink with its channels: the floor that channel pruning cannot remove.

    python benchmarks/latency_floor.py      # writes benchmarks/results/latency_floor.{json,md}

Each network (random weights) is compared with itself thinned to 1/8 of its channels (``prune.structured``, L2,
ratio 0.875, ``round_to: auto``, so the thin layers stay on the runtime's vector blocks), both timed side by side in
ONNX Runtime (2 threads, 9 interleaved rounds of about 0.1 s of the dense model) at batch 1 and 16. The share of
the latency the thin model keeps, against the share of the MACs, shows how much of the time does not shrink with
channels (operator dispatch, per-run costs, layout reorders, memory-bound elementwise work): only removing operators
(whole blocks) takes that part away.

Second table: resnet20 without the first k of its shape-keeping residual blocks in the order ``REMOVAL`` (first
stage first, the order in which latency-aware pruning drops them), full width, timed side by side with the dense
model the same way: the latency and MACs that block removal alone reaches.
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
REMOVAL = ["layers.0", "layers.1", "layers.2", "layers.4", "layers.5", "layers.7", "layers.8"]  # resnet20


def _timed(arts: list, shape: tuple[int, ...], batch: int) -> list[dict]:
    """Each artifact after the first against the first: median latency ratio over 9 interleaved rounds, its IQR."""
    burst = burst_runs(arts[0], shape, threads=2, batch=batch)
    ms = interleaved(arts, shape, threads=2, batch=batch, rounds=9, repeats=9 * burst, warmup=5)
    rows = []
    for times in ms[1:]:
        ratios = sorted(b / a for a, b in zip(ms[0], times))
        rows.append({"batch": batch, "latency_kept": round(statistics.median(ratios), 3),
                     "iqr": [round(q, 3) for q in statistics.quantiles(ratios, n=4)[::2]],
                     "dense_ms": round(statistics.median(ms[0]), 3)})
    return rows


def _blocks(out: Path) -> list[dict]:
    """resnet20 without the first k of ``REMOVAL`` (k = 4..7), full width, against the dense model."""
    import copy

    from edgecompress.prune.sensitivity import RemovedBlock

    torch.manual_seed(0)
    dense, example = zoo.build("resnet20", MODELS["resnet20"], 10).eval(), torch.zeros(1, *MODELS["resnet20"])
    models, rows = [dense], []
    for k in range(4, len(REMOVAL) + 1):
        models.append(copy.deepcopy(dense))
        for name in REMOVAL[:k]:
            models[-1].set_submodule(name, RemovedBlock())
    arts = [export(m, example, out / f"blocks-{i}", ExportSettings()) for i, m in enumerate(models)]
    macs0 = count_macs(dense, example)
    for batch in (1, 16):
        for k, (model, row) in enumerate(zip(models[1:], _timed(arts, MODELS["resnet20"], batch)), start=4):
            rows.append({"blocks_removed": k, "macs_kept": round(count_macs(model, example) / macs0, 4), **row})
            print(rows[-1], flush=True)
    return rows


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
            rows.append({"model": name, "macs_kept": round(macs, 4), **_timed(arts, shape, batch)[0]})
            print(rows[-1], flush=True)
    blocks = _blocks(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python benchmarks/latency_floor.py", "load_average_1min": os.getloadavg()[0], "rows": rows,
           "resnet20_blocks": blocks}
    (RESULTS / "latency_floor.json").write_text(json.dumps(doc, indent=1))
    lines = ["| model | batch | MACs kept | latency kept (IQR) | dense ms |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['macs_kept']:.3f} | {r['latency_kept']:.3f} "
                     f"({r['iqr'][0]:.3f}-{r['iqr'][1]:.3f}) | {r['dense_ms']:.2f} |")
    lines += ["", "| resnet20 blocks removed | batch | MACs kept | latency kept (IQR) |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['blocks_removed']} | {r['batch']} | {r['macs_kept']:.3f} | {r['latency_kept']:.3f} "
              f"({r['iqr'][0]:.3f}-{r['iqr'][1]:.3f}) |" for r in blocks]
    text = (f"# Latency floor of channel pruning\n\n{__doc__.split(chr(10), 3)[3].strip()}\n\n" + "\n".join(lines)
            + f"\n\n1-minute load average at the end: {doc['load_average_1min']:.1f}. Made by `{doc['command']}`.\n")
    (RESULTS / "latency_floor.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
