"""The ``edgecompress`` command line: run, methods, inspect, check, bench, report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from pydantic import ValidationError
from rich import box
from rich.markup import escape
from rich.table import Table

from edgecompress.errors import EdgeCompressError
from edgecompress.search.command import tune
from edgecompress.ui import console, plural

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress PyTorch networks for edge devices and prove every gain on a real runtime.")
# stdout, for tables and results; piped output gets a wide fixed width instead of rich's 80 columns
out_console = type(console)(width=None if sys.stdout.isatty() else 150)
WIDE_COLUMNS = 140  # what `--wide` stage tables are laid out in (a narrower terminal wraps their lines)
_WIDE_HELP = "every stage column (needs ~120 terminal columns; the default fits 80)"


def _print_stage_tables(metrics: dict, wide: bool) -> None:
    """The per-stage table and, when the run has targets, the target checks."""
    from edgecompress.report import checks_table, stage_table

    out_console.print(stage_table(metrics, wide), width=max(out_console.width, WIDE_COLUMNS) if wide else None)
    if metrics.get("checks"):
        out_console.print(checks_table(metrics))


def _version(value: bool) -> None:
    if value:
        from edgecompress import __version__

        out_console.print(f"edgecompress {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Compress PyTorch networks for edge devices and prove every gain on a real runtime."""


def _fail(err: EdgeCompressError | ValidationError) -> None:
    if isinstance(err, ValidationError):  # a spec built from command-line arguments
        err = EdgeCompressError("; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors()))
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)  # paths stay whole
    raise typer.Exit(2)


@app.command()
def run(
    recipe: Path | None = typer.Argument(None, help="recipe YAML (default: the packaged `default` recipe)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="run directory (default: runs/<recipe>-<time>)"),
    resume: Path | None = typer.Option(None, "--resume", help="continue the run in this directory"),
    force: bool = typer.Option(False, "--force", help="replace an existing run directory"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow loading pickled full models (runs code)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
    strict: bool = typer.Option(False, "--strict", help="exit with code 1 when a target is missed"),
    device: str | None = typer.Option(None, "--device", help="where compression work runs, instead of the recipe's "
                                                              "device: auto, cpu, cuda or cuda:N"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for the compression work, instead of the "
                                                               "recipe's (default: half the usable CPUs, at least 1)"),
    wide: bool = typer.Option(False, "--wide", help=_WIDE_HELP),
) -> None:
    """Run a compression recipe and print the per-stage table and the report path.

    Under ``torchrun --nproc-per-node N`` the training stages run data-parallel; only rank 0 writes the run."""
    from edgecompress import distributed
    from edgecompress.pipeline import Pipeline
    from edgecompress.recipe import load_recipe

    try:
        if resume is not None:
            out = resume
            chosen = recipe or resume / "recipe.yaml"
        else:
            chosen = recipe or Path("default")
        parsed = load_recipe(chosen)
        if device is not None:
            parsed = parsed.with_device(device)
        if threads is not None:
            parsed = parsed.with_threads(threads)
        out = out or Path("runs") / f"{parsed.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        parsed = parsed.with_device(distributed.start(parsed.device))
        main = distributed.is_main()
        result = Pipeline(parsed, distributed.rank_dir(out, resume is not None), resume=resume is not None,
                          force=force, trust_pickle=trust_pickle, progress=progress and main, report=main).run()
        distributed.discard(result.run_dir)
        distributed.stop()
    except EdgeCompressError as err:
        _fail(err)
    if not main:
        return
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    _print_stage_tables(metrics, wide)
    out_console.print(f"artifact: {result.artifact.path}")
    out_console.print(f"report:   {result.report}")
    if strict and not all(c["passed"] for c in result.checks):
        raise typer.Exit(1)


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List every built-in stage with its summary and config fields (defaults)."""
    from edgecompress.catalogue import load

    stages = load()
    if as_json:
        out_console.print_json(json.dumps({name: s["schema"] for name, s in stages.items()}))
        return
    table = Table(show_lines=True, title="edgecompress stages")
    table.add_column("method", style="bold cyan", no_wrap=True)
    table.add_column("what it does")
    table.add_column("fields (default)")
    for name, s in stages.items():
        fields = [escape(f"{k} = {f['default']}") + (f"  [dim]{escape(f['description'])}[/]" if f["description"] else "")
                  for k, f in s["fields"].items()]
        table.add_row(name, escape(s["summary"]), "\n".join(fields))
    out_console.print(table)


recipes_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                          help="List the packaged recipes; `recipes show NAME` prints one.")
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback()
def recipes(ctx: typer.Context) -> None:
    """List the packaged recipes with a one-line description each (`recipes show NAME` prints one)."""
    if ctx.invoked_subcommand is not None:
        return
    from edgecompress import packaged

    table = Table(title="packaged recipes (edgecompress run NAME)", show_lines=False)
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("what it does")
    for name in packaged.names():
        table.add_row(name, escape(packaged.description(name)))
    out_console.print(table)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="a packaged recipe's name")) -> None:
    """Print a packaged recipe's YAML (copy it to start your own: `edgecompress recipes show default > my.yaml`)."""
    from edgecompress import packaged

    try:
        sys.stdout.write(packaged.text(name))
    except EdgeCompressError as err:
        _fail(err)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="recipe YAML file (or a packaged recipe's name)")) -> None:
    """Check a recipe without running it: every error at once (file, line, key, what is allowed); exit code 2 on
    an invalid recipe."""
    from edgecompress.recipe import load_recipe

    try:
        parsed = load_recipe(recipe)
    except EdgeCompressError as err:
        _fail(err)
    stages = ", ".join(s.name for s in parsed.stages) or "no stages"
    out_console.print(f"{escape(str(recipe))}: a valid recipe ({len(parsed.stages)} stage"
                      f"{'' if len(parsed.stages) == 1 else 's'}: {escape(stages)})", highlight=False)


def _parse_shape(text: str) -> tuple[int, ...]:
    """``--input-shape 1,28,28`` -> (1, 28, 28): one sample's dimensions, each a positive int."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise EdgeCompressError(f"bad input shape {text!r}: it must be comma-separated positive ints",
                                where="--input-shape", fix="give one sample's shape without the batch, e.g. 1,28,28")
    return shape


@app.command()
def inspect(
    model: str = typer.Argument(..., help="zoo name, recipe YAML, package.module:callable, .pt2 archive, or a "
                                          "transformer: smollm2-135m, all-minilm-l6-v2 or a Hugging Face model dir"),
    input_shape: str = typer.Option("3,32,32", "--input-shape", help="per-sample input shape, e.g. 1,28,28"),
    classes: int = typer.Option(10, "--classes", help="number of classes"),
    arch: str | None = typer.Option(None, "--arch", help="zoo name or callable for a weights file"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow loading pickled full models"),
) -> None:
    """Parameters, MACs, a per-layer table, and which layers can be pruned structurally (and why not); for a
    transformer, its projections by role and what prune.composite can remove."""
    from edgecompress.inspection import inspect_model, inspect_transformer, is_transformer, load_for_inspect

    try:
        net, shape = load_for_inspect(model, _parse_shape(input_shape), classes, arch, trust_pickle)
        if is_transformer(net):
            _print_transformer(model, inspect_transformer(net))
            return
        report = inspect_model(net, shape)
    except (EdgeCompressError, ValidationError) as err:
        _fail(err)
    out_console.print(f"[bold]{model}[/]  input {shape}  params {report['params']:,}  MACs {report['macs']:,}")
    table = Table(title="conv / linear layers")
    table.add_column("layer", no_wrap=True)
    table.add_column("type", no_wrap=True)
    for col in ("in", "out", "params", "MACs"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("structurally prunable")
    for row in report["layers"]:
        ok, why = row["prunable"]
        table.add_row(row["name"], row["type"], str(row.get("in_channels", row.get("in_features", ""))),
                      str(row.get("out_channels", row.get("out_features", ""))), f"{row['params']:,}",
                      f"{row['macs']:,}", _prunable_cell(ok, why))
    out_console.print(table)


def _print_transformer(name: str, report: dict) -> None:
    """``inspect`` of a transformer: its projections by role and shape, and what prune.composite can remove."""
    from edgecompress.inspection import layer_ranges

    out_console.print(f"[bold]{name}[/]  {report['class']} ({report['family']} {report['kind']})  "
                      f"params {report['params']:,}  layers {report['layers']} ({report['prefix']})")
    table = Table(title="projections (prune.llm prunes all of them)")
    table.add_column("role", no_wrap=True)
    table.add_column("module", no_wrap=True)
    for col in ("in", "out", "params/layer", "layers"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in report["projections"]:
        table.add_row(row["role"], row["module"], str(row["in_features"]), str(row["out_features"]),
                      f"{row['params_per_layer']:,}", layer_ranges(row["layers"]))
    out_console.print(table)
    units = report["removable"]
    mlp = sorted({u["mlp_neurons"] for u in units})
    lines = [f"MLP neurons: {', '.join(map(str, mlp))} per layer (prune.composite mlp: share removed from every layer)"]
    if report["kind"] == "decoder":
        u = units[0]
        lines.append(f"key-value groups: {', '.join(map(str, sorted({v['kv_groups'] for v in units})))} per layer, "
                     f"each {u['heads_per_group']} query head(s) + 1 key/value head of {u['head_dim']} "
                     "(prune.composite attention: share removed, whole groups)")
    else:
        lines.append("attention heads: not removable (the encoder's config derives its head size from the head count)")
    out_console.print("prune.composite can remove:\n  " + "\n  ".join(lines), highlight=False)


def _prunable_cell(ok: bool, why: str) -> str:
    if not ok:
        return f"[yellow]no[/]: {why}"
    return "[green]yes[/]" + ("" if why == "prunable" else f" ({why.removeprefix('prunable ')})")


@app.command()
def bench(
    artifacts: list[Path] = typer.Argument(..., help="exported model: .onnx (ONNX Runtime), .pte (ExecuTorch) or "
                                                     ".pt2 (torch), several to compare them side by side; or a run "
                                                     "directory: its final model in both runtimes"),
    threads: int = typer.Option(1, "--threads", min=1, help="runtime threads"),
    batch: int = typer.Option(1, "--batch", min=1, help="batch size"),
    repeats: int = typer.Option(100, "--repeats", min=1, help="timed runs"),
    warmup: int = typer.Option(10, "--warmup", min=0, help="untimed runs first"),
    rounds: int = typer.Option(7, "--rounds", min=2, help="interleaved rounds when models are compared"),
    input_shape: str | None = typer.Option(None, "--input-shape", help="per-sample shape if not in the file"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow loading a run's pickled model (runs code)"),
    wide: bool = typer.Option(False, "--wide", help="for a run directory: also p95 latency and ExecuTorch's "
                                                    "delegation (the default fits 80 columns)"),
) -> None:
    """Latency p50/p95, throughput and peak memory of an exported model in its runtime; several models timed side
    by side in interleaved rounds, with each one's speed-up over the first and its spread; for a run directory, its
    final model in ONNX Runtime and ExecuTorch side by side (accuracy, size, latency, speed-up, throughput)."""
    from edgecompress.inspection import artifact_from_file
    from edgecompress.measure import benchmark

    if len(artifacts) == 1 and artifacts[0].is_dir():
        _bench_runtimes(artifacts[0], threads, batch, repeats, warmup, rounds, trust_pickle, wide)
        return
    try:
        shape_given = None if input_shape is None else _parse_shape(input_shape)
    except EdgeCompressError as err:
        _fail(err)
    if len(artifacts) > 1:
        _bench_files(artifacts, shape_given, threads, batch, repeats, warmup, rounds)
        return
    artifact = artifacts[0]
    try:
        art, shape = artifact_from_file(artifact, shape_given)
        res = benchmark(art, shape, threads=threads, batch=batch, warmup=warmup, repeats=repeats,
                        vocab_size=art.details.get("vocab_size"))
    except EdgeCompressError as err:
        _fail(err)
    table = Table(title=f"{artifact.name} in {art.runtime} ({plural(threads, 'thread')}, batch {batch})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("size on disk", f"{art.size_bytes / 1024:,.1f} KiB")
    for key, value in res.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else "—" if value is None else str(value)
        table.add_row(key, shown)
    if res.get("rapl_energy_mj") is None:
        table.caption = "—: RAPL counter not readable"
    out_console.print(table)


def _bench_files(paths: list[Path], shape: tuple[int, ...] | None, threads: int, batch: int, repeats: int,
                 warmup: int, rounds: int) -> None:
    """``bench A B ...``: the models timed side by side in interleaved rounds, each against the first."""
    import statistics

    from edgecompress.inspection import artifact_from_file
    from edgecompress.measure.latency import interleaved, speedup
    from edgecompress.report.table import fmt_speedup

    try:
        loaded = [artifact_from_file(p, shape) for p in paths]
        shapes = {s for _, s in loaded}
        if len(shapes) > 1:
            raise EdgeCompressError(f"the models take different inputs: {', '.join(map(str, sorted(shapes)))}",
                                    where=", ".join(map(str, paths)), fix="compare models of the same input shape")
        arts = [a for a, _ in loaded]
        per_round = interleaved(arts, loaded[0][1], threads=threads, batch=batch, rounds=rounds, repeats=repeats,
                                warmup=warmup, vocab_size=arts[0].details.get("vocab_size"))
    except EdgeCompressError as err:
        _fail(err)
    table = Table(title=f"side by side, {rounds} interleaved rounds ({plural(threads, 'thread')}, batch {batch})",
                  box=box.SIMPLE_HEAD, title_justify="left")
    for header, justify in (("model", "left"), ("runtime", "left"), ("size KiB", "right"), ("median ms", "right"),
                            ("speed-up × (IQR)", "right")):
        table.add_column(header, justify=justify)
    for path, art, ms in zip(paths, arts, per_round):
        table.add_row(escape(path.name), art.runtime, f"{art.size_bytes / 1024:,.1f}", f"{statistics.median(ms):.3f}",
                      fmt_speedup(speedup(per_round[0], ms)))
    table.caption = "speed-up over the first model: median of the per-round ratios; ≈1: no measurable difference"
    out_console.print(table)


def _bench_runtimes(run_dir: Path, threads: int, batch: int, repeats: int, warmup: int, rounds: int,
                    trust_pickle: bool, wide: bool) -> None:
    """``bench RUN_DIR``: one table row per runtime and precision, all measured with the same settings."""
    from edgecompress.runcompare import compare_run
    from edgecompress.settings import ExportSettings

    try:
        settings = ExportSettings(threads=threads, batch=batch, repeats=repeats, warmup=warmup, rounds=rounds)
        rows = compare_run(run_dir, settings, trust_pickle=trust_pickle)
    except EdgeCompressError as err:
        _fail(err)
    title = f"final model of {run_dir} ({plural(threads, 'thread')}, batch {batch})"
    out_console.print(bench_table(rows, title, wide), width=max(out_console.width, WIDE_COLUMNS) if wide else None)


def bench_table(rows: list[dict], title: str, wide: bool = False) -> Table:
    """``bench RUN_DIR``'s rows: the columns that fit 80 terminal columns, or with ``wide`` also p95 latency and
    ExecuTorch's delegation (XNNPACK nodes, operators left to the portable kernels)."""
    from edgecompress.report.table import fmt_speedup

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold",
                  title=title, title_justify="left")
    metric = next((k for k in ("perplexity", "embedding_cosine") if any(k in r for r in rows)), "accuracy")
    header = {"perplexity": "PPL", "embedding_cosine": "cos\n%"}.get(metric, "acc\n%")  # language-model runs
    columns = [("artifact", "left"), ("runtime", "left"), ("precision", "left"), (header, "right"),
               ("size\nKiB", "right"), ("p50\nms", "right"), ("speed\n×", "right"), ("samples\n/s", "right")]
    if wide:
        columns[7:7] = [("p95\nms", "right")]
        columns += [("XNNPACK\nnodes", "right"), ("portable ops", "left")]
    for header, justify in columns:
        table.add_column(header, justify=justify, no_wrap=justify == "right")
    for r in rows:
        value = "-" if metric not in r else f"{r[metric]:.2f}" if metric == "perplexity" else f"{100 * r[metric]:.2f}"
        cells = [r["source"], r["runtime"], r["precision"], value, f"{r['size_bytes'] / 1024:,.1f}",
                 f"{r['latency_p50_ms']:.3f}", fmt_speedup(r.get("speedup"), short=not wide),
                 f"{r['throughput_sps']:,.0f}"]
        if wide:
            cells[7:7] = [f"{r['latency_p95_ms']:.3f}"]
            cells += [str(r.get("xnnpack_nodes", "-")),
                      ", ".join(f"{op} x{n}" for op, n in r.get("portable_ops", {}).items()) or "-"]
        table.add_row(*(escape(c) for c in cells))
    rounds = next((r["speedup"]["rounds"] for r in rows if "speedup" in r), None)
    if rounds:
        table.caption = (f"speed ×: over the first row, the median of {rounds} interleaved rounds"
                         f"{' (interquartile range)' if wide else ''}; ≈1: no measurable difference")
    return table


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory made by `edgecompress run`"),
           wide: bool = typer.Option(False, "--wide", help=_WIDE_HELP)) -> None:
    """Rebuild report.html from a run directory and print its tables."""
    from edgecompress.report import build_report
    from edgecompress.rundir import METRICS, read_json

    try:
        path = build_report(run_dir)
        metrics = read_json(run_dir / METRICS)
    except EdgeCompressError as err:
        _fail(err)
    _print_stage_tables(metrics, wide)
    out_console.print(f"report: {path}")




@app.command()
def check(
    model: str = typer.Argument(..., help="an .onnx file, a run directory (its final artifact), or any model "
                                          "`inspect` takes (zoo name, recipe, package.module:callable, .pt2)"),
    target: str = typer.Option(..., "--target", "-t", help="a built-in target (cpu, npu-int8, mcu) or a target "
                                                           "profile YAML file"),
    input_shape: str = typer.Option("3,32,32", "--input-shape", help="per-sample input shape of a PyTorch model"),
    classes: int = typer.Option(10, "--classes", help="number of classes of a zoo model"),
    arch: str | None = typer.Option(None, "--arch", help="zoo name or callable for a weights file"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow loading pickled full models"),
    layers: bool = typer.Option(True, "--layers/--no-layers", help="print the per-layer memory table"),
) -> None:
    """What the target cannot run and why, and the per-layer memory (weights, live activations) against its flash
    and SRAM; exit code 0 when the model fits the target, 1 when it does not, 2 on bad input."""
    from edgecompress.target.cli import print_check, run_check

    try:
        result = run_check(model, target, _parse_shape(input_shape), classes, arch, trust_pickle)
    except (EdgeCompressError, ValidationError) as err:
        _fail(err)
    print_check(out_console, model, result, layers)
    if not result.fits:
        raise typer.Exit(1)


@app.command()
def portfolio(
    path: Path = typer.Argument(..., help="a run or stage directory holding prune.lottery's level_<i>/ checkpoints"),
    out: Path | None = typer.Option(None, "--out", "-o", help="where the ONNX files go (default: PATH/portfolio)"),
    data: str | None = typer.Option(None, "--data", help="dataset for accuracy (e.g. digits); none: skip accuracy"),
    latency_ms: float | None = typer.Option(None, "--latency-ms", help="latency budget: say which level serves"),
    memory_mb: float | None = typer.Option(None, "--memory-mb", help="peak-memory budget: say which level serves"),
) -> None:
    """Shift every portfolio level to a smaller dense model, export both, and print size/MACs/latency per level."""
    from edgecompress.data import data_spec, load_task
    from edgecompress.portfolio import Portfolio, Server

    try:
        task = load_task(data_spec(dataset=data)) if data else None
        pf = Portfolio.from_dir(path, out, task)
    except EdgeCompressError as err:
        _fail(err)
    table = Table(title=f"portfolio of {path}")
    for col in ("level", "sparsity", "acc sparse", "acc dense", "KiB sparse", "KiB dense", "size x", "MACs dense",
                "ms sparse", "ms dense", "speedup", "max |diff|"):
        table.add_column(col, justify="right")

    def fmt(v: float | None, f: str = "{:.3f}") -> str:
        return "-" if v is None else f.format(v)

    for lv in pf.levels:
        table.add_row(str(lv.level), fmt(lv.sparsity), fmt(lv.accuracy_sparse), fmt(lv.accuracy_dense),
                      fmt(lv.bytes_sparse / 1024, "{:.1f}"), fmt(lv.bytes_dense / 1024, "{:.1f}"),
                      fmt(lv.size_ratio, "{:.2f}x"), f"{lv.macs_dense:,}", fmt(lv.latency_sparse_ms),
                      fmt(lv.latency_dense_ms), fmt(lv.speedup, "{:.2f}x"), fmt(lv.max_abs_diff, "{:.1e}"))
    out_console.print(table)
    if latency_ms is not None or memory_mb is not None:
        out_console.print(Server(pf).select(latency_ms, memory_mb)[1])


app.command()(tune)  # search/command.py: the search code stays in its package


def main() -> None:
    """The console entry point: the CLI, with a last guard so that no raw traceback reaches a user."""
    import os

    try:
        app()
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: a run continues from its last finished stage with --resume DIR")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - a bug, not bad input: say so, and how to see the traceback
        if os.environ.get("EDGECOMPRESS_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] internal error {type(err).__name__}: {escape(str(err))}\n"
                      "  how to fix: this is a bug in edgecompress, not in your input; rerun with "
                      "EDGECOMPRESS_DEBUG=1 to see the traceback, and report it", highlight=False, soft_wrap=True)
        sys.exit(3)
