"""The embedded default measures something: the real run (generated motion task, tiny random-weight
OneVision, stored features, attentive probe) beats chance by a wide margin, and the same probe trained
on shuffled labels stays at chance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backbones import create_backbone
from probe.run.main import compose_config, head_config, run
from probe.store.features import FeatureBatch, FeatureStore
from probe.training.train import Recipe, train_probe_grid

# The default task and probe options, trimmed to one learning rate, one training view and half the
# tokens per clip (4 frames instead of 8) so that the test takes about a minute.
OVERRIDES = [
    "sampling=uniform",
    "sampling.frames_equiv=4",
    "probe.recipe.epochs=25",
    "probe.recipe.lrs=[1e-3]",
    "probe.recipe.wds=[0.0]",
    "probe.recipe.bootstrap=200",
    "extract.train_views=1",
    "num_workers=0",
    "progress=false",
]


class ShuffledLabels:
    """A feature store whose labels are permuted (seeded): all a probe can learn from it is noise."""

    def __init__(self, store: FeatureStore, seed: int) -> None:
        self.store = store
        self.labels = np.random.default_rng(seed).permutation(store.labels)
        self.fingerprint = f"{store.fingerprint}-shuffled-{seed}"
        self.num_clips, self.num_views = store.num_clips, store.num_views
        self.num_tokens, self.embed_dim = store.num_tokens, store.embed_dim

    def batch(self, clips: np.ndarray, views: np.ndarray) -> FeatureBatch:
        batch = self.store.batch(clips, views)
        return dataclasses.replace(batch, labels=torch.from_numpy(self.labels[np.asarray(clips)]))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("learnable")
    config = compose_config([*OVERRIDES, f"results_dir={tmp / 'results'}", f"cache_dir={tmp / 'cache'}"])
    return config, run(config)


def test_the_default_benchmark_beats_chance_widely(default_run: tuple[dict, dict]) -> None:
    _, record = default_run
    chance = 100 / record["data"]["num_classes"]
    test = record["metrics"]["test"]
    assert record["backbone"]["random_weights"]
    assert test["num_clips"] == 160
    # The lower end of the bootstrap interval, not the point estimate, clears three times chance.
    assert test["top1_low"] > 3 * chance, test


def test_shuffled_labels_stay_at_chance(default_run: tuple[dict, dict]) -> None:
    config, record = default_run
    train = FeatureStore(record["data"]["train_features"])
    test = FeatureStore(record["data"]["eval_features"])
    backbone = create_backbone(config["backbone"]["name"], **config["backbone"]["args"])
    recipe = Recipe(**{**config["probe"]["recipe"], "seed": config["seed"]})
    result = train_probe_grid(
        ShuffledLabels(train, seed=1),
        test,
        record["data"]["num_classes"],
        head_config(config, backbone, train),
        recipe,
        progress=False,
    )
    chance = 100 / record["data"]["num_classes"]
    assert result.test.top1_low < chance < result.test.top1_high or result.test.top1 < 2 * chance, result.test
    assert result.test.top1 < record["metrics"]["test"]["top1_low"]


def test_the_default_probe_is_the_one_the_task_asks_for(default_run: tuple[dict, dict]) -> None:
    config, _ = default_run
    head = config["probe"]["head"]
    assert (head["norm"], head["positions"]) == ("batch", "rope")
