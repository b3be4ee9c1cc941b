"""A backbone's feature identity keys the feature store: every token-changing argument gets a store of
its own, a speed-only one reuses it."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_run import small

from backbones import create_backbone
from backbones.dinov3 import IMAGENET_MEAN, Dinov3Backbone
from probe.run.main import build_sampler, run
from tasks import Clip, open_video
from tasks.decode.video import crop_square, resize_shorter_side
from tasks.sampling.samplers import dense_positions


@pytest.mark.parametrize(
    "name, changed",
    [
        ("dinov3_tiny", dict(input_size=160)),
        ("dinov3_tiny", dict(dtype="bfloat16")),
        ("dinov3_tiny", dict(seed=1)),
        ("siglip2_tiny", dict(layer_norm_eps=1e-3)),
        ("qwen3vit_tiny", dict(tokens="merged")),
        ("onevision_tiny", dict(input_size=224)),
    ],
)
def test_every_token_changing_argument_changes_the_identity(name, changed):
    default = create_backbone(name).feature_identity()
    assert create_backbone(name, **changed).feature_identity() != default


def test_speed_only_arguments_keep_the_identity():
    assert create_backbone("dinov3_tiny", frame_batch=3).feature_identity() == create_backbone(
        "dinov3_tiny"
    ).feature_identity()


def test_input_size_and_dtype_get_their_own_stores_and_batch_size_reuses(tmp_path):
    """The three-run scenario of issue 14: one store each, tokens matching the 160 px budget."""
    records = [
        run(small(tmp_path, "backbone=dinov3_tiny", *extra))
        for extra in ([], ["++backbone.args.input_size=160"], ["++backbone.args.dtype=bfloat16"])
    ]
    stores = {r["data"]["train_features"] for r in records} | {r["data"]["eval_features"] for r in records}
    assert len(stores) == 6
    assert [r["sampling"]["tokens_per_clip"] for r in records] == [4 * 64, 4 * 100, 4 * 64]
    assert records[1]["sampling"]["budget"] == 4 * 100
    assert records[2]["backbone"]["feature_identity"]["dtype"] == "bfloat16"
    # A setting that does not change the tokens: a new run, the same stores, nothing encoded.
    reused = run(small(tmp_path, "backbone=dinov3_tiny", "extract.batch_size=3"))
    assert reused["run_id"] != records[0]["run_id"]
    assert reused["data"]["eval_features"] == records[0]["data"]["eval_features"]
    assert reused["timings"]["extract_eval_encode_s"] == 0.0


def test_a_release_processor_config_sets_mean_std_and_interpolation(tmp_path, caplog):
    torch.manual_seed(1)
    model = Dinov3Backbone.model_class(Dinov3Backbone.config_class(**Dinov3Backbone.sizes["tiny"])).eval()
    model.save_pretrained(tmp_path / "tower")
    plain = create_backbone("dinov3_tiny", checkpoint=str(tmp_path / "tower"))
    assert plain.preprocess.mean == IMAGENET_MEAN and plain.preprocess.interpolation == "bicubic"

    processor = {"image_mean": [0.3, 0.4, 0.2], "image_std": [0.1, 0.2, 0.3], "resample": 2,
                 "rescale_factor": 1 / 255, "size": {"height": 224, "width": 224}}  # a satellite release
    (tmp_path / "tower" / "preprocessor_config.json").write_text(json.dumps(processor))
    with caplog.at_level(logging.WARNING):
        backbone = create_backbone("dinov3_tiny", checkpoint=str(tmp_path / "tower"))
    assert backbone.preprocess.mean == pytest.approx((0.3, 0.4, 0.2))
    assert backbone.preprocess.std == pytest.approx((0.1, 0.2, 0.3))
    assert backbone.preprocess.interpolation == "bilinear" and backbone.preprocess.size == 128
    assert "the release's mean" in caplog.text and "declares input size 224" in caplog.text
    assert backbone.feature_identity() != plain.feature_identity()

    # The tokens are the library model's on pixels normalised with the release's statistics.
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, 2, 128, 128, 3), dtype=torch.uint8, generator=generator)
    positions = dense_positions(np.arange(2), 8)[None]
    pixels = (frames[0].float() / 255 - torch.tensor([0.3, 0.4, 0.2])) / torch.tensor([0.1, 0.2, 0.3])
    with torch.no_grad():
        expected = model(pixel_values=pixels.permute(0, 3, 1, 2)).last_hidden_state[:, 5:]
    torch.testing.assert_close(backbone.encode(frames, positions)[0], expected.reshape(-1, 64))
    assert not torch.allclose(plain.encode(frames, positions)[0], expected.reshape(-1, 64), atol=1e-3)


def test_the_samplers_resize_with_the_backbones_interpolation(tmp_path, fixtures):
    clip = Clip("tree", fixtures / "videos" / "tree.avi", label=0)
    views = {}
    for interpolation in ("bicubic", "bilinear"):
        backbone = create_backbone("dinov3_tiny")
        backbone.preprocess = replace(backbone.preprocess, interpolation=interpolation)
        sampler = build_sampler(small(tmp_path)["sampling"], backbone, str(tmp_path / "cache"))
        assert sampler.interpolation == interpolation
        (views[interpolation],) = sampler(clip)
    expected = resize_shorter_side(open_video(clip.path).get_frames(views["bilinear"].source_frames), 128,
                                   "bilinear")
    assert torch.equal(views["bilinear"].frames, crop_square(expected, 128))
    assert not torch.equal(views["bilinear"].frames, views["bicubic"].frames)
