"""Frozen video and image encoders behind one interface; see `backbones.registry`."""

from backbones.base import Backbone, PreprocessSpec
from backbones.registry import create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "PreprocessSpec", "create_backbone", "list_backbones", "register_backbone"]
