"""`protocol=original` setting for setting (issue 25): the per-task recipe, the original loader's frame rule,
the dropped last batch, the image backbones' reference tokens, and the test clips its 8-rank test loader
reads. Each expectation is computed here from the original's own rules (`shells_eval_ap/common.sh`,
`dataloader/ap_dataloader_dali.py`, `attentive_probe.py` of OneVision-Encoder), not from ovprobe's code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import probe.training.train as train_module
from probe.run.main import compose_config, run
from probe.training.evaluate import aggregate_views, original_test_reads
from probe.training.train import HeadConfig, Recipe, train_probe_grid
from tasks import Clip, open_video
from tasks.sampling.samplers import INDEX_RULES, UniformSampler
from tests.test_run import small, small_overrides
from tests.test_train import FRAMES, temporal_order_features

# ovprobe's task name -> the original's dataset name (common.sh DEFAULT_DATASETS)
ORIGINAL_NAMES = {"ssv2": "ssv2", "diving48": "diving48", "perception_test": "perception_test",
                  "epic_verb": "epic_verb", "epic_noun": "epic_noun", "hmdb51": "hmdb51",
                  "kinetics400": "k400", "charades_ego": "charadesego"}


def common_sh_batch_size(dataset: str) -> int:
    """`get_batch_size` of the original's shells_eval_ap/common.sh: the per-GPU batch."""
    if dataset in ("ssv2", "diving48", "perception_test"):
        return 4
    return 2 if dataset == "hmdb51" else 16


def common_sh_epochs(dataset: str) -> int:
    """`get_epochs` of the original's HEAD common.sh (issue 25; its common_codec.sh reads the same)."""
    return 30 if dataset in ("hmdb51", "diving48", "perception_test") else 10


@pytest.mark.parametrize("task", sorted(ORIGINAL_NAMES))
def test_each_task_resolves_to_the_original_recipe(task: str) -> None:
    recipe = compose_config(["protocol=original", f"task={task}"])["probe"]["recipe"]
    dataset = ORIGINAL_NAMES[task]
    expected = (common_sh_epochs(dataset), 8 * common_sh_batch_size(dataset))
    assert (recipe["epochs"], recipe["batch_size"]) == expected
    assert recipe["lrs"] == [1e-4] and recipe["wds"] == [0.0]
    assert recipe["drop_last"] is True and recipe["coverage_ranks"] == 8
    Recipe(**recipe)  # the trainer takes it as resolved


def test_the_eight_pairs() -> None:
    recipes = {t: compose_config(["protocol=original", f"task={t}"])["probe"]["recipe"]
               for t in ORIGINAL_NAMES}
    pairs = {t: (r["epochs"], r["batch_size"]) for t, r in recipes.items()}
    assert pairs == {"ssv2": (10, 32), "diving48": (30, 32), "perception_test": (30, 32),
                     "epic_verb": (10, 128), "epic_noun": (10, 128), "hmdb51": (30, 16),
                     "kinetics400": (10, 128), "charades_ego": (10, 128)}


def test_protocol_original_implies_its_frame_rule_and_reference_tokens() -> None:
    original = compose_config(["protocol=original", "backbone=dinov3_large"])
    assert original["sampling"]["args"]["index_rule"] == "original"
    assert original["backbone"]["args"]["reference"] is True
    honest = compose_config(["backbone=dinov3_large"])
    assert honest["sampling"]["args"]["index_rule"] == "centred"
    assert honest["backbone"]["args"]["reference"] is False
    assert (honest["probe"]["recipe"]["drop_last"], honest["probe"]["recipe"]["coverage_ranks"]) == (False, 0)
    # an explicit choice wins over the protocol's
    opted_out = compose_config(["protocol=original", "backbone=dinov3_large",
                                "backbone.args.reference=false"])
    assert opted_out["backbone"]["args"]["reference"] is False
    onevision = compose_config(["protocol=original", "backbone=onevision_large"])
    assert "reference" not in onevision["backbone"]["args"]


def original_frames(n: int, t: int, uniforms: np.ndarray | None = None) -> list[int]:
    """`VideoExternalSource._get_frame_indices` of the original's loader, in plain Python: test frames when
    `uniforms` is None, else training frames with `np.random.uniform(0, seg)` = seg * uniforms[i]."""
    if n < t:
        return list(range(n)) + [n - 1] * (t - n)
    seg = float(n - 1) / t
    if uniforms is None:
        return [int(seg * i + seg / 2) for i in range(t)]
    return [int(seg * i + (0.0 + (seg - 0.0) * float(uniforms[i]))) for i in range(t)]


@pytest.mark.parametrize("t", [8, 16, 32])
def test_original_index_rule_equals_the_original_for_every_length(t: int) -> None:
    rule = INDEX_RULES["original"]
    rng = np.random.default_rng(0)
    for n in range(1, 2001):
        test = rule(0, n, t, np.full(t, 0.5)).tolist()
        assert test == original_frames(n, t), n
        if n >= t:  # the closed form agrees
            assert test == [int((n - 1) / t * (i + 0.5)) for i in range(t)], n
        uniforms = rng.random(t)
        train = rule(0, n, t, uniforms).tolist()
        assert train == original_frames(n, t, uniforms), n
        if n > t:
            assert max(train) < n - 1, n  # the original never draws the last frame in training
    # a span is read as a file of its length, shifted
    assert rule(100, 105, 8, np.full(8, 0.5)).tolist() == [100, 101, 102, 103, 104, 104, 104, 104]


def test_uniform_sampler_reads_the_original_frames_of_a_real_video(fixtures) -> None:
    path = fixtures / "videos" / "cup.mp4"  # 217 frames
    n = open_video(path).num_frames
    original = UniformSampler(num_frames=8, size=32, patch_size=16, index_rule="original")
    (view,) = original(Clip(path=path, label=0, clip_id="cup"))
    assert view.source_frames == original_frames(n, 8)
    (short,) = original(Clip(path=path, label=0, clip_id="cup5", start_frame=40, end_frame=45))
    assert short.source_frames == [40, 41, 42, 43, 44, 44, 44, 44]
    (drawn,) = original(Clip(path=path, label=0, clip_id="cup"), rng=np.random.default_rng(7), train=True)
    assert drawn.source_frames == original_frames(n, 8, np.random.default_rng(7).random(8))
    assert max(drawn.source_frames) < n - 1
    # the default keeps its own rule: floor(n / T x (i + 1/2)), one frame later here
    centred_sampler = UniformSampler(num_frames=8, size=32, patch_size=16)
    (centred,) = centred_sampler(Clip(path=path, label=0, clip_id="cup"))
    assert centred.source_frames == [int(np.floor(n / 8 * (i + 0.5))) for i in range(8)]
    assert centred.source_frames != view.source_frames
    with pytest.raises(ValueError, match="index_rule='nope'; choose one of centred, original"):
        UniformSampler(num_frames=8, size=32, patch_size=16, index_rule="nope")


def loader_reads(num_clips: int, rank_batch: int, ranks: int, epoch: int) -> list[int]:
    """What the original's test loader reads in evaluation `epoch`: each rank's `VideoExternalSource`
    (seed 1024 + rank, as `attentive_probe.py` passes seed=1024 and the loader adds the rank) answers
    `sample_info` calls until `iteration >= full_iterations`, reading `perm[idx_in_epoch + shard_offset]`."""
    reads = []
    for rank in range(ranks):
        shard_size = num_clips // ranks
        shard_offset, full_iterations = shard_size * rank, shard_size // rank_batch
        perm = np.random.default_rng(seed=(1024 + rank) + epoch).permutation(num_clips)
        idx_in_epoch = 0
        while idx_in_epoch // rank_batch < full_iterations:
            reads.append(int(perm[idx_in_epoch + shard_offset]))
            idx_in_epoch += 1
    return reads


def test_original_test_reads_reproduce_the_loader_and_cover_two_thirds() -> None:
    for num_clips, rank_batch, epoch in ((24777, 4, 0), (1530, 2, 3), (11, 1, 9), (1000, 16, 1)):
        reads = original_test_reads(num_clips, rank_batch, 8, epoch)
        assert reads.tolist() == loader_reads(num_clips, rank_batch, 8, epoch)
    reads = original_test_reads(24777, 4, 8, 0)  # SSv2's validation list, 4 clips a GPU
    assert len(reads) == 8 * (24777 // 8 // 4 * 4)
    assert 0.64 < len(np.unique(reads)) / 24777 < 0.67
    assert np.bincount(reads).max() >= 5
    assert not np.array_equal(np.unique(reads), np.unique(original_test_reads(24777, 4, 8, 1)))


def test_drop_last_trains_whole_batches_only(monkeypatch) -> None:
    train, test = temporal_order_features(50, views=1, seed=0), temporal_order_features(32, views=1, seed=1)
    sizes: list[list[int]] = [[], []]
    step = train_module._StackedGrid.step
    for i, drop in enumerate((True, False)):
        def counting(self, batch, size, _i=i):
            sizes[_i].append(size)
            return step(self, batch, size)

        monkeypatch.setattr(train_module._StackedGrid, "step", counting)
        recipe = Recipe(epochs=2, batch_size=16, val_fraction=0.0, selection="test_max", bootstrap=10,
                        drop_last=drop)
        train_probe_grid(train, test, FRAMES, HeadConfig(), recipe, progress="off")
    assert sizes[0] == [16] * 6
    assert sizes[1] == [16, 16, 16, 2] * 2


def test_coverage_number_is_the_accuracy_over_the_loaders_reads(monkeypatch) -> None:
    train, test = temporal_order_features(384, views=1, seed=0), temporal_order_features(160, views=1, seed=1)
    epoch_logits: list[torch.Tensor] = []  # the probe's test logits after every epoch
    predict = train_module.predict

    def capturing(heads, features, clips, *args, **kwargs):
        out = predict(heads, features, clips, *args, **kwargs)
        if features is test and len(epoch_logits) < recipe.epochs:
            epoch_logits.append(out[0])
        return out

    monkeypatch.setattr(train_module, "predict", capturing)
    recipe = Recipe(lrs=(1e-2,), epochs=12, batch_size=16, val_fraction=0.0, selection="test_max",
                    bootstrap=10, coverage_ranks=8)
    timed = HeadConfig(temporal_pos="learned", temporal_slots=FRAMES)
    result = train_probe_grid(train, test, FRAMES, timed, recipe, progress="off")
    labels = torch.from_numpy(test.labels)
    correct = [(aggregate_views(logits).argmax(-1) == labels).numpy() for logits in epoch_logits]
    reads = [loader_reads(160, 2, 8, epoch) for epoch in range(recipe.epochs)]
    by_epoch = [100 * c[r].mean() for c, r in zip(correct, reads, strict=True)]
    (curve,) = result.curves.values()
    assert [s.coverage_top1 for s in curve] == pytest.approx(by_epoch)
    coverage = result.original_coverage
    best = int(np.argmax(by_epoch))
    assert (coverage["epoch"], coverage["top1"]) == (best + 1, pytest.approx(by_epoch[best]))
    assert coverage["full_set_top1"] == pytest.approx(100 * correct[best].mean())
    assert (coverage["ranks"], coverage["reads"], coverage["clips_read"]) == (8, 160, len(set(reads[best])))
    assert coverage["clips_read"] < 160
    assert result.test.top1 > 100 / FRAMES + 15  # a probe that learned something, not chance
    with pytest.raises(ValueError, match="coverage_ranks=3 must be 0 or divide recipe.batch_size=16"):
        Recipe(batch_size=16, coverage_ranks=3)


def test_an_original_run_records_both_numbers_and_what_it_implied(tmp_path) -> None:
    dropped = ("probe.recipe.", "task.args.num_train")
    overrides = [o for o in small_overrides(tmp_path) if not o.startswith(dropped)]
    overrides += ["protocol=original", "probe.recipe.epochs=3", "probe.recipe.batch_size=8",
                  "probe.recipe.bootstrap=50", "task.args.num_train=36"]
    record = run(compose_config(overrides))
    stored = json.loads((tmp_path / "results" / record["run_id"] / "record.json").read_text())
    protocol = stored["protocol"]
    assert protocol["drop_last"] is True and protocol["index_rule"] == "original"
    assert protocol["backbone_reference"] is None  # OneVision has no reference setting
    assert protocol["original_coverage"].startswith("metrics.original_coverage.top1: max over test epochs")
    metrics = stored["metrics"]
    assert metrics["num_train"] == 36
    (curve,) = metrics["curves"].values()
    coverage = metrics["original_coverage"]
    best = max(s["coverage_top1"] for s in curve)
    assert coverage["top1"] == best
    epoch = coverage["epoch"]
    assert curve[epoch - 1]["coverage_top1"] == best
    assert coverage["full_set_top1"] == curve[epoch - 1]["test_top1"]
    reads = loader_reads(16, 1, 8, epoch - 1)
    assert (coverage["ranks"], coverage["reads"], coverage["clips_read"]) == (8, 16, len(set(reads)))
    assert stored["config"]["sampling"]["args"]["index_rule"] == "original"


def test_reference_tokens_with_a_patch_budget_are_refused_before_work(tmp_path) -> None:
    overrides = small_overrides(tmp_path, "protocol=original", "backbone=dinov3_tiny")
    overrides = [o for o in overrides if o != "sampling=uniform" and not o.startswith("probe.recipe.")]
    config = compose_config([*overrides, "sampling=random"])
    with pytest.raises(ValueError, match=r"reference=true, which protocol=original implies\).*whole frames"):
        run(config)


def test_the_index_rule_keys_the_feature_store(tmp_path) -> None:
    centred = run(small(tmp_path))
    original = run(small(tmp_path, "sampling.args.index_rule=original"))
    assert centred["config"]["sampling"]["args"]["index_rule"] == "centred"
    assert original["protocol"]["index_rule"] == "original"
    assert original["data"]["eval_features"] != centred["data"]["eval_features"]
    assert original["data"]["train_features"] != centred["data"]["train_features"]
