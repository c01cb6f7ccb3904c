"""Self-contained HTML report of a run directory: inline CSS, plots as data: URIs, nothing fetched from the web."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader

from edgecompress import __version__, atomic
from edgecompress.errors import EdgeCompressError
from edgecompress.report.plots import dense_note, make_plots
from edgecompress.ui import plural
from edgecompress.report.table import (
    COLUMNS,
    DASH,
    check_rows,
    fmt_sig,
    fmt_value,
    history,
    number,
    stage_metrics,
    fmt_count,
    stage_rows,
    visible,
)

# Headline cards: (summary key, label, unit, keyword that ties a target check to the card).
CARDS = [
    ("size_reduction", "Size reduction", "×", "size"),
    ("macs_reduction", "MACs reduction", "×", "macs"),
    ("accuracy_drop_points", "Accuracy drop", "pts", "accuracy"),
    ("latency_speedup", "Latency speed-up", "×", "latency"),
]
LIST_PREVIEW = 24  # lists of scalars in stage details longer than this are cut, with a count of the rest


def load_metrics(run_dir: Path) -> dict:
    """Read ``run_dir/metrics.json``, raising EdgeCompressError when it is missing or not a JSON object."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise EdgeCompressError(
            "no metrics.json in the run directory", where=str(path),
            fix="run `edgecompress run` first (it writes metrics.json), or pass the directory of an existing run",
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeCompressError(
            f"metrics.json is not valid JSON ({err})", where=str(path),
            fix="re-run the pipeline (`edgecompress run`) to rewrite it; the file may be truncated or hand-edited",
        ) from err
    if not isinstance(metrics, dict):
        raise EdgeCompressError(
            f"metrics.json holds a JSON {type(metrics).__name__}, not an object", where=str(path),
            fix="re-run the pipeline (`edgecompress run`) to rewrite it",
        )
    history = metrics.get("history")
    if not isinstance(history, list) or not history or not all(isinstance(h, dict) and "name" in h for h in history):
        raise EdgeCompressError(
            "metrics.json has no stage history (a list of named stages)", where=str(path),
            fix="pass the directory of a run made by `edgecompress run`, or re-run it to rewrite the file",
        )
    return metrics


def _duration(seconds: Any) -> str:
    """Seconds as '42.0 s', '3 min 05 s' or '1 h 02 min'."""
    s = number(seconds)
    if s is None:
        return DASH
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _cards(metrics: dict) -> list[dict[str, Any]]:
    """Headline numbers from the run summary, each with the target checks that concern it."""
    summary = metrics.get("summary") if isinstance(metrics.get("summary"), dict) else {}
    checks = check_rows(metrics)
    cards = []
    for key, label, unit, keyword in CARDS:
        value = number(summary.get(key))
        two_places = unit == "pts" or key == "latency_speedup"
        text = DASH if value is None else (f"{value:.2f}" if two_places else f"{value:.1f}")
        related = [c for c in checks if keyword in c["key"].lower()]
        if key == "accuracy_drop_points" and summary.get("metric") == "agreement_top1":
            label = "Agreement drop"  # unlabeled data: top-1 agreement with the original model
        if key == "accuracy_drop_points" and summary.get("metric") == "embedding_cosine":
            label = "Cosine drop"  # embedding data: cosine to the original model's vectors, in points
        if key == "accuracy_drop_points" and summary.get("metric") == "perplexity":  # lower is better: its rise in %
            value, label, unit = number(summary.get("metric_change_pct")), "Perplexity change", "%"
            text = DASH if value is None else f"{value:+.1f}"
            related = [c for c in checks if "perplexity" in c["key"].lower()]
        notes = _speedup_notes(summary.get("latency_speedup_spread")) if key == "latency_speedup" else []
        cards.append({"label": label, "value": text, "unit": unit if value is not None else "", "checks": related,
                      "notes": notes})
    seconds = [number(stage_metrics(e).get("stage_seconds")) for e in history(metrics)] or [None]
    baseline = [] if seconds[0] is None else [f"baseline, not included: {_duration(seconds[0])}"]
    cards.append({"label": "Compression time", "value": _duration(sum(s or 0 for s in seconds[1:])), "unit": "",
                  "checks": [], "notes": _cost_notes(summary.get("compression_cost")) + baseline})
    return cards


def _speedup_notes(spread: Any) -> list[str]:
    """The spread of an interleaved speed-up, as short lines under its card."""
    if not isinstance(spread, dict) or number(spread.get("q1")) is None:
        return []
    lines = [f"interquartile range {spread['q1']:.2f}–{spread['q3']:.2f} over {spread.get('rounds')} "
             "interleaved rounds"]
    return lines + ([] if spread.get("measurable") else ["no measurable difference: the range includes 1.0"])


def verdict(checks: list[dict[str, Any]]) -> str:
    """'The target was met', 'All 3 targets met', '1 of 3 targets missed', or why they were not judged."""
    if any(c.get("note") for c in checks):
        return "Not judged: the baseline was not trained"
    failed = sum(c["passed"] is False for c in checks)
    if len(checks) == 1:
        return f"The target was {'missed' if failed else 'met'}"
    return f"{failed} of {len(checks)} targets missed" if failed else f"All {len(checks)} targets met"


def _cost_notes(cost: Any) -> list[str]:
    """What compression spent besides time (the stages' reports added up), as short lines."""
    if not isinstance(cost, dict):
        return []
    return [f"{fmt_sig(number(cost.get('cpu_seconds')))} s CPU · {fmt_sig((number(cost.get('flops')) or 0) / 1e9)} "
            "GFLOP", f"{fmt_count(cost.get('labels_used'))} labels · {fmt_count(cost.get('unlabeled_samples'))} "
            "unlabeled samples"]


def _energy_sources(metrics: dict) -> list[str]:
    """The distinct energy sources named by the stages, in order of appearance."""
    sources = [stage_metrics(e).get("energy_source") for e in history(metrics)]
    return list(dict.fromkeys(str(s) for s in sources if s))


def _dict_columns(rows: list) -> list[str]:
    """The union of the keys of a list of dicts, in first-seen order (for rendering it as a table)."""
    return list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row))


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("edgecompress.report", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(value=fmt_value, sig=fmt_sig, dict_columns=_dict_columns)
    env.globals.update(DASH=DASH, LIST_PREVIEW=LIST_PREVIEW, version=__version__)
    return env


def _deployment(metrics: dict) -> dict[str, str]:
    """Format, runtime, threads and batch of the measured artifact: from ``export``, else the last stage's metrics."""
    export = metrics.get("export") if isinstance(metrics.get("export"), dict) else {}
    entries = history(metrics)
    last = stage_metrics(entries[-1]) if entries else {}
    values = {key: export.get(key, last.get(key)) for key in ("format", "runtime", "threads", "batch")}
    return {**{key: fmt_value(v) for key, v in values.items()}, "threads": _threads(values["threads"])}


def _threads(value: Any) -> str:
    """'1 thread', '4 threads' (a dash when missing or not a count)."""
    return plural(value, "thread") if isinstance(value, int) and not isinstance(value, bool) else DASH


def render_report(metrics: dict) -> str:
    """The report for ``metrics`` (the parsed metrics.json) as one HTML string."""
    deploy = _deployment(metrics)
    meta = [("recipe", fmt_value(metrics.get("recipe"))), ("format", deploy["format"]),
            ("runtime", deploy["runtime"]), ("latency measured with", deploy["threads"]), ("batch", deploy["batch"]),
            ("compression used", _threads(metrics.get("threads"))),
            ("seed", fmt_value(metrics.get("seed"))), ("created", fmt_value(metrics.get("created")).replace("T", " "))]
    setup = [f"{deploy['format']} in {deploy['runtime']}", deploy["threads"], f"batch {deploy['batch']}"]
    checks = check_rows(metrics)
    return _environment().get_template("report.html").render(
        m=metrics,
        meta=[(label, value) for label, value in meta if value != DASH],
        setup=", ".join(part for part in setup if DASH not in part),
        cards=_cards(metrics) if isinstance(metrics.get("summary"), dict) else [],
        columns=visible([(key, header) for key, header in COLUMNS if key not in ("stage", "precision")],  # shown
                        stage_rows(metrics)),  # together
        rows=stage_rows(metrics),
        checks=checks,
        all_passed=all(c["passed"] is True for c in checks),
        verdict=verdict(checks),
        plots=make_plots(metrics),
        plot_notes=[note for note in (dense_note(metrics),) if note],
        stages=history(metrics),
        energy_sources=_energy_sources(metrics),
        runtime_choice=metrics.get("runtime_choice") if isinstance(metrics.get("runtime_choice"), dict) else None,
    )


def build_report(run_dir: Path) -> Path:
    """Render ``run_dir/metrics.json`` into ``run_dir/report.html`` (written atomically) and return its path."""
    run_dir = Path(run_dir)
    html = render_report(load_metrics(run_dir))
    target = run_dir / "report.html"
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".report.", suffix=".html.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        atomic.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
