"""Report figure of an architecture search: every scored candidate's validation accuracy against its latency,
the Pareto front joined and the chosen model marked (from the ``search.nas`` stage's info in metrics.json)."""

from __future__ import annotations

from matplotlib.figure import Figure

from edgecompress.report.plots import PALETTE, _draw
from edgecompress.report.table import history, number


def _search(metrics: dict) -> dict | None:
    for entry in history(metrics):
        info = entry.get("info")
        if isinstance(info, dict) and isinstance(info.get("pareto_front"), list) and info["pareto_front"]:
            return info
    return None


def nas_front(metrics: dict) -> str | None:
    """Accuracy vs latency of the searched candidates with the front; None when the run has no search."""
    info = _search(metrics)
    if info is None:
        return None
    points = [(number(c.get("latency_ms")), number(c.get("val_accuracy"))) for c in info.get("candidates", [])]
    front = sorted((number(m.get("measured_ms")), number(m.get("val_accuracy")), m.get("arch"))
                   for m in info["pareto_front"])

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        ax.scatter([x for x, y in points if x and y], [100 * y for x, y in points if x and y], s=18,
                   color="#94a3b8", label=f"candidates ({info.get('latency_source', 'model')} latency)")
        ax.plot([x for x, _, _ in front], [100 * y for _, y, _ in front], "-o", color=PALETTE[0],
                label="Pareto front (measured latency)")
        chosen = [(x, y) for x, y, arch in front if arch == info.get("chosen")]
        if chosen:
            ax.scatter(*zip(*[(x, 100 * y) for x, y in chosen]), s=90, color=PALETTE[3], zorder=4, label="chosen")
        ref = number((info.get("reference") or {}).get("measured_ms"))
        if ref:
            ax.axvline(ref, color=PALETTE[1], ls="--", lw=1, label="incoming model's latency")
        ax.set(xlabel="latency (ms, batch 1)", ylabel="validation accuracy (%)", title="Architecture search")
        ax.legend(loc="lower right")

    return _draw(5.6, 3.8, draw)
