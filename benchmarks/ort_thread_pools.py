"""Several ONNX Runtime sessions in one process: per-session thread pools vs one shared pool.

    python benchmarks/ort_thread_pools.py      # writes benchmarks/results/ort_thread_pools.{json,md}

The benchmark worker times compared models side by side in one process, and an early-exit model runs its
segments as sessions one after another. By default every session has its own intra-op threads, which spin on a
core after each run waiting for more work. Measured here, 2 threads, for resnet20 and resnet18 (32x32, random
weights) at batch 1 and 16:
  chain: three sessions of the same model run one after another (an early-exit model's segments), against one
  session run three times, with per-session pools, per-session pools that do not spin, and one shared pool;
  ratio: the model without most of its residual blocks timed in turns with the original, in interleaved rounds
  (the median over rounds of the per-round ratio of burst medians), with the same three settings, against the
  ratio of the two timed alone, each in its own process (``measure.latency.benchmark``, the deployment case).
Each setting runs in its own process (a shared pool is made once per process, before any session).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/ort_thread_pools.py"
MODELS = {"resnet20": ["layers.0", "layers.1", "layers.2", "layers.4", "layers.5"],
          "resnet18": ["layers.0", "layers.1", "layers.3", "layers.5", "layers.7"]}
SETTINGS = ("per-session", "per-session, no spinning", "shared pool")
THREADS = 2


def _time(setting: str, dense: str, pruned: str, batch: int, rounds: int) -> dict:
    """In this (fresh) process: the chain and the interleaved ratio under ``setting``."""
    import time

    import numpy as np

    from edgecompress.runtimes.onnxruntime import session, share_threads

    if setting == "shared pool":
        share_threads(THREADS)
    x = {"input": np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)}
    make = lambda p: session(p, THREADS, spin=setting != "per-session, no spinning")  # noqa: E731
    chain = [make(dense) for _ in range(3)]
    pair = [chain[0], make(pruned)]
    for s in (*chain, pair[1]):
        for _ in range(5):
            s.run(None, x)
    runs = max(3, round(15 / batch ** 0.5))

    def burst(fn) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    chained = [burst(lambda: [s.run(None, x) for s in chain]) for _ in range(rounds)]
    single = [burst(lambda: chain[0].run(None, x)) for _ in range(rounds)]
    ratios = [burst(lambda: pair[1].run(None, x)) / burst(lambda: pair[0].run(None, x)) for _ in range(rounds)]
    return {"chain_ms": statistics.median(chained), "one_session_x3_ms": 3 * statistics.median(single),
            "ratio": statistics.median(ratios)}


def _models(name: str, out: Path) -> tuple[Path, Path]:
    import torch

    from edgecompress import zoo
    from edgecompress.prune.sensitivity import RemovedBlock
    from edgecompress.runtimes.onnxruntime import export_onnx

    torch.manual_seed(0)
    dense = zoo.build(name, (3, 32, 32), 10).eval()
    pruned = copy.deepcopy(dense)
    for block in MODELS[name]:
        pruned.set_submodule(block, RemovedBlock())
    example = torch.zeros(1, 3, 32, 32)
    return (export_onnx(dense, example, out / f"{name}.onnx").path,
            export_onnx(pruned, example, out / f"{name}-pruned.onnx").path)


def _alone(dense: Path, pruned: Path, batch: int, trials: int) -> list[float]:
    """Pruned / dense median latency, each timed alone in its own worker process, ``trials`` times."""
    from edgecompress.measure.latency import benchmark
    from edgecompress.runtimes import Artifact

    arts = [Artifact(p, "onnx", "onnxruntime", "fp32") for p in (dense, pruned)]
    out = []
    for _ in range(trials):
        d, p = (benchmark(a, (3, 32, 32), threads=THREADS, batch=batch, repeats=100)["latency_p50_ms"] for a in arts)
        out.append(round(p / d, 3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # setting, dense, pruned, batch, rounds
        print(json.dumps(_time(args.child[0], args.child[1], args.child[2], int(args.child[3]), int(args.child[4]))))
        return
    out, rows = Path(tempfile.mkdtemp(prefix="ec-pools-")), []
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    for name in MODELS:
        dense, pruned = _models(name, out)
        for batch in (1, 16):
            row = {"model": name, "batch": batch, "alone": _alone(dense, pruned, batch, 3)}
            for setting in SETTINGS:
                proc = subprocess.run([sys.executable, __file__, "--child", setting, str(dense), str(pruned),
                                       str(batch), str(args.rounds)], capture_output=True, text=True, env=env,
                                      check=True)
                row[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(row, flush=True)
    lines = ["| model | batch | setting | 3 sessions in a chain (ms) | one session x3 (ms) | pruned / dense, in turns "
             "| pruned / dense, alone (3 trials) |", "|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        for setting in SETTINGS:
            s = r[setting]
            lines.append(f"| {r['model']} | {r['batch']} | {setting} | {s['chain_ms']:.2f} | "
                         f"{s['one_session_x3_ms']:.2f} | {s['ratio']:.3f} | {', '.join(map(str, r['alone']))} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"command": COMMAND, "threads": THREADS, "load_average_1min": os.getloadavg()[0], "rows": rows}
    (RESULTS / "ort_thread_pools.json").write_text(json.dumps(doc, indent=1))
    text = (f"# ONNX Runtime thread pools with several sessions in one process\n\n"
            f"{__doc__.split(chr(10), 3)[3].strip()}\n\n" + "\n".join(lines) +
            f"\n\n1-minute load average at the end: {doc['load_average_1min']:.1f}. Made by `{COMMAND}`.\n")
    (RESULTS / "ort_thread_pools.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
