"""Stage registration and lookup.

A stage is one compression method: a typed config (a pydantic model) plus a function
``fn(model, config, ctx) -> nn.Module | StageOutput``. Stages register themselves by name with
``@register("prune.structured", StructuredConfig)``; recipes and ``edgecompress.apply`` look them up.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Mapping

import torch
from pydantic import BaseModel, ConfigDict

from edgecompress.errors import EdgeCompressError

if TYPE_CHECKING:
    from torch import nn

    from edgecompress.context import StageContext, StageOutput
    from edgecompress.tasks import Task

# Subpackages whose import registers the built-in stages. A new capability adds its package here.
BUILTIN_PACKAGES = ("edgecompress.prune", "edgecompress.recover", "edgecompress.quant", "edgecompress.llm.stages",
                    "edgecompress.target.adapt", "edgecompress.search.nas", "edgecompress.factorize",
                    "edgecompress.dynamic")
ALL_TASK_KINDS = ("classification", "unlabeled")  # a stage's default task kinds (tensor inputs); it may narrow or widen
TOKEN_TASK_KINDS = ("causal_lm", "embedding")  # token inputs (ids + mask): only stages that declare them run on them
PIPELINE_TASK_KINDS = (*ALL_TASK_KINDS, *TOKEN_TASK_KINDS)  # the kinds the pipeline exports and measures end to end
CPU_ONLY = ("cpu",)  # the device types (torch.device.type) a stage runs on unless it registers more
CPU_AND_CUDA = ("cpu", "cuda")  # a stage whose work runs on the model's device (its helpers place their tensors there)


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def labels_needed(self) -> str | None:
        """Why this configuration of the stage needs labelled data (None: it runs on unlabeled data too)."""
        return None


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[StageConfig]
    fn: Callable[..., Any]
    produces_artifact: bool = False  # True: the stage yields the deployable artifact and must come last
    task_kinds: tuple[str, ...] = ALL_TASK_KINDS  # the task kinds (Task.kind) the stage can work on
    devices: tuple[str, ...] = CPU_ONLY  # the device types its work can run on (the pipeline places it)
    by_kind: Mapping[str, Callable[..., Any]] = field(default_factory=dict)  # task kind -> fn of a kind's variant

    @property
    def summary(self) -> str:
        """The first paragraph of the stage function's docstring, on one line."""
        doc = (self.fn.__doc__ or "").strip()
        return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())

    def __call__(self, model: nn.Module, config: StageConfig, ctx: StageContext) -> nn.Module | StageOutput:
        fn = self.by_kind.get(ctx.task.kind, self.fn) if ctx.task is not None else self.fn
        return fn(model, config, ctx)

    def device_for(self, device: torch.device) -> torch.device:
        """Where the stage runs when the run's device is ``device``: there if the stage registered its type, else
        on the CPU."""
        return device if device.type in self.devices else torch.device("cpu")

    def check_task(self, config: StageConfig, task: Task, where: str | None = None) -> None:
        """Refuse, before any work, a task of a kind the stage does not support or without labels it needs."""
        where = where or self.name
        if task.kind not in self.task_kinds:
            raise EdgeCompressError(f"stage {self.name!r} does not work on {task.kind} tasks (data {task.name!r})",
                                    where=where, fix=f"it supports: {', '.join(self.task_kinds)}; remove the stage "
                                                     "or use data of a supported kind")
        reason = config.labels_needed()
        if reason and not task.has_labels:
            from edgecompress.tasks.unlabeled import LABEL_FREE_STAGES

            raise EdgeCompressError(f"stage {self.name!r} needs labels ({reason}), but data {task.name!r} has none",
                                    where=where, fix=f"use labelled data, or a label-free stage: {LABEL_FREE_STAGES}")


_STAGES: dict[str, Stage] = {}
_loaded = False


def register(name: str, config: type[StageConfig], *, produces_artifact: bool = False,
             task_kinds: tuple[str, ...] = ALL_TASK_KINDS, devices: tuple[str, ...] = CPU_ONLY):
    """Decorator that registers ``fn(model, config, ctx)`` as the stage ``name`` (for tasks of ``task_kinds``,
    its work on devices of the types ``devices``: the CPU only unless it says e.g. ``("cpu", "cuda")``).

    A second registration of a name with the same config, artifact flag and devices but other task kinds adds a
    variant: the stage runs it on tasks of those kinds and the first registration on the rest (and without a
    task)."""

    def wrap(fn):
        if "cpu" not in devices:
            raise ValueError(f"stage {name!r}: devices {devices} must include 'cpu' (every stage runs there)")
        new = Stage(name, config, fn, produces_artifact, task_kinds, tuple(devices))
        old = _STAGES.get(name)
        if old is not None and fn in (old.fn, *old.by_kind.values()):
            return fn
        if old is not None:
            same = (old.config, old.produces_artifact, old.devices) == (config, produces_artifact, tuple(devices))
            if not same or set(old.task_kinds) & set(task_kinds):
                raise ValueError(f"stage {name!r} is registered twice ({old.fn} and {fn}); a variant needs the same "
                                 "config, artifact flag and devices, and other task kinds")
            new = replace(old, task_kinds=(*old.task_kinds, *task_kinds),
                          by_kind={**old.by_kind, **dict.fromkeys(task_kinds, fn)})
        _STAGES[name] = new
        return fn

    return wrap


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for package in BUILTIN_PACKAGES:
            importlib.import_module(package)


def get(name: str) -> Stage:
    """The stage registered as ``name``; an unknown name raises an error that suggests the closest one."""
    _load_builtins()
    if name in _STAGES:
        return _STAGES[name]
    close = difflib.get_close_matches(name, _STAGES, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise EdgeCompressError(
        f"unknown method {name!r}",
        fix=f"{hint}run `edgecompress methods` to list them; known: {', '.join(sorted(_STAGES))}",
    )


def all_stages() -> list[Stage]:
    _load_builtins()
    return [_STAGES[k] for k in sorted(_STAGES)]
