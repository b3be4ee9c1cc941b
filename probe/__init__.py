"""Attentive probes over frozen video-encoder tokens: head, feature store, grid training, evaluation.

The public names below are imported on first use, so that `ovprobe` can check a command line without
importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "ArrayFeatures": "probe.store.features",
    "FeatureBatch": "probe.store.features",
    "FeatureStore": "probe.store.features",
    "Features": "probe.store.features",
    "extract_features": "probe.store.features",
    "Metrics": "probe.training.evaluate",
    "classification_metrics": "probe.training.evaluate",
    "predict": "probe.training.evaluate",
    "AttentiveProbe": "probe.training.head",
    "GridResult": "probe.training.train",
    "HeadConfig": "probe.training.train",
    "Recipe": "probe.training.train",
    "train_probe_grid": "probe.training.train",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
