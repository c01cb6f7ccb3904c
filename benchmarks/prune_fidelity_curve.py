"""How much of a pretrained model's answers structured pruning keeps, without labels and without training, as the
MAC budget tightens (issue 12, item 3: what to prune), side by side in one process.

EfficientNet-Lite2 with its ImageNet weights on the ``photos`` crops (as ``pretrained_unlabeled.py``). At each MAC
target, three ways to choose channels: L2 weight norm with one ratio for every layer (torch-pruning's default),
``criterion: activation`` with one ratio, and ``criterion: activation`` with per-layer ratios from ONE sensitivity
scan (``scope: sensitivity``; the scan does not depend on the target, so it is measured once and solved for each
target). Each pruned model then gets ``recover.bn`` on 256 unlabeled crops. Each block's projection conv and the
stem keep their outputs (residual widths stay). Figures: top-1 agreement and output cosine with the unpruned model
on 256 test crops from photos never used for calibration.

    python benchmarks/prune_fidelity_curve.py      # the committed run
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch

import edgecompress as ec
import edgecompress.prune  # noqa: F401
from edgecompress import zoo
from edgecompress.data import data_spec, load_task
from edgecompress.measure import count_macs
from edgecompress.nn.layers import resolve_layers
from edgecompress.prune import align, sensitivity
from edgecompress.prune.importance import ActivationImportance, input_moments
from edgecompress.tasks import torch_predictor
from edgecompress.zoo.efficientnet import MEAN, STD

RESULTS = Path(__file__).parent / "results"
TARGETS = (0.85, 0.7, 0.5)
IGNORED = ["_blocks.*._project_conv", "_conv_stem", "_fc"]
SCAN_IMAGES = 32


def evaluate(model, dense_model, task) -> dict:
    bn = ec.apply("recover.bn", model, task, teacher=dense_model, calib_samples=256)
    r = task.evaluate(torch_predictor(bn))
    return {"agreement_top1": round(r["agreement_top1"], 4), "output_cosine": round(r["output_cosine"], 4)}


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    start = time.perf_counter()
    spec = {"dataset": "photos", "input_shape": [3, 260, 260], "mean": list(MEAN), "std": list(STD),
            "num_classes": 1000, "crops": [256, 8, 256]}
    task = load_task(data_spec(**spec))
    model = zoo.build("efficientnet_lite", (3, 260, 260), 1000, pretrained=True).eval()
    task.bind_reference(model)
    x1, calib = task.example_inputs(1), task.calibration(SCAN_IMAGES, seed=0)
    macs0 = count_macs(model, x1)
    rows: dict[str, dict] = {"l2, uniform": {}, "activation, uniform": {}, "activation, sensitivity ratios": {}}
    for target in TARGETS:
        for label, criterion in (("l2, uniform", "l2"), ("activation, uniform", "activation")):
            pruned = ec.apply("prune.structured", model, task, target_macs_ratio=target, criterion=criterion,
                              calib_samples=SCAN_IMAGES, ignored_layers=IGNORED[:2])
            rows[label][target] = {"macs_ratio": round(count_macs(pruned, x1) / macs0, 4),
                                   **evaluate(pruned, model, task)}
            print(label, target, rows[label][target], flush=True)
    scan_start = time.perf_counter()
    importance = ActivationImportance(input_moments(model, calib))
    names = resolve_layers(model, IGNORED, where="ignored")
    modules = dict(model.named_modules())
    ignored = [sub for n in names for sub in modules[n].modules()]
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x1)
    groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=(torch.nn.Conv2d, torch.nn.Linear)))
    allocation = sensitivity.measure(model, groups, importance, calib, x1, [0.125, 0.25, 0.375, 0.5, 0.625, 0.75],
                                     align.resolve("auto", "onnxruntime", "round_to"))
    scan_s = time.perf_counter() - scan_start
    label = "activation, sensitivity ratios"
    for target in TARGETS:
        chosen, macs = sensitivity.solve(allocation, lambda r: count_macs(sensitivity.apply(model, x1, allocation, r),
                                                                         x1), target * macs0)
        pruned = sensitivity.apply(model, x1, allocation, chosen)
        rows[label][target] = {"macs_ratio": round(macs / macs0, 4), **evaluate(pruned, model, task)}
        print(label, target, rows[label][target], flush=True)
    result = {"command": "python benchmarks/prune_fidelity_curve.py " + " ".join(sys.argv[1:]),
              "machine": "2 shared cores (AMD EPYC), torch 1 thread, other jobs running",
              "scan_seconds": round(scan_s, 1), "scan_images": SCAN_IMAGES, "rows": rows,
              "wall_s": round(time.perf_counter() - start, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prune_fidelity_curve.json").write_text(json.dumps(result, indent=1))
    lines = ["# Structured pruning of EfficientNet-Lite2 without labels or training: fidelity vs MAC budget", "",
             f"Command: `{result['command'].strip()}`", "", f"Machine: {result['machine']}", "",
             f"Every pruned model then got `recover.bn` on 256 unlabeled crops. Sensitivity scan: {SCAN_IMAGES} images, "
             f"{result['scan_seconds']} s, once for all targets. Cells: top-1 agreement / output cosine with the "
             "unpruned model (256 test crops).", "",
             "| MACs target | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
    for target in TARGETS:
        cells = [f"{100 * rows[k][target]['agreement_top1']:.1f}% / {rows[k][target]['output_cosine']:.3f}"
                 for k in rows]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    (RESULTS / "prune_fidelity_curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
