"""Rewrites of a layer into several cheaper ones: ``factorize.lowrank`` (SVD / Tucker-2 of Linear and Conv2d) and
``hw.separable`` (depthwise + pointwise pairs). Importing this package registers them."""

from edgecompress.factorize import lowrank, separable  # noqa: F401
