"""Data-free calibration inputs: invert the dense model's BatchNorm statistics (ZeroQ / DeepInversion style).

Random inputs are optimised with Adam so that, at every BatchNorm layer, the batch mean and standard deviation
of its input match the layer's running statistics (ZeroQ's loss, Cai et al. 2020: ``sum ||mu_b - mu||_2 +
||sigma_b - sigma||_2``). Only the inputs receive gradients: the model's weights are frozen. Shortcut vs
DeepInversion: no image priors (total variation, L2) and no teacher-student competition term.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.measure import count_macs
from edgecompress.nn.bn import bn_layers
from edgecompress.recover.flops import forward_flops


def synthesize(model: nn.Module, input_shape: tuple[int, ...], n: int, *, steps: int = 50, lr: float = 0.1,
               batch_size: int = 64, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """``n`` inputs whose BatchNorm statistics in ``model`` match its running statistics, on the model's device
    (drawn on the CPU, so a seed gives the same starting inputs on every device).

    Returns the inputs and an info dict: ``{"steps", "bn_loss_start", "bn_loss_end", "flops"}`` (FLOPs: a
    forward pass plus a backward pass to the inputs only ~ 2 forward passes per sample and step).
    """
    bns = bn_layers(model)
    if not bns:
        raise EdgeCompressError("data-free calibration needs BatchNorm layers (their statistics are inverted), "
                                "but the model has none", fix="give unlabeled data: data: task")
    losses: list[torch.Tensor] = []

    def pre_hook(m, inputs):
        x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)
        mean, std = x.mean(1), x.var(1, unbiased=False).add(m.eps).sqrt()
        losses.append((mean - m.running_mean).norm() + (std - (m.running_var + m.eps).sqrt()).norm())

    was_training = model.training
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    handles = [m.register_forward_pre_hook(pre_hook) for m in bns]
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out, first, last = [], 0.0, 0.0
    try:
        for start in range(0, n, batch_size):
            x = torch.randn((min(batch_size, n - start), *input_shape), generator=gen).to(device).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            for step in range(steps):
                losses.clear()
                model(x)
                loss = torch.stack(losses).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                first = first + loss.item() if step == 0 else first
            last += loss.item()
            out.append(x.detach())
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
    x = torch.cat(out)
    flops = 2 * forward_flops(count_macs(model, x[:1]), n) * steps
    batches = len(out)
    return x, {"steps": steps, "bn_loss_start": first / batches, "bn_loss_end": last / batches, "flops": flops}
