"""``recover.mimic`` on transformers: re-solve every pruned projection's surviving weights by least squares so that
its output on calibration text matches the dense model's projection output (label-free; no backpropagation).

Layer by layer (:func:`edgecompress.llm.layerwise.run_layers`), the dense model's layer runs on the dense model's
own propagated hidden states and gives the targets ``Y`` (each projection's output); the pruned layer runs on the
pruned model's propagated hidden states (so earlier corrections propagate) and gives the inputs ``X``. Inside a
layer the projections are solved in forward order of their inputs (q/k/v, then o, then gate/up, then down), each
group from a fresh pass of the already-corrected layer. Per output row ``r`` with kept inputs ``S`` (its mask):

    (A_SS + lam I) w_S = (X^T Y)_S,r + lam w0_S,    A = X^T X,   lam = damping * mean(diag(A_SS)),

Tikhonov damping toward the current weights, as for Conv/Linear layers (:mod:`edgecompress.recover.lstsq`).
A projection with a bias (BERT) solves its bias jointly, as an always-kept input of ones. Shortcut: the systems
are solved approximately, all rows of a projection together, by Jacobi-preconditioned conjugate gradients
started at the current weights (:func:`masked_solve`: at most ``CG_ITERATIONS`` steps, each a matrix product with
``A``); every step lowers the damped least-squares objective, so the result is never worse than the start, and the
residual left is reported. A Cholesky factorisation per row (the exact solve of ``recover.mimic`` on Conv/Linear
layers) measured about 20x slower on SmolLM2's projections (thousands of different masks of up to 768 columns).
Memory: the dense layer's projection outputs on the calibration tokens, for one layer at a time.

Projections whose output width differs from the dense one (rows removed by ``prune.composite``) are skipped and
listed; narrower inputs (columns removed) are fine. The relative output error ``||X W^T - Y||^2 / ||Y||^2`` of
each solved projection is reported before and after its solve, on the calibration tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from edgecompress.llm.arch import INPUT_GROUPS, transformer
from edgecompress.llm.layerwise import capture_calls, run_layer, run_layers

CG_ITERATIONS = 60  # conjugate-gradient steps per projection, at most
CG_TOL = 1e-3  # stop when every row's residual is below this share of its right-hand side


@dataclass
class MimicLLMResult:
    """Per projection (full module name): relative output error before and after the solve; skipped ones with why."""

    errors: dict[str, tuple[float, float]] = field(default_factory=dict)
    residuals: dict[str, float] = field(default_factory=dict)  # largest relative CG residual left per projection
    skipped: dict[str, str] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class _Normal:
    """``X^T X``, ``X^T Y`` and ``||Y||^2`` of one input group (``X`` with a ones column when ``intercept``)."""

    xtx: torch.Tensor
    xty: dict[str, torch.Tensor]
    yy: dict[str, float]
    intercept: bool
    tokens: int = 0

    def add(self, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        x = x.reshape(-1, x.shape[-1]).double().cpu()
        if self.intercept:
            x = torch.cat([x, x.new_ones(len(x), 1)], 1)
        self.xtx += x.T @ x
        for role, y in targets.items():
            y = y.reshape(len(x), -1).double().cpu()
            self.xty[role] += x.T @ y
            self.yy[role] += float(y.square().sum())
        self.tokens += len(x)

    def error(self, role: str, w: torch.Tensor) -> float:
        """``||X w^T - Y||^2 / ||Y||^2`` from the accumulated sums."""
        sq = (w @ self.xtx * w).sum() - 2 * (w * self.xty[role].T).sum() + self.yy[role]
        return float(sq.clamp_min(0)) / max(self.yy[role], 1e-30)


def masked_solve(a: torch.Tensor, b: torch.Tensor, w0: torch.Tensor, keep: torch.Tensor, damping: float,
                 iterations: int = CG_ITERATIONS, tol: float = CG_TOL) -> tuple[torch.Tensor, float]:
    """Rows ``w`` ``[out, K]`` minimising ``||X w_r - y_r||^2 + lam_r ||w_r - w0_r||^2`` over each row's ``keep``
    columns (the others stay zero); ``a = X^T X`` ``[K, K]``, ``b = X^T Y`` ``[K, out]``. All rows at once by
    Jacobi-preconditioned conjugate gradients from ``w0`` (each step one ``[out, K] x [K, K]`` product), until
    every row's residual is below ``tol`` of its right-hand side or after ``iterations`` steps. Returns the rows
    and the largest relative residual left."""
    a, b, mask = a.float(), b.float(), keep.float()  # float32 products: twice as fast; the objective is float64
    diag = a.diagonal()
    lam = damping * (mask @ diag / mask.sum(1).clamp_min(1)).clamp_min(1e-12)  # per row, over its kept inputs
    w = w0.float() * mask
    rhs = (b.T + lam[:, None] * w) * mask
    apply = lambda v: (v @ a) * mask + lam[:, None] * v  # noqa: E731  (a is symmetric)
    precond = mask / (diag[None, :] + lam[:, None])
    r = rhs - apply(w)
    z = r * precond
    d, rz = z, (r * z).sum(1)
    scale = rhs.norm(dim=1).clamp_min(1e-30)
    residual = float((r.norm(dim=1) / scale).max())
    for _ in range(iterations):
        if residual < tol:
            break
        ad = apply(d)
        step = rz / (d * ad).sum(1).clamp_min(1e-30)
        w = w + step[:, None] * d
        r = r - step[:, None] * ad
        z = r * precond
        rz, old = (r * z).sum(1), rz
        d = z + (rz / old.clamp_min(1e-30))[:, None] * d
        residual = float((r.norm(dim=1) / scale).max())
    return w.to(w0.dtype), residual


class _Stop(Exception):
    pass


def _stop(_):
    raise _Stop


def _outputs(layer: nn.Module, projections: dict[str, nn.Linear], calls) -> tuple[dict[str, list], list]:
    """Each projection's output on every call, and the layer's outputs."""
    ys: dict[str, list] = {r: [] for r in projections}
    hooks = [p.register_forward_hook(lambda _m, _i, y, r=r: ys[r].append(y.detach().cpu()))
             for r, p in projections.items()]
    try:
        outs = run_layer(layer, calls)
    finally:
        for h in hooks:
            h.remove()
    return ys, outs


def _solve_group(layer: nn.Module, roles: list[str], proj: dict[str, nn.Linear], targets: dict[str, list], calls,
                 damping: float, names: dict[str, str], result: MimicLLMResult) -> None:
    """Accumulate the group's normal equations from one pass of the (corrected) layer and re-solve its roles."""
    first = proj[roles[0]]
    size = first.in_features + (first.bias is not None)
    normal = _Normal(torch.zeros(size, size, dtype=torch.float64), {}, {}, first.bias is not None)
    for r in roles:
        normal.xty[r] = torch.zeros(normal.xtx.shape[0], proj[r].out_features, dtype=torch.float64)
        normal.yy[r] = 0.0
    hook = first.register_forward_pre_hook(lambda _m, args: _stop(normal.add(args[0], current)))
    try:
        with torch.no_grad():
            for index, call in enumerate(calls):  # each pass stops at the group's input
                current = {r: targets[r][index] for r in roles}
                try:
                    layer(call.hidden, *call.args, **call.kwargs)
                except _Stop:
                    pass
    finally:
        hook.remove()
    for r in roles:
        p = proj[r]
        w0 = p.weight.detach().double().cpu()
        keep = w0 != 0
        if p.bias is not None:
            w0 = torch.cat([w0, p.bias.detach().double().cpu()[:, None]], 1)
            keep = torch.cat([keep, keep.new_ones(len(keep), 1)], 1)
        before = normal.error(r, w0)
        w, residual = masked_solve(normal.xtx, normal.xty[r], w0, keep, damping)
        result.errors[names[r]] = (before, normal.error(r, w))
        result.residuals[names[r]] = residual
        with torch.no_grad():
            p.weight.copy_(w[:, :p.in_features].to(p.weight))
            if p.bias is not None:
                p.bias.copy_(w[:, -1].to(p.bias))
    result.tokens = normal.tokens


def mimic_llm(model: nn.Module, dense: nn.Module, batches: list[dict[str, torch.Tensor]], damping: float = 0.01,
              device: torch.device | str = "cpu") -> MimicLLMResult:
    """Re-solve ``model``'s projections in place against ``dense`` (same architecture; see the module docstring)
    on calibration ``batches`` (``input_ids``, ``attention_mask``); one layer of each model at a time on
    ``device``."""
    start, device = time.perf_counter(), torch.device(device)
    arch, ref = transformer(model), transformer(dense)
    calls, dense_calls = capture_calls(arch, batches, device), capture_calls(ref, batches, device)
    result = MimicLLMResult()

    def visit(i, layer, calls):
        dense_layer = ref.layers[i]
        home = next(dense_layer.parameters()).device
        dense_layer.to(device)
        proj, dense_proj = arch.projections(i), ref.projections(i)
        targets, outs = _outputs(dense_layer, dense_proj, dense_calls)
        dense_layer.to(home)
        for call, out in zip(dense_calls, outs):
            call.hidden = out
        names = {r: arch.name(i, r) for r in proj}
        groups: dict[str, list[str]] = {}
        for r, p in proj.items():
            if p.out_features != dense_proj[r].out_features:
                result.skipped[names[r]] = (f"output width {p.out_features} differs from the dense "
                                            f"{dense_proj[r].out_features} (structured pruning)")
            else:
                groups.setdefault(INPUT_GROUPS[r], []).append(r)
        for roles in groups.values():
            _solve_group(layer, roles, proj, targets, calls, damping, names, result)

    run_layers(arch, calls, visit, device)
    result.seconds = time.perf_counter() - start
    return result
