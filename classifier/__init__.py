"""classifier: image-classification training on Lightning, Hydra, timm and torchmetrics."""

__version__ = "0.1.0"
