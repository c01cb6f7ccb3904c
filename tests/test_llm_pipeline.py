"""Language-model recipes through the pipeline: ``model: {hf: DIR}`` with text data, prune.llm and prune.composite,
the ONNX artifact (token inputs) measured in ONNX Runtime, checkpoints that reload the shrunk model, resume, and
the up-front refusals. The models are tiny random Llama/BERT models saved here with a byte-level tokenizer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from edgecompress import compress, registry  # noqa: E402
from edgecompress.checkpoint import load_model, save_model  # noqa: E402
from edgecompress.errors import EdgeCompressError  # noqa: E402
from edgecompress.recipe import parse_recipe  # noqa: E402

SEQ = 32


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: every UTF-8 byte is one token (vocabulary 256)."""
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def save_tiny(path: Path, kind: str = "llama", tokenizer: bool = True) -> Path:
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                          max_position_embeddings=64, tie_word_embeddings=True)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.BertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=64)
        model = transformers.BertModel(config)
    model.save_pretrained(path)
    if tokenizer:
        byte_tokenizer().save_pretrained(path)
    return path


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` and a hash of its bytes (to show a run left the user's directory alone)."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def lm_recipe(model_dir: Path, stages: list[dict] | None = None, **data) -> dict:
    return {
        "name": "tiny-lm", "seed": 1, "model": {"hf": str(model_dir)},
        "data": {"dataset": "text", "seq_len": SEQ, "max_sequences": 24, **data},
        "stages": stages if stages is not None else [
            {"method": "prune.llm", "sparsity": 0.5, "allocation": "mosaic", "samples": 8, "batch_size": 4},
            {"method": "prune.composite", "mlp": 0.25, "attention": 0.5, "samples": 8, "batch_size": 4}],
        "targets": {"max_accuracy_drop": None, "max_perplexity_increase_pct": 50.0},
        "export": {"warmup": 1, "repeats": 3},
    }


# ---- the recipe's model section -------------------------------------------------------------------------


def test_hf_model_source_is_validated_with_the_recipe(tmp_path):
    with pytest.raises(EdgeCompressError, match="give exactly one of"):
        parse_recipe({"model": {"hf": str(tmp_path), "zoo": "mnist_cnn"}, "data": {"dataset": "text"}})
    with pytest.raises(EdgeCompressError, match="need an architecture from `zoo` or `callable`"):
        parse_recipe({"model": {"hf": str(tmp_path), "weights": "w.safetensors"}, "data": {"dataset": "text"}})
    with pytest.raises(EdgeCompressError, match="hf is empty"):
        parse_recipe({"model": {"hf": " "}, "data": {"dataset": "text"}})


def test_text_data_takes_the_hf_models_tokenizer_unless_it_names_one(tmp_path):
    recipe = parse_recipe({"model": {"hf": "smollm2-135m"}, "data": {"dataset": "text"}})
    assert recipe.data.tokenizer == "smollm2-135m"
    again = parse_recipe(json.loads(json.dumps(recipe._resolved())))
    assert again.fingerprint() == recipe.fingerprint()
    assert parse_recipe({"model": {"hf": "smollm2-135m"},
                         "data": {"dataset": "text", "tokenizer": "byte"}}).data.tokenizer == "byte"


def test_missing_tokenizer_is_named_and_nothing_is_written(tmp_path):
    user = save_tiny(tmp_path / "mine", tokenizer=False)
    before = snapshot(user)
    with pytest.raises(EdgeCompressError, match="no tokenizer") as err:
        compress(recipe=parse_recipe(lm_recipe(user)), out=tmp_path / "run", progress=False)
    assert "tokenizer.save_pretrained" in err.value.fix
    assert not (tmp_path / "run").exists()
    assert snapshot(user) == before


def test_missing_model_directory_and_config_are_named(tmp_path):
    with pytest.raises(EdgeCompressError, match="no such directory"):
        compress(recipe=parse_recipe(lm_recipe(tmp_path / "absent")), out=tmp_path / "run", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeCompressError, match="no config.json"):
        compress(recipe=parse_recipe(lm_recipe(tmp_path / "empty")), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cnn_stage_in_a_language_model_recipe_is_refused_before_any_work(tmp_path):
    user = save_tiny(tmp_path / "mine")
    recipe = lm_recipe(user, [{"method": "prune.llm", "samples": 8}, {"method": "prune.structured", "ratio": 0.5}])
    with pytest.raises(EdgeCompressError, match="'prune.structured' does not work on causal_lm tasks") as err:
        compress(recipe=parse_recipe(recipe), out=tmp_path / "run", progress=False)
    assert err.value.where.startswith("stages[1]")
    assert "classification, unlabeled" in err.value.fix
    assert not (tmp_path / "run").exists()


def test_hf_model_on_image_data_is_refused_before_loading_it(tmp_path):
    user = save_tiny(tmp_path / "mine")
    recipe = {**lm_recipe(user, []), "data": {"dataset": "digits"}, "targets": {}}
    with pytest.raises(EdgeCompressError, match="takes token ids, but data 'digits' is classification") as err:
        compress(recipe=parse_recipe(recipe), out=tmp_path / "run", progress=False)
    assert "dataset: text" in err.value.fix and not (tmp_path / "run").exists()


def test_token_models_export_to_onnx_only_and_perplexity_target_needs_perplexity(tmp_path):
    user = save_tiny(tmp_path / "mine")
    recipe = {**lm_recipe(user, []), "export": {"format": "executorch"}}
    with pytest.raises(EdgeCompressError, match="exported to ONNX only"):
        compress(recipe=parse_recipe(recipe), out=tmp_path / "run", progress=False)
    recipe = {**lm_recipe(user, [], task="embedding"), "targets": {"max_perplexity_increase_pct": 10}}
    with pytest.raises(EdgeCompressError, match="max_perplexity_increase_pct judges perplexity"):
        compress(recipe=parse_recipe(recipe), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_only_language_model_stages_declare_token_tasks():
    token = {s.name for s in registry.all_stages() if set(s.task_kinds) & set(registry.TOKEN_TASK_KINDS)}
    assert {"prune.llm", "prune.composite"} <= token
    assert registry.ALL_TASK_KINDS == ("classification", "unlabeled")
    assert registry.get("prune.structured").task_kinds == registry.ALL_TASK_KINDS


# ---- checkpoints ----------------------------------------------------------------------------------------


def test_checkpoint_of_a_shrunk_hf_model_reloads_its_new_shape_with_tied_weights(tmp_path):
    from edgecompress.baseline import build_from_arch
    from edgecompress.llm.composite import CompositeConfig, composite
    from edgecompress.llm.models import load_hf

    model, _ = load_hf(save_tiny(tmp_path / "mine"))
    ids = torch.randint(256, (4, SEQ), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    composite(model, [batch], CompositeConfig(mlp=0.25, attention=0.5, samples=4))
    save_model(model, tmp_path / "ckpt")
    back = load_model(tmp_path / "ckpt", build_from_arch)
    assert back.config.intermediate_size == 96 and back.config.num_key_value_heads == 1
    assert back.lm_head.weight is back.model.embed_tokens.weight  # tied, as saved
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, model(**batch).logits)
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in model.parameters())


def test_checkpoint_of_a_transformers_model_built_in_python_records_its_class_and_config(tmp_path):
    from edgecompress.baseline import build_from_arch

    config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=48, max_position_embeddings=32)
    model = transformers.BertModel(config).eval()
    meta = json.loads(save_model(model, tmp_path / "ckpt").read_text())
    assert meta["arch"]["hf"] == "BertModel" and meta["arch"]["config"]["intermediate_size"] == 48
    back = load_model(tmp_path / "ckpt", build_from_arch)
    ids = torch.randint(96, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


# ---- end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_language_model_recipe_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    from edgecompress.llm.export import parity

    user = save_tiny(tmp_path / "mine")
    before = snapshot(user)
    recipe = parse_recipe(lm_recipe(user))
    straight = compress(recipe=recipe, out=tmp_path / "a", progress=False)

    # the ONNX artifact takes ids and mask, batch and length dynamic, and matches PyTorch
    assert straight.artifact.path.suffix == ".onnx" and straight.artifact.path.is_file()
    ids = torch.randint(256, (3, 20), generator=torch.Generator().manual_seed(5))
    assert parity(straight.model, straight.artifact.path, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
                  ) < 1e-3
    doc = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert doc["task"] == {"kind": "causal_lm", "metric": "perplexity"} and doc["model"] == str(user)
    base, final = (h["metrics"] for h in (doc["history"][0], doc["history"][-1]))
    assert base["perplexity"] > 1 and final["perplexity"] > 1 and base["macs"] > final["macs"] > 0
    assert final["params"] < base["params"] and final["nonzero_params"] < final["params"]
    assert final["latency_p50_ms"] > 0 and final["format"] == "onnx"
    assert [c["target"] for c in doc["checks"]] == ["max_perplexity_increase_pct"]
    assert doc["summary"]["metric_change_pct"] == pytest.approx(
        100 * (final["perplexity"] / base["perplexity"] - 1), abs=1e-3)
    assert (tmp_path / "a" / "report.html").is_file()
    assert snapshot(user) == before  # the user's model directory is never written to

    # artifacts/ is also a Hugging Face directory: the shrunk model and the tokenizer reload with transformers
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "artifacts").eval()
    assert reloaded.config.intermediate_size == 96
    with torch.no_grad():
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        torch.testing.assert_close(reloaded(**batch).logits, straight.model(**batch).logits)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "a" / "artifacts")
    assert tok("def f():", add_special_tokens=False)["input_ids"] == byte_tokenizer()("def f():",
                                                                                      add_special_tokens=False)["input_ids"]

    # bench: the run's own artifact fed token ids; a bare file needs the sequence length, its vocabulary is found
    from typer.testing import CliRunner

    from edgecompress.cli import app

    wide = {"COLUMNS": "200"}
    res = CliRunner().invoke(app, ["bench", str(tmp_path / "a"), "--repeats", "2", "--warmup", "0"], env=wide)
    assert res.exit_code == 0 and "the run's artifact" in res.output and "re-export" not in res.output, res.output
    assert "PPL" in res.output and f"{final['perplexity']:.2f}" in res.output
    onnx_file = str(tmp_path / "a" / "artifacts" / "model.onnx")
    res = CliRunner().invoke(app, ["bench", onnx_file, "--repeats", "2"], env=wide)
    assert res.exit_code == 2 and "--input-shape 128" in res.output
    res = CliRunner().invoke(app, ["bench", onnx_file, "--repeats", "2", "--input-shape", "16"], env=wide)
    assert res.exit_code == 0 and "latency_p50_ms" in res.output, res.output

    # a crash in prune.composite, then --resume: the shrunk model and its numbers equal the uninterrupted run's
    stage = registry.get("prune.composite")

    def crash(model, config, ctx):
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(registry._STAGES, "prune.composite", dataclasses.replace(stage, fn=crash))
    with pytest.raises(RuntimeError, match="simulated crash"):
        compress(recipe=recipe, out=tmp_path / "b", progress=False, report=False)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["completed"] == 1
    monkeypatch.setitem(registry._STAGES, "prune.composite", stage)
    resumed = compress(recipe=recipe, out=tmp_path / "b", resume=True, progress=False, report=False)
    assert resumed.model.config.intermediate_size == straight.model.config.intermediate_size == 96
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history[-1]["metrics"]["perplexity"] == pytest.approx(final["perplexity"], rel=1e-6)
    assert resumed.summary["params_reduction"] == straight.summary["params_reduction"]


@pytest.mark.slow
def test_embedding_recipe_runs_end_to_end(tmp_path):
    user = save_tiny(tmp_path / "enc", kind="bert")
    recipe = lm_recipe(user, [{"method": "prune.llm", "criterion": "wanda", "sparsity": 0.5, "samples": 8,
                               "batch_size": 4}], task="embedding")
    recipe["targets"] = {"max_accuracy_drop": 50.0}
    result = compress(recipe=parse_recipe(recipe), out=tmp_path / "run", progress=False)
    base, final = (h["metrics"] for h in (result.history[0], result.history[-1]))
    assert base["embedding_cosine"] == pytest.approx(1.0, abs=1e-4)  # the ONNX baseline against PyTorch's vectors
    assert 0 < final["embedding_cosine"] < 1 and "retrieval_top1" in final
    assert result.summary["accuracy_drop_points"] == pytest.approx(
        100 * (base["embedding_cosine"] - final["embedding_cosine"]), abs=1e-3)
    assert result.checks[0]["target"] == "max_accuracy_drop"


def test_dynamic_int8_of_a_language_model_runs_in_onnx_runtime(tmp_path):
    import onnx

    user = save_tiny(tmp_path / "lm")
    recipe = lm_recipe(user, [{"method": "quant.dynamic"}])
    result = compress(recipe=parse_recipe(recipe), out=tmp_path / "run", progress=False)
    base, final = (h["metrics"] for h in (result.history[0], result.history[-1]))
    assert final["precision"] == "int8" and result.artifact.path.name == "model_int8.onnx"
    ops = [n.op_type for n in onnx.load(str(result.artifact.path)).graph.node]
    assert ops.count("MatMulInteger") >= 7 * 2  # q, k, v, o, gate, up, down in both layers
    assert final["size_bytes"] < 0.5 * base["size_bytes"]
    assert abs(final["perplexity"] / base["perplexity"] - 1) < 0.05  # random tiny model: int8 noise is small


def test_report_shows_perplexity_and_its_change():
    from edgecompress.report.html import _cards
    from edgecompress.report.plots import headline
    from edgecompress.report.table import COLUMNS, stage_rows, visible

    metrics = {"task": {"kind": "causal_lm", "metric": "perplexity"},
               "history": [{"name": "baseline", "metrics": {"perplexity": 20.0}},
                           {"name": "prune.llm", "metrics": {"perplexity": 25.0}}],
               "summary": {"metric": "perplexity", "metric_change_pct": 25.0, "accuracy_drop_points": None},
               "checks": [{"target": "max_perplexity_increase_pct", "wanted": 30.0, "got": 25.0, "passed": True}]}
    rows = stage_rows(metrics)
    assert [r["perplexity"] for r in rows] == ["20.00", "25.00"]
    shown = [key for key, _ in visible(COLUMNS, rows)]
    assert "perplexity" in shown and "accuracy" not in shown and "cosine" not in shown
    card = next(c for c in _cards(metrics) if c["label"] == "Perplexity change")
    assert card["value"] == "+25.0" and card["unit"] == "%" and len(card["checks"]) == 1
    assert headline(metrics) == ("perplexity", "perplexity")


# ---- inspect ------------------------------------------------------------------------------------------------


def test_inspect_lists_a_transformers_projections_and_what_composite_removes(tmp_path):
    from typer.testing import CliRunner

    from edgecompress.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(save_tiny(tmp_path / "dec"))], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "LlamaForCausalLM (llama decoder)" in res.output and "model.layers.N.mlp.gate_proj" in res.output
    assert "MLP neurons: 128 per layer" in res.output
    assert "key-value groups: 2 per layer, each 2 query head(s) + 1 key/value head of 16" in res.output
    res = runner.invoke(app, ["inspect", str(save_tiny(tmp_path / "enc", kind="bert"))], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "encoder.layer.N.intermediate.dense" in res.output and "attention heads: not removable" in res.output
    no_tok = save_tiny(tmp_path / "bare", tokenizer=False)
    res = runner.invoke(app, ["inspect", str(no_tok)], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "no tokenizer" in res.output


def test_packaged_language_model_recipes_validate():
    from edgecompress.recipe import load_recipe

    mosaic = load_recipe("smollm2-mosaic")
    assert [s.method for s in mosaic.stages] == ["prune.llm", "prune.composite", "quant.weight"]
    assert mosaic.model.hf == "smollm2-135m" and mosaic.data.tokenizer == "smollm2-135m"
    assert mosaic.stages[0].config.allocation == "mosaic" and mosaic.stages[0].config.criterion == "sparsegpt"
    minilm = load_recipe("minilm-wanda")
    assert minilm.data.task == "embedding" and minilm.stages[0].config.criterion == "wanda"
