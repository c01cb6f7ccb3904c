"""A YAML loader for untrusted recipe files: bounded in size, nesting and alias expansion, plain values only.

``load_yaml(text, source)`` returns the document and the line of every key path (for error messages);
``read_text(path)`` reads at most MAX_BYTES of UTF-8. Every refusal is an EdgeCompressError that names the
line and how to fix it. PyYAML's SafeLoader does not bound alias expansion (a 300-byte "billion laughs"
document takes minutes), which is why the loader is subclassed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgecompress.errors import EdgeCompressError

Path_ = tuple[str | int, ...]
MAX_BYTES = 2**20  # a recipe is a few hundred bytes
MAX_NODES = 10_000  # YAML values once aliases are expanded (a recipe has a few dozen)
MAX_DEPTH = 64  # nesting levels of lists and mappings


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_text(path: Path) -> str:
    """The text of the recipe file: at most MAX_BYTES of UTF-8."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as err:
        raise EdgeCompressError(f"cannot read the recipe: {err.strerror or err}", where=str(path),
                                fix="check that the file is readable") from None
    if len(raw) > MAX_BYTES:
        raise EdgeCompressError(f"the recipe is larger than {MAX_BYTES // 2**20} MiB", where=str(path),
                                fix="a recipe is a short YAML file: check that this is the file you meant") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise EdgeCompressError(f"the recipe is not UTF-8 text (byte {raw[err.start]:#04x} on line {line})",
                                where=f"{path}:{line}", fix="save the file as UTF-8") from None




class _RefusedYAML(yaml.MarkedYAMLError):
    """A document the recipe loader refuses, with how to fix it."""

    def __init__(self, problem: str, mark: yaml.Mark, fix: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.fix = fix


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader bounded for untrusted input: MAX_NODES values with aliases expanded, MAX_DEPTH nesting levels,
    no recursive aliases, and only plain values (no binary, set, ordered-map or custom tags; dates stay text)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nodes = 0  # values so far, an alias counting as every value it stands for
        self._depth = 0
        self._sizes: dict[str, int] = {}  # anchor -> values under it, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # raises for an undefined alias
            if event.anchor not in self._sizes:
                raise _RefusedYAML(f"alias *{event.anchor} refers to a list or mapping that contains it",
                                   event.start_mark, "remove the recursive alias")
            self._count(self._sizes[event.anchor], event.start_mark)
            return node
        if self._depth >= MAX_DEPTH:
            raise _RefusedYAML(f"lists and mappings nested more than {MAX_DEPTH} levels deep", event.start_mark,
                               "flatten the recipe: its sections are a few levels deep")
        start = self._nodes
        self._count(1, event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if event.anchor is not None:
            self._sizes[event.anchor] = self._nodes - start
        return node

    def _count(self, nodes: int, mark: yaml.Mark) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _RefusedYAML(f"more than {MAX_NODES:,} values, counting each alias (*name) as the values it "
                               "repeats; a recipe has a few dozen", mark,
                               "check that this is a recipe; write repeated parts out instead of nesting aliases")

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError):  # PyYAML's scalar constructors
            value = f" {shown(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
            raise _RefusedYAML(f"invalid {_short_tag(node.tag)} value{value}", node.start_mark,
                               "give a value of that type, or remove the tag") from None

    def _unsupported_tag(self, node: yaml.Node) -> Any:
        raise _RefusedYAML(f"unsupported YAML tag {_short_tag(node.tag)}", node.start_mark,
                           "remove the tag: a recipe holds plain text, numbers, booleans, null, lists and mappings")


for _tag in (None, "tag:yaml.org,2002:binary", "tag:yaml.org,2002:set", "tag:yaml.org,2002:omap",
             "tag:yaml.org,2002:pairs"):
    _RecipeLoader.add_constructor(_tag, _RecipeLoader._unsupported_tag)
_RecipeLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def load_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """The document in ``text`` and the line of each key path, read with the bounded loader."""
    try:
        root, data = _parse_yaml(text)
    except yaml.YAMLError as err:
        raise _yaml_error(err, source, text) from None
    return data, _line_map(root)


def _parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _RecipeLoader(text)
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


def _yaml_error(err: yaml.YAMLError, source: str, text: str) -> EdgeCompressError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(err, yaml.reader.ReaderError):
        line = text[:err.position].count("\n") + 1
    else:
        line = None
    problem = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err)
    what = problem if isinstance(err, _RefusedYAML) else f"malformed YAML: {problem}"
    fix = getattr(err, "fix", "fix the YAML syntax at that line (indentation, colons, quotes)")
    return EdgeCompressError(what, where=f"{source}:{line}" if line else source, fix=fix)


def _line_map(root: yaml.Node | None) -> dict[Path_, int]:
    """Key path -> 1-based line, from the YAML node tree (a key's path maps to the key's line)."""
    lines: dict[Path_, int] = {}

    def walk(node: yaml.Node, path: Path_) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    walk(value, (*path, key.value))
                    lines[(*path, key.value)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines
