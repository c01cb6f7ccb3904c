"""``edgecompress tune``: the command line of ``search.tune`` (torch and Optuna load only when it runs)."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from edgecompress.errors import EdgeCompressError


def tune(
    recipe: Path = typer.Argument(..., help="recipe YAML with a `search:` section (or a packaged recipe's name)"),
    max_drop: float = typer.Option(..., "--max-drop", help="largest accepted accuracy drop on the validation "
                                                           "split, in points (the test split is reported)"),
    objective: str = typer.Option("size", "--objective", help="what to minimize: size, latency or macs"),
    time_budget: float | None = typer.Option(None, "--time-budget", help="seconds this worker may search (once the "
                                                                               "baseline is loaded)"),
    trials: int = typer.Option(20, "--trials", help="stop once the study has this many finished trials "
                                                    "(0: create or show the study and exit)"),
    storage: str | None = typer.Option(None, "--storage", help="study URL shared by workers, e.g. postgresql://"
                                                               "user@host/db (default: SQLite in --out)"),
    study: str | None = typer.Option(None, "--study", help="study name (default: the recipe's name)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="tune folder (default: runs/<recipe>-tune; "
                                                              "the same folder resumes)"),
    heartbeat: float = typer.Option(10, "--heartbeat", help="seconds between worker heartbeats; a worker silent "
                                                            "for 3 of them has its trial failed and retried"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow loading pickled full models (runs code)"),
) -> None:
    """Search the stage settings of the recipe's `search:` section for the smallest (or fastest) artifact within
    --max-drop, each candidate measured in its runtime. The Pareto set (pareto.json), the best trial (tune.json)
    and a `best` link to its artifacts are rewritten after every trial. Several workers share a study through
    --storage; create it first with --trials 0."""
    from edgecompress.cli import _fail, out_console
    from edgecompress.recipe import load_recipe
    from edgecompress.search.tune import TuneSettings, tune as run_tune, tune_dir

    try:
        parsed = load_recipe(recipe)
        settings = TuneSettings(max_drop=max_drop, objective=objective, trials=trials, time_budget_s=time_budget,
                                storage=storage, study=study, heartbeat_s=heartbeat)
        doc = run_tune(parsed, out or tune_dir(parsed), settings, trust_pickle=trust_pickle)
    except (EdgeCompressError, ValidationError) as err:
        _fail(err)
    out_console.print(_pareto_table(out or tune_dir(parsed), doc))
    out_console.print(_verdict(doc), highlight=False)


def _pareto_table(out: Path, doc: dict) -> Table:
    import json

    metric = doc["metric"]
    table = Table(title=f"study {doc['study']}: Pareto set ({metric} vs accuracy drop on the validation split)")
    for col in ("trial", metric, "val drop", "within limit", "test drop", "settings"):
        table.add_column(col, justify="left" if col == "settings" else "right")
    for r in json.loads((out / "pareto.json").read_text()):
        table.add_row(str(r["trial"]), figure(r[metric]), f"{r['val_drop_points']:.2f}",
                      "yes" if r["val_drop_points"] <= doc["max_drop"] else "no", f"{r['test_drop_points']:.2f}",
                      escape(settings_line(r["params"])))
    return table


def figure(value: float) -> str:
    """Bytes and MACs in full (``29,142``), milliseconds to 4 significant digits."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"


def settings_line(params: dict) -> str:
    """A trial's settings on one line (``prune.structured.ratio=0.3``: floats to 3 significant digits)."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _verdict(doc: dict) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(doc["trials"].items())) or "no trials"
    best = doc["best"]
    if best is None:
        return f"trials: {counts}; no trial has finished yet"
    where = f"; artifact: {doc['best_artifact']}" if doc.get("best_artifact") else ""
    if doc["limit_met"]:
        return (f"trials: {counts}; best: trial {best['trial']}, drop {best['val_drop_points']:.2f} points on the "
                f"validation split (limit {doc['max_drop']:g}), {best['test_drop_points']:.2f} on the test split"
                f"{where}")
    return (f"trials: {counts}; the limit of {doc['max_drop']:g} points was NOT met: the best trial "
            f"({best['trial']}) drops {best['val_drop_points']:.2f} points on the validation split, "
            f"{doc['missed_by_points']:.2f} over the limit ({best['test_drop_points']:.2f} on the test split){where}")
