"""Exit heads on a backbone, early-exit inference in PyTorch, training the heads, and calibrating thresholds.

An exit fires for a sample when its softmax confidence (largest class probability) reaches the exit's threshold;
the sample then stops there. Written here because no maintained library trains and calibrates exits on an
arbitrary PyTorch backbone (the early-exit papers ship per-model research code).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.dynamic.split import segments, trace
from edgecompress.nn.rebuild import rebuildable
from edgecompress.tasks import Task

NEVER = 1.01  # a threshold no softmax confidence reaches: the exit never fires


def _head(shape: list[int], num_classes: int, hidden: int, pool: int) -> nn.Sequential:
    """Average-pool each spatial side to at most ``pool`` (a divisor of the side, so ONNX exports it), then a
    two-layer classifier."""
    sides = [max(q for q in range(1, min(pool, d) + 1) if d % q == 0) for d in shape[1:]]
    pooler = [nn.AdaptiveAvgPool1d(sides[0])] if len(sides) == 1 else [nn.AdaptiveAvgPool2d(tuple(sides))] \
        if len(sides) == 2 else []
    features = shape[0] * math.prod(sides)
    return nn.Sequential(*pooler, nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class ExitSegment(nn.Module):
    """A backbone segment and the exit head on its output: returns (features, exit logits)."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return h, self.head(h)


@rebuildable
class ExitHeads(nn.Module):
    """The exit heads of a backbone (attached to it as ``exit_heads``), their split points and thresholds."""

    def __init__(self, points: list[str], shapes: list[list[int]], num_classes: int, hidden: int = 64,
                 pool: int = 4, thresholds: list[float] | None = None):
        super().__init__()
        self.points, self.shapes, self.num_classes = list(points), [list(s) for s in shapes], num_classes
        self.hidden, self.pool = hidden, pool
        self.thresholds = [float(t) for t in thresholds] if thresholds else [NEVER] * len(points)
        self.heads = nn.ModuleList(_head(s, num_classes, hidden, pool) for s in shapes)

    def spec(self) -> dict:
        return {"points": self.points, "shapes": self.shapes, "num_classes": self.num_classes,
                "hidden": self.hidden, "pool": self.pool, "thresholds": self.thresholds}

    def segments(self, model: nn.Module) -> list[nn.Module]:
        """The backbone (``model``) cut at the split points: an :class:`ExitSegment` per exit, then the rest."""
        parts = segments(trace(model, "dynamic.early_exit"), self.points)
        return [*(ExitSegment(p, h) for p, h in zip(parts, self.heads, strict=False)), parts[-1]]


def confidence(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=1).max(1).values


@torch.no_grad()
def predict(parts: list[nn.Module], thresholds: list[float], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Early-exit inference: (logits, index of the exit each sample left by; the last = the full network)."""
    out, which = None, torch.full((len(x),), len(parts) - 1)
    active, h = torch.arange(len(x)), x
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        h, logits = (None, part(h)) if last else part(h)
        fire = torch.ones(len(logits), dtype=torch.bool) if last else confidence(logits) >= thresholds[i]
        out = logits.new_empty(len(x), logits.shape[1]) if out is None else out
        out[active[fire]], which[active[fire]] = logits[fire], i
        active = active[~fire]
        if not len(active):
            break
        h = h[~fire]
    return out, which


@torch.no_grad()
def all_exit_logits(parts: list[nn.Module], task: Task, split: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits of every exit and of the full network for every sample of a split (no early stopping), labels."""
    per_exit: list[list[torch.Tensor]] = [[] for _ in parts]
    labels = []
    for x, y in task.loader(split, batch_size=256):
        h = x
        for i, part in enumerate(parts):
            if i == len(parts) - 1:
                per_exit[i].append(part(h))
            else:
                h, logits = part(h)
                per_exit[i].append(logits)
        labels.append(y)
    return [torch.cat(p) for p in per_exit], torch.cat(labels)


def train_heads(model: nn.Module, parts: list[nn.Module], task: Task, *, joint: bool, epochs: int, lr: float,
                batch_size: int, exit_weight: float, seed: int) -> list[float]:
    """Train the exit heads (and with ``joint`` the backbone: its own loss plus ``exit_weight`` x each exit's)
    with Adam on the task's labels; the frozen backbone stays in eval mode. Returns the loss per epoch."""
    heads = nn.ModuleList(p.head for p in parts[:-1])
    params = list(heads.parameters()) + (list(model.parameters()) if joint else [])
    params = list({id(p): p for p in params}.values())
    for p in model.parameters():
        p.requires_grad_(joint)
    for p in heads.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            model.train(joint)
            heads.train()
            total, seen = 0.0, 0
            for x, y in task.loader("train", batch_size=batch_size, shuffle=True, seed=seed):
                h, loss = x, 0.0
                for i, part in enumerate(parts):
                    if i == len(parts) - 1:
                        loss = loss + F.cross_entropy(part(h), y) if joint else loss
                    else:
                        h, logits = part(h)
                        loss = loss + exit_weight * F.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, seen = total + float(loss.detach()) * len(y), seen + len(y)
            losses.append(round(total / max(seen, 1), 6))
    model.eval().requires_grad_(False)
    return losses


def calibrate(per_exit: list[torch.Tensor], labels: torch.Tensor, max_drop: float,
              reference: torch.Tensor | None = None) -> list[float]:
    """One threshold per exit (in order), each the lowest at which the samples that would leave there are at most
    ``max_drop`` (a fraction) less accurate than the reference (default: the full network, the last entry of
    ``per_exit``) on those same samples; so on this data the cascade loses at most ``max_drop`` accuracy against the
    reference, provided the full network is as accurate as it. An exit with no such group never fires."""
    final_ok = ((per_exit[-1] if reference is None else reference).argmax(1) == labels).numpy()
    remaining = np.ones(len(labels), dtype=bool)
    thresholds = []
    for logits in per_exit[:-1]:
        conf, ok = confidence(logits).numpy(), (logits.argmax(1) == labels).numpy()
        idx = np.flatnonzero(remaining)
        order = idx[np.argsort(-conf[idx], kind="stable")]
        gain = np.cumsum(ok[order].astype(float) - final_ok[order] + max_drop)  # >= 0: within the budget
        distinct = np.append(conf[order][1:] < conf[order][:-1], True)  # a threshold can only split between values
        good = np.flatnonzero((gain >= -1e-9) & distinct)
        if len(good):
            threshold = float(conf[order][good[-1]])
            thresholds.append(threshold)
            remaining &= ~(conf >= threshold)
        else:
            thresholds.append(NEVER)
    return thresholds
