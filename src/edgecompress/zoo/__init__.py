"""Model zoo: architectures the project defines itself (no torchvision/timm), built by name.

>>> from edgecompress import zoo
>>> model = zoo.build("resnet20", (3, 32, 32), num_classes=10)

Every builder takes ``input_shape`` (C, H, W) — or (C, L) for 1-D data where supported — and ``num_classes``,
plus its own keyword options; the classifier is the last ``nn.Linear`` (``classifier``, ``fc``, or ``_fc`` in
the lukemelas EfficientNet layout).
Add an architecture with ``@register_model("name")`` in a module imported below.
"""

from edgecompress.zoo import cnn, dscnn, efficientnet, mobilenet, resnet, searchable, vgg  # noqa: F401  (registers the models)
from edgecompress.zoo.registry import MODELS, build, names, register_model

__all__ = ["MODELS", "build", "names", "register_model"]
