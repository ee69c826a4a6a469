"""Model assembly: ``build_read_model``, ``ReadModel``, ``save_pretrained`` / ``from_pretrained``."""

from read.model.builder import build_from_base, build_read_model, from_pretrained, save_pretrained
from read.model.read_model import ReadModel, ReadOutput

__all__ = ["ReadModel", "ReadOutput", "build_read_model", "build_from_base", "from_pretrained", "save_pretrained"]
