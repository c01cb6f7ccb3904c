"""Composite pruning benchmark (issue 4): DNNShifter and Reconvene, side by side in one process.

(a) prune.lottery portfolio -> prune.shifter at every level vs the sparse parent (shipped dense with zeros):
    output difference, ONNX bytes, ONNX Runtime latency (p50, subprocess, 1 thread), all-zero filters per level,
    and the in-memory switch time vs reloading the model from disk. Targets (DNNShifter): 5.14x smaller,
    1.67x faster at unchanged accuracy.
(b) prune.reconvene vs unstructured PaI (snip, grasp, synflow, magnitude, random) at the same sparsity and the
    same training: accuracy, ONNX bytes and latency ratios, time to produce the pruned model. Target
    (Reconvene): 16.21x smaller and 2x faster at the same accuracy.

    python benchmarks/composite_pruning.py --quick       # digits, mnist_cnn width 2 (~4 min)
    python benchmarks/composite_pruning.py --quick --dataset mnist5k --width 0.5 --levels 6 --tag mnist5k
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import edgecompress as ec
from edgecompress import zoo
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.measure import count_macs, count_nonzero, count_params
from edgecompress.portfolio import Portfolio, Server, least_contended
from edgecompress.registry import get

RESULTS = Path(__file__).parent / "results"


def _timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def shifter_part(args, task, work: Path) -> dict:
    out = {}
    for knob in (False, True):
        model = zoo.build(args.model, task.input_shape, task.num_classes, width=args.width)
        stage, ctx = get("prune.lottery"), StageContext(task=task, progress=False, workdir=work / f"lottery_{knob}")
        cfg = stage.config(levels=args.levels, rate=args.rate, epochs=args.epochs, zero_dead_bn=knob)
        _, wall, cpu = _timed(stage, model, cfg, ctx)
        pf = Portfolio.from_dir(work / f"lottery_{knob}", work / f"pf_{knob}", task, repeats=args.repeats,
                                batch=args.batch, rounds=args.rounds)
        rows = pf.table()
        for row, lv in zip(rows, ctx.info["levels"]):
            row.update(dead_filters=lv["dead_filters"], filters=lv["filters"])
        base = rows[0]["accuracy_sparse"]
        ok = [r for r in rows if r["accuracy_dense"] >= base - 0.01]
        best = max(ok, key=lambda r: r["size_ratio"])
        result = {"lottery_wall_s": wall, "lottery_cpu_s": cpu, "levels": rows, "best_within_1pt": best["level"],
                  "size_ratio_within_1pt": best["size_ratio"], "speedup_within_1pt": best["speedup"],
                  "max_abs_diff": max(r["max_abs_diff"] for r in rows)}
        if knob:
            server, x = Server(pf), task.example_inputs(1).numpy()
            switch = [server.switch_first_request(lv.level, x) for _ in range(args.switch_repeats) for lv in pf.levels]
            reload = [server.reload_first_request(lv.level, x) for _ in range(args.switch_repeats) for lv in pf.levels]
            result.update(switch_ms=1e3 * statistics.median(switch), reload_ms=1e3 * statistics.median(reload))
            result["select_tight"] = server.select(latency_ms=1e-6)[1]
            result["select_loose"] = server.select(latency_ms=1e3)[1]
        out["zero_dead_bn" if knob else "plain_imp"] = result
    return out


def reconvene_part(args, task, work: Path, sparsity: float) -> dict:
    init = zoo.build(args.model, task.input_shape, task.num_classes, width=args.width)
    rows = {}
    for method in ("snip", "grasp", "synflow", "magnitude", "random", "reconvene"):
        stage = get("prune.reconvene" if method == "reconvene" else "prune.pai")
        cfg = stage.config(sparsity=sparsity) if method == "reconvene" else stage.config(score=method, sparsity=sparsity)
        ctx = StageContext(task=task, progress=False, seed=0)
        pruned, wall, cpu = _timed(stage, init, cfg, ctx)
        trained = ec.apply("finetune", pruned, task, epochs=args.train_epochs, lr=args.lr)
        art = export_onnx(trained, task.example_inputs(1), work / f"pai_{method}.onnx")
        lat = least_contended(art, task.input_shape, args.rounds, repeats=args.repeats, batch=args.batch)
        rows[method] = {"accuracy": task.evaluate(art.runner(1), "test")["accuracy"], "bytes": art.size_bytes,
                        "params": count_params(trained), "macs": count_macs(trained, task.example_inputs(1)),
                        "nonzero": count_nonzero(trained), "latency_ms": lat["latency_p50_ms"],
                        "prune_wall_s": wall, "prune_cpu_s": cpu}
        if method == "reconvene":
            rows[method]["structured"] = ctx.info["structured"]
            rows[method]["kept_unstructured"] = ctx.info["kept_unstructured"]
    rec = rows["reconvene"]
    for r in rows.values():
        r["size_ratio_vs"] = r["bytes"] / rec["bytes"]
        r["speedup_vs"] = r["latency_ms"] / rec["latency_ms"]
        r["acc_gap_pts"] = 100 * (rec["accuracy"] - r["accuracy"])
    return rows


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return f"{value:.2f}x: target {target}x " + ("met" if value >= target else f"missed by {target / value:.2f}x")


def markdown(res: dict, command: str) -> str:
    cfg = res["config"]
    lines = ["# Composite pruning (issue 4): DNNShifter and Reconvene", "", f"Command: `{command}`", "",
             (f"Setup: {cfg}. Latency: ONNX Runtime p50 wall time per batch of {cfg['batch']}, 1 thread, separate "
              f"process, the lowest of {cfg.get('rounds', 1)} measurements, on a shared, contended 2-core machine "
              "(identical models still differ run to run; small ratios are noise). "
              "Sparse parents ship as dense ONNX with zeros; accuracy is the ONNX model's on the test split."), ""]
    for key, title in (("plain_imp", "lottery as published (BN of dead filters keeps its bias)"),
                       ("zero_dead_bn", "lottery with our `zero_dead_bn` knob")):
        r = res["shifter"][key]
        lines += [f"## (a) Shifter vs sparse parent — {title}", "",
                  ("| level | sparsity | dead filters | removed | kept dead | acc sparse | acc shifted | KiB sparse | "
                   "KiB shifted | size x | ms sparse | ms shifted | speedup | max abs diff |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["levels"]:
            lines.append(
                f"| {row['level']} | {row['sparsity']:.3f} | {row['dead_filters']}/{row['filters']} | "
                f"{row['channels_removed']} | {row['channels_kept_dead']} | {row['accuracy_sparse']:.3f} | "
                f"{row['accuracy_dense']:.3f} | {row['bytes_sparse'] / 1024:.1f} | {row['bytes_dense'] / 1024:.1f} | "
                f"{row['size_ratio']:.2f}x | {row['latency_sparse_ms']:.3f} | {row['latency_dense_ms']:.3f} | "
                f"{row['speedup']:.2f}x | {row['max_abs_diff']:.1e} |")
        top = max(r["levels"], key=lambda row: row["size_ratio"])
        lines += ["", (f"Best level within 1 point of the dense level's accuracy: level {r['best_within_1pt']}: size "
                       f"{_verdict(r['size_ratio_within_1pt'], 5.14)}; speed {_verdict(r['speedup_within_1pt'], 1.67)}. "
                       f"Largest shift at any accuracy: level {top['level']}, {top['size_ratio']:.2f}x smaller, "
                       f"{top['speedup']:.2f}x faster at accuracy {top['accuracy_dense']:.3f}. Outputs of shifted vs "
                       f"sparse: max abs diff {r['max_abs_diff']:.1e} (tolerance 1e-4). Lottery time "
                       f"{r['lottery_wall_s']:.1f} s wall / {r['lottery_cpu_s']:.1f} s CPU."), ""]
        if "switch_ms" in r:
            lines += [(f"Switching (median over levels and repeats, swap + first request, batch 1): in memory "
                       f"**{r['switch_ms']:.3f} ms** vs reload from disk **{r['reload_ms']:.3f} ms** "
                       f"({r['reload_ms'] / r['switch_ms']:.0f}x). Budget 1e-6 ms: \"{r['select_tight']}\". "
                       f"Budget 1000 ms: \"{r['select_loose']}\"."), ""]
    for sp, rows in res["reconvene"].items():
        lines += [f"## (b) Reconvene vs unstructured PaI at sparsity {sp} (same training)", "",
                  ("| method | test acc | acc gap (pts, Reconvene - it) | KiB | params | nonzero | MACs | ms | "
                   "Reconvene smaller by | Reconvene faster by | prune s (wall/CPU) |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in rows.items():
            lines.append(f"| {m} | {r['accuracy']:.3f} | {r['acc_gap_pts']:+.1f} | {r['bytes'] / 1024:.1f} | "
                         f"{r['params']:,} | {r['nonzero']:,} | {r['macs']:,} | {r['latency_ms']:.3f} | "
                         f"{r['size_ratio_vs']:.2f}x | {r['speedup_vs']:.2f}x | "
                         f"{r['prune_wall_s']:.2f}/{r['prune_cpu_s']:.2f} |")
        peers = {m: r for m, r in rows.items() if m != "reconvene"}
        best = max(peers, key=lambda m: peers[m]["accuracy"])
        close = [m for m, r in peers.items() if abs(r["acc_gap_pts"]) <= 1.0]
        lines += ["", (f"Reconvene's converted layers [before, after channels]: {rows['reconvene'].get('structured')}; "
                       f"kept unstructured: {rows['reconvene'].get('kept_unstructured')}. Against the most accurate "
                       f"unstructured PaI ({best}, accuracy gap {peers[best]['acc_gap_pts']:+.1f} points): size "
                       f"{_verdict(peers[best]['size_ratio_vs'], 16.21)}; speed "
                       f"{_verdict(peers[best]['speedup_vs'], 2.0)}. Within 1 point of Reconvene: "
                       f"{', '.join(close) or 'none'}."), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized default configuration (the defaults below)")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mnist_cnn")
    p.add_argument("--width", type=float, default=2.0,
                   help="2.0: over-parameterized for digits, as VGG-16 is for CIFAR-10 in DNNShifter")
    p.add_argument("--levels", type=int, default=7)
    p.add_argument("--rate", type=float, default=0.55, help="fraction of remaining weights pruned per level")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per lottery level")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.98], help="PaI / Reconvene sparsities")
    p.add_argument("--train-epochs", type=int, default=5, help="training after PaI / Reconvene")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=50, help="timed runs per latency measurement")
    p.add_argument("--batch", type=int, default=32, help="batch size of the latency measurements")
    p.add_argument("--rounds", type=int, default=3, help="latency: lowest p50 of this many measurements")
    p.add_argument("--switch-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--tag", default="", help="suffix of the results files (composite_pruning_<tag>.json/.md)")
    p.add_argument("--render-only", action="store_true", help="rewrite the markdown from the saved JSON results")
    args = p.parse_args()
    suffix = f"_{args.tag}" if args.tag else ""
    if args.render_only:
        saved = json.loads((RESULTS / f"composite_pruning{suffix}.json").read_text())
        (RESULTS / f"composite_pruning{suffix}.md").write_text(markdown(saved, saved["command"]))
        return
    torch.set_num_threads(args.threads)
    task = load_task(data_spec(dataset=args.dataset))
    config = {k: v for k, v in vars(args).items()}
    with tempfile.TemporaryDirectory(prefix="composite-") as tmp:
        work = Path(tmp)
        res = {"config": config, "shifter": shifter_part(args, task, work), "reconvene": {str(sp): reconvene_part(args, task, work, sp) for sp in args.sparsity}}
    for part in res["shifter"].values():
        for row in part["levels"]:
            row.pop("sparse_onnx"), row.pop("dense_onnx")
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/composite_pruning.py " + " ".join(sys.argv[1:])
    (RESULTS / f"composite_pruning{suffix}.json").write_text(json.dumps({**res, "command": command}, indent=2))
    (RESULTS / f"composite_pruning{suffix}.md").write_text(markdown(res, command))
    print(markdown(res, command))


if __name__ == "__main__":
    main()
