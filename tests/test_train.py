"""Grid training, honest selection, resume after a kill, and the evaluation metrics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from probe.store.features import ArrayFeatures
from probe.training.evaluate import (
    aggregate_views,
    bootstrap_interval,
    classification_metrics,
    per_view_top1,
    predict,
)
from probe.training.train import EpochStats, HeadConfig, Recipe, split_train_val, train_probe_grid

FRAMES, PER_FRAME, DIM = 4, 2, 32


def temporal_order_features(
    num_clips: int, views: int, seed: int, shuffle_labels: bool = False
) -> ArrayFeatures:
    """Class k = a marker pattern sits in frame k; every frame is otherwise noise of the same law.

    Token order within a clip is shuffled, so only the positions' frame index reveals the class:
    a probe without a temporal embedding cannot beat chance.
    """
    rng = np.random.default_rng(seed)
    marker = np.random.default_rng(1234).normal(size=DIM) * 3.0
    labels = rng.integers(FRAMES, size=num_clips)
    n = FRAMES * PER_FRAME
    grid = np.stack(
        [np.repeat(np.arange(FRAMES), PER_FRAME), np.zeros(n, int), np.tile(np.arange(PER_FRAME), FRAMES)], -1
    )
    tokens = rng.normal(size=(num_clips, views, n, DIM)).astype(np.float32)
    positions = np.empty((num_clips, views, n, 3), dtype=np.int32)
    for c in range(num_clips):
        for v in range(views):
            tokens[c, v, grid[:, 0] == labels[c]] += marker
            perm = rng.permutation(n)
            tokens[c, v], positions[c, v] = tokens[c, v, perm], grid[perm]
    if shuffle_labels:
        labels = rng.permutation(labels)
    return ArrayFeatures(tokens, positions, labels)


TIMED = HeadConfig(temporal_pos="learned", temporal_slots=FRAMES)
FAST = Recipe(lrs=(3e-3, 1e-2), wds=(0.0, 0.05), epochs=20, batch_size=16, val_fraction=0.2, bootstrap=200)


@pytest.fixture(scope="module")
def test_split() -> ArrayFeatures:
    return temporal_order_features(160, views=2, seed=2)


def test_grid_learns_temporal_order_and_selects_honestly(test_split: ArrayFeatures) -> None:
    train = temporal_order_features(480, views=2, seed=1)
    result = train_probe_grid(train, test_split, FRAMES, TIMED, FAST, progress=False)

    assert [p.name for p in result.probes] == [
        "lr=0.003_wd=0",
        "lr=0.003_wd=0.05",
        "lr=0.01_wd=0",
        "lr=0.01_wd=0.05",
    ]
    assert all(len(c) == FAST.epochs for c in result.curves.values())
    assert result.num_val == 96 and result.num_train == 384 and result.num_test == 160
    assert result.test.top1 > 85.0  # chance is 25
    # Selection used validation only: the selected (probe, epoch) has the best val top-1 of the grid ...
    chosen = result.curves[result.selected.probe][result.selected.epoch - 1]
    assert chosen.val_top1 == max(s.val_top1 for c in result.curves.values() for s in c)
    # ... and its one-off test evaluation reproduces the tracked number of that state.
    assert result.test.top1 == pytest.approx(chosen.test_top1)
    assert result.best_test_over_grid.top1 >= result.test.top1
    assert result.test.top1_low <= result.test.top1 <= result.test.top1_high
    assert len(result.test_per_view_top1) == 2
    # lr decays linearly to 1e-7 at the last step, per probe
    assert result.curves["lr=0.003_wd=0"][-1].lr == pytest.approx(1e-7, rel=1e-3)
    assert result.curves["lr=0.003_wd=0"][0].lr == pytest.approx(
        3e-3 * (1 - (1 - 1e-7 / 3e-3) / FAST.epochs), rel=1e-6
    )


def test_shuffled_labels_and_missing_temporal_signal_stay_near_chance(test_split: ArrayFeatures) -> None:
    one = replace(FAST, lrs=(1e-2,), wds=(0.0,))  # the grid's usual winner, trained as long
    shuffled = temporal_order_features(480, views=2, seed=1, shuffle_labels=True)
    assert train_probe_grid(shuffled, test_split, FRAMES, TIMED, one, progress=False).test.top1 < 40.0

    # True labels, but a probe that cannot see frame indices: the token set alone carries no class.
    train = temporal_order_features(480, views=2, seed=1)
    blind = replace(TIMED, temporal_pos="none")
    assert train_probe_grid(train, test_split, FRAMES, blind, one, progress=False).test.top1 < 40.0


@pytest.mark.parametrize("head", [TIMED, HeadConfig(temporal_pos="sinusoidal")], ids=["loop", "stacked"])
def test_resume_after_kill_matches_uninterrupted(
    tmp_path: Path, test_split: ArrayFeatures, head: HeadConfig
) -> None:
    train = temporal_order_features(200, views=2, seed=3)
    recipe = replace(FAST, lrs=(1e-2,), wds=(0.0, 0.05), epochs=3)
    whole = train_probe_grid(
        train, test_split, FRAMES, head, recipe, checkpoint=tmp_path / "a.pt", progress=False
    )

    class Killed(Exception):
        pass

    def kill_after_first(epoch: int, stats: dict[str, EpochStats]) -> None:
        if epoch == 1:
            raise Killed

    ckpt = tmp_path / "b.pt"
    with pytest.raises(Killed):
        train_probe_grid(
            train, test_split, FRAMES, head, recipe, checkpoint=ckpt, on_epoch_end=kill_after_first
        )
    assert ckpt.is_file() and not ckpt.with_name("b.pt.tmp").exists()
    seen: list[int] = []
    resumed = train_probe_grid(
        train, test_split, FRAMES, head, recipe, checkpoint=ckpt, on_epoch_end=lambda e, s: seen.append(e)
    )
    assert seen == [2, 3]  # epoch 1 was not trained again
    strip = ("train_seconds",)
    assert {k: v for k, v in resumed.to_dict().items() if k not in strip} == {
        k: v for k, v in whole.to_dict().items() if k not in strip
    }
    torch.testing.assert_close(resumed.test_view_logits, whole.test_view_logits, rtol=0, atol=0)

    with pytest.raises(RuntimeError, match="delete it to start over"):
        train_probe_grid(
            train, test_split, FRAMES, head, replace(recipe, seed=1), checkpoint=ckpt, progress=False
        )


def test_split_is_seeded_and_stratified() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 30])
    train, val = split_train_val(labels, 0.1, seed=0)
    assert np.bincount(labels[val]).tolist() == [1, 2, 3]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(60))
    assert np.array_equal(val, split_train_val(labels, 0.1, seed=0)[1])
    assert not np.array_equal(val, split_train_val(labels, 0.1, seed=5)[1])


# --- metrics on hand-made logits ---------------------------------------------------------------


def test_topk_and_mean_class_accuracy() -> None:
    # 6 classes; one view per clip. Ranks of the true class: 1, 1, 1, 2, 6.
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],  # label 0, top-1
            [9.0, 1, 2, 3, 4, 5],  # label 0, top-1
            [9.0, 1, 2, 3, 4, 5],  # label 0, top-1
            [0.0, 5, 1, 2, 3, 4],  # label 5: second -> top-5 hit
            [0.0, 5, 1, 2, 3, 4],  # label 0: last of six -> top-5 miss
        ]
    )[:, None]
    labels = torch.tensor([0, 0, 0, 5, 0])
    m = classification_metrics(logits, labels, resamples=100)
    assert m.top1 == pytest.approx(60.0)
    assert m.top5 == pytest.approx(80.0)
    # class 0: 3 of 4 right, class 5: 0 of 1 -> (75 + 0) / 2
    assert m.mean_class == pytest.approx(37.5)
    assert m.num_clips == 5


def test_view_averaging_in_logit_and_probability_space() -> None:
    # One confident view for class 1 against two mild views for class 0.
    view_logits = torch.tensor([[[0.0, 10.0], [3.0, 0.0], [3.0, 0.0]]])
    assert aggregate_views(view_logits, "logit").argmax().item() == 1  # mean logits [2, 3.33]
    assert aggregate_views(view_logits, "prob").argmax().item() == 0  # mean probs [0.635, 0.365]
    expected = torch.softmax(view_logits, -1).mean(1).log()
    torch.testing.assert_close(aggregate_views(view_logits, "prob"), expected)
    labels = torch.tensor([0])
    assert classification_metrics(view_logits, labels, "logit").top1 == 0.0
    assert classification_metrics(view_logits, labels, "prob").top1 == 100.0
    assert per_view_top1(view_logits, labels) == [0.0, 100.0, 100.0]
    with pytest.raises(ValueError, match="unknown"):
        aggregate_views(view_logits, "median")


def test_bootstrap_interval_width_and_seed() -> None:
    correct = np.arange(400) % 2 == 0  # 50 % of 400
    low, high = bootstrap_interval(correct, resamples=1000, seed=0)
    half_width = 1.96 * 100 * np.sqrt(0.25 / 400)  # normal approximation, ~4.9 points
    assert low < 50.0 < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert bootstrap_interval(correct, seed=0) == (low, high)
    assert bootstrap_interval(np.ones(50, bool)) == (100.0, 100.0)


def test_predict_shares_batches_and_keeps_view_order() -> None:
    class MeanOfFirstTwoChannels(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, tokens, positions, mask):
            return self.scale * (tokens * mask[..., None]).sum(1)[:, :2] / mask.sum(1, keepdim=True)

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(5, 3, 4, 2)).astype(np.float32)
    lengths = rng.integers(1, 5, size=(5, 3))
    features = ArrayFeatures(tokens, np.zeros((5, 3, 4, 3), np.int32), np.zeros(5), lengths=lengths)
    clips = np.array([4, 0, 2])
    out = predict([MeanOfFirstTwoChannels(1.0), MeanOfFirstTwoChannels(2.0)], features, clips, batch_size=4)
    assert out.shape == (2, 3, 3, 2)
    for i, c in enumerate(clips):
        for v in range(3):
            expected = tokens[c, v, : lengths[c, v]].mean(0)
            np.testing.assert_allclose(out[0, i, v].numpy(), expected, rtol=1e-5)
            np.testing.assert_allclose(out[1, i, v].numpy(), 2 * expected, rtol=1e-5)
