"""The ``text`` dataset: token sequences for a causal language model or query/passage pairs for an embedding model."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from edgecompress.data.datasets import register_dataset
from edgecompress.data.options import TextData
from edgecompress.errors import EdgeCompressError
from edgecompress.tasks import CausalLMTask, EmbeddingTask, Task
from edgecompress.tasks.text import (BYTE_VOCAB, Tokenizer, byte_tokenizer, python_docs, read_texts, sequences,
                                     split_documents)


def _tokenizer(name: str) -> tuple[Tokenizer, int]:
    """The tokenizer function and vocabulary size for ``TextData.tokenizer``."""
    if name == "byte":
        return byte_tokenizer, BYTE_VOCAB
    from edgecompress.llm.models import load_tokenizer

    tok = load_tokenizer(name)
    # verbose=False: whole documents are tokenized, then cut into seq_len windows, so "longer than the maximum
    # sequence length" does not apply
    return (lambda text: tok(text, add_special_tokens=False, verbose=False)["input_ids"]), len(tok)


def _pairs(documents: list[str], tokenizer: Tokenizer, length: int, limit: int) -> TensorDataset:
    """n queries then their n passages: consecutive windows of ``length`` tokens of the same document."""
    ids, mask = sequences(documents, tokenizer, length, None)
    full = mask.all(1)
    ids, mask = ids[full], mask[full]
    n = min(len(ids) // 2, limit // 2)
    queries, passages = torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)  # windows k and k + 1
    order = torch.cat([queries, passages])
    return TensorDataset(ids[order], mask[order])


@register_dataset("text")
def text(spec: TextData) -> Task:
    """The documents split by document (train / val / test), cut into ``seq_len``-token sequences."""
    documents = read_texts(spec.path) if spec.path else python_docs()
    name = "python-docs" if spec.path is None else f"text:{spec.path[0].name}"
    splits = split_documents(documents)
    if not all(splits.values()):
        raise EdgeCompressError(f"{len(documents)} document(s) are too few to split into train, val and test",
                                where="data.path", fix="give at least five text files, or files with paragraphs")
    tokenizer, vocab = _tokenizer(spec.tokenizer)
    data = {split: TensorDataset(*sequences(docs, tokenizer, spec.seq_len, spec.max_sequences))
            for split, docs in splits.items()}
    if spec.task == "causal_lm":
        return CausalLMTask(name, data["train"], data["val"], data["test"], vocab)
    return EmbeddingTask(name, data["train"], data["val"],
                         _pairs(splits["test"], tokenizer, spec.seq_len, spec.max_sequences), vocab)
