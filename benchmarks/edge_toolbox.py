"""Edge toolbox benchmark (issue 16) on MNIST-5k, every model measured as ONNX in ONNX Runtime (1 thread):

  lowrank    factorize.lowrank vs prune.structured at equal MACs on ResNet-20 and MobileNetV2 (width 0.35): the
             same recovery (distillation from the dense model, same epochs and settings), test accuracy, MACs,
             parameters, per-sample latency (interleaved rounds, median and range of the ratio to dense).
  exits      dynamic.early_exit on ResNet-20: test accuracy vs average per-sample latency over thresholds (one
             shared threshold swept, and the calibrated ones); target >= 1.5x lower latency at <= 1 point drop.
  separable  hw.separable on ResNet-20: MACs, parameters, latency and accuracy before/after recovery, and the
             exact (multiplier 9) rewrite's output difference.

    python benchmarks/edge_toolbox.py --part all          # ~25 min on a shared 2-core machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from edgecompress import baseline, zoo
from edgecompress.checkpoint import load_model, save_model
from edgecompress.context import StageContext
from edgecompress.data import data_spec, load_task
from edgecompress.measure import count_macs, count_params
from edgecompress.measure.latency import interleaved_calls
from edgecompress.registry import get
from edgecompress.runtimes.onnxruntime import export_onnx
from edgecompress.train import train

RESULTS = Path(__file__).parent / "results"
MODELS = {"resnet20": {}, "mobilenet_v2": {"width_mult": 0.35, "dropout": 0.0}}
NOTE = ("Timed on a shared 2-core machine (other agents' jobs running): latencies are per sample, test inputs one at a "
        "time, in interleaved rounds; ratios are the median (and range) of per-round ratios.")


def dense(name: str, task, args) -> torch.nn.Module:
    """The zoo model trained on the task (cached under --work)."""
    path = Path(args.work) / name
    if (path / "model.json").exists():
        return load_model(path, baseline.build_from_arch)
    torch.manual_seed(0)
    model = zoo.build(name, task.input_shape, task.num_classes, **MODELS[name])
    train(model, task, epochs=args.train_epochs, lr=0.05, progress=False)
    save_model(model.eval(), path)
    return model.eval()


def stage(method: str, model, task, teacher=None, **config):
    """One stage on ``model``; its teacher (distillation) is ``teacher``, by default the model itself."""
    s = get(method)
    ctx = StageContext(task=task, teacher=model if teacher is None else teacher, progress=False,
                       workdir=Path(args_global.work) / "stages")
    out = s(model, s.config(**config), ctx)
    return (out.model if hasattr(out, "artifact") else out), ctx.info, out


def onnx_runner(model, task, tag: str):
    art = export_onnx(model, task.example_inputs(1), Path(args_global.work) / f"{tag}.onnx")
    return art.runner(1)


def test_accuracy(run, task) -> float:
    x, y = (t.numpy() for t in task.split("test").tensors)
    return float((np.concatenate([run(x[i:i + 256]) for i in range(0, len(x), 256)]).argmax(1) == y).mean())


def timing(runners: dict, task, args) -> dict:
    """Per-sample latency (ms, median over rounds) of each runner and its ratio to the first one."""
    xs = [x[None] for x in task.split("test").tensors[0][: args.samples].numpy()]
    times = interleaved_calls({k: (lambda r=r: [r(x) for x in xs]) for k, r in runners.items()}, args.rounds)
    first = next(iter(times))
    out = {}
    for k, t in times.items():
        ratios = [a / b for a, b in zip(times[first], t, strict=True)]
        out[k] = {"ms": round(statistics.median(t) * 1e3 / len(xs), 4), "speedup": round(statistics.median(ratios), 3),
                  "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)]}
    return out


def part_lowrank(task, args) -> dict:
    recovery = {"epochs": args.recover_epochs, "lr": 0.01, "distill": {"temperature": 4.0, "alpha": 0.7}}
    rows = []
    for name in MODELS:
        model, ex = dense(name, task, args), task.example_inputs(1)
        variants, skipped = {"dense": model}, {}
        pruned, info, _ = stage("prune.structured", model, task, target_macs_ratio=args.macs_ratio)
        variants["prune.structured"], _, _ = stage("finetune", pruned, task, teacher=model, lr=0.01,
                                                   epochs=args.recover_epochs, distill=recovery["distill"])
        ratio = count_macs(variants["prune.structured"], ex) / count_macs(model, ex)
        for mode in args.modes:
            key = f"factorize.lowrank ({mode})"
            variants[key], info, _ = stage("factorize.lowrank", model, task, conv_mode=mode,
                                           target_macs_ratio=min(ratio + 1e-4, 0.999), recovery=recovery)
            skipped[key] = info["skipped"]
        runners = {k: onnx_runner(m, task, f"{name}-{k}") for k, m in variants.items()}
        times = timing(runners, task, args)
        for k, m in variants.items():
            rows.append({"model": name, "variant": k, "accuracy": test_accuracy(runners[k], task),
                         "macs": count_macs(m, ex), "params": count_params(m), **times[k],
                         "layers_skipped": skipped.get(k)})
        print(json.dumps(rows[-len(variants):]), file=sys.stderr)
    return {"rows": rows, "recovery_epochs": args.recover_epochs, "macs_ratio": args.macs_ratio}


def part_exits(task, args) -> dict:
    model = dense("resnet20", task, args)
    full = onnx_runner(model, task, "resnet20-full")
    results = {}
    for variant in args.exit_variants:
        training, exits = variant.split(":")
        lr = args.joint_lr if training == "joint" else 1e-3
        _, info, out = stage("dynamic.early_exit", model, task, training=training, epochs=args.exit_epochs,
                             exits=int(exits), lr=lr, latency_samples=args.samples, latency_rounds=args.rounds)
        run = out.artifact.runner(1)
        calibrated = list(run.thresholds)
        sweep = {f"shared {t}": [t] * len(calibrated) for t in args.thresholds}
        rows = []
        for label, thresholds in {"calibrated (max drop 1 pt)": calibrated, **sweep}.items():  # one artifact
            run.thresholds = thresholds
            x, y = (t.numpy() for t in task.split("test").tensors)
            logits, which = run.run(x)
            times = timing({"full": full, "early_exit": run}, task, args)
            rows.append({"thresholds": [round(t, 4) for t in thresholds], "label": label,
                         "accuracy": float((logits.argmax(1) == y).mean()),
                         "exit_share": [round(float(c) / len(y), 3) for c in np.bincount(which, minlength=len(run.sessions))],
                         "ms": times["early_exit"]["ms"], "ms_full": times["full"]["ms"],
                         "speedup": times["early_exit"]["speedup"], "speedup_range": times["early_exit"]["speedup_range"]})
            print(json.dumps(rows[-1]), file=sys.stderr)
        results[f"{training}, {exits} exits, Adam lr {lr}"] = {
            "split_points": info["split_points"], "full_accuracy": test_accuracy(full, task),
            "stage_info": {k: v for k, v in info.items() if k != "loss_per_epoch"}, "rows": rows}
    return results


def part_separable(task, args) -> dict:
    model, ex = dense("resnet20", task, args), task.example_inputs(1)
    exact, info_exact, _ = stage("hw.separable", model, task, multiplier=9, only_fewer_macs=False,
                                 recovery={"epochs": 0})
    with torch.no_grad():
        diff = float((exact(task.example_inputs(64)) - model(task.example_inputs(64))).abs().max())
    no_recovery, _, _ = stage("hw.separable", model, task, recovery={"epochs": 0})
    recovered, info, _ = stage("hw.separable", model, task, recovery={"epochs": args.recover_epochs, "lr": 0.01})
    variants = {"dense": model, "separable, no recovery": no_recovery,
                f"separable + {args.recover_epochs} epochs distillation": recovered}
    runners = {k: onnx_runner(m, task, f"sep-{i}") for i, (k, m) in enumerate(variants.items())}
    times = timing(runners, task, args)
    rows = [{"variant": k, "accuracy": test_accuracy(runners[k], task), "macs": count_macs(m, ex),
             "params": count_params(m), **times[k]} for k, m in variants.items()]
    return {"rows": rows, "exact_max_abs_diff": diff, "exact_macs": count_macs(exact, ex),
            "rewritten": len(info["rewritten"]), "skipped": info["skipped"], "recovery": info["recovery"]}


def _table(rows: list[dict], keys: list[str]) -> str:
    fmt = {float: lambda v: f"{v:.4g}"}
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt.get(type(r.get(k)), str)(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def render(part: str, result: dict) -> str:
    head = f"# Edge toolbox: {part}\n\nCommand: `{result['command']}`\n\n{result['note']}\n\n"
    if part == "exits":
        return head + "\n\n".join(
            f"## Exit heads: {training} (split points {r['split_points']}; full network test accuracy "
            f"{r['full_accuracy']:.4f})\n\n" + _table(r["rows"], ["label", "thresholds", "accuracy", "exit_share", "ms",
                                                                  "ms_full", "speedup", "speedup_range"])
            for training, r in result.items() if isinstance(r, dict) and "rows" in r) + "\n"
    if part == "separable":
        head += (f"Exact rewrite (multiplier 9 = 3x3, no recovery): max |output difference| "
                 f"{result['exact_max_abs_diff']:.2e} on 64 test inputs, {result['exact_macs']} MACs. Multiplier 1: "
                 f"{result['rewritten']} convolutions rewritten, left: {result['skipped']}.\n\n")
    if part == "minilm":
        head += (f"Both at {result['macs_ratio']:.3f}x the dense MACs (64-token sequences), no recovery; cosine and "
                 "retrieval: the pipeline's embedding task on held-out Python-docs text, measured on each ONNX "
                 "artifact; latency: one fixed 64-token sequence per call (20 calls per round).\n\n")
    if part == "lowrank":
        head += (f"Recovery: {result['recovery_epochs']} epochs of distillation from the dense model (T 4, alpha 0.7, "
                 "SGD lr 0.01, cosine), the same for both methods; pruning: prune.structured target_macs_ratio "
                 f"{result['macs_ratio']} (L2, uniform), low-rank: factorize.lowrank at the MACs pruning reached. "
                 "Layers low-rank left: " + "; ".join(
                     f"{r['model']} {r['variant']}: {len(r['layers_skipped'])} ("
                     + ", ".join(sorted({v.split(':')[0].split(' (')[0] for v in r['layers_skipped'].values()})) + ")"
                     for r in result["rows"] if r.get("layers_skipped")) + ".\n\n")
    keys = ["model", "variant", "accuracy", "cosine", "retrieval_top1", "macs", "params", "ms", "speedup",
            "speedup_range"]
    return head + _table(result["rows"], [k for k in keys if k in result["rows"][0]]) + "\n"


def part_minilm(task, args) -> dict:
    """all-MiniLM-L6-v2: prune.composite (half the MLP neurons) vs factorize.lowrank of the encoder's projections at
    the same MACs, no recovery; cosine of the artifact's embeddings to the dense model's, retrieval, latency."""
    from edgecompress import compress
    from edgecompress.recipe import parse_recipe

    def recipe(stages):
        return parse_recipe({"name": "minilm", "model": {"hf": "all-minilm-l6-v2"},
                             "data": {"dataset": "text", "task": "embedding", "tokenizer": "all-minilm-l6-v2",
                                      "seq_len": 64, "max_sequences": 128},
                             "stages": stages, "targets": {"max_accuracy_drop": None},
                             "export": {"threads": 1, "warmup": 3, "repeats": 20}})

    work = Path(args.work)
    pruned = compress(recipe=recipe([{"method": "prune.composite", "mlp": args.minilm_mlp, "samples": 32}]),
                      out=work / "minilm-composite", progress=False, force=True)
    ratio = pruned.history[-1]["metrics"]["macs"] / pruned.history[0]["metrics"]["macs"]
    low = compress(recipe=recipe([{"method": "factorize.lowrank", "target_macs_ratio": round(ratio + 1e-4, 4),
                                   "layers": ["encoder.*"]}]), out=work / "minilm-lowrank", progress=False, force=True)
    runs = {"dense": (pruned, 0), "prune.composite": (pruned, -1), "factorize.lowrank": (low, -1)}
    from edgecompress.runtimes import Artifact

    runners = {}
    for k, (res, i) in runs.items():
        a = res.history[i]["artifact"]
        runners[k] = Artifact.from_json({**a, "path": str(res.run_dir / a["path"]),
                                         "extra_files": [str(res.run_dir / f) for f in a["extra_files"]]}).runner(1)
    ids = np.ones((1, 64), dtype=np.int64) * 1000
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    times = interleaved_calls({k: (lambda r=r: [r(inputs) for _ in range(20)]) for k, r in runners.items()}, args.rounds)
    rows = []
    for k, (res, i) in runs.items():
        m = res.history[i]["metrics"]
        ratios = [a / b for a, b in zip(times["dense"], times[k], strict=True)]
        rows.append({"model": "all-MiniLM-L6-v2", "variant": k, "cosine": m.get("embedding_cosine"),
                     "retrieval_top1": m.get("retrieval_top1"), "macs": m["macs"], "params": m["params"],
                     "ms": round(statistics.median(times[k]) * 1e3 / 20, 3), "speedup": round(statistics.median(ratios), 3),
                     "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
                     "skipped": len(res.history[i]["info"].get("skipped", {})) if k == "factorize.lowrank" else None})
    return {"rows": rows, "macs_ratio": ratio}


def main() -> None:
    global args_global
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["lowrank", "exits", "separable", "minilm", "all"], default="all")
    p.add_argument("--work", default="/tmp/edge_toolbox")
    p.add_argument("--train-epochs", type=int, default=6)
    p.add_argument("--recover-epochs", type=int, default=2)
    p.add_argument("--macs-ratio", type=float, default=0.5)
    p.add_argument("--modes", nargs="+", default=["tucker2", "channel"])
    p.add_argument("--exit-variants", nargs="+", default=["frozen:2", "frozen:3", "joint:2"], help="training:exits")
    p.add_argument("--exit-epochs", type=int, default=8)
    p.add_argument("--joint-lr", type=float, default=1e-4)
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.01])
    p.add_argument("--minilm-mlp", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args_global = args = p.parse_args()
    torch.set_num_threads(1)
    task = load_task(data_spec(dataset="mnist5k")) if args.part != "minilm" else None
    parts = ["lowrank", "exits", "separable"] if args.part == "all" else [args.part]
    for part in parts:
        result = {"command": "python " + " ".join(sys.argv), "note": NOTE, "setup": vars(args),
                  **globals()[f"part_{part}"](task, args)}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"edge_{part}.json").write_text(json.dumps(result, indent=1))
        (RESULTS / f"edge_{part}.md").write_text(render(part, result))
        print(f"wrote {RESULTS / f'edge_{part}.json'}", file=sys.stderr)


args_global: argparse.Namespace
if __name__ == "__main__":
    main()
