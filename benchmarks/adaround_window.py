"""AdaRound on whole output maps vs random 32x32 windows per step, side by side on EfficientNet-Lite2's first layers
(BN folded; inputs/targets from 64 calibration crops; 100 steps, 16 samples per step; runs interleaved, twice each):
wall seconds and the layer's output MSE with nearest and with learned rounding.

    python benchmarks/adaround_window.py
"""

from __future__ import annotations

import copy
import json
import time
import warnings

import torch
from int8_agreement import RESULTS, efficientnet

from edgecompress.nn.bn import fold_batchnorms
from edgecompress.nn.layers import build_graph
from edgecompress.quant.adaround import round_layer
from edgecompress.quant.equalize import onnxruntime_weight_scales

LAYERS = ["_conv_stem", "_blocks.0._depthwise_conv", "_blocks.0._project_conv", "_blocks.1._expand_conv"]


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model, task = efficientnet(64)
    x = task.split("train").tensors[0][:64].float()
    fold_batchnorms(model, build_graph(model, x[:2]))
    store: dict[str, list] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: store.setdefault(n, []).append((i[0].detach(), o.detach()))) for n in LAYERS]
    with torch.no_grad():
        for b in x.split(16):
            model(b)
    for h in hooks:
        h.remove()
    scales = onnxruntime_weight_scales(per_channel=True, reduce_range=False)
    rows: dict[str, dict] = {}
    for name in LAYERS:
        inputs, targets = [a for a, _ in store[name]], [b for _, b in store[name]]
        for window in (0, 32, 0, 32):
            layer = copy.deepcopy(model.get_submodule(name))
            start = time.perf_counter()
            r = round_layer(layer, inputs, targets, scales, steps=100, batch=16, gen=torch.Generator().manual_seed(0),
                            window=window)
            rows.setdefault(name, {}).setdefault(str(window), []).append(
                {"seconds": round(time.perf_counter() - start, 2), **r})
        print(name, rows[name], flush=True)
        (RESULTS / "adaround_window.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
