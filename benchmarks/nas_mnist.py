"""Hardware-aware NAS on MNIST-5k vs the zoo's hand-designed models, measured the same way.

1. ``search.nas`` (default search space, NSGA-II, latency from the calibrated latency table at 1 ONNX Runtime
   thread) proposes and briefly trains ``--trials`` architectures and returns its Pareto front.
2. Every front member and every hand-designed model (mnist_cnn at widths 0.25/0.5/1, ds_cnn at widths 0.5/1)
   is then trained from scratch with the same budget (``--epochs`` over the 4,000 training images, SGD, cosine)
   and scored on the 1,000 test images; all of them are exported to ONNX and timed together in one process
   (ONNX Runtime, 1 thread, batch 1, interleaved rounds: the median over the rounds of each round's fastest of 50
   runs, the statistic the latency table uses; the spread is the range over the rounds). A found model dominates a hand-designed one when it is at least as accurate and at
   most as slow, and better in one.

    python benchmarks/nas_mnist.py            # writes benchmarks/results/nas_mnist.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.measure import count_macs, count_params
from edgecompress.registry import get
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.measure.latency_model import time_onnx
from edgecompress.settings import ExportSettings
from edgecompress.train import accuracy, train

RESULTS = Path(__file__).parent / "results"
HAND = [("mnist_cnn", {"width": 0.25}), ("mnist_cnn", {"width": 0.5}), ("mnist_cnn", {"width": 1.0}),
        ("ds_cnn", {"width": 0.5}), ("ds_cnn", {"width": 1.0})]


def retrain(name: str, kwargs: dict, task, epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    model = zoo.build(name, task.input_shape, task.num_classes, **kwargs)
    train(model, task, epochs=epochs, lr=0.05, seed=seed, progress=False)
    return model.eval(), accuracy(model, task, "test")


def time_all(models: list[torch.nn.Module], shape: tuple[int, ...], rounds: int) -> list[tuple[float, float, float]]:
    """(median, min, max) over ``rounds`` interleaved rounds of each model's ONNX Runtime latency (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [export_onnx(m, torch.zeros(1, *shape), Path(tmp) / f"{i}.onnx").path for i, m in enumerate(models)]
        per_round = [time_onnx(paths, [shape] * len(paths), threads=1, rounds=1, repeats=50) for _ in range(rounds)]
    columns = list(zip(*per_round))
    return [(statistics.median(c), min(c), max(c)) for c in columns]


def dominates(a: dict, b: dict) -> bool:
    return (a["test_accuracy"] >= b["test_accuracy"] and a["latency_ms"] <= b["latency_ms"]
            and (a["test_accuracy"], a["latency_ms"]) != (b["test_accuracy"], b["latency_ms"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of every compared model")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--out", default="nas_mnist")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_task(data_spec(dataset="mnist5k"))
    started = time.perf_counter()
    ctx = StageContext(task=task, export=ExportSettings(threads=1), progress=False, seed=0)
    incoming = zoo.build("mnist_cnn", task.input_shape, task.num_classes)
    stage = get("search.nas")
    stage(incoming, stage.config(trials=args.trials, final_epochs=0), ctx)
    search_seconds = time.perf_counter() - started
    info = ctx.info
    rows, models = [], []
    for member in info["pareto_front"]:
        model, acc = retrain("nas_cnn", {"stages": member["stages"]}, task, args.epochs, 0)
        rows.append({"model": "found: " + member["arch"], "kind": "found", "search_val_accuracy": member["val_accuracy"],
                     "test_accuracy": acc})
        models.append(model)
    for name, kwargs in HAND:
        model, acc = retrain(name, kwargs, task, args.epochs, 0)
        rows.append({"model": f"{name} {kwargs}", "kind": "hand", "test_accuracy": acc})
        models.append(model)
    example = task.example_inputs(1)
    for row, model, (ms, low, high) in zip(rows, models, time_all(models, task.input_shape, args.rounds)):
        row.update(latency_ms=ms, latency_range=[low, high], macs=count_macs(model, example), params=count_params(model))
    hand = [r for r in rows if r["kind"] == "hand"]
    best_hand = max(hand, key=lambda r: (r["test_accuracy"], -r["latency_ms"]))  # ties: the faster
    winners = [r["model"] for r in rows if r["kind"] == "found" and dominates(r, best_hand)]
    for r in rows:
        r.update(macs_x=best_hand["macs"] / r["macs"], latency_x=best_hand["latency_ms"] / r["latency_ms"])
    doc = {"command": f"python benchmarks/nas_mnist.py --trials {args.trials} --epochs {args.epochs} --rounds "
                      f"{args.rounds}", "search_seconds": round(search_seconds, 1), "trials": info["trials"],
           "architectures": info["architectures"], "space_size": info["space_size"],
           "latency_table": info["latency_table"], "front_latency_error": info["front_latency_error"],
           "rows": rows, "best_hand": best_hand["model"], "dominating": winners,
           "target_met": bool(winners), "threads": 1}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=2))
    (RESULTS / f"{args.out}.md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    lines = [
        "# NAS on MNIST-5k vs hand-designed zoo models", "",
        f"Command: `{doc['command']}`. Machine: 2 shared cores (other agents ran at the same time), torch 1 thread, "
        "ONNX Runtime 1 thread, batch 1. Every model below was trained from scratch with the same budget and timed "
        "in the same process in interleaved rounds (the median over the rounds of each round's fastest of 50 runs; "
        "range over the rounds in brackets). "
        "`MACs x` and `latency x`: the best hand-designed model's MACs and latency divided by the row's.", "",
        f"Search: {doc['trials']} trials ({doc['architectures']} distinct architectures of {doc['space_size']:,}) "
        f"in {doc['search_seconds']} s, scored on the calibrated latency table.", "",
        "| model | test acc % | latency ms [range] | MACs | params | MACs x | latency x |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(doc["rows"], key=lambda r: r["latency_ms"]):
        low, high = r["latency_range"]
        lines.append(f"| {r['model']} | {100 * r['test_accuracy']:.2f} | {r['latency_ms']:.3f} [{low:.3f}-{high:.3f}] "
                     f"| {r['macs']:,} | {r['params']:,} | {r['macs_x']:.2f} | {r['latency_x']:.2f} |")
    lines += ["", f"Best hand-designed model: {doc['best_hand']}.",
              f"Found models that dominate it: {', '.join(doc['dominating']) or 'none'}"
              f" -> target {'met' if doc['target_met'] else 'missed'}."]
    pairs = [f"{a['model']} dominates {b['model']}" for a in doc["rows"] if a["kind"] == "found"
             for b in doc["rows"] if b["kind"] == "hand" and dominates(a, b)]
    lines += ["", "Every found model that dominates a hand-designed one:", ""] + [f"- {p}" for p in pairs or ["none"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
