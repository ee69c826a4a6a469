"""Model assembly: ``load_model`` (saved models and published checkpoints), ``build_read_model``, ``ReadModel``,
``save_pretrained`` / ``from_pretrained``."""

from read.model.builder import build_from_base, build_read_model, from_pretrained, save_pretrained
from read.model.loader import ModelLoadError, load_model
from read.model.read_model import ReadModel, ReadOutput

__all__ = [
    "ReadModel", "ReadOutput", "ModelLoadError", "load_model", "build_read_model", "build_from_base",
    "from_pretrained", "save_pretrained",
]  # fmt: skip
