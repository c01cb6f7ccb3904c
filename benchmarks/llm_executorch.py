"""Transformers in ExecuTorch (XNNPACK): all-MiniLM-L6-v2 exported through the project's executorch runtime
(token inputs, batch and length dynamic), checked against PyTorch and timed side by side with the ONNX Runtime
file in one fresh process (``measure.latency.interleaved``: 1 thread, batch 1, a 64-token sentence; the speed-up
is the median of the per-round ratios with its quartiles), bytes on disk and peak memory
(``measure.latency.benchmark``). With ``--decoder``: SmolLM2-135M with its KV cache through transformers'
ExecuTorch exporter (one graph, a dynamic cache, as for ONNX), recorded as working with its parity and
per-token latency, or as failing with the error.

    python benchmarks/llm_executorch.py                    # both; --models encoder: re-measure the encoder only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

LENGTH = 64


def encoder(work: Path, args) -> dict:
    from edgecompress.llm import evaluate, models
    from edgecompress.llm.export import _Tokens
    from edgecompress.measure.latency import benchmark, interleaved, speedup
    from edgecompress.runtimes import export
    from edgecompress.settings import ExportSettings

    model, tok = models.minilm()
    ids, mask = evaluate.windows(tok, "heldout", LENGTH, 16)
    one = {"input_ids": ids[:1], "attention_mask": mask[:1]}
    arts, row = {}, {"model": "all-minilm-l6-v2", "tokens": LENGTH}
    for fmt in ("executorch", "onnx"):
        start = time.perf_counter()
        arts[fmt] = export(model, one, work, ExportSettings(format=fmt), f"minilm-{fmt}")
        row[f"{fmt}_export_s"] = round(time.perf_counter() - start, 1)
        row[f"{fmt}_bytes"] = arts[fmt].size_bytes
    row["pte_details"] = arts["executorch"].details
    with torch.no_grad():
        ref = _Tokens(model).eval()(ids, mask).numpy()
    for fmt, art in arts.items():
        out = art.runner(args.threads)({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        row[f"{fmt}_max_abs_diff"] = float(np.abs(out - ref).max())
    rounds = interleaved([arts["onnx"], arts["executorch"]], (LENGTH,), threads=args.threads, rounds=args.rounds,
                         repeats=args.rounds * 10, vocab_size=model.config.vocab_size)
    row["ms_onnxruntime"], row["ms_executorch"] = (round(float(np.median(r)), 2) for r in rounds)
    row["executorch_vs_onnxruntime"] = speedup(rounds[0], rounds[1])
    for fmt, art in arts.items():
        row[f"{fmt}_peak_memory_mb"] = benchmark(art, (LENGTH,), threads=args.threads, repeats=10,
                                                 vocab_size=model.config.vocab_size)["peak_memory_mb"]
    return row


def decoder(work: Path, args) -> dict:
    """SmolLM2 with its KV cache through transformers' ExecuTorch exporter; the error if it fails."""
    from edgecompress.llm import evaluate, models

    model, tok = models.smollm2()
    row = {"model": "smollm2-135m (KV cache, transformers' ExecuTorch exporter)"}
    start = time.perf_counter()
    try:
        from transformers.cache_utils import DynamicCache
        from transformers.exporters import ExecutorchConfig, ExecutorchExporter
        from transformers.exporters.utils import decompose_for_generation

        ids = torch.arange(8).unsqueeze(0)
        decode, sample = decompose_for_generation(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                                  multi_token_decode=True)["decode"]
        new, past = torch.export.Dim("new", min=1, max=256), torch.export.Dim("past", min=1, max=256)
        shapes = {"input_ids": {1: new}, "position_ids": {1: new}, "cache": [{2: past}] * (2 * len(sample["cache"].layers))}
        exported = ExecutorchExporter().export(decode, sample, ExecutorchConfig(dynamic=True, dynamic_shapes=shapes))
        exported.save_pretrained(work / "smollm2-pte")
    except Exception as err:  # record what failed: this benchmark reports whether the route works
        row.update(works=False, error=f"{type(err).__name__}: {err}".splitlines()[0][:500],
                   traceback=traceback.format_exc()[-2000:], seconds=round(time.perf_counter() - start, 1))
        return row
    row.update(works=True, export_s=round(time.perf_counter() - start, 1),
               bytes=sum(f.stat().st_size for f in (work / "smollm2-pte").iterdir()))
    prompt = evaluate.windows(tok, "heldout", LENGTH, 1)[0]
    cfg = model.config
    empty = [(torch.zeros(1, cfg.num_key_value_heads, 0, cfg.head_dim),) * 2] * cfg.num_hidden_layers

    def run(n: int) -> list[torch.Tensor]:
        cache, x, start, logits = DynamicCache(ddp_cache_data=empty), prompt, 0, []
        for _ in range(n):
            out = exported(input_ids=x, position_ids=torch.arange(start, start + x.shape[1])[None], cache=cache)
            cache, start = out.cache, start + x.shape[1]
            logits.append(out.logits[0, -1])
            x = logits[-1].argmax().reshape(1, 1)
        return logits

    with torch.no_grad():
        ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, min_new_tokens=16,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    logits = run(16)
    row["max_logit_diff"] = float((torch.stack(logits) - torch.cat(ref.logits)).abs().max())
    row["tokens_equal"] = [int(t.argmax()) for t in logits] == ref.sequences[0, LENGTH:].tolist()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run(33)
        t1 = time.perf_counter()
        run(1)
        times.append(((t1 - t0) - (time.perf_counter() - t1)) / 32)
    row["ms_per_token"] = round(float(np.median(times)) * 1e3, 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--models", nargs="+", choices=["encoder", "decoder"], default=["encoder", "decoder"],
                   help="which to measure; the other's row is kept from the results file")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_executorch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="llm-executorch-"))
    old = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
    rows = old.get("rows", [None, None])
    for i, (name, measure) in enumerate((("encoder", encoder), ("decoder", decoder))):
        if name in args.models:
            rows[i] = measure(work, args)
            print(rows[i], flush=True)
    setup = {**old.get("setup", {}), "threads": args.threads, "machine": platform.processor() or platform.machine(),
             "cpus": os.cpu_count(), "note": "2-core machine shared with other jobs"}
    setup.setdefault("commands", []).append("python " + " ".join(sys.argv))
    args.out.with_suffix(".json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    enc = rows[0]
    s = enc["executorch_vs_onnxruntime"]
    lines = ["# Transformers in ExecuTorch (XNNPACK)", "", *(f"`{c}`" for c in setup["commands"]), "",
             json.dumps(setup), "",
             "| model | tokens | max diff to PyTorch .pte / .onnx | ms .pte / .onnx | .pte vs .onnx speed (IQR) | "
             "MiB .pte / .onnx | peak MB .pte / .onnx | export s .pte / .onnx |", "|---|---|---|---|---|---|---|---|",
             f"| {enc['model']} | {enc['tokens']} | {enc['executorch_max_abs_diff']:.1e} / {enc['onnx_max_abs_diff']:.1e}"
             f" | {enc['ms_executorch']} / {enc['ms_onnxruntime']} | {s['median']:.2f}x ({s['q1']:.2f}-{s['q3']:.2f}) | "
             f"{enc['executorch_bytes'] / 2**20:.1f} / {enc['onnx_bytes'] / 2**20:.1f} | "
             f"{enc['executorch_peak_memory_mb']:.0f} / {enc['onnx_peak_memory_mb']:.0f} | "
             f"{enc['executorch_export_s']} / {enc['onnx_export_s']} |", "",
             f"XNNPACK: {enc['pte_details']}"]
    if rows[1]:
        lines += ["", "SmolLM2-135M with its KV cache: " + json.dumps({k: v for k, v in rows[1].items()
                                                                      if k != "traceback"})]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
