"""Who may import whom: every module under src/edgecompress is parsed with ``ast`` (imports inside functions and
``TYPE_CHECKING`` blocks count too), so a forbidden import fails here before anyone trips over a cycle.

- the technique packages (prune, quant, recover) do not import each other: what two of them share lives in
  ``edgecompress.nn`` (or in a top-level module such as ``calibration`` or ``train``);
- ``nn`` imports no technique package;
- measure/, runtimes/ and export/ import nothing of the pipeline's runtime objects (pipeline, recipe, registry,
  context, baseline, data) and no stage (the technique packages).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "edgecompress"
TECHNIQUES = ("prune", "quant", "recover", "factorize", "dynamic")
RUNTIME = ("pipeline", "recipe", "registry", "context", "baseline", "data")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every edgecompress module ``path`` imports (``from edgecompress import zoo`` counts as edgecompress.zoo)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "edgecompress" or name.startswith("edgecompress.")}


MODULES = {_module_name(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _top(module: str) -> str:
    """The first package level below edgecompress: ``edgecompress.quant.weights.gptq`` -> ``quant``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violations(owners: tuple[str, ...], forbidden) -> list[str]:
    return sorted({f"{module} imports edgecompress.{_top(name)}" for module, names in MODULES.items()
                   if _top(module) in owners for name in names if forbidden(_top(module), _top(name))})


def test_modules_were_found():
    assert {"edgecompress.nn.bn", "edgecompress.prune.shifter", "edgecompress.quant.ptq"} <= set(MODULES)


def test_technique_packages_do_not_import_each_other():
    assert _violations(TECHNIQUES, lambda own, other: other in TECHNIQUES and other != own) == []


def test_nn_imports_no_technique_package():
    assert _violations(("nn",), lambda _own, other: other in TECHNIQUES) == []


def test_measure_runtimes_and_export_import_neither_the_pipeline_runtime_nor_stages():
    forbidden = (*RUNTIME, *TECHNIQUES)
    assert _violations(("measure", "runtimes", "export"), lambda _own, other: other in forbidden) == []
