"""The recipes that ship with the package (``recipes/*.yaml``): names, one-line descriptions and text, read
without importing torch (``edgecompress recipes``)."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

from edgecompress.errors import EdgeCompressError


def _folder() -> Traversable:
    return resources.files("edgecompress") / "recipes"


def names() -> list[str]:
    """The packaged recipes' names, sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in _folder().iterdir() if p.name.endswith(".yaml"))


def text(name: str) -> str:
    """The YAML text of the packaged recipe ``name``."""
    if name not in names():
        raise EdgeCompressError(f"no packaged recipe {name!r}", where="recipes show",
                                fix=f"packaged recipes: {', '.join(names())} (`edgecompress recipes` describes them)")
    return (_folder() / f"{name}.yaml").read_text(encoding="utf-8")


def description(name: str) -> str:
    """The first sentence of the recipe's leading comment block."""
    comment = []
    for line in text(name).splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    return re.split(r"(?<=\.)\s", " ".join(comment), maxsplit=1)[0]
