"""Stage and target-check tables of a run's metrics (rich for the terminal; the same rows feed the HTML report).

Every value may be missing from ``metrics.json``; a missing or non-numeric value is shown as an em dash.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

DASH = "—"

# (key, header) of each stage column, in display order; the HTML report shows them all.
COLUMNS: list[tuple[str, str]] = [
    ("stage", "Stage"),
    ("precision", "Precision"),
    ("accuracy", "Acc %"),
    ("agreement", "Agree %"),  # unlabeled data: top-1 agreement with the original model
    ("perplexity", "Perplexity"),  # causal-LM data (lower is better)
    ("cosine", "Cosine %"),  # embedding data: cosine to the original model's vectors
    ("f1", "F1 %"),
    ("params", "Params"),
    ("nonzero", "Non-zero"),
    ("macs", "MACs"),
    ("size", "Size"),
    ("p50", "p50 ms"),
    ("p95", "p95 ms"),
    ("throughput", "Samples/s"),
    ("memory", "Mem MiB"),
    ("energy", "Energy mJ"),
    ("seconds", "Time s"),
    ("cpu", "CPU s"),
    ("gflops", "GFLOP spent"),
    ("labels", "Labels used"),
    ("samples", "Unlabeled used"),
    ("size_x", "Size ×"),
    ("macs_x", "MACs ×"),
    ("speedup", "Speed-up × (IQR)"),  # measured, beside the MAC ratio: timed side by side with the baseline
]
# The terminal's columns by default (they fit 80 columns); ``--wide`` shows every column with a terminal header.
COMPACT = ("stage", "accuracy", "agreement", "perplexity", "cosine", "params", "nonzero", "macs", "size", "p50",
           "speedup", "seconds", "size_x")
# Terminal headers wrap onto two lines to keep columns narrow; None leaves the column out (it stays in the HTML).
TERMINAL_HEADERS = {
    "precision": None, "f1": None, "accuracy": "Acc\n%", "agreement": "Agree\n%", "perplexity": "PPL", "cosine": "Cos\n%", "nonzero": "Non-\nzero", "p50": "p50\nms", "p95": "p95\nms",
    "speedup": "Speed\n×",
    "throughput": "Samp.\n/s", "memory": "Mem\nMiB", "energy": "Energy\nmJ", "seconds": "Time\ns",
    "cpu": None, "gflops": None, "labels": None, "samples": None,
    "size_x": "Size\n×", "macs_x": "MACs\n×",
}


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is missing, a bool or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def fmt_sig(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits and no exponent (0.0612 -> '0.0612', 153.2 -> '153')."""
    v = number(value)
    if v is None:
        return DASH
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}"


def fmt_count(value: Any) -> str:
    """A count with a k/M/G suffix (11000000 -> '11.0M')."""
    v = number(value)
    if v is None:
        return DASH
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{suffix}"
    return f"{v:.0f}"


def fmt_bytes(value: Any) -> str:
    """A byte count in B/KiB/MiB/GiB (395000 -> '385.7 KiB')."""
    v = number(value)
    if v is None:
        return DASH
    for scale, unit in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if abs(v) >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{v:.0f} B"


def fmt_percent(fraction: Any) -> str:
    """A fraction in [0, 1] as a percentage with two decimals (0.981 -> '98.10')."""
    v = number(fraction)
    return DASH if v is None else f"{100 * v:.2f}"


def fmt_ratio(baseline: Any, value: Any) -> str:
    """How many times smaller ``value`` is than ``baseline`` ('14.2×'), or a dash."""
    b, v = number(baseline), number(value)
    return DASH if b is None or not v else f"{b / v:.1f}×"


def fmt_value(value: Any) -> str:
    """Any scalar for display: numbers with up to 4 significant digits, None as a dash, the rest as text."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def history(metrics: dict) -> list[dict]:
    """The run's stage entries that are dicts (an absent or malformed history gives an empty list)."""
    entries = metrics.get("history")
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def stage_metrics(entry: dict) -> dict:
    """The ``metrics`` dict of one history entry (empty when missing)."""
    values = entry.get("metrics")
    return values if isinstance(values, dict) else {}


def fmt_speedup(s: Any, short: bool = False) -> str:
    """An interleaved speed-up: '1.46' (short) or '1.46 (1.40–1.52)'; '≈1' / '≈1 (0.95–1.08)' when its
    interquartile range crosses 1.0 (no measurable difference); the dash when missing."""
    if not isinstance(s, dict) or number(s.get("median")) is None:
        return DASH
    head = f"{s['median']:.2f}" if s.get("measurable") else "≈1"
    return head if short else f"{head} ({s['q1']:.2f}–{s['q3']:.2f})"


def stage_rows(metrics: dict, short: bool = False) -> list[dict[str, str]]:
    """One dict of formatted cells per history entry, keyed by the keys of ``COLUMNS`` (``short``: the speed-up
    without its spread, for the terminal).

    Ratios compare each stage with the baseline (the first entry): 'Size ×' = baseline size / stage size.
    """
    entries = history(metrics)
    base = stage_metrics(entries[0]) if entries else {}
    rows = []
    for entry in entries:
        m = stage_metrics(entry)
        cost = entry.get("report") if isinstance(entry.get("report"), dict) else {}
        rows.append({
            "stage": str(entry.get("name", DASH)),
            "precision": fmt_value(m.get("precision")),
            "accuracy": fmt_percent(m.get("accuracy")),
            "agreement": fmt_percent(m.get("agreement_top1")),
            "perplexity": fmt_sig(m.get("perplexity"), 4),
            "cosine": fmt_percent(m.get("embedding_cosine")),
            "f1": fmt_percent(m.get("f1_macro")),
            "params": fmt_count(m.get("params")),
            "nonzero": fmt_count(m.get("nonzero_params")),
            "macs": fmt_count(m.get("macs")),
            "size": fmt_bytes(m.get("size_bytes")),
            "p50": fmt_sig(m.get("latency_p50_ms")),
            "p95": fmt_sig(m.get("latency_p95_ms")),
            "speedup": fmt_speedup(m.get("speedup"), short),
            "throughput": DASH if number(m.get("throughput_sps")) is None else f"{m['throughput_sps']:,.0f}",
            "memory": fmt_sig(m.get("peak_memory_mb")),
            "energy": fmt_sig(m.get("energy_mj")),
            "seconds": fmt_sig(m.get("stage_seconds")),
            "cpu": fmt_sig(cost.get("cpu_seconds")),
            "gflops": fmt_sig(None if number(cost.get("flops_forward")) is None else sum(
                number(cost.get(k)) or 0 for k in ("flops_forward", "flops_backward", "flops_solve")) / 1e9),
            "labels": fmt_count(cost.get("labels_used")),
            "samples": fmt_count(cost.get("unlabeled_samples")),
            "size_x": fmt_ratio(base.get("size_bytes"), m.get("size_bytes")),
            "macs_x": fmt_ratio(base.get("macs"), m.get("macs")),
        })
    return rows


def visible(columns: list[tuple[str, str]], rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    """``columns`` less the task metrics a run does not have (a run has accuracy and F1, or agreement)."""
    return [(key, header) for key, header in columns
            if not (key in ("accuracy", "agreement", "perplexity", "cosine", "f1") and rows and all(row[key] == DASH for row in rows))]


def stage_table(metrics: dict, wide: bool = False) -> Table:
    """A rich table with one row per stage of the run: the ``COMPACT`` columns (80 terminal columns; Non-zero only
    when some stage has zeroed weights), or with ``wide`` every column that has a terminal header (~120)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold",
                  title="Stages", title_justify="left")
    rows = stage_rows(metrics, short=True)
    columns = [(key, TERMINAL_HEADERS.get(key, header)) for key, header in COLUMNS
               if TERMINAL_HEADERS.get(key, header) and (wide or key in COMPACT)]
    if not wide and all(row["nonzero"] == row["params"] for row in rows):
        columns = [(key, header) for key, header in columns if key != "nonzero"]
    columns = visible(columns, rows)
    for key, header in columns:
        if key == "stage":
            table.add_column(header, style="cyan", max_width=24, overflow="fold")
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[key] for key, _ in columns))
    return table


def check_rows(metrics: dict) -> list[dict[str, Any]]:
    """The run's target checks as display dicts: target (readable), wanted, got, passed (bool or None)."""
    checks = metrics.get("checks")
    rows = []
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict):
            passed = check.get("passed")
            rows.append({
                "key": str(check.get("target", "")),
                "target": str(check.get("target", DASH)).replace("_", " "),
                "wanted": fmt_value(check.get("wanted")),
                "got": fmt_value(check.get("got")),
                "passed": passed if isinstance(passed, bool) else None,
                "note": str(check["note"]) if check.get("note") else None,
            })
    return rows


def checks_table(metrics: dict) -> Table:
    """A rich table of the run's target checks, passes in green and failures in red."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold", title="Targets",
                  title_justify="left")
    table.add_column("Target")
    table.add_column("Wanted", justify="right")
    table.add_column("Got", justify="right")
    table.add_column("Result")
    notes = []
    for row in check_rows(metrics):
        result = {True: "[green]PASS[/]", False: "[bold red]FAIL[/]"}.get(row["passed"], DASH)
        if row["note"]:
            result = "[bold yellow]not judged[/]"
            notes.append(f"{row['target']}: {escape(row['note'])}")
        table.add_row(row["target"], row["wanted"], row["got"], result)
    if not table.row_count:
        table.caption = "no targets set"
    elif notes:
        table.caption, table.caption_justify = "\n".join(notes), "left"
    return table
