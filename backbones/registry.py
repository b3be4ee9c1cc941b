"""Backbone registry in the spirit of timm's: a decorator, one `create_backbone`, wildcard listing."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from backbones.base import Backbone

_REGISTRY: dict[str, Callable[..., Backbone]] = {}


class UnknownBackboneError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_backbone(fn: Callable[..., Backbone] | None = None, *, name: str | None = None):
    """Register a factory under its function name (or `name`); usable as `@register_backbone`."""

    def wrap(f: Callable[..., Backbone]) -> Callable[..., Backbone]:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"backbone {key!r} is registered twice")
        _REGISTRY[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard, sorted."""
    _import_families()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_backbone(name: str, **overrides: Any) -> Backbone:
    """Build a registered backbone; keyword overrides go to its factory."""
    _import_families()
    if name not in _REGISTRY:
        raise UnknownBackboneError(f"unknown backbone {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**overrides)


def _import_families() -> None:
    """Import the family modules so their `@register_backbone` lines run."""
    import backbones.aimv2  # noqa: F401
    import backbones.clip  # noqa: F401
    import backbones.dinov2  # noqa: F401
    import backbones.dinov3  # noqa: F401
    import backbones.onevision  # noqa: F401
    import backbones.open_clip_vit  # noqa: F401
    import backbones.qwen3_vit  # noqa: F401
    import backbones.siglip2  # noqa: F401
    import backbones.timm_vit  # noqa: F401
    import backbones.vjepa2  # noqa: F401
