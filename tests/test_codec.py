"""Codec saliency on generated clips with known motion, and on the real fixture videos."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

import tasks.decode.codec as codec
import tasks.decode.codec_cache as codec_cache
from tasks.clip import Clip
from tasks.decode.codec import (
    CAMERA_MODELS,
    CodecConfig,
    analyse,
    crop_box,
    local_variance,
    motion_vectors,
    patch_scores,
    plan_slots,
    rasterise,
)
from tasks.decode.codec_cache import MapCache, cached_analyse, fingerprint
from tasks.decode.video import VideoDecodeError, crop_square, resize_shorter_side
from tasks.sampling.samplers import CodecSampler
from tasks.sampling.selection import Selection, flat_patch_means, select_patches
from tasks.sampling.show import show

SIZE, PATCH, GRID = 224, 14, 16
SQUARE, START = 24, 8  # the moving square's side and its top-left corner at frame 0 (pixels)
VELOCITY = (2, 1)  # pixels per frame, (x, y)
N_FRAMES = 96
MARGIN = 8  # half a 16-pixel macroblock: a block straddling the square's edge carries it whole


def write_clip(path: Path, codec_name: str = "mpeg4", b_frames: int = 0, moving: bool = True,
               pan: tuple[int, int] = (0, 0), n_frames: int = N_FRAMES) -> Path:
    """A bright square moving at `VELOCITY` over a noisy background (itself panning by `pan`)."""
    rng = np.random.default_rng(0)
    background = rng.integers(40, 140, (SIZE // 4 + 64, SIZE // 4 + 64), dtype=np.uint8)
    background = background.repeat(4, 0).repeat(4, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec_name, rate=25)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 24
        if codec_name == "libx264":
            stream.options = {"bf": str(b_frames), "preset": "veryfast"}
        else:
            stream.codec_context.max_b_frames = b_frames
        for i in range(n_frames):
            image = background[pan[1] * i:pan[1] * i + SIZE, pan[0] * i:pan[0] * i + SIZE].copy()
            if moving:
                x0, y0 = square_at(i)
                image[y0:y0 + SQUARE, x0:x0 + SQUARE] = 235
            frame = av.VideoFrame.from_ndarray(np.repeat(image[..., None], 3, axis=2), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def with_extra_packet(src: Path, dst: Path) -> Path:
    """`src` (H.264 in MP4) remuxed with one more packet that decodes to no frame (an end-of-sequence
    NAL unit): its container lists one frame more than it decodes, as box.mp4's (456 and 455)."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
                last = packet
        extra = av.Packet(bytes([0, 0, 0, 1, 0x0A]))  # 4-byte length, NAL type 10: end of sequence
        extra.stream, extra.time_base = stream, last.time_base
        extra.pts = extra.dts = last.dts + (last.duration or 1)
        out.mux(extra)
    return dst


def square_at(frame: int) -> tuple[int, int]:
    return START + VELOCITY[0] * frame, START + VELOCITY[1] * frame


def on_path_fraction(selection: Selection, frame_indices: np.ndarray) -> float:
    """Fraction of the patches chosen by score (forced frames excluded) that touch the square, where it is
    in the patch's frame or the one before (what changed), widened by `MARGIN`."""
    hits = []
    for t, h, w in selection.positions:
        if t in selection.forced_slots:
            continue
        frame = int(frame_indices[t])
        hit = False
        for f in (frame, frame - 1):
            x0, y0 = square_at(f)
            hit |= (x0 - MARGIN < (w + 1) * PATCH and x0 + SQUARE + MARGIN > w * PATCH
                    and y0 - MARGIN < (h + 1) * PATCH and y0 + SQUARE + MARGIN > h * PATCH)
        hits.append(hit)
    return float(np.mean(hits))


def select(maps: codec.CodecMaps, budget: int) -> Selection:
    scores = patch_scores(maps, (GRID, GRID), crop_box(maps.frame_size, SIZE))
    return select_patches(scores, budget, static=maps.static)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("codec_clips")
    return {
        "mpeg4": write_clip(root / "square_mpeg4.avi"),
        "mpeg4_b": write_clip(root / "square_mpeg4_b.avi", b_frames=2),
        "h264": write_clip(root / "square_h264.mp4", "libx264"),
        "h264_b": write_clip(root / "square_h264_b.mp4", "libx264", b_frames=2),
        "pan": write_clip(root / "square_pan.avi", pan=(1, 1)),
        "static": write_clip(root / "static.avi", moving=False),
    }


@pytest.mark.parametrize("name", ["mpeg4", "h264_b"])
def test_motion_vectors_point_against_the_known_motion(clips, name):
    """`src - dst` of the vectors on the square points against its velocity (future vectors negated); in
    the stream without B-frames every P-frame refers to the previous frame, so the length matches too."""
    flows = []
    with av.open(str(clips[name])) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        for i, frame in enumerate(container.decode(stream)):
            mvs = motion_vectors(frame)
            if mvs is None:
                assert frame.pict_type == av.video.frame.PictureType.I
                continue
            field = rasterise([mvs], (SIZE, SIZE))
            dx, dy = field.past_pointing()
            x, y = field.centres[:, 0] + SIZE / 2, field.centres[:, 1] + SIZE / 2
            x0, y0 = square_at(i)
            on_square = (x >= x0) & (x < x0 + SQUARE) & (y >= y0) & (y < y0 + SQUARE) & (np.hypot(dx, dy) > 0)
            flows.append(np.stack([dx[on_square], dy[on_square]], axis=1))
    flow = np.median(np.concatenate(flows), axis=0)
    expected = -np.array(VELOCITY, float)
    assert sum(len(f) for f in flows) > 50
    assert flow @ expected / (np.linalg.norm(flow) * np.linalg.norm(expected)) > 0.95
    if name == "mpeg4":
        assert np.linalg.norm(flow - expected) < 0.5


def test_reading_motion_vectors_leaves_the_frame_free(clips):
    """`frame.side_data` would tie the frame into a reference cycle (it holds the frame's decoder buffer
    until the garbage collector runs); `motion_vectors` copies the vectors out and keeps no reference."""
    with av.open(str(clips["mpeg4"])) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        frame = next(f for f in container.decode(stream) if f.pict_type == av.video.frame.PictureType.P)
        before = sys.getrefcount(frame)
        mvs = motion_vectors(frame)
        assert len(mvs) > 0
        assert sys.getrefcount(frame) == before


def test_b_frame_streams_analyse_the_same_every_time(clips):
    """Frame threading attaches x264 B-frames' vectors to the wrong frames at random; streams that
    reorder frames decode with slice threads only, so their maps are reproducible."""
    for name, has_b in (("mpeg4", False), ("mpeg4_b", True), ("h264_b", True)):
        with av.open(str(clips[name])) as container:
            assert codec.frame_threads_safe(container.streams.video[0]) != has_b
    first, _ = analyse(clips["h264_b"])
    for _ in range(3):
        again, _ = analyse(clips["h264_b"])
        np.testing.assert_array_equal(again.motion, first.motion)
        np.testing.assert_array_equal(again.fused, first.fused)


@pytest.mark.parametrize("name", ["mpeg4", "h264_b", "pan"])
def test_frames_analysed_together_get_the_maps_each_gets_alone(clips, name, monkeypatch):
    """The analysis runs on batches of frames (one vectorised pass each); a batch of one frame is the
    per-frame analysis, and the maps do not depend on which frames share a batch."""
    together, _ = analyse(clips[name])
    monkeypatch.setattr(codec, "_BATCH_CELLS", 1)  # one frame a batch
    alone, _ = analyse(clips[name])
    np.testing.assert_array_equal(np.isnan(alone.motion), np.isnan(together.motion))
    np.testing.assert_allclose(np.nan_to_num(together.motion), np.nan_to_num(alone.motion), atol=1e-4)
    np.testing.assert_array_equal(together.residual, alone.residual)
    np.testing.assert_array_equal(together.contrast, alone.contrast)
    assert np.abs(together.fused.astype(int) - alone.fused).max() <= 1
    assert together.activity == alone.activity


def test_decoding_ahead_keeps_order_stops_with_the_consumer_and_passes_errors_on():
    assert list(codec._ahead((i for i in range(50)), depth=3)) == list(range(50))
    produced = []

    def numbers():
        for i in range(10_000):
            produced.append(i)
            yield i

    with contextlib.closing(codec._ahead(numbers(), depth=3)) as ahead:
        assert [next(ahead) for _ in range(5)] == list(range(5))
    assert len(produced) < 20 and not any(t.name == "codec-decode" for t in threading.enumerate())

    def broken():
        yield 1
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    with pytest.raises(av.error.InvalidDataError):
        list(codec._ahead(broken()))


def test_an_analysis_leaves_no_thread_behind_even_when_it_fails(clips, monkeypatch):
    """The decoding thread (and, for B-frame streams, the one decoding ahead of it) stops with the
    analysis, also when the analysis raises."""
    def codec_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("codec-")]

    analyse(clips["h264_b"])
    assert codec_threads() == []

    def broken(self, samples):
        raise RuntimeError("analysis failed")

    monkeypatch.setattr(codec._DecodePass, "_analyse", broken)
    with pytest.raises(VideoDecodeError, match="analysis failed"):
        analyse(clips["h264_b"])
    assert codec_threads() == []


def test_rasterise_paints_each_block_on_its_cells():
    mvs = np.zeros(3, dtype=[("source", "<i4"), ("w", "u1"), ("h", "u1"), ("src_x", "<i2"), ("src_y", "<i2"),
                             ("dst_x", "<i2"), ("dst_y", "<i2")])
    # a 16x16 block at (0, 0), an 8x8 one at (16, 8) and a future-pointing 16x8 one at (16, 0)
    for i, (src, w, h, x, y, mx, my) in enumerate([(-1, 16, 16, 8, 8, 3, -2), (-1, 8, 8, 20, 12, -5, 1),
                                                   (1, 16, 8, 24, 4, 2, 2)]):
        mvs[i] = (src, w, h, x + mx, y + my, x, y)
    field = rasterise([None, mvs, mvs[:1]], (20, 40))  # a batch: no vectors, these three, the first alone
    assert field.owner.shape == (3, 2, 5, 10) and field.frame.tolist() == [1, 1, 1, 2]
    owner = field.owner[1]
    assert (owner[0, :4, :4] == 0).all() and (owner[0, 2:4, 4:6] == 1).all()
    assert (owner[1, :2, 4:8] == 2).all()
    assert (owner[0] >= 0).sum() == 16 + 4 and (owner[1] >= 0).sum() == 8
    assert (field.owner[0] == -1).all() and (field.owner[2, 1] == -1).all()
    assert (field.owner[2, 0] == 3).sum() == 16
    dx = field.cell_map(field.dx, 0)
    assert dx[1, 0, 0] == 3 and np.isnan(dx[1, 4, 9]) and np.isnan(dx[0]).all() and dx[2, 0, 0] == 3
    assert field.past_pointing()[0][2] == -2  # the future vector, negated


@pytest.mark.parametrize("name", ["mpeg4", "mpeg4_b", "h264_b", "pan"])
def test_selected_patches_follow_the_moving_object(clips, name):
    maps, _ = analyse(clips[name])
    assert maps.signals == "motion+residual" and not maps.static
    selection = select(maps, 2 * GRID * GRID)  # one forced first frame + 256 patches by score
    assert selection.forced_slots == (0,)
    assert on_path_fraction(selection, maps.frame_indices) >= 0.9


def test_camera_compensation_is_what_finds_the_object_in_a_pan(clips):
    compensated, _ = analyse(clips["pan"], CodecConfig(camera="similarity"))
    raw, _ = analyse(clips["pan"], CodecConfig(camera="none"))
    assert on_path_fraction(select(compensated, 512), compensated.frame_indices) >= 0.9
    assert on_path_fraction(select(raw, 512), raw.frame_indices) < 0.5


def test_static_clip_engages_the_fallback(clips):
    maps, _ = analyse(clips["static"])
    assert maps.static
    selection = select(maps, 6 * GRID * GRID)
    assert selection.static and selection.forced_slots == (0, 21, 42, 63)
    whole = np.bincount(selection.positions[:, 0], minlength=64)
    assert all(whole[s] == GRID * GRID for s in selection.forced_slots)


def test_similarity_fit_recovers_camera_motion_despite_outliers():
    rng = np.random.default_rng(1)
    points = rng.uniform(-200, 200, (400, 2))
    # a batch of three frames: the camera of the second one, none in the first, two vectors in the third
    frame = np.array([1] * 400 + [2, 2])
    true = codec.CameraMotion(*(np.array([0.0, value, 0.0]) for value in (3.0, -1.5, 1.02, 0.01)))
    disp = np.concatenate([true.displacement(points, frame[:400]) + rng.normal(0, 0.2, points.shape),
                           [[5.0, 1.0], [7.0, 1.0]]])
    disp[:80] += rng.uniform(-20, 20, (80, 2))  # 20% of the vectors: a moving object
    points = np.concatenate([points, [[0.0, 0.0], [10.0, 10.0]]])
    fit = CAMERA_MODELS["similarity"](points, disp, np.ones(len(points)), frame, 3, 0.3)
    assert abs(fit.tx[1] - 3.0) < 0.1 and abs(fit.ty[1] + 1.5) < 0.1
    assert abs(fit.scale[1] - 1.02) < 1e-3 and abs(fit.rotation[1] - 0.01) < 1e-3
    assert (fit.tx[2], fit.ty[2], fit.scale[2]) == (5.0, 1.0, 1.0)  # too few to fit: the median shift
    shift = CAMERA_MODELS["median"](points, np.tile([2.0, 1.0], (402, 1)), np.ones(402), frame, 3, 0.3)
    assert (shift.tx.tolist(), shift.ty.tolist()) == ([0.0, 2.0, 2.0], [0.0, 1.0, 1.0])


def test_short_clip_spreads_its_frames_over_the_slots(clips):
    maps, _ = analyse(clips["mpeg4"], end_frame=40)
    assert list(maps.frame_indices) == list(range(40)) and maps.slots[-1] == 63
    assert len(set(maps.slots.tolist())) == 40
    scores = patch_scores(maps, (GRID, GRID), crop_box(maps.frame_size, SIZE))
    assert np.isnan(scores).all(axis=(1, 2)).sum() == 24
    selection = select_patches(scores, 40 * GRID * GRID)  # every available patch
    assert set(selection.slots.tolist()) == set(maps.slots.tolist())
    with pytest.raises(ValueError, match="exceeds the 10240 patches available"):
        select_patches(scores, 40 * GRID * GRID + 1)


def count_passes(monkeypatch) -> list[int]:
    """Counts the sequential decode passes of `analyse` (one entry per pass)."""
    passes: list[int] = []
    run = codec._DecodePass.run

    def counted(self, *args, **kwargs):
        passes.append(1)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(codec._DecodePass, "run", counted)
    return passes


def test_a_file_listing_one_frame_more_than_it_decodes_is_decoded_once(clips, tmp_path, monkeypatch, caplog):
    extra = with_extra_packet(clips["h264"], tmp_path / "extra.mp4")
    assert codec.count_frames(extra) == N_FRAMES + 1
    passes = count_passes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tasks.decode.codec"):
        maps, _ = analyse(extra)
    assert len(passes) == 1 and caplog.text.count("WARNING") == 1
    planned = np.rint(np.linspace(0, N_FRAMES, 64)).astype(int)
    assert maps.frame_indices.tolist() == planned[:-1].tolist() + [N_FRAMES - 1]
    assert maps.slots.tolist() == list(range(64)) and maps.fused[-1].max() > 0


@pytest.mark.parametrize("promised", [N_FRAMES + 1, 500])
def test_a_file_that_decodes_fewer_frames_than_its_packets_is_decoded_once(clips, monkeypatch, caplog,
                                                                            promised):
    """Its packets promise one frame more or far more: one pass, one warning, the last decoded frame
    standing in for the first frame past the end."""
    monkeypatch.setattr(codec, "count_frames", lambda path: promised)
    passes = count_passes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tasks.decode.codec"):
        maps, pixels = analyse(clips["mpeg4"], keep=lambda frame: frame.pts)  # AVI: pts = frame number
    assert len(passes) == 1 and caplog.text.count("WARNING") == 1
    planned = np.rint(np.linspace(0, promised - 1, 64)).astype(int)
    decoded = planned[planned < N_FRAMES].tolist()
    if decoded[-1] < N_FRAMES - 1:  # the last decoded frame stands in for the first one past the end
        decoded.append(N_FRAMES - 1)
    assert maps.frame_indices.tolist() == decoded
    assert maps.slots.tolist() == list(range(len(decoded))) and maps.fused.shape[0] == len(decoded)
    assert pixels == maps.frame_indices.tolist()  # each row's pixels are its frame's


def test_a_true_frame_count_takes_one_pass_and_no_warning(clips, monkeypatch, caplog):
    passes = count_passes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="tasks.decode.codec"):
        maps, _ = analyse(clips["mpeg4"])
    assert len(passes) == 1 and not caplog.text
    assert maps.frame_indices.tolist() == np.rint(np.linspace(0, N_FRAMES - 1, 64)).astype(int).tolist()


def test_cinepak_falls_back_to_residual_only(fixtures, caplog):
    tree = fixtures / "videos" / "tree.avi"  # header says 444 frames, 68 decode
    with caplog.at_level(logging.WARNING, logger="tasks.decode.codec"):
        maps, _ = analyse(tree)
    assert "motion vectors" not in caplog.text  # not per file: the run warns once with a count
    assert maps.signals == "residual" and np.isnan(maps.motion).all()
    assert maps.frame_indices[-1] == 67 and maps.fused.max() > 0


def test_keep_first_frame_passes_over_a_black_first_frame(fixtures, tmp_path):
    """Megamind.avi fades in from black: its first sampled frame is flat, so the whole frame kept as the
    pseudo-I-frame is the next one, with content; through the map cache as well."""
    from tasks import Clip, create_sampler

    video = fixtures / "videos" / "Megamind.avi"
    maps, pixels = analyse(video, keep=lambda f: f.to_ndarray(format="gray"))
    assert np.ptp(pixels[0]) == 0 and maps.contrast[0] < 2.0 <= maps.contrast[1:].min()
    box = crop_box(maps.frame_size, SIZE)
    scores = patch_scores(maps, (GRID, GRID), box)
    assert select_patches(scores, 2048).forced_slots == (0,)  # without contrast: the black frame
    selection = select_patches(scores, 2048, contrast=maps.slot_contrast)
    assert selection.forced_slots == (1,)
    kept = np.bincount(selection.positions[:, 0], minlength=64)
    assert kept[1] == GRID * GRID and kept[0] < GRID * GRID

    sampler = create_sampler("codec", num_frames=64, size=SIZE, patch_size=PATCH, temporal_slots=64,
                             budget=2048, native_sparse=True, cache_dir=str(tmp_path))
    clip = Clip("megamind", video, 0)
    for _ in ("fresh", "cached"):
        (view,) = sampler(clip)
        assert np.bincount(view.positions[:, 0].numpy(), minlength=64)[1] == GRID * GRID


def test_maps_are_cropped_like_the_pixels():
    """A horizontal ramp through `resize_shorter_side` + `crop_square` starts and ends where `crop_box`
    says, for both crop positions along the longer side."""
    height, width = 480, 640
    ramp = np.broadcast_to(np.linspace(0, 255, width)[None, :, None], (height, width, 3))
    for position in (0.0, 0.5, 1.0):
        pixels = crop_square(resize_shorter_side(ramp.astype(np.uint8)[None], SIZE), SIZE, position)[0]
        top, left, h, w = crop_box((height, width), SIZE, position)
        assert (top, h) == (0, height) and w == pytest.approx(height, rel=2e-3)  # 298.67 rounds to 299
        seen = pixels[SIZE // 2, [0, -1], 0].numpy().astype(float) / 255 * (width - 1)  # source column
        half = w / SIZE / 2  # first and last output pixels sample their centres; source pixel i is at i + .5
        assert seen == pytest.approx([left + half - 0.5, left + w - half - 0.5], abs=2.0)


def test_show_writes_a_picture_of_the_kept_patches(fixtures, tmp_path):
    out, _, scores, selection = show(fixtures / "videos" / "cup.mp4", tmp_path / "cup.png", budget=2048)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    kept = np.zeros(scores.size, bool)
    kept[selection.indices] = True
    free = np.ones(scores.shape, bool)
    free[list(selection.forced_slots)] = False  # the forced first frame is kept whatever its score
    kept, flat = kept[free.ravel()], scores[free]
    assert flat[kept].mean() > 3 * flat[~kept].mean()
    assert flat[kept].min() >= np.quantile(flat, 0.8)


def test_cache_reuses_maps_and_recomputes_damaged_entries(clips, tmp_path, monkeypatch, caplog):
    cache = MapCache(tmp_path / "cache")
    fresh, pixels = cached_analyse(clips["mpeg4"], cache=cache, keep=lambda f: f.to_ndarray(format="rgb24"))
    assert len(pixels) == 64 and pixels[0].shape == (SIZE, SIZE, 3)
    key = fingerprint(clips["mpeg4"], CodecConfig(), None, None)
    assert cache.entry(key).exists() and not list(cache.entry(key).parent.glob("*.tmp"))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded despite a cached entry")

    monkeypatch.setattr(codec_cache, "analyse", no_decode)
    cached, pixels = cached_analyse(clips["mpeg4"], cache=cache)
    assert pixels is None and cached.motion is None
    np.testing.assert_array_equal(cached.fused, fresh.fused)
    for budget in (512, 1024):  # other budgets select from the same maps, exactly as a fresh run
        np.testing.assert_array_equal(select(cached, budget).indices, select(fresh, budget).indices)
    assert fingerprint(clips["mpeg4"], CodecConfig(camera="median"), None, None) != key
    assert fingerprint(clips["mpeg4"], CodecConfig(), 0, 50) != key

    monkeypatch.undo()
    data = bytearray(cache.entry(key).read_bytes())
    data[len(data) // 2] ^= 0xFF
    cache.entry(key).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tasks.decode.codec_cache"):
        again, _ = cached_analyse(clips["mpeg4"], cache=cache)
    assert "damaged" in caplog.text
    np.testing.assert_array_equal(again.fused, fresh.fused)
    assert cache.load(key) is not None  # rewritten whole


def test_fusion_options_stay_in_unit_range(clips):
    for fusion in ("mean", "max", "geomean"):
        maps, _ = analyse(clips["mpeg4"], CodecConfig(fusion=fusion, norm_scope="frame"))
        saliency = maps.saliency
        assert saliency.min() >= 0 and saliency.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fusion='median'"):
        CodecConfig(fusion="median")


def test_patch_scores_integrate_the_map_over_each_patch():
    fused = np.zeros((1, 56, 56), np.uint8)  # a 224x224 frame in 4-pixel cells
    fused[0, 7:14, 0:7] = 255  # pixels 28-56 x 0-28: patches (2..3, 0..1) of the 16x16 grid
    maps = codec.CodecMaps(fused=fused, frame_indices=np.array([0]), slots=np.array([5]), num_slots=8,
                           frame_size=(224, 224), signals="residual", activity=0.0, static=False)
    scores = patch_scores(maps, (16, 16), crop_box((224, 224), 224))
    assert scores.shape == (8, 16, 16) and np.isnan(scores[0]).all()
    np.testing.assert_allclose(scores[5, 2:4, 0:2], 49 / 4)  # a patch is 3.5 x 3.5 cells
    assert scores[5].sum() == pytest.approx(49.0)


# ----------------------------------------------------------------------------- the original suite's rules
# Each reference below is computed here from the rule as the original's dataloader
# (dataloader/ap_dataloader_dali_codec.py) states it, not from ovprobe's code.

ORIGINAL = dict(frame_rule="floor", keyframes="zero", motion_score="local_variance", norm_scope="frame",
                motion_floor=1e-6, residual_floor=1.0, residual_baseline=0.0)


def original_frames(n: int, t: int = 64) -> list[int]:
    """`np.linspace(0, n - 1, t, dtype=int)` as numpy computes it: i * step in floats, truncated; the
    last is n - 1 exactly."""
    step = (n - 1) / (t - 1)
    return [int(i * step) for i in range(t - 1)] + [n - 1]


def test_original_frame_rule_takes_the_same_frames_at_train_and_test():
    rng = np.random.default_rng(0)
    for n in range(1, 2001):
        test, slots = plan_slots(n, 64, rule="floor")
        train, _ = plan_slots(n, 64, rng.random(64), rule="floor")
        assert test.tolist() == train.tolist() == original_frames(n), n
        assert slots.tolist() == list(range(64))


def decoded_keyframes(path: Path) -> set[int]:
    with av.open(str(path)) as container:
        return {i for i, frame in enumerate(container.decode(video=0)) if frame.key_frame}


def test_original_scores_the_first_eight_sampled_keyframes_zero(clips):
    maps, _ = analyse(clips["mpeg4"], CodecConfig(**ORIGINAL))
    assert maps.frame_indices.tolist() == original_frames(N_FRAMES)
    keys = sorted(set(maps.frame_indices.tolist()) & decoded_keyframes(clips["mpeg4"]))
    assert 2 <= len(keys) <= 8  # a keyframe every 24 frames
    peak = maps.fused.reshape(64, -1).max(axis=1)
    is_key = np.isin(maps.frame_indices, keys)
    assert (peak[is_key] == 0).all() and (peak[~is_key][1:] > 0).all()
    scored, _ = analyse(clips["mpeg4"], CodecConfig(**{**ORIGINAL, "keyframes": "scored"}))
    assert (scored.fused.reshape(64, -1).max(axis=1)[is_key][1:] > 0).all()


def test_original_scores_a_repeated_frame_at_its_last_slot_only(clips):
    maps, _ = analyse(clips["mpeg4"], CodecConfig(**{**ORIGINAL, "keyframes": "scored"}), end_frame=40)
    frames = maps.frame_indices.tolist()
    assert frames == original_frames(40) and maps.slots.tolist() == list(range(64))
    peak = maps.fused.reshape(64, -1).max(axis=1)
    for slot, frame in enumerate(frames):
        if frame in frames[slot + 1:]:  # not its last slot
            assert peak[slot] == 0
    assert (peak[[len(frames) - 1 - frames[::-1].index(f) for f in set(frames) if f > 0]] > 0).all()


def test_local_variance_is_the_3x3_variance_of_the_magnitude():
    rng = np.random.default_rng(3)
    magnitude = rng.uniform(0, 5, (7, 9)).astype(np.float32)
    magnitude[2, 3] = np.nan  # no vector: still
    values = np.nan_to_num(magnitude)
    expected = np.zeros_like(values)
    for y in range(7):
        for x in range(9):
            window = [values[min(max(y + dy, 0), 6), min(max(x + dx, 0), 8)]
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            expected[y, x] = np.var(window)
    np.testing.assert_allclose(local_variance(magnitude), expected, rtol=1e-5, atol=1e-5)
    batch = local_variance(np.stack([magnitude[::-1], magnitude]))  # frames of a batch apart
    np.testing.assert_array_equal(batch[1], local_variance(magnitude))


def test_original_normalises_each_frame_and_fuses_by_the_mean(clips):
    """fused = (clip(m / max(p95(m), 1e-6)) + clip(r / max(p95(r), 1))) / 2 per frame, m the 3x3
    variance of the magnitude, r the residual as it is."""
    cfg = CodecConfig(**{**ORIGINAL, "keyframes": "scored"})
    maps, _ = analyse(clips["h264_b"], cfg)
    plain, _ = analyse(clips["h264_b"], CodecConfig(**{**ORIGINAL, "keyframes": "scored",
                                                        "motion_score": "magnitude"}))
    has_vectors = ~np.isnan(plain.motion).all(axis=(1, 2))
    assert has_vectors.sum() > 50
    for row in np.flatnonzero(has_vectors):
        np.testing.assert_allclose(maps.motion[row], local_variance(plain.motion[row]), atol=1e-4)
    for row in range(1, 64):
        m = np.nan_to_num(maps.motion[row])
        m = np.clip(m / max(np.percentile(m, 95), 1e-6), 0, 1) if has_vectors[row] else 0 * m
        r = maps.residual[row]
        r = np.clip(r / max(np.percentile(r, 95), 1.0), 0, 1)
        assert np.abs(maps.fused[row] - np.rint((m + r) / 2 * 255)).max() <= 1, row


def test_original_centre_prior_scales_the_fused_map(clips):
    """fused x (1 + 0.3 w), clipped, w = exp(-d^2 / (2 (0.35 min(H, W))^2)) / max at each 4x4 cell's
    centre (pixels), d its distance to ((W - 1) / 2, (H - 1) / 2)."""
    without, _ = analyse(clips["mpeg4"], CodecConfig(**ORIGINAL))
    with_prior, _ = analyse(clips["mpeg4"], CodecConfig(**ORIGINAL, center_prior=0.3, center_sigma=0.35))
    height, width = without.frame_size
    yy, xx = np.mgrid[0:height // 4, 0:width // 4] * 4 + 1.5
    d2 = (xx - (width - 1) / 2) ** 2 + (yy - (height - 1) / 2) ** 2
    w = np.exp(-d2 / (2 * (0.35 * min(height, width)) ** 2))
    expected = np.clip(without.fused / 255 * (1 + 0.3 * w / w.max()), 0, 1) * 255
    assert np.abs(with_prior.fused - expected).max() <= 1.5
    assert (with_prior.fused.astype(int) - without.fused).max() > 10  # it moves the centre


def test_original_static_criterion_on_patch_means():
    """static: p95 < abs, or p95 < 2 abs with (p95 - p50) / p95 < rel (patch means, levels 0..255)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        means = rng.uniform(0, rng.uniform(1, 300), (64, 16, 16))
        abs_level, rel = rng.uniform(50, 150), rng.uniform(0.1, 0.6)
        p95, p50 = np.percentile(means, 95), np.percentile(means, 50)
        expected = p95 < abs_level or (p95 < 2 * abs_level and (p95 - p50) / p95 < rel)
        assert flat_patch_means(means, abs_level, rel) == expected


def test_original_rules_select_as_the_original_on_a_static_and_a_moving_clip(clips):
    def sampler(budget: int = 6 * GRID * GRID, **rules):
        return CodecSampler(num_frames=64, size=SIZE, patch_size=PATCH, budget=budget,
                            keep_first_frame=False, static_rule="patch_percentile", center_rule="map",
                            center_prior=0.3, center_sigma=0.35, **{**ORIGINAL, **rules})

    # the thresholds of the original's first codec script (its later ones, 116/0.55 and 126/0.38, call
    # this clip static too: per-frame normalisation makes its background noise bright)
    clip = Clip(clip_id="m", path=clips["mpeg4"], label=0)
    moving = sampler(GRID * GRID, static_abs=2.0, static_rel=0.15).select(clip, None, None, [0.5])
    assert moving.selections[0].forced_slots == () and not moving.selections[0].static
    keys = np.flatnonzero(np.isin(moving.run.frame_indices, list(decoded_keyframes(clips["mpeg4"]))))
    assert keys.size and not np.isin(moving.selections[0].positions[:, 0], keys).any()
    still = sampler().select(Clip(clip_id="s", path=clips["static"], label=0), None, None, [0.5])
    assert still.selections[0].static
    assert still.selections[0].forced_slots == tuple(np.linspace(0, 63, 4, dtype=int).tolist())


def test_protocol_original_selects_the_original_codec_rules():
    from probe.run.main import check_config, compose_config

    config = compose_config(["sampling=codec", "protocol=original"])
    check_config(config)
    assert any("HEVC" in d for d in config["sampling"]["departures_from_original"])  # in the record
    ours = compose_config(["sampling=codec"])["sampling"]["args"]
    theirs = config["sampling"]["args"]
    diving = compose_config(["sampling=codec", "protocol=original", "task=diving48"])["sampling"]["args"]
    assert (ours["frame_rule"], ours["keep_first_frame"], ours["center_prior"]) == ("round", True, 0.0)
    assert {k: theirs[k] for k in ORIGINAL} == ORIGINAL
    assert (theirs["center_rule"], theirs["center_prior"], theirs["center_sigma"]) == ("map", 0.3, 0.35)
    static = ("patch_percentile", 116, 0.55)
    assert (theirs["static_rule"], theirs["static_abs"], theirs["static_rel"]) == static
    assert theirs["keep_first_frame"] is False and theirs["fusion"] == "mean"
    assert (diving["motion_score"], diving["static_abs"], diving["static_rel"]) == ("magnitude", 126, 0.38)
    sampler = CodecSampler(size=SIZE, patch_size=PATCH, budget=2048, **theirs)
    assert sampler.codec.center_prior == 0.3 and sampler.selection.center_prior == 0.0


def test_a_protocol_original_codec_run_records_the_original_rules(tmp_path):
    """End to end on the small synthetic task (16-frame clips: the floor rule repeats frames)."""
    import json

    from probe.run.main import compose_config, run

    record = run(compose_config([
        "task.args.num_train=32", "task.args.num_test=16", "task.args.num_frames=16", "sampling=codec",
        "sampling.frames_equiv=2", "protocol=original", "probe.recipe.epochs=2", "probe.recipe.batch_size=8",
        "probe.recipe.bootstrap=50", "num_workers=0", "progress=false", f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]))
    stored = json.loads((tmp_path / "results" / record["run_id"] / "record.json").read_text())
    sampling = stored["config"]["sampling"]
    assert {k: sampling["args"][k] for k in ORIGINAL} == ORIGINAL
    assert sampling["args"]["center_rule"] == "map" and sampling["args"]["static_rule"] == "patch_percentile"
    assert any("HEVC" in d for d in sampling["departures_from_original"])
    assert stored["protocol"]["name"] == "original" and stored["metrics"]["test"]["top1"] >= 0
