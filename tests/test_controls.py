"""The controls for codec selection: random and pixel-difference patches at the codec sampler's budget,
on generated clips with a known moving object."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_codec import GRID, PATCH, SIZE, on_path_fraction, write_clip

from probe.run.main import ViewSampler
from tasks.clip import Clip
from tasks.sampling.samplers import create_sampler
from tasks.sampling.selection import pixel_change

BUDGET = 2 * GRID * GRID  # a whole first frame + 256 patches chosen by each sampler


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Clip:
    return Clip("square", write_clip(tmp_path_factory.mktemp("controls") / "square.avi"), label=1)


def sampler(name: str, **options):
    common = dict(num_frames=64, size=SIZE, patch_size=PATCH, budget=BUDGET)
    return create_sampler(name, **{**common, **options})


def kept(view) -> set[tuple[int, int, int]]:
    return set(map(tuple, view.positions.tolist()))


def test_random_selections_are_reproducible_per_seed_and_differ_across_views(clip):
    draws = ViewSampler(sampler("random"), train=True, views=2, seed=0)
    first, second = draws(clip), draws(clip)
    assert [kept(v) for v in first] == [kept(v) for v in second]
    assert kept(first[0]) != kept(first[1])  # training views
    assert kept(ViewSampler(sampler("random"), train=True, views=1, seed=1)(clip)[0]) != kept(first[0])
    # test views (no rng given): seeded by the sampler's seed, view and clip
    crops = sampler("random", num_crops=2)(clip)
    assert [kept(v) for v in crops] == [kept(v) for v in sampler("random", num_crops=2)(clip)]
    assert kept(crops[0]) != kept(crops[1])
    assert kept(sampler("random", seed=1)(clip)[0]) != kept(crops[0])
    other = Clip("other", clip.path, label=1)  # the same video under another id draws other patches
    assert kept(sampler("random")(other)[0]) != kept(crops[0])
    # uniform over the run: beyond the whole first frame, every other frame gets a share
    t = crops[0].positions[:, 0].numpy()
    counts = np.bincount(t[t > 0], minlength=64)[1:]
    assert (counts > 0).sum() >= 55 and counts.max() <= 15


def test_pixel_difference_selections_lie_on_the_moving_objects_path(clip):
    pd_sampler = sampler("pixel_diff")
    chosen = pd_sampler.select(clip, None, None, [0.5])
    (selection,) = chosen.selections
    assert selection.forced_slots == (0,) and selection.budget == BUDGET
    assert on_path_fraction(selection, chosen.run.frame_indices) >= 0.9
    assert on_path_fraction(sampler("random").select(clip, None, None, [0.5]).selections[0],
                            chosen.run.frame_indices) < 0.3  # the control does not find it by chance


def test_pixel_change_scores_the_patches_that_changed():
    frames = np.zeros((3, 28, 28, 3), np.uint8)
    frames[1, :14, 14:] = 90  # patch (0, 1) changes in frame 1, then back in frame 2
    change = pixel_change(frames, 14)
    assert change.shape == (3, 2, 2) and not change[0].any()
    np.testing.assert_array_equal(change[1], [[0, 90], [0, 0]])
    np.testing.assert_array_equal(change[2], change[1])
    with pytest.raises(ValueError, match="do not split into 14-pixel patches"):
        pixel_change(frames[:, :20], 14)


@pytest.mark.parametrize("native_sparse", [True, False], ids=["packed", "per_frame"])
def test_all_budget_samplers_give_the_same_token_counts_and_layouts(clip, native_sparse, tmp_path):
    options = dict(native_sparse=native_sparse, temporal_slots=64 if native_sparse else None)
    views = {name: sampler(name, cache_dir=str(tmp_path), **options)(clip)[0]
             for name in ("codec", "random", "pixel_diff")}
    shapes = {name: (v.layout, tuple(v.frames.shape), tuple(v.positions.shape), v.positions.dtype)
              for name, v in views.items()}
    assert len(set(shapes.values())) == 1, shapes
    layout, frames_shape, positions_shape, _ = shapes["codec"]
    assert layout == ("packed" if native_sparse else "sparse") and positions_shape == (BUDGET, 3)
    frames = BUDGET // (GRID * GRID) if native_sparse else 64
    assert frames_shape == (frames, SIZE, SIZE, 3)
    first = {(0, h, w) for h in range(GRID) for w in range(GRID)}
    for view in views.values():  # each keeps the first frame whole and picks the rest its own way
        assert first <= kept(view)
        assert view.source_frames[0] == 0
        assert len(view.source_frames) == len(set(view.positions[:, 0].tolist()))
    assert kept(views["codec"]) != kept(views["random"]) != kept(views["pixel_diff"])
    if not native_sparse:  # the same frames of the run, whichever sampler decoded them
        used = [set(v.positions[:, 0].tolist()) for v in views.values()]
        assert len(set.intersection(*used)) > 1
        for t in set.intersection(*used):
            assert torch.equal(views["random"].frames[t], views["pixel_diff"].frames[t])
            # an uncached codec run keeps the frames of its PyAV pass; the reader's decoder may round a
            # few pixels of some mpeg4 frames differently
            torch.testing.assert_close(views["codec"].frames[t], views["random"].frames[t], atol=2, rtol=0)


def test_budget_samplers_refuse_clips_too_short_for_the_budget(tmp_path):
    from tasks.decode.video import VideoDecodeError

    short = Clip("short", write_clip(Path(tmp_path) / "short.avi", n_frames=1), label=0)
    for name in ("random", "pixel_diff"):
        with pytest.raises(VideoDecodeError, match="fewer patches than the budget of 512"):
            sampler(name)(short)


def test_report_writes_the_codec_minus_random_column(tmp_path):
    """Real runs (uniform, codec and random at one budget on a small generated task), then the report:
    the budgets table carries codec minus random with its paired bootstrap interval, from the records."""
    import json

    from test_run import small

    from probe.report import main as report
    from probe.run.main import run
    from probe.training.evaluate import paired_bootstrap, read_outcomes

    records = {s: run(small(tmp_path, f"sampling={s}", "probe.recipe.epochs=1")) for s in
               ("uniform", "codec", "random")}
    outcomes = {s: read_outcomes(r["test_clips"]) for s, r in records.items()}
    for sampling, record in records.items():
        assert record["test_clips"]["count"] == record["metrics"]["num_test"] == 16
        assert 100 * outcomes[sampling].mean() == pytest.approx(record["metrics"]["test"]["top1"])
    change = outcomes["codec"].astype(float) - outcomes["random"]
    low, high = paired_bootstrap(change)
    out = tmp_path / "report"
    printed = report.write_report([tmp_path / "results"], out, [], draw=False)
    name = "budgets_synthetic_onevision_tiny"
    cell = f"{100 * change.mean():+.1f} [{low:+.1f}, {high:+.1f}]"
    assert "codec - random (95% paired bootstrap)" in printed and cell in printed
    assert cell in (out / f"{name}.md").read_text()
    assert "codec - random (95\\% paired bootstrap)" in (out / f"{name}.tex").read_text()
    csv = pd.read_csv(out / f"{name}.csv")
    assert list(csv.columns[-3:]) == ["codec - random", "codec - random low", "codec - random high"]
    assert csv[["codec - random", "codec - random low", "codec - random high"]].iloc[0].tolist() == \
        pytest.approx([100 * change.mean(), low, high], abs=0.01)
    # a record written before per-clip outcomes were kept: the difference stays, unpaired, no interval
    folder = tmp_path / "results" / records["random"]["run_id"]
    old = json.loads((folder / "record.json").read_text())
    del old["test_clips"]
    (folder / "record.json").write_text(json.dumps(old))
    printed = report.write_report([tmp_path / "results"], out, [], draw=False)
    top1 = {s: r["metrics"]["test"]["top1"] for s, r in records.items()}
    assert f"{top1['codec'] - top1['random']:+.1f} (unpaired)" in printed


def test_show_draws_codec_random_and_pixel_difference_rows(clip, tmp_path):
    from PIL import Image

    from tasks.sampling.show import show

    plain, *_ = show(clip.path, tmp_path / "codec.png", budget=BUDGET, columns=4)
    both, *_ = show(clip.path, tmp_path / "controls.png", budget=BUDGET, columns=4, controls=True)
    (w0, h0), (w1, h1) = Image.open(plain).size, Image.open(both).size
    assert w0 == w1 and h1 / h0 == pytest.approx(5 / 3, rel=0.02)  # two more rows of kept patches
