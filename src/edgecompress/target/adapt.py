"""``hw.adapt``: rewrite a model for a target profile, then say what the target still cannot run.

Three rewrites, each only where the target needs it: ReLU-like activation modules whose ONNX operators the target
lacks (SiLU, GELU, Hardswish, Mish, ELU, LeakyReLU) become ReLU6 or hard-swish (whichever the target runs); conv /
linear output channels are rounded down to the target's channel alignment; with ``fit``, channels are removed
uniformly (torch-pruning, L2 magnitude, aligned) until the weights and peak activations fit the target's memory at
its integer precision. Accuracy is recovered by distillation from the incoming model. Output layers keep their
channels. Activations called as functions in ``forward`` (``F.silu``) cannot be replaced and are reported.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch_pruning as tp
from pydantic import Field, field_validator
from torch import nn

from edgecompress.context import StageContext
from edgecompress.errors import EdgeCompressError
from edgecompress.nn.layers import build_graph
from edgecompress.nn.rebuild import rebuildable
from edgecompress.prune.analysis import output_layers
from edgecompress.prune.align import AlignedPruner
from edgecompress.registry import CPU_AND_CUDA, register
from edgecompress.target.check import REPLACEABLE, TargetCheck, check_module, kib
from edgecompress.target.profiles import TargetProfile, load_target
from edgecompress.train import DistillConfig, TrainSettings, accuracy, train

STAGE = "hw.adapt"
def _adapted(base: type[nn.Module]) -> type[nn.Module]:
    """A subclass of the activation ``base`` that marks a substitution hw.adapt made: a class of its own
    (``Adapted<base>``), registered so that a checkpoint rebuilds the substitution instead of the original."""
    doc = f"``nn.{base.__name__}`` put in by hw.adapt (rebuilt from checkpoints)."
    return rebuildable(type(f"Adapted{base.__name__}", (base,),
                            {"spec": lambda self: {}, "__doc__": doc, "__module__": __name__}))


REPLACEMENTS = {"hardswish": ("HardSwish", _adapted(nn.Hardswish)), "relu6": ("Clip", _adapted(nn.ReLU6)),
                "relu": ("Relu", _adapted(nn.ReLU))}
_EXPORTS_TO = {getattr(nn, name): ops for name, ops in REPLACEABLE.items()}


class AdaptConfig(TrainSettings):
    """Settings of ``hw.adapt``."""

    target: str = Field("mcu", description="a built-in target (cpu, npu-int8, mcu) or a target profile YAML file")
    activation: Literal["auto", "hardswish", "relu6", "relu"] = Field(
        "auto", description="what replaces an activation the target cannot run; auto: hard-swish if the target "
                            "runs it, else ReLU6, else ReLU")
    align: bool = Field(True, description="round conv/linear output channels down to the target's alignment")
    fit: bool = Field(False, description="remove channels uniformly until weights and peak activations fit the "
                                         "target's flash and SRAM at its precision (int8: the FP32 bytes / 4)")
    max_ratio: float = Field(0.9, gt=0.0, lt=1.0, description="fit: the most channels removed from any layer (the "
                                                              "most aggressive setting; beyond it is an error)")
    epochs: int = Field(3, ge=0, le=10_000, description="recovery epochs of distillation from the incoming model")
    lr: float = Field(0.01, gt=0.0, le=10.0, description="recovery learning rate (cosine-annealed to zero)")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="recovery distillation settings")

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        try:
            load_target(value)
        except EdgeCompressError as err:
            raise ValueError(f"{err.what}; {err.fix}") from None
        return value

    def labels_needed(self) -> str | None:
        if self.epochs and self.distill.alpha < 1:
            return "recovery trains on the task's labels too; distill: {alpha: 1.0} or epochs: 0 needs none"
        return None


def _replacement(profile: TargetProfile, choice: str) -> tuple[str, type[nn.Module]]:
    order = list(REPLACEMENTS) if choice == "auto" else [choice]
    for name in order:
        if profile.runs(REPLACEMENTS[name][0]):
            return name, REPLACEMENTS[name][1]
    raise EdgeCompressError(f"target {profile.name!r} runs none of the replacement activations {order}",
                            where=f"{STAGE}.activation", fix="use a replacement whose operator (HardSwish, Clip or "
                                                             "Relu) the target lists in `operators`")


def substitute_activations(model: nn.Module, profile: TargetProfile, choice: str) -> dict[str, str]:
    """Replace, in place, each ReLU-like activation module the target cannot run; returns {module: 'Old -> New'}."""
    done = {}
    for name, module in list(model.named_modules()):
        cls = type(module)
        if cls in _EXPORTS_TO and not all(profile.runs(op) for op in _EXPORTS_TO[cls]):
            new_name, new_cls = _replacement(profile, choice)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new_cls())
            done[name] = f"{cls.__name__} -> {new_cls.__bases__[0].__name__}"
    return done




def align_channels(model: nn.Module, example: torch.Tensor, alignment: int) -> int:
    """Round every prunable channel group down to a multiple of ``alignment`` (the lowest-L2 channels go)."""
    if alignment <= 1:
        return 0
    removed = 0
    importance = tp.importance.MagnitudeImportance(p=2)
    graph = build_graph(model, example)
    keep = list(output_layers(graph))
    for group in graph.get_all_groups(ignored_layers=keep, root_module_types=(nn.Conv2d, nn.Linear)):
        count = len(group[0].idxs)
        extra = count % alignment if count > alignment else 0
        if extra:
            group.prune(idxs=torch.argsort(importance(group)).tolist()[:extra])
            removed += extra
    return removed


def _shrunk(model: nn.Module, example: torch.Tensor, ratio: float, alignment: int) -> nn.Module:
    model = copy.deepcopy(model)
    keep = list(output_layers(build_graph(model, example)))
    AlignedPruner(model, example, tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                  ignored_layers=keep, round_to=alignment if alignment > 1 else None).step()
    return model


def _scaled(check: TargetCheck, profile: TargetProfile) -> TargetCheck:
    """The FP32 graph's memory at the target's precision (int8: / 4), as the check after quantization would see."""
    if profile.integer_only:
        check.memory.weight_bytes //= 4
        check.memory.peak_bytes //= 4
    return check


def fit_memory(model: nn.Module, example: torch.Tensor, profile: TargetProfile, max_ratio: float
               ) -> tuple[nn.Module, float, TargetCheck]:
    """The least uniform channel ratio (to 1%) at which ``model`` fits the target's memory, the pruned model and its
    check; an error says by how much the model is over even at ``max_ratio``."""
    check = _scaled(check_module(model, example, profile), profile)
    if not check.overflows:
        return model, 0.0, check
    worst = _shrunk(model, example, max_ratio, profile.channel_alignment)
    worst_check = _scaled(check_module(worst, example, profile), profile)
    if worst_check.overflows:
        raise EdgeCompressError(
            f"the model cannot fit target {profile.name!r} even with {max_ratio:.0%} of every layer's channels "
            f"removed at {'int8' if profile.integer_only else 'its float type'}: {'; '.join(worst_check.overflows)}",
            where=f"{STAGE}.fit", fix="use a smaller model (fewer channels or blocks, a smaller input) or a target "
                                      f"with more memory; max_ratio (most removed per layer) is {max_ratio}")
    lo, hi, best, best_check = 0.0, max_ratio, worst, worst_check
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        pruned = _shrunk(model, example, mid, profile.channel_alignment)
        trial = _scaled(check_module(pruned, example, profile), profile)
        if trial.overflows:
            lo = mid
        else:
            hi, best, best_check = mid, pruned, trial
    return best, hi, best_check


@register(STAGE, AdaptConfig, devices=CPU_AND_CUDA)
def hw_adapt(model: nn.Module, config: AdaptConfig, ctx: StageContext) -> nn.Module:
    """Rewrite the model for a target: replace activations it cannot run, round channels to its alignment, and
    (fit) shrink channels until its memory fits; recover by distillation and report what the target still cannot run.
    """
    task = ctx.require_task(STAGE)
    profile = load_target(config.target)
    teacher = copy.deepcopy(model).eval()
    device = next(model.parameters()).device
    model = copy.deepcopy(model).cpu().eval()
    example = task.example_inputs(1)
    before = check_module(model, example, profile)
    substituted = substitute_activations(model, profile, config.activation)
    ratio, removed = 0.0, 0
    if config.fit:
        model, ratio, _ = fit_memory(model, example, profile, config.max_ratio)
    elif config.align:
        removed = align_channels(model, example, profile.channel_alignment)
    model.to(device)
    history = []
    if config.epochs and (substituted or ratio or removed):
        history = train(model, task, epochs=config.epochs, lr=config.lr, optimizer=config.optimizer,
                        batch_size=config.batch_size, weight_decay=config.weight_decay, teacher=teacher,
                        temperature=config.distill.temperature, alpha=config.distill.alpha, seed=ctx.seed,
                        progress=ctx.progress, description=STAGE)
    after = check_module(model.cpu().eval(), example, profile)
    cannot = [f"{i.what}: {i.why}; fix: {i.fix}" for i in after.unsupported + after.misaligned]
    estimate = _scaled(after, profile)
    ctx.info.update({
        "target": profile.name, "substituted": substituted, "fit_ratio": round(ratio, 3),
        "aligned_channels_removed": removed, "cannot": cannot,
        "memory_before": {"weights": kib(before.memory.weight_bytes), "peak_activations": kib(before.memory.peak_bytes)},
        "memory_after_at_target_precision": {"weights": kib(estimate.memory.weight_bytes),
                                             "peak_activations": kib(estimate.memory.peak_bytes),
                                             "overflows": estimate.overflows},
        "val_accuracy_before": accuracy(teacher.to(device), task, "val") if task.has_labels else None,
        "val_accuracy_after": accuracy(model.to(device), task, "val") if task.has_labels else None,
        "history": history,
    })
    return model.to(device)
