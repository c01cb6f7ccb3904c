"""Activation quantization benchmark: DQA vs direct uniform vs power-of-two vs NoisyQuant, over seeds.

Per architecture and seed: train on real data and draw a labeled calibration set with that seed, then at each
bit width quantize every residual block's output with each method and measure test accuracy (simulated
activation quantization in PyTorch, dynamic per-batch scales). DQA ranks its channels once at 3 bits and
reuses the order for every n (paper, our reading) — on the whole calibration set, and on a subset (shortcut,
`DQA sub`) — and, as a variant, once per bit width at the target n (`DQA@n`). Ranking and NoisyQuant
candidates share batched suffix passes (``Suffix.many``, exact); on the first seed both are also run one pass
per candidate (NoisyQuant at the lowest bit width) to time the speed-up and check identical results. Times are
process CPU seconds (wall in the JSON; the machine is shared). DQA's stored bytes are measured on calibration
activations. The summary is mean ± std over seeds and the paired per-seed difference DQA − best baseline.

    python benchmarks/act_quant.py --seeds 3 --noisyquant-bits 3 4 8   # the committed run (digits)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics as st
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from edgecompress import zoo
from edgecompress.data import data_spec, load_task
from edgecompress.quant.actquant import QuantizedOutput, find_blocks, install, noisyquant_search, pow2, uniform
from edgecompress.quant.dqa import RANK_BITS, rank_channels, set_dqa, storage_report
from edgecompress.train import accuracy, train

ARCHS = {"resnet20": {"width": 1.0}, "mobilenet_v2": {"width_mult": 0.5, "dropout": 0.0}}
BASELINES = ("uniform", "pow2", "noisyquant")
METHODS = ("dqa", "dqa_target", "dqa_subset", *BASELINES)
RESULTS = Path(__file__).parent / "results"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def fresh(model: nn.Module) -> tuple[nn.Module, list[QuantizedOutput]]:
    m = copy.deepcopy(model)
    return m, install(m, find_blocks(m))


@dataclass
class Ranked:
    model: nn.Module
    wrappers: list[QuantizedOutput]
    orders: list[list[int]]
    seconds: float
    cpu_seconds: float

    def accuracy(self, task, bits: int, args) -> float:
        set_dqa(self.wrappers, self.orders, bits, args.extra_bits, args.important_share)
        return accuracy(self.model, task, "test")


def ranked(model: nn.Module, x, y, rank_bits: int = RANK_BITS, **kw) -> Ranked:
    m, ws = fresh(model)
    orders, wall, cpu = timed(lambda: rank_channels(m, ws, x, y, "accuracy", rank_bits, **kw))
    return Ranked(m, ws, orders, wall, cpu)


def bit_row(model, task, x, y, args, seed: int, bits: int, full: Ranked, sub: Ranked) -> dict:
    row = {"bits": bits, "dqa": full.accuracy(task, bits, args), "dqa_subset": sub.accuracy(task, bits, args)}
    row["storage"] = storage_report(full.model, full.wrappers, x[:16])
    target = full if bits == RANK_BITS else ranked(model, x, y, rank_bits=bits)
    row["dqa_target"], row["target_ranking_cpu_seconds"] = target.accuracy(task, bits, args), target.cpu_seconds
    for method, fn in (("uniform", uniform), ("pow2", pow2)):
        m, ws = fresh(model)
        for w in ws:
            w.quantizer = partial(fn, bits=bits)
        row[method] = accuracy(m, task, "test")
    row["noisyquant"] = None  # not searched at this width (--noisyquant-bits)
    if bits in args.noisyquant_bits:
        m, ws = fresh(model)
        row["noisyquant_search"], row["noisyquant_seconds"], row["noisyquant_cpu_seconds"] = timed(
            lambda: noisyquant_search(m, ws, bits, x, seed))
        row["noisyquant"] = accuracy(m, task, "test")
    print(f"seed {seed} {bits} bits", {k: row[k] and round(100 * row[k], 2) for k in METHODS}, flush=True)
    return row


def run_seed(name: str, task, args, seed: int) -> dict:
    torch.manual_seed(seed)
    model = zoo.build(name, task.input_shape, task.num_classes, **ARCHS[name])
    train(model, task, epochs=args.epochs, lr=0.05, seed=seed, progress=False)
    model.eval()
    xs, ys = task.train.tensors
    idx = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))[: args.calib]
    x, y, n = xs[idx], ys[idx], args.ranking_samples
    full, sub = ranked(model, x, y), ranked(model, x[:n], y[:n])
    rows = [bit_row(model, task, x, y, args, seed, bits, full, sub) for bits in args.bits]
    out = {"seed": seed, "fp32": accuracy(model, task, "test"), "blocks": len(full.wrappers),
           "ranking_passes": sum(map(len, full.orders)), "ranking_seconds": full.seconds,
           "ranking_cpu_seconds": full.cpu_seconds, "subset_ranking_cpu_seconds": sub.cpu_seconds, "rows": rows}
    if seed == args.seed:  # one pass per candidate: the cost before batching, and the same results
        slow = ranked(model, x, y, rows=len(x))
        m, ws = fresh(model)
        nq = next(r for r in rows if r["noisyquant"] is not None)
        chosen, _, nq_cpu = timed(lambda: noisyquant_search(m, ws, nq["bits"], x, seed, rows=len(x)))
        out["unbatched"] = {"ranking_cpu_seconds": slow.cpu_seconds, "same_orders": slow.orders == full.orders,
                            "bits": nq["bits"], "noisyquant_cpu_seconds": nq_cpu, "batched_noisyquant_cpu_seconds":
                            nq["noisyquant_cpu_seconds"], "same_noisyquant_search": chosen == nq["noisyquant_search"]}
    return out


def paired(rows: list[dict], method: str) -> dict:
    """Per seed ``method`` − the best baseline of that seed: mean, standard error, min, seeds with >= 0."""
    d = [r[method] - max(r[b] for b in BASELINES if r[b] is not None) for r in rows]
    se = st.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
    return {"mean": st.mean(d), "se": se, "min": min(d), "wins": sum(v >= 0 for v in d), "n": len(d)}


def summarize(seeds: list[dict]) -> list[dict]:
    out = []
    for j, bits in enumerate(r["bits"] for r in seeds[0]["rows"]):
        rows = [s["rows"][j] for s in seeds]
        stats = {m: (st.mean(r[m] for r in rows), st.pstdev(r[m] for r in rows)) if rows[0][m] is not None else None
                 for m in METHODS}
        nq = [r["noisyquant_cpu_seconds"] for r in rows if r["noisyquant"] is not None]
        out.append({"bits": bits, **stats, "paired": paired(rows, "dqa"), "paired_target": paired(rows, "dqa_target"),
                    "noisyquant_cpu_seconds": round(st.mean(nq), 1) if nq else None})
    return out


def targets(arch: str, seeds: list[dict], summary: list[dict]) -> list[dict]:
    diffs = [s["paired"] for s in summary]
    worst, low = min(diffs, key=lambda p: p["mean"]), [s["paired"] for s in summary if s["bits"] <= 4]
    every = ("met" if all(p["mean"] >= 0 for p in diffs) else
             "within noise" if all(p["mean"] + 2 * p["se"] >= 0 for p in diffs) else "MISSED")
    ahead = all(p["mean"] >= 0.01 and p["mean"] - 2 * p["se"] > 0 for p in low)
    nq = st.mean(s["noisyquant_cpu_seconds"] for s in summary if s["noisyquant_cpu_seconds"] is not None)
    ratio, sub_ratio = (nq / st.mean(s[k] for s in seeds) for k in ("ranking_cpu_seconds", "subset_ranking_cpu_seconds"))
    return [
        {"arch": arch, "target": "DQA >= every baseline at every bit width", "measured": f"worst {diff(worst)} pts",
         "met": every},
        {"arch": arch, "target": "DQA clearly ahead at 3-4 bits", "met": "met" if ahead else "MISSED",
         "measured": ", ".join(f"{diff(p)} pts" for p in low)},
        {"arch": arch, "target": "DQA quantization >= 10x faster than NoisyQuant (CPU, per bit width)",
         "measured": f"{ratio:.1f}x", "met": "met" if ratio >= 10 else "MISSED"},
        {"arch": arch, "target": "same, ranking on a calibration subset (shortcut)",
         "measured": f"{sub_ratio:.1f}x", "met": "met" if sub_ratio >= 10 else "MISSED"},
    ]


def stat(m: tuple[float, float] | None) -> str:
    return "—" if m is None else f"{100 * m[0]:.2f} ± {100 * m[1]:.2f}"


def diff(p: dict, detail: bool = False) -> str:
    extra = f" (min {100 * p['min']:+.2f}, {p['wins']}/{p['n']})" if detail else ""
    return f"{100 * p['mean']:+.2f} ± {100 * p['se']:.2f}{extra}"


def arch_section(arch: str, seeds: list[dict], summary: list[dict]) -> list[str]:
    s0, u = seeds[0], seeds[0].get("unbatched", {})
    fp32 = stat((st.mean(s["fp32"] for s in seeds), st.pstdev(s["fp32"] for s in seeds)))
    timing = (f"DQA ranking: {s0['ranking_passes']} candidate evaluations, "
              f"{st.mean(s['ranking_cpu_seconds'] for s in seeds):.2f} s CPU (mean over seeds; subset "
              f"{st.mean(s['subset_ranking_cpu_seconds'] for s in seeds):.2f} s). Before batching (seed {s0['seed']}): "
              f"ranking {u.get('ranking_cpu_seconds')} s vs {s0['ranking_cpu_seconds']} s batched, same orders: "
              f"{u.get('same_orders')}; NoisyQuant at {u.get('bits')} bits {u.get('noisyquant_cpu_seconds')} s vs "
              f"{u.get('batched_noisyquant_cpu_seconds')} s batched, same search result: "
              f"{u.get('same_noisyquant_search')}.")
    header = ("| bits | DQA | DQA@n | DQA sub | uniform | pow2 | NoisyQuant | DQA − best baseline (min, seeds ≥ 0) "
              "| DQA@n − best baseline | NoisyQuant CPU s | DQA@n ranking CPU s |")
    lines = [f"## {arch} (FP32 {fp32}%, {s0['blocks']} blocks, {len(seeds)} seeds)", "", timing, "", header,
             "|---" * 11 + "|"]
    for s, r in zip(summary, s0["rows"], strict=True):
        lines.append(f"| {s['bits']} | " + " | ".join(stat(s[m]) for m in METHODS) + f" | {diff(s['paired'], True)} | "
                     f"{diff(s['paired_target'], True)} | {s['noisyquant_cpu_seconds'] or '—'} | {r['target_ranking_cpu_seconds']} |")
    lines += ["", f"DQA storage (seed {s0['seed']}, 16 calibration samples):", "",
              "| bits | bytes/act | vs FP32 | vs plain n-bit | Huffman bytes (stream+tables) |", "|---" * 5 + "|"]
    for r in s0["rows"]:
        g = r["storage"]
        lines.append(f"| {r['bits']} | {g['bytes_per_activation']} | {g['vs_fp32']} | {g['vs_plain_nbit']} | "
                     f"{g['huffman_overhead_bytes']} of {g['bytes']['total']} |")
    return lines + [""]


def markdown(results: dict, tgts: list[dict], args, command: str) -> str:
    intro = (f"Simulated per-channel activation quantization of every residual block output, test accuracy in % "
             f"(mean ± std over seeds {args.seed}..{args.seed + args.seeds - 1}; each seed trains the model and draws "
             f"the {args.calib} calibration samples shared by all methods). DQA m={args.extra_bits}, important share "
             f"{args.important_share}, ranked at 3 bits; `DQA@n` ranks at the target n; `DQA sub` ranks on "
             f"{args.ranking_samples} samples (shortcut); NoisyQuant searched at {args.noisyquant_bits} bits "
             f"(— elsewhere). DQA − best baseline: per seed, DQA minus the best of "
             f"uniform/pow2/NoisyQuant, then mean ± standard error over seeds. Verdict for '>= every baseline': "
             f"met if the mean difference is >= 0 at every width, within noise if the worst mean is < 0 but "
             f"mean + 2 SE >= 0, missed otherwise; 'clearly ahead': mean >= +1 pt and mean - 2 SE > 0 at 3 and 4 "
             f"bits. Times: process CPU seconds, torch threads = 1, shared 2-core machine.")
    lines = [f"# Activation quantization: DQA vs baselines ({args.dataset})", "", f"Command: `{command}`", "", intro, ""]
    for arch, r in results.items():
        lines += arch_section(arch, r["seeds"], r["summary"])
    lines += ["## Targets", "", "| arch | target | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {t['arch']} | {t['target']} | {t['measured']} | {t['met']} |" for t in tgts]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--bits", nargs="+", type=int, default=[3, 4, 5, 6, 8])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--calib", type=int, default=128)
    p.add_argument("--ranking-samples", type=int, default=32)
    p.add_argument("--extra-bits", type=int, default=3)
    p.add_argument("--important-share", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (model training + calibration draw)")
    p.add_argument("--noisyquant-bits", nargs="+", type=int, help="widths NoisyQuant searches (default: --bits)")
    p.add_argument("--quick", action="store_true", help="resnet20 only, bits 3 and 4, 4 epochs")
    p.add_argument("--out", default="act_quant")
    args = p.parse_args()
    if args.quick:
        args.archs, args.bits, args.epochs = ["resnet20"], [3, 4], 4
    args.noisyquant_bits = args.noisyquant_bits or args.bits
    torch.set_num_threads(1)
    task = load_task(data_spec(dataset=args.dataset))
    results, tgts = {}, []
    for arch in args.archs:
        seeds = [run_seed(arch, task, args, s) for s in range(args.seed, args.seed + args.seeds)]
        results[arch] = {"summary": summarize(seeds), "seeds": seeds}
        tgts += targets(arch, seeds, results[arch]["summary"])
    command = ("python benchmarks/act_quant.py " + " ".join(sys.argv[1:])).strip()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {"command": command, "args": vars(args), "results": results, "targets": tgts}, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(results, tgts, args, command))
    print(markdown(results, tgts, args, command))


if __name__ == "__main__":
    main()
