"""Text for language-model and embedding tasks: a corpus that is on every machine, a byte tokenizer, and
fixed-length token sequences.

The default corpus is the Python documentation shipped in the standard library (``pydoc_data.topics``: 79
topics, about 465k characters of English prose about Python). It is split by topic, so calibration/training
text and held-out evaluation text never share a passage: in sorted topic order, every fifth topic (index 4, 9,
...) is test, the one before it (3, 8, ...) is validation, the rest is training. A user's own text files are
split the same way, file by file when there are five or more, else by paragraph.

The byte tokenizer (UTF-8 bytes, vocabulary 256) needs no files; a model with its own vocabulary passes its
tokenizer (any callable ``str -> list[int]``, e.g. a Hugging Face tokenizer's ``encode``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from edgecompress.tasks.base import Inputs, Task

Tokenizer = Callable[[str], list[int]]
BYTE_VOCAB = 256


def byte_tokenizer(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def python_docs() -> list[str]:
    """The standard library's documentation topics, in sorted topic order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def read_texts(paths: list[Path]) -> list[str]:
    """The user's text files as documents: one per file when there are five or more, else one per paragraph."""
    texts = [Path(p).read_text(encoding="utf-8", errors="replace") for p in paths]
    if len(texts) >= 5:
        return texts
    return [para for text in texts for para in text.split("\n\n") if para.strip()]


def split_documents(documents: list[str]) -> dict[str, list[str]]:
    """Train / val / test by document: index % 5 == 4 is test, == 3 is val, the rest train (never overlapping)."""
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, doc in enumerate(documents):
        splits["test" if i % 5 == 4 else "val" if i % 5 == 3 else "train"].append(doc)
    return splits


def sequences(documents: list[str], tokenizer: Tokenizer, length: int, limit: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[N, length]`` and attention masks from the documents, cut into consecutive non-overlapping
    windows; each document's last, shorter window is right-padded with 0 and masked out."""
    rows, masks = [], []
    for doc in documents:
        ids = tokenizer(doc)
        for start in range(0, len(ids), length):
            window = ids[start:start + length]
            if len(window) < 2:
                continue
            rows.append(window + [0] * (length - len(window)))
            masks.append([1] * len(window) + [0] * (length - len(window)))
            if limit is not None and len(rows) >= limit:
                return torch.tensor(rows), torch.tensor(masks)
    return torch.tensor(rows, dtype=torch.long).reshape(-1, length), torch.tensor(masks, dtype=torch.long).reshape(-1, length)


class TokenTask(Task):
    """A task over token sequences: every split is ``TensorDataset(input_ids [N, L], attention_mask [N, L])`` and
    the model takes them as the keyword inputs ``input_ids`` and ``attention_mask``."""

    def __init__(self, name: str, train: TensorDataset, val: TensorDataset, test: TensorDataset, vocab_size: int):
        super().__init__(name, train, val, test, tuple(train.tensors[0].shape[1:]))
        self.vocab_size = vocab_size

    def inputs(self, batch: tuple[torch.Tensor, ...]) -> Inputs:
        return {"input_ids": batch[0], "attention_mask": batch[1]}

    def example_inputs(self, batch: int = 1) -> Inputs:
        return self.inputs(tuple(t[:batch].clone() for t in self.test.tensors))

    def random_inputs(self, batch: int = 1, seed: int = 0) -> Inputs:
        ids = torch.randint(self.vocab_size, (batch, *self.input_shape), generator=torch.Generator().manual_seed(seed))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def calibration(self, n: int, seed: int = 0, labels: bool = False) -> Inputs:
        """``n`` training sequences as model inputs (ids and mask), drawn reproducibly."""
        return self.inputs(super().calibration(n, seed, labels=True))
