"""edgecompress: compress PyTorch networks for edge devices and prove every gain on a real runtime."""

__version__ = "0.1.0"
