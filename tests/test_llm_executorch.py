"""A transformer with token inputs through the ExecuTorch runtime (XNNPACK): a tiny random BERT encoder exported
with batch and length dynamic gives PyTorch's last hidden state, padded rows included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("executorch")

from edgecompress.llm.export import _Tokens  # noqa: E402
from edgecompress.runtimes import export  # noqa: E402
from edgecompress.settings import ExportSettings  # noqa: E402


@pytest.mark.slow
def test_encoder_with_token_inputs_runs_in_executorch(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=48)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(96, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # a padded sentence
    art = export(model, {"input_ids": ids[:1], "attention_mask": mask[:1]}, tmp_path, ExportSettings(
        format="executorch"), "encoder")
    assert art.path.suffix == ".pte" and art.details["xnnpack_nodes"] > 0
    run = art.runner(1)
    with torch.no_grad():
        for length in (20, 7):  # another length than the one traced
            batch = {"input_ids": ids[:, :length], "attention_mask": mask[:, :length]}
            ref = _Tokens(model)(**batch).numpy()
            out = run({k: v.numpy() for k, v in batch.items()})
            assert out.shape == ref.shape
            np.testing.assert_allclose(out, ref, atol=1e-4)
