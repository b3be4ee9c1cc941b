"""A backbone's feature identity keys the feature store: every token-changing argument gets a store of
its own, a speed-only one reuses it."""

from __future__ import annotations

import pytest
from test_run import small

from backbones import create_backbone
from probe.run import run


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
