"""edgecompress: compress PyTorch networks for edge devices and prove every gain on a real runtime.

Entry points: :func:`compress` (run a recipe), :func:`apply` (one stage), :func:`load_recipe`,
:func:`load_task`; the ``edgecompress`` command line mirrors them.
"""

__version__ = "0.1.0"

from edgecompress.api import apply, compress  # noqa: E402
from edgecompress.data import DataSpec, data_spec, load_task  # noqa: E402
from edgecompress.tasks import Task  # noqa: E402
from edgecompress.errors import EdgeCompressError  # noqa: E402
from edgecompress.recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["DataSpec", "EdgeCompressError", "data_spec", "Recipe", "Task", "apply", "compress", "load_recipe", "load_task"]
