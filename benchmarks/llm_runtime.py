"""Transformers in ONNX Runtime: all-MiniLM-L6-v2 and SmolLM2-135M exported to ONNX (FP32) and dynamically
quantized to INT8 (ONNX Runtime ``quantize_dynamic``, per-channel weights), checked against PyTorch, and timed side by side with
PyTorch in interleaved rounds (1 thread, batch 1; medians, and INT8's speed-up over FP32 as the median and range
of the per-round ratios).

MiniLM: max |difference| of the last hidden state, cosine of INT8 sentence embeddings to PyTorch's, latency per
64-token sentence. SmolLM2 (dense, and Mosaic 50% + composite when ``--composite`` points at a saved model):
max logit difference, held-out perplexity of the INT8 file, latency of a 128-token forward pass (prefill; the
ONNX file has no KV cache). Bytes on disk of every file.

    python benchmarks/llm_runtime.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgecompress.runtimes.onnxruntime import session, share_threads


def timed(fns: dict, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function in each of ``rounds`` interleaved rounds."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[k].append((time.perf_counter() - start) / repeats)
    return times


def measure(name: str, model, tok, kind: str, work: Path, args) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecompress.llm import evaluate
    from edgecompress.llm.export import _Tokens, export_onnx
    from edgecompress.tasks.embedding import pooled

    length = 64 if kind == "encoder" else 128
    ids, mask = evaluate.windows(tok, "heldout", length, 16)
    one = {"input_ids": ids[:1], "attention_mask": mask[:1]}
    fp32, int8 = work / f"{name}.onnx", work / f"{name}.int8.onnx"
    export_onnx(model, one, fp32)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)  # per-tensor: MiniLM cosine 0.949
    wrapped = _Tokens(model).eval()
    sessions = {"fp32": session(fp32, args.threads), "int8": session(int8, args.threads)}
    feed = {k: v.numpy() for k, v in one.items()}
    with torch.no_grad():
        ref = wrapped(ids, mask).numpy()
    outs = {k: np.concatenate([s.run(None, {"input_ids": ids[i:i + 1].numpy(),
                                            "attention_mask": mask[i:i + 1].numpy()})[0] for i in range(len(ids))])
            for k, s in sessions.items()}
    row = {"model": name, "fp32_max_abs_diff": float(np.abs(outs["fp32"] - ref).max()),
           "bytes_fp32": fp32.stat().st_size, "bytes_int8": int8.stat().st_size}
    if kind == "encoder":
        vectors = {k: torch.nn.functional.normalize(torch.from_numpy(pooled(h, mask.numpy())), dim=-1)
                   for k, h in (("int8", outs["int8"]), ("pytorch", ref))}
        row["int8_cosine_to_pytorch"] = evaluate.fidelity(vectors["pytorch"], vectors["int8"])["cosine_mean"]
    else:
        for k in ("fp32", "int8"):
            nll = torch.nn.functional.cross_entropy(torch.from_numpy(outs[k][:, :-1]).reshape(-1, outs[k].shape[-1]),
                                                    ids[:, 1:].reshape(-1))
            row[f"{k}_perplexity"] = round(math.exp(float(nll)), 3)
        row["pytorch_perplexity"] = round(math.exp(float(torch.nn.functional.cross_entropy(
            torch.from_numpy(ref[:, :-1]).reshape(-1, ref.shape[-1]), ids[:, 1:].reshape(-1)))), 3)

    def torch_run():
        with torch.no_grad():
            wrapped(one["input_ids"], one["attention_mask"])

    lat = timed({"pytorch": torch_run, "ort_fp32": lambda: sessions["fp32"].run(None, feed),
                 "ort_int8": lambda: sessions["int8"].run(None, feed)}, args.rounds, args.repeats)
    row.update({f"ms_{k}": round(float(np.median(v)) * 1e3, 2) for k, v in lat.items()})
    ratios = [f / q for f, q in zip(lat["ort_fp32"], lat["ort_int8"])]  # per interleaved round
    row["int8_speedup"] = [round(float(np.median(ratios)), 2), round(min(ratios), 2), round(max(ratios), 2)]
    row["tokens"] = length
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--composite", type=Path, help="a saved Mosaic+composite SmolLM2 (benchmarks/llm_composite.py)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_runtime")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    share_threads(args.threads)  # the FP32 and INT8 sessions are timed in turns in this process
    from edgecompress.llm import models

    work = Path(tempfile.mkdtemp(prefix="llm-runtime-"))
    rows = []
    encoder, tok = models.minilm()
    rows.append(measure("all-minilm-l6-v2", encoder, tok, "encoder", work, args))
    print(rows[-1], flush=True)
    lm, tok = models.smollm2()
    rows.append(measure("smollm2-135m", lm, tok, "decoder", work, args))
    print(rows[-1], flush=True)
    if args.composite:
        from transformers import AutoModelForCausalLM

        small = AutoModelForCausalLM.from_pretrained(args.composite).eval()  # saved without a tokenizer
        rows.append(measure("smollm2-135m mosaic+composite", small, tok, "decoder", work, args))
        print(rows[-1], flush=True)
    setup = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
             "cpus": os.cpu_count(), "threads": args.threads, "note": models.SMOLLM2_NOTE}
    args.out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    lines = ["# Transformers in ONNX Runtime", "", f"`{setup['command']}`", "", json.dumps(setup), "",
             "| model | tokens | FP32 max diff | INT8 fidelity | MiB FP32 / INT8 | ms PyTorch | ms ORT FP32 | ms ORT INT8 "
             "| INT8 vs FP32 (median, range of rounds) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fid = (f"cosine {r['int8_cosine_to_pytorch']:.4f}" if "int8_cosine_to_pytorch" in r else
               f"ppl {r['int8_perplexity']} (FP32 {r['fp32_perplexity']}, PyTorch {r['pytorch_perplexity']})")
        lines.append(f"| {r['model']} | {r['tokens']} | {r['fp32_max_abs_diff']:.2e} | {fid} | "
                     f"{r['bytes_fp32'] / 2**20:.0f} / {r['bytes_int8'] / 2**20:.0f} | {r['ms_pytorch']} | "
                     f"{r['ms_ort_fp32']} | {r['ms_ort_int8']} | {r['int8_speedup'][0]}x "
                     f"({r['int8_speedup'][1]}-{r['int8_speedup'][2]}) |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
