"""``edgecompress check MODEL --target T``: load the model (or ONNX file, or a run's final artifact), judge it
against the target and print what it cannot run, the per-layer memory and the fit."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgecompress.errors import EdgeCompressError
from edgecompress.target.check import TargetCheck, check_module, check_onnx, kib
from edgecompress.target.profiles import load_target


def _onnx_file(arg: str) -> Path | None:
    """The ONNX file ``arg`` names: the file itself, or the final artifact of a run directory (None: a model)."""
    path = Path(arg)
    if path.suffix == ".pte":
        raise EdgeCompressError("check reads ONNX graphs and PyTorch models, not ExecuTorch programs", where=arg,
                                fix="check the model it was exported from, or its ONNX export")
    if path.suffix == ".onnx":
        if not path.is_file():
            raise EdgeCompressError("ONNX file not found", where=arg, fix="check the path")
        return path
    if path.is_dir() and (path / "metrics.json").is_file():
        found = sorted((path / "artifacts").glob("*.onnx"))
        if not found:
            raise EdgeCompressError("the run has no final ONNX artifact (not finished, or exported to another format)",
                                    where=arg, fix="check the .onnx file of a finished ONNX run, or the model itself")
        return found[0]
    return None


def run_check(arg: str, target: str, input_shape: tuple[int, ...], classes: int, arch: str | None,
              trust_pickle: bool) -> TargetCheck:
    """Judge the model ``arg`` names against ``target`` (a built-in name or a profile file)."""
    profile = load_target(target)
    path = _onnx_file(arg)
    if path is not None:
        import onnx

        try:
            graph = onnx.load(str(path))
        except Exception as err:  # noqa: BLE001 - protobuf raises several types on a damaged file
            raise EdgeCompressError(f"not a readable ONNX model ({type(err).__name__})", where=str(path),
                                    fix="export the model again") from None
        return check_onnx(graph, profile)
    import torch

    from edgecompress.inspection import is_transformer, load_for_inspect

    model, shape = load_for_inspect(arg, input_shape, classes, arch, trust_pickle)
    if is_transformer(model):
        raise EdgeCompressError("check judges tensor-input models; this is a transformer (token inputs)", where=arg,
                                fix="export it to ONNX and check the .onnx file")
    return check_module(model.eval(), torch.zeros(1, *shape), profile)


def print_check(out: Console, name: str, result: TargetCheck, layers: bool) -> None:
    p, m = result.profile, result.memory
    out.print(f"[bold]{escape(name)}[/] on target [bold]{p.name}[/]: {escape(p.description)}", highlight=False)
    if layers:
        table = Table(title="per-layer memory (activations live while each layer runs)")
        for col, justify in (("layer", "left"), ("op", "left"), ("precision", "left"), ("weights KiB", "right"),
                             ("output KiB", "right"), ("live KiB", "right"), ("runs", "left")):
            table.add_column(col, justify=justify, no_wrap=justify == "right")
        for n in m.nodes:
            ok = p.runs(n.op) and n.precision in p.dtypes
            live = f"{n.live_bytes / 1024:,.1f}"
            table.add_row(escape(n.module or n.name), n.op, n.precision, f"{n.weight_bytes / 1024:,.1f}",
                          f"{n.output_bytes / 1024:,.1f}", f"[bold]{live}[/]" if n.live_bytes == m.peak_bytes else live,
                          "[green]yes[/]" if ok else "[bold red]no[/]")
        out.print(table)
    for label, got, limit in (("weights (flash)", m.weight_bytes, p.flash), ("peak activations (SRAM)", m.peak_bytes,
                                                                             p.sram)):
        verdict = "" if limit is None else "  [green]fits[/]" if got <= limit else "  [bold red]over[/]"
        out.print(f"{label}: {kib(got)} of {kib(limit)}{verdict}", highlight=False)
    for issue in result.unsupported:
        out.print(f"[bold red]cannot run[/] {escape(issue.what)}: {escape(issue.why)}\n  nodes: "
                  f"{escape(', '.join(issue.nodes[:8]))}{' ...' if len(issue.nodes) > 8 else ''}\n  fix: "
                  f"{escape(issue.fix)}", highlight=False)
    for issue in result.misaligned:
        out.print(f"[yellow]slower[/] {escape(issue.what)}: {escape(', '.join(issue.nodes))}; {escape(issue.why)}\n"
                  f"  fix: {escape(issue.fix)}", highlight=False)
    for over in result.overflows:
        out.print(f"[bold red]does not fit[/]: {over}", highlight=False)
    out.print("[bold green]fits the target[/]" if result.fits else f"[bold red]does not fit {p.name}[/]")
