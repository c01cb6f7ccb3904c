"""``catalogue.json`` (what `edgecompress methods` shows without importing torch) agrees with the registry."""

from __future__ import annotations

import json
from importlib import resources

from edgecompress import catalogue

REGENERATE = "regenerate it: python -m edgecompress.catalogue"


def test_catalogue_matches_the_registry():
    built = json.loads(catalogue.render())
    packaged = catalogue.load()
    assert sorted(packaged) == sorted(built), f"stages differ; {REGENERATE}"
    for name in built:
        assert packaged[name] == built[name], f"{name} differs; {REGENERATE}"
    text = (resources.files("edgecompress") / catalogue.FILE).read_text(encoding="utf-8")
    assert text == catalogue.render(), f"field order or layout differs; {REGENERATE}"


def test_catalogue_leaves_out_stages_registered_elsewhere(monkeypatch):
    from edgecompress import registry

    registry.all_stages()
    monkeypatch.setattr(registry, "_STAGES", {s.name: s for s in registry.all_stages()})  # the extra stage goes with the test
    registry.register("test.catalogue_extra", registry.StageConfig)(lambda model, config, ctx: model)
    assert "test.catalogue_extra" in {s.name for s in registry.all_stages()}
    assert "test.catalogue_extra" not in catalogue.build()



def test_defaults_are_shown_as_a_recipe_writes_them():
    fields = catalogue.load()["finetune"]["fields"]
    assert fields["distill"]["default"] == "null" and fields["keep_zeros"]["default"] == "true"
    assert fields["optimizer"]["default"] == '"sgd"'
    shown = {f["default"] for stage in catalogue.load().values() for f in stage["fields"].values()}
    assert not shown & {"None", "True", "False"}
