"""One selection for all backbones: the codec saliency is scored on a canonical crop, so backbones whose
patch grids have the same shape (224 px / 14 and 256 px / 16: 16 x 16) get exactly the same patches."""

from __future__ import annotations

import pandas as pd
import pytest
from test_run import small

from probe.report.results import name_rows, paper_tables, record_row
from probe.run.main import run
from tasks import Clip, create_sampler

VIDEOS = ["Megamind.avi", "Megamind_bugy.avi", "cup.mp4", "tree.avi"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("codec_maps")  # maps are shared: each video is analysed once


@pytest.mark.parametrize("budget", [2048, 4096])
def test_equal_grids_select_identical_patches_on_every_fixture_video(fixtures, cache, budget):
    samplers = {
        (size, patch): create_sampler("codec", num_frames=64, size=size, patch_size=patch, budget=budget,
                                      num_crops=3, cache_dir=str(cache))
        for size, patch in ((224, 14), (256, 16))
    }
    for video in VIDEOS:
        clip = Clip(video, fixtures / "videos" / video, label=0)
        views = {key: sampler(clip) for key, sampler in samplers.items()}
        for crop in range(3):  # left, centre and right crops of the wide frames
            a, b = (views[key][crop].positions.tolist() for key in samplers)
            assert len(a) == budget and a == b, f"{video}, crop {crop}: the selections differ"


def test_a_budget_on_another_grid_is_recorded_and_reported_apart(tmp_path):
    runs = {
        name: run(small(tmp_path, f"backbone={name}", "sampling=codec", "sampling.budget=448", *extra))
        for name, extra in (("onevision_tiny", []), ("siglip2_tiny", ["++backbone.args.input_size=98"]))
    }
    ov, siglip = runs["onevision_tiny"]["sampling"], runs["siglip2_tiny"]["sampling"]
    assert (ov["grid"], siglip["grid"]) == ([8, 8], [7, 7])
    assert (ov["budget"], siglip["budget"]) == (448, 448)  # each in its own patches
    assert ov["area_fraction"] == 448 / (64 * 64) and siglip["area_fraction"] == 448 / (64 * 49)
    frame = name_rows(pd.DataFrame([record_row(r) for r in runs.values()]))
    tables = paper_tables(frame)
    assert set(tables) >= {"backbones_tasks_codec_448p_8x8grid", "backbones_tasks_codec_448p_7x7grid"}
    assert "backbones_tasks_codec_448p" not in tables
    assert list(tables["backbones_tasks_codec_448p_7x7grid"].values.index) == ["siglip2_tiny"]
