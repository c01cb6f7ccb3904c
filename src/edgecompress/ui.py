"""Terminal output shared by the CLI and long-running stages: a stderr console, progress bars, and counted nouns."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

console = Console(stderr=True)


class _StatusColumn(ProgressColumn):
    """Shows the optional ``status`` field of a task (e.g. the running loss)."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get("status", "")))


@contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """A rich progress display (disabled: a silent one with the same API).

    Usage: ``with progress(ctx.progress) as p: t = p.add_task("finetune", total=n); p.update(t, advance=1, status="loss 0.12")``.
    """
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        _StatusColumn(), TimeElapsedColumn(),
        console=console, disable=not enabled, transient=False,
    )
    with bar:
        yield bar


def plural(count: int, noun: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
