"""Per-token decoding of SmolLM2-135M with a KV cache in ONNX Runtime: the dense model and the composite-shrunk one
(Mosaic 50% + 37.5% of MLP neurons + 1 of 3 key-value groups, least squares on), each as an FP32 ONNX file with
its KV cache (``edgecompress.llm.export.export_decoder``: one graph for prefill and decode, ONNX Runtime's CPU
fusions) and its dynamic INT8 copy (ONNX Runtime ``quantize_dynamic``, per-channel int8 weights), beside
PyTorch's own ``generate`` with its KV cache.

Fidelity: on held-out text (4 windows: a 64-token prompt, then PyTorch's 64 greedy tokens), the largest logit
difference of each ONNX file to PyTorch at every step and the share of steps where its greedy choice equals
PyTorch's token (1.0: identical greedy generation). Latency: 1 thread, batch 1, a 64-token prompt and 64 new
tokens; per token = (time to generate 65 tokens - time to generate 1) / 64, i.e. decoding without the prefill.
All six runners take turns in interleaved rounds in one process (``measure.latency.interleaved_calls``);
speed-ups are the median of the per-round ratios with their quartiles (``measure.latency.speedup``). Peak memory:
a fresh process per runner that loads it and generates the same (VmHWM, and above the process after its
imports). Bytes on disk: every file of the artifact.

    python benchmarks/llm_decode.py --composite /tmp/kv-composite   # the shrunk model is built there if missing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT, NEW = 64, 64

MEMORY = r"""
import json, sys
kind, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
prompt = list(range(100, 164))
if kind == "pytorch":
    import torch
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM
    base = status("VmRSS")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        model.generate(torch.tensor([prompt]), max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
else:
    from edgecompress.runtimes.onnxruntime import generate, session
    base = status("VmRSS")
    generate(session(path, threads), prompt, 64)
print(json.dumps({"peak_rss_mib": status("VmHWM"), "above_imports_mib": status("VmHWM") - base}))
"""


def shrunk(path: Path, samples: int) -> None:
    """Mosaic 50% then prune.composite (37.5% MLP, 1 of 3 kv groups), saved with its tokenizer at ``path``."""
    from edgecompress.llm import evaluate, models
    from edgecompress.llm.composite import CompositeConfig, composite
    from edgecompress.llm.prune import LLMPruneConfig, prune_llm

    model, tok = models.smollm2()
    calib = evaluate.calibration_batches(tok, samples, 256, 8)
    prune_llm(model, calib, LLMPruneConfig(sparsity=0.5, allocation="mosaic", samples=samples))
    composite(model, calib, CompositeConfig(mlp=0.375, attention=0.34, compensate=True, samples=samples))
    model.save_pretrained(path)
    tok.save_pretrained(path)


def files(model, name: str, work: Path) -> tuple[dict[str, Path], dict]:
    """The FP32 KV-cache ONNX file and its dynamic INT8 copy (reused when ``work`` has them), and export times."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecompress.llm.export import export_decoder

    paths, seconds = {"fp32": work / f"{name}.onnx", "int8": work / f"{name}.int8.onnx"}, {}
    if not paths["fp32"].exists():
        start = time.perf_counter()
        export_decoder(model, paths["fp32"])
        seconds["export_s"] = round(time.perf_counter() - start, 1)
    if not paths["int8"].exists():
        start = time.perf_counter()
        quantize_dynamic(str(paths["fp32"]), str(paths["int8"]), weight_type=QuantType.QInt8, per_channel=True)
        seconds["quantize_s"] = round(time.perf_counter() - start, 1)
    return paths, seconds


def disk(path: Path) -> int:
    """Bytes of an ONNX file and its external data, or of every file in a model folder."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return sum(f.stat().st_size for f in (path, path.with_name(path.name + ".data")) if f.exists())


def fidelity(model, paths: dict[str, Path], prompts: torch.Tensor) -> dict:
    from edgecompress.llm.export import decoder_parity

    row = {}
    for precision, path in paths.items():
        runs = [decoder_parity(model, path, p[None], NEW) for p in prompts]
        row[f"{precision}_max_logit_diff"] = max(r["max_logit_diff"] for r in runs)
        row[f"{precision}_agreement"] = round(statistics.mean(r["agreement"] for r in runs), 4)
        row[f"{precision}_tokens_equal"] = sum(r["tokens_equal"] for r in runs)
    return row


def timing(models: dict, sessions: dict, prompt: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    """Seconds per decoded token of every runner in every interleaved round."""
    from edgecompress.measure.latency import interleaved_calls
    from edgecompress.runtimes.onnxruntime import generate

    def torch_run(model, n):
        def run():
            with torch.no_grad():
                model.generate(prompt[None], attention_mask=torch.ones(1, PROMPT, dtype=torch.long),
                               max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return run

    calls = {}
    for name, model in models.items():
        calls[f"pytorch {name}", NEW + 1] = torch_run(model, NEW + 1)
        calls[f"pytorch {name}", 1] = torch_run(model, 1)
    for key, sess in sessions.items():
        calls[f"ort {key}", NEW + 1] = lambda s=sess: generate(s, prompt.tolist(), NEW + 1)
        calls[f"ort {key}", 1] = lambda s=sess: generate(s, prompt.tolist(), 1)
    times = interleaved_calls(calls, rounds)
    return {name: [(full - one) / NEW for full, one in zip(times[name, NEW + 1], times[name, 1])]
            for name, n in calls if n == 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--samples", type=int, default=32, help="calibration windows when the shrunk model is built")
    p.add_argument("--composite", type=Path, required=True, help="the shrunk model's folder (built when missing)")
    p.add_argument("--work", type=Path, help="folder for the ONNX files (reused when present); default a new one")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_decode")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from edgecompress.llm import evaluate, models
    from edgecompress.measure.latency import speedup
    from edgecompress.runtimes.onnxruntime import session

    if not (args.composite / "config.json").exists():
        shrunk(args.composite, args.samples)
    work = args.work or Path(tempfile.mkdtemp(prefix="llm-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    dense, tok = models.smollm2()
    folders = {"dense": models.model_dir("smollm2-135m"), "composite": args.composite}
    lms = {"dense": dense, "composite": AutoModelForCausalLM.from_pretrained(args.composite).eval()}
    ids, _ = evaluate.windows(tok, "heldout", PROMPT + NEW, 4)
    rows, sessions, onnx = [], {}, {}
    for name, model in lms.items():
        paths, seconds = files(model, name, work)
        row = {"model": name, "parameters": sum(t.numel() for t in model.parameters()),
               "bytes_pytorch": disk(folders[name]), **{f"bytes_{k}": disk(v) for k, v in paths.items()}, **seconds,
               **fidelity(model, paths, ids[:, :PROMPT])}
        print(row, flush=True)
        rows.append(row)
        sessions.update({f"{k} {name}": session(v, args.threads) for k, v in paths.items()})
        onnx.update({f"{k} {name}": v for k, v in paths.items()})
    per_token = timing(lms, sessions, ids[0, :PROMPT], args.rounds)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    runners = {}
    for name, seconds in per_token.items():
        runtime, key = name.split(" ", 1)
        target = str(folders[key]) if runtime == "pytorch" else str(onnx[key])
        out = subprocess.run([sys.executable, "-c", MEMORY, runtime, target, str(args.threads)], env=env,
                             capture_output=True, text=True, check=True)
        ms = [s * 1e3 for s in seconds]
        base = [s * 1e3 for s in per_token[name.replace("composite", "dense")]]
        runners[name] = {"ms_per_token": round(statistics.median(ms), 2), "rounds_ms": [round(m, 2) for m in ms],
                         "speedup_vs_dense": speedup(base, ms), "speedup_vs_pytorch": speedup(
                             [s * 1e3 for s in per_token[f"pytorch {name.split()[-1]}"]], ms),
                         **json.loads(out.stdout.strip().splitlines()[-1])}
        print(name, runners[name], flush=True)
    setup = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
             "cpus": os.cpu_count(), "threads": args.threads, "rounds": args.rounds, "prompt": PROMPT, "new": NEW,
             "note": models.SMOLLM2_NOTE + "; timed on a 2-core machine shared with other jobs"}
    args.out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows, "runners": runners}, indent=1))
    args.out.with_suffix(".md").write_text(report(setup, rows, runners))
    print(report(setup, rows, runners))


def report(setup: dict, rows: list[dict], runners: dict) -> str:
    def ratio(s):
        return f"{s['median']:.2f}x ({s['q1']:.2f}-{s['q3']:.2f})"

    lines = ["# SmolLM2-135M decoding with a KV cache: ONNX Runtime vs PyTorch, dense vs composite", "",
             f"`{setup['command']}`", "", json.dumps(setup), "",
             "| model | parameters | MiB PyTorch / ONNX FP32 / ONNX INT8 | FP32 max logit diff | FP32 greedy = "
             "PyTorch | INT8 max logit diff | INT8 agreement |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['bytes_pytorch'] / 2**20:.0f} / "
                     f"{r['bytes_fp32'] / 2**20:.0f} / {r['bytes_int8'] / 2**20:.0f} | {r['fp32_max_logit_diff']:.2e}"
                     f" | {r['fp32_agreement']:.1%} ({r['fp32_tokens_equal']}/4 prompts) | "
                     f"{r['int8_max_logit_diff']:.2f} | {r['int8_agreement']:.1%} |")
    lines += ["", "| runner | ms/token (median) | vs dense, same runner (IQR) | vs PyTorch, same model (IQR) | "
              "peak RSS MiB | above imports MiB |", "|---|---|---|---|---|---|"]
    for name, r in runners.items():
        lines.append(f"| {name} | {r['ms_per_token']} | {ratio(r['speedup_vs_dense'])} | "
                     f"{ratio(r['speedup_vs_pytorch'])} | {r['peak_rss_mib']:.0f} | {r['above_imports_mib']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
