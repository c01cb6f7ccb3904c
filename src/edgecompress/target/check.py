"""``edgecompress check``: what a target cannot run in a model and why, and whether its memory fits.

``check_onnx(onnx_model, profile)`` judges an exported graph; ``check_module(model, example, profile)`` exports a
PyTorch model first and names the module class behind each unsupported node (so hw.adapt's rewrites can be
suggested). The result lists unsupported operators and precisions, channel counts off the target's alignment
(slower, not fatal), and the per-layer memory against the target's flash (weights) and SRAM (peak activations).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from edgecompress.runtimes import Artifact
from edgecompress.target.graph import GraphMemory, analyse
from edgecompress.target.profiles import TargetProfile, load_target

REPLACEABLE = {  # the torch activation modules hw.adapt replaces -> the ONNX operators they export to
    "SiLU": ("Sigmoid", "Mul"), "GELU": ("Erf", "Div", "Mul", "Add"), "Hardswish": ("HardSwish",),
    "Mish": ("Softplus", "Tanh", "Mul"), "ELU": ("Elu",), "LeakyReLU": ("LeakyRelu",)}
ADAPT_FIX = "hw.adapt replaces the activation module with hard-swish or ReLU6, whichever the target runs"
_ACTIVATION_OPS = {"Sigmoid", "Tanh", "Erf", "Gelu", "HardSwish", "HardSigmoid", "Div", "Pow", "Sqrt", "Mul"}


def kib(n: int | None) -> str:
    return "no limit" if n is None else f"{n / 1024:,.1f} KiB"


@dataclass
class Issue:
    """Something the target cannot run (or, for alignment, runs slower): what, why, how to fix, which nodes."""

    what: str
    why: str
    fix: str
    nodes: list[str] = field(default_factory=list)


@dataclass
class TargetCheck:
    profile: TargetProfile
    memory: GraphMemory
    unsupported: list[Issue]
    misaligned: list[Issue]

    @property
    def overflows(self) -> list[str]:
        """'weights 1,200.0 KiB > flash 1,024.0 KiB by 176.0 KiB (17.2%)' for each limit exceeded."""
        out = []
        for label, got, limit in (("weights", self.memory.weight_bytes, self.profile.flash),
                                  ("peak activations", self.memory.peak_bytes, self.profile.sram)):
            if limit is not None and got > limit:
                memory = "flash" if label == "weights" else "SRAM"
                out.append(f"{label} {kib(got)} > {memory} {kib(limit)} by {kib(got - limit)} "
                           f"({100 * (got / limit - 1):.1f}%)")
        return out

    @property
    def fits(self) -> bool:
        return not self.unsupported and not self.overflows

    def checks(self) -> list[dict]:
        """The fit as a run's target-check rows (shown with the recipe's targets in the report)."""
        p, m = self.profile, self.memory
        rows = [{"target": f"{p.name}: operators and types", "wanted": "all supported",
                 "got": "; ".join(f"{i.what} ({len(i.nodes)})" for i in self.unsupported) or "all supported",
                 "passed": not self.unsupported}]
        for label, got, limit in (("weights in flash (KiB)", m.weight_bytes, p.flash),
                                  ("peak activations in SRAM (KiB)", m.peak_bytes, p.sram)):
            if limit is not None:
                rows.append({"target": f"{p.name}: {label}", "wanted": round(limit / 1024, 1),
                             "got": round(got / 1024, 1), "passed": got <= limit})
        return rows

    def to_json(self) -> dict:
        return {"target": self.profile.name, "fits": self.fits, "overflows": self.overflows,
                "unsupported": [vars(i) for i in self.unsupported], "misaligned": [vars(i) for i in self.misaligned],
                "flash_bytes": self.profile.flash, "sram_bytes": self.profile.sram, **self.memory.to_json()}


def check_onnx(model: onnx.ModelProto, profile: TargetProfile, classes: dict[str, str] | None = None) -> TargetCheck:
    """Judge an ONNX graph against ``profile``; ``classes`` (module name -> class name) names the modules."""
    memory, classes = analyse(model), classes or {}
    by_op: dict[str, list] = {}
    by_type: dict[str, list] = {}
    for n in memory.nodes:
        if not profile.runs(n.op):
            by_op.setdefault(n.op, []).append(n)
        if n.precision not in profile.dtypes:
            by_type.setdefault(n.precision, []).append(n)
    unsupported = [_op_issue(op, nodes, profile, classes) for op, nodes in by_op.items()]
    for dtype, nodes in by_type.items():
        integer = dtype.startswith(("int", "uint"))
        fix = ("quant.ptq with symmetric_activations: true (int8 activations)" if integer and "int8" in profile.dtypes
               else "quantize the model: quant.ptq (INT8)" if not integer else "a target that computes in " + dtype)
        ops = Counter(n.op for n in nodes)
        unsupported.append(Issue(f"{dtype} compute", f"the target computes in {', '.join(profile.dtypes)} only "
                                 f"({', '.join(f'{op} x{c}' for op, c in ops.items())})", fix,
                                 list(dict.fromkeys(n.module or n.name for n in nodes))))
    a = profile.channel_alignment
    off = [n for n in memory.nodes if n.out_channels is not None and a > 1 and n.out_channels % a]
    misaligned = [Issue(f"channels not a multiple of {a}", "the target pads them: the padding costs time and memory",
                        "hw.adapt with align: true rounds hidden layers down (torch-pruning); output layers keep their size",
                        [f"{n.module or n.name} ({n.out_channels})" for n in off])] if off else []
    return TargetCheck(profile, memory, unsupported, misaligned)


def _op_issue(op: str, nodes: list, profile: TargetProfile, classes: dict[str, str]) -> Issue:
    names = sorted({classes[n.module] for n in nodes if n.module in classes})
    source = f" (from {', '.join(names)})" if names else ""
    fix = f"rewrite those layers, or choose a target that runs {op}"
    if names and set(names) <= set(REPLACEABLE):
        fix = ADAPT_FIX
    elif not names and op in _ACTIVATION_OPS:
        fix = f"if it comes from a {' / '.join(REPLACEABLE)} module: {ADAPT_FIX}; else {fix}"
    return Issue(f"operator {op}{source}", f"not in the {profile.name} operator set", fix,
                 list(dict.fromkeys(n.module or n.name for n in nodes)))


def check_module(model: nn.Module, example: torch.Tensor, profile: TargetProfile) -> TargetCheck:
    """Export ``model`` (FP32 ONNX, the batch as 1) and judge it; unsupported nodes name their module's class."""
    from edgecompress.runtimes.onnxruntime import export_onnx

    with tempfile.TemporaryDirectory(prefix="edgecompress-check-") as tmp:
        art = export_onnx(model, example, Path(tmp) / "model.onnx")
        graph = onnx.load(str(art.path))
    return check_onnx(graph, profile, {name: type(m).__name__ for name, m in model.named_modules()})


def artifact_fit(target: str, artifact: Artifact, model: nn.Module, example: torch.Tensor) -> dict:
    """The fit of a run's final artifact to ``target``: its ONNX graph, or for other formats the FP32 ONNX export
    of the final model (``judged_on`` says which). The check rows are under ``checks``."""
    profile = load_target(target)
    classes = {name: type(m).__name__ for name, m in model.named_modules()}
    if artifact.format == "onnx":
        result, judged_on = check_onnx(onnx.load(str(artifact.path)), profile, classes), artifact.path.name
    else:
        result = check_module(model.eval(), example, profile)
        judged_on = f"the final model's FP32 ONNX export ({artifact.format} artifacts are not read by the check)"
    return {**result.to_json(), "judged_on": judged_on, "checks": result.checks()}
