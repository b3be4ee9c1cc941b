"""Attentive probes over frozen video-encoder tokens: head, feature store, grid training, evaluation."""

from probe.store.features import ArrayFeatures, FeatureBatch, Features, FeatureStore, extract_features
from probe.training.evaluate import Metrics, classification_metrics, predict
from probe.training.head import AttentiveProbe
from probe.training.train import GridResult, HeadConfig, Recipe, train_probe_grid

__all__ = [
    "ArrayFeatures",
    "AttentiveProbe",
    "FeatureBatch",
    "FeatureStore",
    "Features",
    "GridResult",
    "HeadConfig",
    "Metrics",
    "Recipe",
    "classification_metrics",
    "extract_features",
    "predict",
    "train_probe_grid",
]
