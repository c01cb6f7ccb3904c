"""The built-in stages as data (``catalogue.json``), so that ``edgecompress methods`` answers without importing
torch and the stage packages.

The registry stays the one home of every stage; the JSON file is generated from it (``python -m
edgecompress.catalogue``) and ``tests/test_catalogue.py`` fails while the two disagree.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

FILE = "catalogue.json"


def build() -> dict[str, dict[str, Any]]:
    """The catalogue from the registry (imports every built-in stage): name -> summary, flags, fields, JSON schema."""
    from edgecompress.registry import BUILTIN_PACKAGES, all_stages

    out = {}
    for stage in all_stages():
        if not stage.fn.__module__.startswith(BUILTIN_PACKAGES):  # stages registered by tests or user code
            continue
        out[stage.name] = {
            "summary": stage.summary,
            "module": stage.fn.__module__,
            "produces_artifact": stage.produces_artifact,
            "task_kinds": list(stage.task_kinds),
            "devices": list(stage.devices),
            "fields": {name: {"default": _as_yaml(field.get_default(call_default_factory=True)),
                              "description": field.description or ""}
                       for name, field in stage.config.model_fields.items()},
            "schema": stage.config.model_json_schema(),
        }
    return out


def _as_yaml(value: Any) -> str:
    """A default as a recipe would write it (null, true, 0.5, "sgd", [1, 2], {})."""
    if hasattr(value, "model_dump"):  # a nested config
        value = value.model_dump(mode="json")
    return json.dumps(value, default=str)


def load() -> dict[str, dict[str, Any]]:
    """The packaged catalogue (no torch import)."""
    return json.loads((resources.files("edgecompress") / FILE).read_text(encoding="utf-8"))


def render() -> str:
    """The text of ``catalogue.json`` as the registry gives it now."""
    return json.dumps(build(), indent=1) + "\n"


def write() -> Path:
    """Regenerate the packaged ``catalogue.json`` from the registry; returns its path."""
    path = Path(__file__).with_name(FILE)
    path.write_text(render(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write()}")
