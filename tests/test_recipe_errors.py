"""Bad recipes fail with one clean error (file:line, key path, rule, fix) that lists every problem, before any
run directory is created; the loader bounds hostile YAML; fuzzed recipes either fail cleanly or round-trip."""

from __future__ import annotations

import copy
import time
from importlib import resources

import pytest
import yaml
from clean_errors import Sentinel, expect_clean_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecompress import registry
from edgecompress.errors import EdgeCompressError
from edgecompress.recipe import load_recipe, packaged_recipes, parse_recipe

# A valid, cheap recipe; each bad case below changes one part of it.
VALID = """\
name: ok
model: {zoo: mnist_cnn, kwargs: {width: 0.25}}
data: {dataset: synthetic, input_shape: [1, 8, 8], num_classes: 2, samples: 16}
stages:
  - method: quant.dynamic
targets: {max_accuracy_drop: null}
export: {repeats: 1, warmup: 0}
"""
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{new}: &{new} [{', '.join([f'*{old}'] * 9)}]\n" for old, new in zip("abcdefgh", "bcdefghi"))


def with_stage(stage: str) -> str:
    return VALID.replace("  - method: quant.dynamic\n", stage)


def with_name(name: str) -> str:
    return VALID.replace("name: ok", f"name: {name}")


BAD_RECIPES = {
    # file level: encoding, size, hostile YAML
    "not-utf8": (VALID.encode().replace(b"name: ok", b"name: caf\xe9"), ["recipe.yaml:1", "not utf-8", "save"]),
    "too-large": (VALID + "#" + "x" * 2**20 + "\n", ["larger than 1 mib"]),
    "alias-bomb": (BOMB, ["more than 10,000 values", "alias"]),
    "recursive-alias": (VALID + "extra: &loop [*loop]\n", ["recipe.yaml:8", "*loop refers to a list or mapping"]),
    "deep-nesting": (VALID + "extra: " + "[" * 100 + "]" * 100 + "\n", ["nested more than 64 levels"]),
    # YAML tags
    "float-tag": (VALID + "seed: !!float abc\n", ["recipe.yaml:8", "invalid !!float value 'abc'"]),
    "empty-float-tag": (VALID + "seed: !!float\n", ["recipe.yaml:8", "invalid !!float value ''"]),
    "int-tag": (with_stage("  - method: finetune\n    epochs: !!int x\n"), ["recipe.yaml:6", "invalid !!int value 'x'"]),
    "bool-tag": (VALID.replace("samples: 16", "samples: !!bool maybe"), ["invalid !!bool value 'maybe'"]),
    "timestamp-tag": (VALID + "seed: !!timestamp never\n", ["seed:", "valid integer"]),
    "python-tag": (VALID.replace("{width: 0.25}", "!!python/object/apply:os.system [echo hi]"),
                   ["recipe.yaml:2", "unsupported yaml tag !!python/object/apply:os.system", "remove the tag"]),
    "binary-tag": (VALID.replace("0.25", "!!binary gA=="), ["unsupported yaml tag !!binary"]),
    # unhashable values where a string is expected
    "format-list": (VALID.replace("repeats: 1", "format: [onnx]"), ["export.format", "'onnx'", "got ['onnx']"]),
    "format-dict": (VALID.replace("repeats: 1", "format: {onnx: 1}"), ["export.format", "got {'onnx': 1}"]),
    # wrong types in every section, all reported together
    "wrong-types": (VALID.replace("{width: 0.25}", "[width, 0.25]").replace("samples: 16", "samples: {n: 16}")
                    .replace("  - method: quant.dynamic\n", "  - method: finetune\n    distill: [4.0, 0.7]\n"
                             "  - method: prune.structured\n    ratio: {value: 0.5}\n"),
                    ["model.kwargs: input should be a valid dictionary", "data.samples: input should be a valid integer",
                     "stages[0].distill", "stages[1].ratio: input should be a valid number"]),
    "all-errors": (VALID.replace("quant.dynamic", "quant.dynamc") + "seed: x\n",
                   ["recipe.yaml:5 stages[0].method", "did you mean 'quant.dynamic'", "recipe.yaml:8 seed"]),
    "artifact-not-last": (with_stage("  - method: quant.dynamic\n  - method: finetune\n"),
                          ["recipe.yaml:5 stages[0]:", "must be the last stage"]),
    # names that become folders
    "stage-name-list": (with_stage("  - method: finetune\n    name: [a]\n"), ["stages[0].name: input should be a valid string"]),
    **{f"recipe-name-{i}": (with_name(name), ["recipe.yaml:1 name:", "not a safe name", "letters, digits"])
       for i, name in enumerate(['""', "/", "..", "a/b", "'a\\b'", '"a\\0b"', "x" * 65, "-x", ".hidden", "a..b"])},
    **{f"stage-name-{i}": (with_stage(f"  - method: quant.dynamic\n    name: {name}\n"),
                           ["recipe.yaml:6 stages[0].name:", "not a safe name", "without '..'"])
       for i, name in enumerate(['""', "../x", "/abs", "..", "'a\\b'", '"a\\0b"'])},
}


def test_valid_base_recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(VALID)
    assert load_recipe(path).name == "ok"


@pytest.mark.parametrize("text, words", BAD_RECIPES.values(), ids=BAD_RECIPES)
def test_bad_recipe_fails_cleanly_before_the_run(tmp_path, monkeypatch, text, words):
    user = Sentinel(tmp_path / "user")
    monkeypatch.chdir(user.root)
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "run"
    expect_clean_error(["run", path, "--out", out, "--no-progress"], words)
    user.assert_untouched()
    assert not out.exists()


def test_alias_bomb_fails_fast(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 400
    start = time.perf_counter()
    with pytest.raises(EdgeCompressError, match="more than 10,000 values"):
        load_recipe(path)
    assert time.perf_counter() - start < 2


# ---- fuzzing ----------------------------------------------------------------------------------------------

TEXTS = {name: (resources.files("edgecompress") / "recipes" / f"{name}.yaml").read_text() for name in packaged_recipes()}
DOCS = {name: yaml.safe_load(text) for name, text in TEXTS.items()}

def _walk(node, path=()):
    """Every (path, list or dict) in ``node``."""
    if isinstance(node, dict | list):
        yield path, node
        for key, value in (node.items() if isinstance(node, dict) else enumerate(node)):
            yield from _walk(value, (*path, key))


KEYS = sorted({key for doc in DOCS.values() for _, node in _walk(doc) if isinstance(node, dict) for key in node})
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(["onnx", "digits", "mnist_cnn", "finetune", "quant.ptq", "../x", "", "1e3", "null"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3), max_leaves=6)
FUZZ = settings(max_examples=250, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _stages_imported():
    """Import every stage package before hypothesis times the first example against its deadline."""
    registry.all_stages()


def _mutate(data: st.DataObject, doc) -> None:
    """Drop a key or item, replace a value with a random one, or insert a random key or item, somewhere in ``doc``."""
    _, node = data.draw(st.sampled_from(list(_walk(doc))))
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    kind = data.draw(st.sampled_from(["drop", "replace", "insert"])) if keys else "insert"
    if kind == "insert" and isinstance(node, dict):
        node[data.draw(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers() | st.booleans())] = data.draw(VALUES)
    elif kind == "insert":
        node.insert(data.draw(st.integers(0, len(node))), data.draw(VALUES))
    elif kind == "drop":
        del node[data.draw(st.sampled_from(keys))]
    else:
        node[data.draw(st.sampled_from(keys))] = data.draw(VALUES)


def _fails_cleanly_or_round_trips(load) -> None:
    try:
        recipe = load()
    except EdgeCompressError:
        return
    text = recipe.to_yaml()
    again = parse_recipe(yaml.safe_load(text))
    assert again.to_yaml() == text and again.fingerprint() == recipe.fingerprint()


@pytest.mark.slow  # 250 examples: ~8 s
@FUZZ
@given(st.data())
def test_fuzzed_recipe_documents(data):
    doc = copy.deepcopy(DOCS[data.draw(st.sampled_from(sorted(DOCS)))])
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(data, doc)
    text = yaml.safe_dump(doc, sort_keys=False)
    _fails_cleanly_or_round_trips(lambda: parse_recipe(yaml.safe_load(text), "fuzz.yaml", text))


YAML_SNIPPETS = [b"!!float ", b"!!int ", b"!!bool ", b"!!timestamp ", b"!!binary ", b"!!set ", b"!!python/object ",
                 b"!tag ", b"&a ", b"*a ", b"<<: ", b"\xff", b"\x00", b"[", b"{", b": ", b"\n  ", b"- ", b"'", b"..",
                 b"null", b"~"]


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "recipe.yaml"


@FUZZ
@given(st.data())
def test_fuzzed_recipe_files(fuzz_file, data):
    raw = TEXTS[data.draw(st.sampled_from(sorted(TEXTS)))].encode()
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, len(raw)))
        end = data.draw(st.integers(start, min(len(raw), start + 12)))
        raw = raw[:start] + data.draw(st.sampled_from(YAML_SNIPPETS) | st.binary(max_size=6)) + raw[end:]
    fuzz_file.write_bytes(raw)
    _fails_cleanly_or_round_trips(lambda: load_recipe(fuzz_file))
