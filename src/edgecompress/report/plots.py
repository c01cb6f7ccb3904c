"""Report figures, drawn with matplotlib's object API (no pyplot, no global backend switch) and returned as
base64-encoded PNG strings. A figure whose data the run lacks is left out rather than drawn empty.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from edgecompress.report.table import history, number, stage_metrics

DPI = 110
STYLE = {
    "font.size": 9, "axes.titlesize": 11, "axes.titleweight": "bold", "axes.labelsize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.frameon": False, "legend.fontsize": 8,
}
PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9", "#ec4899", "#84cc16"]


@dataclass(frozen=True)
class Plot:
    """One report figure: a title, a one-sentence caption, the PNG as base64 text, and whether it spans the page."""

    title: str
    caption: str
    png: str
    wide: bool = False


def _draw(width: float, height: float, draw: Callable[[Figure], None]) -> str:
    """Make a figure with the report style, let ``draw`` fill it, return it as base64 PNG."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        draw(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _label_offsets(ax: Axes, xy: list[tuple[float, float]], distance: float = 9.0) -> list[tuple[float, float]]:
    """Offsets (points) that put each point's label on the side away from its neighbours in the path.

    Labels then sit clear of the arrows to and from the point, which fixed offsets do not manage.
    """
    ax.autoscale_view()
    screen = ax.transData.transform(xy)
    offsets = []
    for i, (px, py) in enumerate(screen):
        dx = dy = 0.0
        for j in (i - 1, i + 1):
            if 0 <= j < len(screen):
                vx, vy = screen[j][0] - px, screen[j][1] - py
                norm = (vx * vx + vy * vy) ** 0.5
                if norm > 1e-6:
                    dx, dy = dx + vx / norm, dy + vy / norm
        norm = (dx * dx + dy * dy) ** 0.5
        offsets.append((-distance * dx / norm, -distance * dy / norm) if norm > 1e-6 else (distance, distance))
    return offsets


HEADLINES = {"agreement_top1": "agreement", "perplexity": "perplexity", "embedding_cosine": "cosine"}
NOT_PERCENT = ("perplexity",)  # headline metrics that are not fractions (plotted as they are, not x 100)


def headline(metrics: dict) -> tuple[str, str]:
    """(key, name) of the run's headline metric: accuracy, agreement with the original model on unlabeled data,
    perplexity (causal LM) or cosine to the original model's embeddings."""
    task = metrics.get("task") if isinstance(metrics.get("task"), dict) else {}
    key = task.get("metric")
    return (key, HEADLINES[key]) if key in HEADLINES else ("accuracy", "accuracy")


def _trajectory(points: list[tuple[str, float, float]], xlabel: str, title: str, log_x: bool,
                ylabel: str = "accuracy") -> str:
    """Accuracy (%) against one cost: one labelled point per (label, x, accuracy) triple, arrows in stage order."""

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        xy = [(x, y) for _, x, y in points]
        for i, (x, y) in enumerate(xy):
            ax.scatter([x], [y], s=55, color=PALETTE[i % len(PALETTE)], edgecolor="white", zorder=3)
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25, y=0.2)
        for start, end in pairwise(xy):
            ax.annotate("", xy=end, xytext=start,
                        arrowprops={"arrowstyle": "-|>", "color": "#94a3b8", "lw": 1.2, "shrinkA": 6, "shrinkB": 6})
        for (label, x, y), (ox, oy) in zip(points, _label_offsets(ax, xy)):
            ax.annotate(label, (x, y), xytext=(ox, oy), textcoords="offset points", fontsize=8,
                        color="#334155", ha="right" if ox < -3 else "left" if ox > 3 else "center",
                        va="top" if oy < -3 else "bottom" if oy > 3 else "center")
        ax.set(xlabel=xlabel, ylabel=ylabel if ylabel in NOT_PERCENT else f"{ylabel} (%)", title=title)

    return _draw(5.6, 3.8, draw)


def _points(metrics: dict, x_key: str) -> list[tuple[str, float, float]]:
    """(label 'N name', x, accuracy %) of each stage that has both values; N is the stage's place in the run."""
    points, key = [], headline(metrics)[0]
    for i, entry in enumerate(history(metrics)):
        x, accuracy = number(stage_metrics(entry).get(x_key)), number(stage_metrics(entry).get(key))
        if x is not None and accuracy is not None:
            points.append((f"{i} {entry.get('name', '?')}", x, accuracy if key in NOT_PERCENT else 100 * accuracy))
    return points


def accuracy_vs_size(metrics: dict) -> str | None:
    """Accuracy against the artifact's size on disk (log x); None without accuracy and size for any stage."""
    points = [(label, x, y) for label, x, y in _points(metrics, "size_bytes") if x > 0]
    if not points:
        return None
    unit, scale = ("MiB", 1024**2) if max(x for _, x, _ in points) >= 10 * 1024**2 else ("KiB", 1024)
    points = [(label, x / scale, y) for label, x, y in points]
    name = headline(metrics)[1]
    return _trajectory(points, f"size on disk ({unit}, log scale)", f"{name.capitalize()} vs size", log_x=True,
                       ylabel=name)


def accuracy_vs_latency(metrics: dict) -> str | None:
    """Accuracy against median latency; None without accuracy and latency for any stage."""
    points, name = _points(metrics, "latency_p50_ms"), headline(metrics)[1]
    return _trajectory(points, "latency p50 (ms)", f"{name.capitalize()} vs latency", log_x=False,
                       ylabel=name) if points else None


def stage_bars(metrics: dict) -> str | None:
    """Size, MACs, p50 latency and accuracy of each stage relative to the baseline, as grouped bars.

    None for fewer than two stages (the baseline alone is all ones).
    """
    entries = history(metrics)
    if len(entries) < 2:
        return None
    base = stage_metrics(entries[0])
    series = [("size", "size_bytes"), ("MACs", "macs"), ("latency p50", "latency_p50_ms"), headline(metrics)[::-1]]
    series = [(label, key) for label, key in series if number(base.get(key))]
    if not series:
        return None
    names = [str(e.get("name", "?")) for e in entries]

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        width = 0.8 / len(series)
        for j, (label, key) in enumerate(series):
            values = [number(stage_metrics(e).get(key)) for e in entries]
            ratios = [float("nan") if v is None else v / base[key] for v in values]
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(entries))]
            bars = ax.bar(xs, ratios, width * 0.92, label=label, color=PALETTE[j])
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2, color="#475569")
        ax.axhline(1.0, color="#64748b", lw=0.8, ls="--")
        ax.set_xticks(range(len(entries)), names, rotation=20 if len(entries) > 5 else 0,
                      ha="right" if len(entries) > 5 else "center")
        ax.grid(axis="x", visible=False)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
        ax.set(ylabel="relative to baseline (baseline = 1)", title="Per-stage cost and accuracy vs baseline")
        fig.legend(ncols=len(series), loc="outside lower center")

    return _draw(11.0, 3.4, draw)


def _is_weight_layer(layer: dict) -> bool:
    kind = str(layer.get("type", "")).lower()
    return "conv" in kind or "linear" in kind


def _final_layers(metrics: dict) -> list[dict]:
    """The per-layer records of the last stage that has any."""
    for entry in reversed(history(metrics)):
        layers = [layer for layer in entry.get("layers") or [] if isinstance(layer, dict)]
        if layers:
            return layers
    return []


def _out_channels(layer: dict) -> float | None:
    return number(layer.get("out_channels", layer.get("out_features")))


def _layer_height(count: int) -> float:
    return max(2.4, 0.32 * count + 1.2)


def kept_channels(metrics: dict) -> str | None:
    """Share of each conv/linear layer's baseline output channels that the final model keeps (matched by name).

    Bars are percentages so that wide and narrow layers read alike; each is labelled 'kept/baseline'. Baseline
    layers the final model lacks are shown as removed. None for fewer than two stages, or when the layer lists are
    missing or share no layer names (then they describe different graphs, not pruning).
    """
    entries = history(metrics)
    if len(entries) < 2:
        return None
    base_layers = [layer for layer in entries[0].get("layers") or [] if isinstance(layer, dict)]
    base = [(str(layer.get("name")), _out_channels(layer)) for layer in base_layers if _is_weight_layer(layer)]
    base = [(name, c) for name, c in base if c]
    final = {str(layer.get("name")): _out_channels(layer) for layer in _final_layers(metrics)}
    if not base or not any(name in final for name, _ in base):
        return None

    kept = [final.get(name) or 0 for name, _ in base]
    labels = [(f"{k:.0f}/{c:.0f}", "#334155") if name in final else ("removed", "#dc2626")
              for k, (name, c) in zip(kept, base)]
    shares = [100 * k / c for k, (_, c) in zip(kept, base)]
    return _layer_bars([name for name, _ in base], shares, labels, PALETTE[0],
                       "output channels kept (% of baseline)", "Kept channels per layer (final vs baseline)")


SPARSE_PERCENT = 1.0  # below this share of zero weights in every layer, the sparsity panel is left out


def _sparsity_rows(metrics: dict) -> list[tuple[str, float]]:
    """(layer, % of exactly-zero weights) of the final stage's conv/linear layers."""
    rows = [(str(layer.get("name")), number(layer.get("params")), number(layer.get("nonzero")))
            for layer in _final_layers(metrics) if _is_weight_layer(layer)]
    return [(name, 100 * (1 - nz / p)) for name, p, nz in rows if p and nz is not None]


def dense_note(metrics: dict) -> str | None:
    """Why the sparsity panel is missing when the layers are known but (almost) free of zeros, e.g. after
    structured pruning only; None otherwise."""
    rows = _sparsity_rows(metrics)
    if not rows or max(share for _, share in rows) >= SPARSE_PERCENT:
        return None
    return (f"No per-layer sparsity panel: no layer of the final model has {SPARSE_PERCENT:g}% or more zero weights. "
            "Channels removed by structured pruning show under Kept channels.")


def layer_sparsity(metrics: dict) -> str | None:
    """Per-layer sparsity (1 - nonzero/params) of the final stage's conv/linear layers; None without layer data or
    when no layer has ``SPARSE_PERCENT`` zeros (``dense_note`` says so)."""
    rows = _sparsity_rows(metrics)
    if not rows or dense_note(metrics):
        return None

    return _layer_bars([name for name, _ in rows], [share for _, share in rows],
                       [(f"{share:.1f}%", None) for _, share in rows], PALETTE[4], "zero weights (%)",
                       "Per-layer sparsity of the final model")


def _layer_bars(names: list[str], shares: list[float], labels: list[tuple[str, str | None]], color: str,
                xlabel: str, title: str) -> str:
    """Horizontal 0-100% bars, one per layer (first layer on top), each annotated with ``(text, colour)``."""

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        ys = range(len(names))
        ax.barh(ys, [100] * len(names), color="#f1f5f9")
        ax.barh(ys, shares, height=0.6, color=color)
        for y, share, (text, text_color) in zip(ys, shares, labels):
            ax.annotate(text, (share, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8,
                        color=text_color)
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)  # first layer on top, no empty margin
        ax.set_xlim(0, 112)
        ax.set_xticks(range(0, 101, 20))
        ax.grid(axis="y", visible=False)
        ax.set(xlabel=xlabel, title=title)

    return _draw(5.6, _layer_height(len(names)), draw)


def make_plots(metrics: dict) -> list[Plot]:
    """All report figures the run has data for, in display order."""
    from edgecompress.report.search_plots import nas_front

    name = headline(metrics)[1].capitalize()
    makers = [
        (f"{name} vs size", "Each point is a stage, numbered in order; arrows follow the pipeline.", accuracy_vs_size),
        (f"{name} vs latency", "Median latency of the exported artifact in its runtime.", accuracy_vs_latency),
        ("Per-stage bars", "Each metric divided by the baseline's; below 1 is smaller, faster or less accurate.",
         stage_bars),
        ("Kept channels", "Output channels (or features) of each conv/linear layer that the final model keeps.",
         kept_channels),
        ("Sparsity", "Share of exactly-zero weights left in each layer of the final model.", layer_sparsity),
        ("Architecture search", "Validation accuracy vs ONNX Runtime latency of every candidate of search.nas; "
         "the line is the Pareto front.", nas_front),
    ]
    plots = [Plot(title, caption, maker(metrics), wide=maker is stage_bars) for title, caption, maker in makers]
    return [plot for plot in plots if plot.png]
