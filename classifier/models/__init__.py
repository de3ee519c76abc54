"""Backbones: the scratch CNN and any timm architecture, built by name."""

from classifier.models.factory import check_model_name, create_model, pretrained_input
from classifier.models.scratch_cnn import ScratchCNN
from classifier.models.weights import head_keys, load_local_weights

__all__ = [
    "ScratchCNN",
    "check_model_name",
    "create_model",
    "head_keys",
    "load_local_weights",
    "pretrained_input",
]
