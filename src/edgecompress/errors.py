"""User-facing errors: every message says what went wrong, where, and how to fix it."""

from __future__ import annotations


class EdgeCompressError(Exception):
    """An error caused by user input (recipe, model, data, paths), shown without a traceback by the CLI.

    what: what is wrong; where: the file / key path / module it concerns; fix: how to fix it.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text}\n  how to fix: {self.fix}" if self.fix else text
