"""The original suite's token sets for the image baselines (`backbone.args.reference`, `keep_prefix`): its
wrappers (`model_factory/vit_clip.py`, `vit_dinov3.py`) probe the tower's whole `last_hidden_state` of each
frame, class (and register) tokens included, DINOv3 at 224 px (`eval_dinov3_large.sh`: 196 patches a
frame). Checked against the library's own model called directly on the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_run import small

from backbones import create_backbone
from probe.report.results import record_row
from probe.run.main import run
from probe.store.features import FeatureStore
from tasks.sampling.samplers import dense_positions


def _frames(backbone, count: int, seed: int = 0) -> torch.Tensor:
    size = backbone.preprocess.size
    return torch.randint(0, 256, (1, count, size, size, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, prefix", [("clip_tiny", 1), ("dinov3_tiny", 5), ("dinov2reg_tiny", 5)])
def test_kept_prefix_tokens_are_the_models_own_per_frame_sequence(name, prefix):
    backbone = create_backbone(name, keep_prefix=True)
    assert backbone.prefix_kept == prefix and "class/register" in backbone.tokens
    grid = backbone.preprocess.size // backbone.patch_size
    frames = _frames(backbone, 3)
    positions = dense_positions(np.array([0, 2]), grid)[None]  # frames 0 and 2, whole
    tokens = backbone.encode(frames, positions)
    assert tokens.shape == (1, 2 * (prefix + grid**2), backbone.embed_dim)

    pixels = backbone.preprocess.normalize(frames[0, [0, 2]]).transpose(0, 1)
    hidden = backbone.model(pixel_values=pixels).last_hidden_state  # [2, prefix + grid^2, D]
    assert hidden.shape[1] == prefix + grid**2
    torch.testing.assert_close(tokens[0, : 2 * prefix], hidden[:, :prefix].reshape(-1, hidden.shape[-1]))
    torch.testing.assert_close(tokens[0, 2 * prefix :], hidden[:, prefix:].reshape(-1, hidden.shape[-1]))

    where = backbone.token_positions(positions)[0]
    expected_prefix = [(t, -1, j) for t in (0, 2) for j in range(prefix)]
    assert where[: 2 * prefix].tolist() == [list(p) for p in expected_prefix]
    assert torch.equal(where[2 * prefix :], positions[0])

    # The cost counts what the model ran: whole frames with their prefix, every token kept.
    cost = backbone.encode_cost(positions[0])
    assert (cost.frames, cost.tokens, cost.kept) == (2, 2 * (prefix + grid**2), 2 * (prefix + grid**2))

    # The equal-patch default: one token per patch position, the same patch tokens.
    plain = create_backbone(name)
    assert plain.prefix_kept == 0 and torch.equal(plain.token_positions(positions), positions)
    torch.testing.assert_close(plain.encode(frames, positions)[0], tokens[0, 2 * prefix :])


def test_reference_is_the_original_suites_input_size_and_tokens():
    # dinov3_small's architecture with one block: the registered entry's settings, cheap to build.
    dino = create_backbone("dinov3_small", random_init=True, reference=True, num_hidden_layers=1)
    assert dino.reference and dino.preprocess.size == 224 and dino.prefix_kept == 5
    assert (dino.preprocess.size // dino.patch_size) ** 2 == 196  # FRAMES_TOKEN_NUM=196, plus 5 a frame
    ours = create_backbone("dinov3_small", random_init=True, num_hidden_layers=1)
    assert not ours.reference and ours.preprocess.size == 256 and ours.prefix_kept == 0
    assert dino.feature_identity() != ours.feature_identity()  # a store of its own

    clip = create_backbone("clip_tiny", reference=True)
    assert clip.prefix_kept == 1 and clip.preprocess.size == 112  # CLIP: the entry's size, class token kept
    dinov2 = create_backbone("dinov2_tiny", reference=True)  # the original drops DINOv2's class token
    assert dinov2.prefix_kept == 0
    assert dinov2.feature_identity() == create_backbone("dinov2_tiny").feature_identity()

    with pytest.raises(ValueError, match="original suite's input_size=224; drop input_size=256"):
        create_backbone("dinov3_small", random_init=True, reference=True, input_size=256, num_hidden_layers=1)
    with pytest.raises(ValueError, match="keep_prefix=True; drop keep_prefix=False"):
        create_backbone("clip_tiny", reference=True, keep_prefix=False)


def test_prefix_tokens_need_whole_frames():
    backbone = create_backbone("clip_tiny", keep_prefix=True)
    grid = backbone.preprocess.size // backbone.patch_size
    some = dense_positions(np.array([0, 1]), grid)[::3][None]
    with pytest.raises(ValueError, match="needs whole frames.*use sampling=uniform"):
        backbone.encode(_frames(backbone, 2), some)


def test_a_reference_run_records_and_stores_the_original_tokens(tmp_path):
    record = run(small(tmp_path, "backbone=dinov3_tiny", "backbone.args.reference=true"))
    frames, per_frame = 4, 64  # small(): 4 frames of the tiny entry's 8 x 8 grid
    assert record["backbone"]["reference"] is True
    assert record["backbone"]["tokens"] == record["backbone"]["feature_identity"]["tokens"]
    assert "5 class/register tokens" in record["backbone"]["tokens"]
    assert record["sampling"]["tokens_per_clip"] == frames * (per_frame + 5)
    store = FeatureStore(record["data"]["eval_features"])
    batch = store.batch(np.array([0]), np.array([0]))
    assert bool(batch.mask.all()) and batch.positions.shape[1] == frames * (per_frame + 5)
    assert batch.positions[0, :, 1].eq(-1).sum() == frames * 5
    row = record_row(record)
    assert row["backbone"] == "dinov3_tiny@reference"
    assert row["backbone_label"].startswith("DINOv3 tiny (original suite's tokens)")
    # The same tokens asked for by keep_prefix alone (another input size possible): a row of their own too.
    kept = record_row({**record, "backbone": {**record["backbone"], "reference": False}})
    assert record["backbone"]["prefix_kept"] == 5 and kept["backbone"] == "dinov3_tiny@prefix"
    assert kept["backbone_label"].startswith("DINOv3 tiny (class/register tokens kept)")

    plain = run(small(tmp_path, "backbone=dinov3_tiny"))
    assert plain["backbone"]["reference"] is False and plain["sampling"]["tokens_per_clip"] == frames * 64
    assert plain["data"]["eval_features"] != record["data"]["eval_features"]
    assert record_row(plain)["backbone"] == "dinov3_tiny"


def test_streamed_views_carry_the_prefix_tokens_too(tmp_path):
    record = run(small(tmp_path, "backbone=clip_tiny", "backbone.args.reference=true", "extract.mode=stream"))
    assert record["backbone"]["reference"] is True
    assert record["sampling"]["tokens_per_clip"] == 4 * (64 + 1)  # 4 frames of 8 x 8 patches, class token
    assert record["metrics"]["test"]["top1"] is not None
