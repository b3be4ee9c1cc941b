"""Frozen video and image encoders behind one interface; see `backbones.registry`.

Names load on first use, so that `backbones.checkpoints` can be imported without torch."""

from importlib import import_module
from typing import Any

_HOMES = {
    "Backbone": "backbones.base",
    "PreprocessSpec": "backbones.base",
    "create_backbone": "backbones.registry",
    "list_backbones": "backbones.registry",
    "register_backbone": "backbones.registry",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'backbones' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
