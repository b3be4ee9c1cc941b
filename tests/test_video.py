"""Decoding: both readers return the frames a plain sequential decode gives, on real and generated files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.frame import PictureType

from tasks.decode.video import (
    DecordReader,
    PyAVReader,
    VideoDecodeError,
    crop_square,
    open_video,
    resize_shorter_side,
)

VIDEOS = {"Megamind.avi": 270, "Megamind_bugy.avi": 270, "tree.avi": 68, "cup.mp4": 217}
BACKENDS = ("decord", "pyav")


def sequential_frames(path: Path, keep: set[int]) -> dict[int, np.ndarray]:
    """The reference: decode every frame in order with plain PyAV, keep the ones asked for."""
    with av.open(str(path)) as container:
        return {i: f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in keep}


@pytest.mark.parametrize("name", VIDEOS)
def test_both_readers_match_a_sequential_decode_of_real_files(fixtures: Path, name: str) -> None:
    path = fixtures / "videos" / name
    count = VIDEOS[name]
    rng = np.random.default_rng(0)
    indices = [*rng.integers(0, count, 6).tolist(), count - 1, 0, 3, 3]  # random order, repeats
    reference = sequential_frames(path, set(indices))
    for backend in BACKENDS:
        reader = open_video(path, backend)
        assert reader.num_frames == count
        for part in (indices[:5], indices[5:], indices):  # a reader is reused across calls
            got = reader.get_frames(part)
            assert got.dtype == np.uint8 and got.shape[-1] == 3
            for i, frame in zip(part, got, strict=True):
                np.testing.assert_array_equal(frame, reference[i], err_msg=f"{backend} {name} frame {i}")


def test_tree_avi_frame_count_comes_from_the_stream_not_the_header(fixtures: Path) -> None:
    path = fixtures / "videos" / "tree.avi"
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 444  # what the header claims
    last = sequential_frames(path, {67})[67]
    for backend in BACKENDS:
        reader = open_video(path, backend)
        assert reader.num_frames == 68
        got = reader.get_frames([67, 68, 200, 443])  # past the end: clamped to the last decoded frame
        for frame in got:
            np.testing.assert_array_equal(frame, last)


def test_a_stream_shorter_than_its_index_is_clamped_and_the_count_corrected(fixtures: Path) -> None:
    path = fixtures / "videos" / "cup.mp4"
    reader = PyAVReader(path)
    reader._num_frames = 300  # an index that overstates the stream, as a damaged file's would
    got = reader.get_frames([10, 250, 299])
    assert reader.num_frames == 217
    reference = sequential_frames(path, {10, 216})
    np.testing.assert_array_equal(got[0], reference[10])
    np.testing.assert_array_equal(got[1], reference[216])
    np.testing.assert_array_equal(got[2], reference[216])


def _write(path: Path, codec: str, options: dict[str, str], n: int = 40) -> np.ndarray:
    """A clip whose frame i has brightness 6*i in a corner block, so a frame names its own index."""
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    frames = np.stack([np.roll(texture, 2 * i, axis=1) for i in range(n)])
    for i in range(n):
        frames[i, :16, :16] = 6 * i
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.options = 64, 48, "yuv420p", options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return frames


CODECS = {
    "h264_bframes.mp4": ("libx264", {"bf": "3", "g": "12", "threads": "1"}),
    "vp9.webm": ("libvpx-vp9", {"g": "12", "threads": "1"}),
    "av1.mkv": ("libsvtav1", {"g": "12", "preset": "12"}),
}


@pytest.mark.parametrize("name", CODECS)
def test_random_access_lands_on_the_right_frame_for_each_codec(tmp_path: Path, name: str) -> None:
    codec, options = CODECS[name]
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = tmp_path / name
    _write(path, codec, options)
    indices = [37, 2, 24, 25, 11, 39, 0, 13]  # across keyframes (every 12 frames), backwards too
    readers = [PyAVReader(path), open_video(path)]
    if name == "av1.mkv":
        with pytest.raises(VideoDecodeError):
            DecordReader(path)
        assert isinstance(readers[1], PyAVReader)  # "auto" falls back to PyAV where decord fails
    for reader in readers:
        assert reader.num_frames == 40
        corner = reader.get_frames(indices)[:, 4:12, 4:12].astype(float).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(corner, 6 * np.array(indices), atol=4, err_msg=type(reader).__name__)


B_FRAMES = {"bf": "3", "g": "12", "threads": "1", "x264-params": "b-adapt=0:b-pyramid=normal"}
OPEN_GOP = {**B_FRAMES, "g": "24", "x264-params": "b-adapt=0:b-pyramid=normal:open-gop=1"}
REORDERED = {  # H.264 with B-frames: decode order I P B B ..., shown I B B P ...
    "closed.mp4": B_FRAMES,  # timestamps reordered by the container (ctts)
    "closed.avi": B_FRAMES,  # timestamps in decode order: decoded frames come out of timestamp order
    "stamped.mkv": B_FRAMES,  # raw stream remuxed with timestamps in decode order
    "open.mp4": OPEN_GOP,  # frames decoded after a keyframe but shown before it: decord's seeks missed
    "open.mkv": OPEN_GOP,
    "closed.ts": B_FRAMES,  # no index: decord misnumbered even sequential reads
}


def _remux_with_decode_order_timestamps(source: Path, target: Path) -> None:
    """Copy `source`'s packets into `target`, stamped 0, 1, 2... in decode order (as tools that remux a
    raw H.264 stream do): the decoder then outputs frames whose timestamps are out of order."""
    from fractions import Fraction

    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for k, packet in enumerate(p for p in src.demux(video=0) if p.size):
            packet.pts = packet.dts = k
            packet.time_base, packet.stream = Fraction(1, 25), out
            dst.mux(packet)


@pytest.mark.parametrize("name", REORDERED)
def test_one_frame_numbering_in_presentation_order_where_decode_order_differs(tmp_path: Path,
                                                                             name: str) -> None:
    """PyAV (seeking or not), decord (or "auto", which reads with PyAV what decord refuses) and the
    codec analysis all number frames in presentation order, whatever the container's timestamps."""
    from tasks.decode.codec import CodecConfig, analyse

    path = tmp_path / name
    if name == "stamped.mkv":
        _write(tmp_path / "raw.h264", "libx264", REORDERED[name])
        _remux_with_decode_order_timestamps(tmp_path / "raw.h264", path)
    else:
        _write(path, "libx264", REORDERED[name])
    with av.open(str(path)) as c:
        types = [f.pict_type for f in c.decode(video=0)]
    assert types.count(PictureType.B) >= 20  # presentation order differs from decode order throughout

    def index_of(frames: np.ndarray) -> np.ndarray:
        return np.rint(frames[:, 4:12, 4:12].astype(float).mean(axis=(1, 2, 3)) / 6).astype(int)

    readers = [PyAVReader(path), open_video(path)]
    if name.endswith(".ts"):
        with pytest.raises(VideoDecodeError, match="decord misnumbers the frames of mpegts"):
            DecordReader(path)
        assert isinstance(readers[1], PyAVReader)
    else:
        readers.append(DecordReader(path))
    indices = [37, 2, 24, 25, 26, 11, 39, 0, 13, 14, 15, 5]  # across keyframes, backwards too
    for reader in readers:
        assert reader.num_frames == 40
        assert index_of(reader.get_frames(indices)).tolist() == indices, type(reader).__name__
    maps, pixels = analyse(path, CodecConfig(num_frames=16), keep=lambda f: f.to_ndarray(format="rgb24"))
    assert index_of(np.stack(pixels)).tolist() == maps.frame_indices.tolist()


def test_decord_misreads_narrow_frames_and_auto_redoes_the_read_with_pyav(tmp_path: Path) -> None:
    path = tmp_path / "narrow.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(6):
            frame = np.full((32, 48, 3), 40 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with pytest.raises(VideoDecodeError, match="narrow.mp4"):
        DecordReader(path).get_frames([1, 4])
    got = open_video(path).get_frames([1, 4])
    np.testing.assert_array_equal(got, PyAVReader(path).get_frames([1, 4]))
    assert got.shape == (2, 32, 48, 3)


def test_decord_read_failures_name_the_file_and_the_way_out(fixtures: Path, monkeypatch) -> None:
    """With decord chosen explicitly (no PyAV fallback) a failing read is still a VideoDecodeError, which
    on_bad_clip=skip can count, not decord's bare exception."""
    reader = open_video(fixtures / "videos" / "cup.mp4", "decord")

    def broken(wanted: list[int]) -> None:
        raise RuntimeError("[decord] Error reading frame: corrupt packet")

    monkeypatch.setattr(reader, "_read_decord", broken)
    with pytest.raises(VideoDecodeError, match=r"cup.mp4: decord failed while decoding .*corrupt.*'pyav'"):
        reader.get_frames([0, 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_requested_frames_are_kept_in_memory(fixtures: Path, backend: str) -> None:
    reader = open_video(fixtures / "videos" / "Megamind.avi", backend)  # 720x528: 1.1 MB per frame
    frame_bytes = 720 * 528 * 3
    tracemalloc.start()
    try:
        reader.get_frames([5, 268])  # decord reads this file sequentially; PyAV from the first keyframe
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * frame_bytes, f"{backend} peaked at {peak / frame_bytes:.1f} frames for 2"


@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
def test_unreadable_files_raise_one_error_type_naming_the_file(tmp_path: Path, backend: str) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    for path in (garbage, tmp_path / "missing.mp4"):
        with pytest.raises(VideoDecodeError, match=path.name) as info:
            open_video(path, backend)
        assert info.value.path == path


def test_bad_arguments_are_errors_not_clamps(fixtures: Path) -> None:
    reader = open_video(fixtures / "videos" / "tree.avi")
    with pytest.raises(ValueError, match="non-negative"):
        reader.get_frames([3, -1])
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(fixtures / "videos" / "tree.avi", "opencv")


def test_resize_keeps_aspect_and_crops_walk_along_the_longer_side() -> None:
    frames = torch.zeros(2, 60, 100, 3, dtype=torch.uint8)
    frames[..., 0] = torch.arange(100, dtype=torch.uint8)  # red encodes the column
    resized = resize_shorter_side(frames, 30)
    assert resized.shape == (2, 30, 50, 3) and resized.dtype == torch.uint8
    left, centre, right = (crop_square(resized, 30, p) for p in (0.0, 0.5, 1.0))
    assert left.shape == centre.shape == right.shape == (2, 30, 30, 3)
    red = [c[0, 15, :, 0].float().mean().item() for c in (left, centre, right)]
    assert red[0] < red[1] < red[2]
    assert abs(red[1] - 49.5) < 2  # the centre crop is centred on the source
    portrait = resize_shorter_side(frames.transpose(1, 2), 30)
    assert portrait.shape == (2, 50, 30, 3)
    top = crop_square(portrait, 30, 0.0)
    assert top[0, :, 15, 0].float().mean() < crop_square(portrait, 30, 1.0)[0, :, 15, 0].float().mean()
    flat = torch.full((1, 40, 40, 3), 77, dtype=torch.uint8)
    assert (resize_shorter_side(flat, 24) == 77).all()  # bicubic keeps a constant image constant
    with pytest.raises(ValueError, match="resize first"):
        crop_square(frames, 80)
