"""``prune.composite``: the structured half of composite projection pruning — whole MLP neurons and whole
attention key-value groups are removed from every layer, leaving a physically smaller ``transformers`` model.

Units. An MLP neuron is a row of gate/up (BERT: intermediate) and the matching column of down (BERT: output);
a key-value group (Llama) is one k/v head with the query heads that share it, i.e. rows of q/k/v and columns of
o. Removing whole groups keeps ``num_key_value_groups`` and ``head_dim`` as they were, so the attention code
runs unchanged. BERT's config derives its head size from the head count, so encoders lose MLP neurons only.

Which units. Layer by layer on calibration text (outputs propagated through the already-shrunk layers), each
unit scores the output energy it feeds its consumer, ``sum_c ||W[:, c]||^2 * ||X_c||^2`` over its consumer
columns ``c`` (``o``/``down`` weights ``W``, their inputs ``X``): a unit that an earlier unstructured stage left
empty scores zero and goes first. Every layer loses the same number of units, because a ``transformers``
config holds one width for all layers; that is what lets the result reload with ``from_pretrained``.

Compensation (``compensate``). The consumer's surviving columns are re-solved by least squares so its output on
the calibration inputs changes least: ``W_K += W_R H_RK H_KK^-1`` with ``H = X^T X`` (the closed form of
optimal-brain-surgeon for a removed group); with ``keep_zeros`` the entries an unstructured stage zeroed stay zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.llm.arch import Transformer, transformer
from edgecompress.llm.criteria import InputStats
from edgecompress.llm.layerwise import capture_calls, collect_stats, run_layers
from edgecompress.registry import StageConfig


class CompositeConfig(StageConfig):
    """``prune.composite`` settings: the share of MLP neurons and of attention groups removed from every layer."""

    mlp: float = Field(0.25, ge=0, lt=1, description="share of each layer's MLP neurons to remove")
    attention: float = Field(0.0, ge=0, lt=1, description="share of each layer's key-value groups to remove "
                                                          "(rounded down to whole groups; decoders only)")
    compensate: bool = Field(True, description="re-solve the consumer projections by least squares")
    keep_zeros: bool = Field(True, description="with compensate: keep entries an earlier stage zeroed at zero")
    damp: float = Field(0.01, gt=0, description="least-squares damping, share of the Hessian's mean diagonal")
    samples: int = Field(32, ge=1, description="calibration sequences")
    batch_size: int = Field(8, ge=1, description="calibration sequences per forward pass")


@dataclass
class CompositeResult:
    parameters_before: int
    parameters_after: int
    mlp_neurons: tuple[int, int]  # per layer, before and after
    kv_groups: tuple[int, int]
    seconds: float


def _linear(old: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A smaller copy of ``old`` keeping the output ``rows`` and input ``cols`` (all when None)."""
    w = old.weight.data
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=old.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if old.bias is not None:
        new.bias.data.copy_(old.bias.data if rows is None else old.bias.data[rows])
    return new


def _solve(consumer: nn.Linear, stats: InputStats, keep: torch.Tensor, config: CompositeConfig) -> None:
    """Least-squares update of ``consumer``'s kept columns for the removed ones (in place, before removal)."""
    drop = torch.ones(consumer.in_features, dtype=torch.bool)
    drop[keep] = False
    h = stats.matrix()
    hkk = h[keep][:, keep]
    hkk = hkk + config.damp * hkk.diagonal().mean() * torch.eye(len(keep), dtype=h.dtype)
    w = consumer.weight.data.double().cpu()
    delta = torch.linalg.solve(hkk, (w[:, drop] @ h[drop][:, keep]).T).T  # W_R H_RK H_KK^-1
    if config.keep_zeros:
        delta[w[:, keep] == 0] = 0
    w[:, keep] += delta
    consumer.weight.data.copy_(w.to(consumer.weight))


def _energy(consumer: nn.Linear, stats: InputStats) -> torch.Tensor:
    """Per input column: ``||W[:, c]||^2 * ||X_c||^2``."""
    return consumer.weight.detach().double().cpu().square().sum(0) * stats.sumsq


def _set(parent: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(parent.get_submodule(owner) if owner else parent, attr, module)


def _shrink_layer(arch: Transformer, i: int, layer: nn.Module, calls, config: CompositeConfig, cut_mlp: int,
                  cut_groups: int) -> None:
    names, proj = arch.family.roles, arch.projections(i)
    groups = collect_stats(arch, i, layer, calls, config.compensate, roles=("o", "down"))  # the consumers' inputs
    if cut_mlp:
        keep = _energy(proj["down"], groups["down"]).argsort(descending=True)[:proj["down"].in_features - cut_mlp]
        keep = keep.sort().values
        if config.compensate:
            _solve(proj["down"], groups["down"], keep, config)
        for role in ("gate", "up"):
            if role in proj:
                _set(layer, names[role], _linear(proj[role], rows=keep))
        _set(layer, names["down"], _linear(proj["down"], cols=keep))
    if cut_groups:
        attn = layer.self_attn
        hd, per = attn.head_dim, attn.num_key_value_groups
        n_groups = proj["k"].out_features // hd
        energy = _energy(proj["o"], groups["o"]).reshape(n_groups, per * hd).sum(1)
        kept = energy.argsort(descending=True)[:n_groups - cut_groups].sort().values
        kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in kept.tolist()])
        q_rows = torch.cat([torch.arange(g * per * hd, (g + 1) * per * hd) for g in kept.tolist()])
        if config.compensate:
            _solve(proj["o"], groups["o"], q_rows, config)
        _set(layer, names["q"], _linear(proj["q"], rows=q_rows))
        for role in ("k", "v"):
            _set(layer, names[role], _linear(proj[role], rows=kv_rows))
        _set(layer, names["o"], _linear(proj["o"], cols=q_rows))


def _update_config(model: nn.Module, arch: Transformer) -> None:
    config, proj = model.config, arch.projections(0)
    config.intermediate_size = proj["down"].in_features
    if arch.family.name == "llama":
        attn = arch.layers[0].self_attn
        config.head_dim = attn.head_dim
        config.num_key_value_heads = proj["k"].out_features // attn.head_dim
        config.num_attention_heads = proj["q"].out_features // attn.head_dim


def composite(model: nn.Module, batches: list[dict[str, torch.Tensor]], config: CompositeConfig,
              device: torch.device | str = "cpu") -> CompositeResult:
    """Remove the least-energy MLP neurons and key-value groups from every layer of ``model`` in place (see the
    module docstring), updating its config to the new widths."""
    start, device = time.perf_counter(), torch.device(device)
    arch = transformer(model)
    if config.attention and arch.family.name != "llama":
        raise EdgeCompressError(f"attention groups can only be removed from decoders (Llama layout); "
                                f"{type(model).__name__}'s config derives its head size from the head count",
                                where="attention", fix="use attention: 0 for this model (MLP neurons only)")
    before = sum(p.numel() for p in model.parameters())
    proj = arch.projections(0)
    neurons = proj["down"].in_features
    hd = getattr(arch.layers[0].self_attn, "head_dim", 1) if arch.family.name == "llama" else 1
    n_groups = proj["k"].out_features // hd
    cut_mlp, cut_groups = int(neurons * config.mlp), int(n_groups * config.attention) if config.attention else 0
    calls = capture_calls(arch, batches, device)
    run_layers(arch, calls, lambda i, layer, c: _shrink_layer(arch, i, layer, c, config, cut_mlp, cut_groups), device)
    _update_config(model, arch)
    return CompositeResult(before, sum(p.numel() for p in model.parameters()), (neurons, neurons - cut_mlp),
                           (n_groups, n_groups - cut_groups), time.perf_counter() - start)
