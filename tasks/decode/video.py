"""Video decoding by frame index (decord by default, PyAV as fallback) and the frame resize/crop ops.

Rules every reader follows:
- `num_frames` is the number of *decoded* frames, learned from the stream's packet index (decord's own
  index, or a demux-only packet scan for PyAV), never from the container header: `tree.avi` claims 444
  frames and has 68. If decoding ends before the index says, the count is corrected on the reader.
- Frames are numbered in presentation order, the order the decoder outputs them (what a sequential
  PyAV decode and the codec analysis count), whatever order the stream decodes them in (B-frames) and
  whatever timestamps the container gives them (AVI's follow decode order).
- Indices past the last decoded frame are clamped to it (the clip repeats its last frame); negative
  indices are a caller bug and raise `ValueError`.
- Only the requested frames are converted to RGB and kept, so memory is bounded by what is asked for.
- Anything that goes wrong opening or decoding a file raises `VideoDecodeError`, which names the file
  and says what is wrong: missing, empty, not a container FFmpeg reads (a wrong extension alone is
  fine: the container is found from the content), no video stream (e.g. audio only), no frames.
  A file cut short decodes up to where it ends, unless what is lost is the container's index (an MP4
  whose `moov` atom was at the end).
"""

from __future__ import annotations

import contextlib
import errno
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded; `path` names it."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot decode video {path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # picklable, so it can leave a worker process
        return type(self), (self.path, self.reason)

    @property
    def transient(self) -> bool:
        """Whether the file is missing or could not be read (a network file system's hiccup, permissions)
        rather than damaged: worth trying again later. Ask where it was raised (the cause is not pickled)."""
        if not self.path.is_file():
            return True
        err: BaseException | None = self.__cause__
        while err is not None:
            if isinstance(err, OSError) and err.errno in _UNREADABLE_ERRNOS:
                return True
            err = err.__cause__ or err.__context__
        return False


_UNREADABLE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE, errno.ETIMEDOUT,
                      errno.EAGAIN, errno.EBUSY}


UNREADABLE = ("FFmpeg finds no video container in it: not a video, or damaged (an MP4 cut short loses "
              "its index); re-encode or re-download it")


class VideoReader(ABC):
    """Random access to the decoded frames of one video file, as uint8 RGB `[T, H, W, 3]`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._num_frames = 0
        self._times: np.ndarray | None = None
        if self.path.is_dir():
            raise VideoDecodeError(self.path, "a folder, not a video file")
        if not self.path.is_file():
            raise VideoDecodeError(self.path, "no such file")
        if self.path.stat().st_size == 0:
            raise VideoDecodeError(self.path, "the file is empty (0 bytes)")

    @property
    def num_frames(self) -> int:
        """Decoded frame count (learned from the stream, corrected if decoding ends early)."""
        return self._num_frames

    def frames_between(self, start: float, end: float | None) -> tuple[int, int]:
        """The decoded frames `[first, stop)` shown during `[start, end)` seconds of the video (`end=None`:
        to the end), by the stream's own frame timestamps (`presentation_times`, read once per reader)."""
        if self._times is None:
            self._times = presentation_times(self.path)
        return span_frames(self._times, start, end)

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed); indices past the end are clamped to it."""
        frames, inverse = self.get_distinct(indices)
        return frames[inverse]

    def get_distinct(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(frames, inverse)`: each distinct frame of `indices` once, and `frames[inverse]` is
        `get_frames(indices)`; a frame sampled at many indices (a short clip) is decoded and kept once."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or (idx < 0).any():
            raise ValueError(f"frame indices must be a non-empty list of non-negative ints, got {indices}")
        idx = np.minimum(idx, self._num_frames - 1)
        wanted = [int(i) for i in np.unique(idx)]
        try:
            frames, decoded_count = self._read(wanted)
        except VideoDecodeError:
            raise
        except Exception as e:  # decoder libraries raise many types; callers get one that names the file
            reason = f"decoding failed ({type(e).__name__}: {e}); the file may be damaged: re-encode it"
            raise VideoDecodeError(self.path, reason) from e
        if decoded_count is not None:
            log.warning("%s: indexed %d frames but only %d decode; clamping to the last decoded frame",
                        self.path, self._num_frames, decoded_count)
            self._num_frames = decoded_count
            idx = np.minimum(idx, decoded_count - 1)
        distinct, inverse = np.unique(idx, return_inverse=True)
        return np.stack([frames[int(i)] for i in distinct]), inverse

    @abstractmethod
    def _read(self, wanted: list[int]) -> tuple[dict[int, np.ndarray], int | None]:
        """Decode the sorted unique `wanted` frames.

        Returns the frames by index and, if the stream ended before the last wanted index, the true
        decoded count (then the frame at `count - 1` must be among the returned ones).
        """


def _collect(frames: Iterable[tuple[int, Callable[[], np.ndarray]]], wanted: list[int]
             ) -> tuple[dict[int, np.ndarray], int | None]:
    """Walk `(index, to_rgb)` pairs in order, converting only wanted frames; stop after the last one.

    If the walk ends first, the last frame seen is converted too and its index + 1 is the true count.
    """
    want = set(wanted)
    out: dict[int, np.ndarray] = {}
    last: tuple[int, Callable[[], np.ndarray]] | None = None
    for i, to_rgb in frames:
        if i in want:
            out[i] = to_rgb()
            if i == wanted[-1]:
                return out, None
        last = (i, to_rgb)
    if last is None:
        raise RuntimeError(f"no frame decodes at or after index {wanted[0]}")
    if last[0] not in out:
        out[last[0]] = last[1]()
    return out, last[0] + 1


class PyAVReader(VideoReader):
    """PyAV (FFmpeg) reader: seeks to the closest keyframe at or before the first wanted frame.

    A demux-only scan at open gives the frame count and the keyframes. Output frames are numbered by
    counting from the keyframe (its presentation rank), which matches a sequential decode even for
    streams whose timestamps are unreliable; if the first frame after a seek is not that keyframe, the
    read restarts from the beginning of the file.
    """

    def __init__(self, path: str | Path, num_threads: int = 1):
        super().__init__(path)
        self.num_threads = num_threads
        try:
            with av.open(str(self.path)) as container:
                stream = self._video_stream(container)
                packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        except VideoDecodeError:
            raise
        except av.InvalidDataError as e:
            raise VideoDecodeError(self.path, UNREADABLE) from e
        except (av.FFmpegError, OSError) as e:
            raise VideoDecodeError(self.path, f"{type(e).__name__}: {e}") from e
        if not packets:
            raise VideoDecodeError(self.path, "the video stream holds no frames")
        self._num_frames = len(packets)
        pts = [p for p, _ in packets]
        # (presentation index, pts) of each keyframe; seeking needs every packet to carry a unique pts
        self._keyframes: list[tuple[int, int]] = []
        if None not in pts and len(set(pts)) == len(pts):
            rank = {p: r for r, p in enumerate(sorted(pts))}
            self._keyframes = sorted((rank[p], p) for p, key in packets if key)

    def _video_stream(self, container: av.container.InputContainer) -> av.VideoStream:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            raise VideoDecodeError(self.path, f"the file has no video stream (it holds {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = self.num_threads
        return stream

    def _read(self, wanted: list[int]) -> tuple[dict[int, np.ndarray], int | None]:
        seek = max(((r, p) for r, p in self._keyframes if 0 < r <= wanted[0]), default=None)
        with av.open(str(self.path)) as container:
            stream = self._video_stream(container)
            if seek is not None:
                container.seek(seek[1], stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
                first = next(frames, None)
                if first is not None and first.pts == seek[1]:
                    return _collect(self._numbered(first, frames, seek[0]), wanted)
                log.debug("%s: seek to keyframe %d missed; decoding from the start", self.path, seek[0])
        with av.open(str(self.path)) as container:
            frames = container.decode(self._video_stream(container))
            first = next(frames, None)
            if first is None:
                raise VideoDecodeError(self.path, "the stream has no decodable frames")
            return _collect(self._numbered(first, frames, 0), wanted)

    @staticmethod
    def _numbered(first: av.VideoFrame, rest: Iterable[av.VideoFrame], start: int
                  ) -> Iterable[tuple[int, Callable[[], np.ndarray]]]:
        yield start, lambda: first.to_ndarray(format="rgb24")
        for i, frame in enumerate(rest, start + 1):
            yield i, lambda f=frame: f.to_ndarray(format="rgb24")


class DecordReader(VideoReader):
    """decord reader: batched random access when the stream has valid, increasing frame timestamps.

    decord seeks by timestamp; in streams without usable timestamps (e.g. the packed-bitstream AVI
    `Megamind.avi`) and in open-GOP streams (frames decoded after a keyframe but shown before it:
    decord lands a few frames late past such keyframes, `open_gop`) its seeks land on the wrong frames,
    so those are read sequentially from a fresh reader instead. Containers without an index (MPEG-TS,
    raw streams) it misnumbers even sequentially: it refuses them, and "auto" reads them with PyAV.
    decord also returns malformed frames for some sizes (e.g. 48 px wide); those
    reads fail, or with `fallback=True` (what `open_video("auto")` sets) are redone with PyAV.
    """

    def __init__(self, path: str | Path, num_threads: int = 1, fallback: bool = False):
        super().__init__(path)
        self.fallback = fallback
        import decord  # imported here so that platforms without a decord wheel can still use PyAV

        self._decord = decord
        self.num_threads = num_threads
        with contextlib.suppress(av.FFmpegError), av.open(str(self.path)) as container:  # else decord says
            if set(container.format.name.split(",")) & UNINDEXED_FORMATS:
                raise VideoDecodeError(self.path, f"decord misnumbers the frames of {container.format.name} "
                                       "streams (no index); read it with PyAV (backend 'pyav' or 'auto')")
        try:
            self._vr = decord.VideoReader(str(self.path), num_threads=num_threads)
        except (RuntimeError, decord.DECORDError) as e:
            raise VideoDecodeError(self.path, f"decord: {e}") from e
        self._num_frames = len(self._vr)
        if not self._num_frames:
            raise VideoDecodeError(self.path, "the video stream holds no frames")
        self._seekable: bool | None = None

    def _read(self, wanted: list[int]) -> tuple[dict[int, np.ndarray], int | None]:
        try:
            frames, count = self._read_decord(wanted)
            shapes = {f.shape for f in frames.values()}
            if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[-1] != 3:
                raise VideoDecodeError(self.path, f"decord returned frames of shape(s) {sorted(shapes)}")
            return frames, count
        except Exception as e:
            if not self.fallback:
                if isinstance(e, VideoDecodeError):
                    raise
                raise VideoDecodeError(
                    self.path, f"decord failed while decoding ({type(e).__name__}: {e}); the file may be "
                    "damaged: re-encode it, or read it with PyAV (backend 'pyav' or 'auto')"
                ) from e
            log.warning("decord failed on %s (%s); decoding with PyAV", self.path, e)
            return PyAVReader(self.path, self.num_threads)._read(wanted)

    def _read_decord(self, wanted: list[int]) -> tuple[dict[int, np.ndarray], int | None]:
        if self._seekable is None:
            starts = self._vr.get_frame_timestamp(range(self._num_frames))[:, 0]
            self._seekable = bool(starts[0] >= 0 and (np.diff(starts) > 0).all()) and not open_gop(self.path)
        if self._seekable:
            return dict(zip(wanted, self._vr.get_batch(wanted).asnumpy(), strict=True)), None
        vr = self._decord.VideoReader(str(self.path), num_threads=self.num_threads)
        return _collect(self._sequential(vr), wanted)

    @staticmethod
    def _sequential(vr) -> Iterable[tuple[int, Callable[[], np.ndarray]]]:
        # decord's skip_frames is as unreliable as its seeks on these streams, so every frame is read
        for i in range(len(vr)):
            try:
                frame = vr.next().asnumpy()
            except StopIteration:
                return
            yield i, lambda f=frame: f


def presentation_times(path: str | Path) -> np.ndarray:
    """Each decoded frame's presentation time in seconds from the first frame's, in presentation order, from
    one demux pass (no decoding). Right for variable frame rates; a stream whose packets carry no usable
    timestamps (raw streams) is timed by its declared frame rate."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.size]
            time_base, rate = stream.time_base, stream.average_rate or stream.guessed_rate
    except (av.FFmpegError, OSError, IndexError) as e:
        raise VideoDecodeError(path, f"cannot read its frame timestamps ({type(e).__name__}: {e})") from e
    if not pts:
        raise VideoDecodeError(path, "the video stream holds no frames")
    if None not in pts and len(set(pts)) == len(pts) and time_base:
        times = np.sort(np.asarray(pts, dtype=np.float64)) * float(time_base)
        return times - times[0]
    if not rate:
        raise VideoDecodeError(path, "its frames carry no timestamps and the stream declares no frame rate, "
                               "so a span given in seconds cannot be placed; re-encode it (e.g. to MP4)")
    return np.arange(len(pts)) / float(rate)


TIME_TOLERANCE = 1e-6  # seconds: annotations round times, frame timestamps are rationals


def span_frames(times: np.ndarray, start: float, end: float | None) -> tuple[int, int]:
    """The frames `[first, stop)` shown during `[start, end)` seconds, given each frame's presentation time
    (`times`, ascending): `first` is the frame on screen at `start`, `stop` the first frame shown at or after
    `end` (`None`: the end), so every frame overlapping the span is kept, at least one. A start past the
    last frame's time plus one frame gives `first = len(times)` (the samplers clamp and warn)."""
    n = len(times)
    first = max(int(np.searchsorted(times, start + TIME_TOLERANCE, side="right")) - 1, 0)
    if n > 1 and start >= 2 * times[-1] - times[-2] - TIME_TOLERANCE:  # after the last frame's display
        first = n
    stop = n if end is None else int(np.searchsorted(times, end - TIME_TOLERANCE, side="left"))
    return first, max(stop, first + 1)


UNINDEXED_FORMATS = {"mpegts", "h264", "hevc", "mpegvideo", "m4v"}  # decord misnumbers their frames


def open_gop(path: Path) -> bool:
    """Whether a frame decoded after a keyframe is shown before it (an open GOP's leading frames), where
    timestamp seeks to the keyframe miss. One demux pass, no decoding."""
    with av.open(str(path)) as container:
        keyframe_pts = None
        for packet in container.demux(container.streams.video[0]):
            if packet.pts is None or not packet.size:
                continue
            if packet.is_keyframe:
                keyframe_pts = packet.pts
            elif keyframe_pts is not None and packet.pts < keyframe_pts:
                return True
    return False


READERS: dict[str, type[VideoReader]] = {"decord": DecordReader, "pyav": PyAVReader}


def open_video(path: str | Path, backend: str = "auto", num_threads: int = 1) -> VideoReader:
    """Open `path` with `backend` ("decord", "pyav", or "auto": decord, else PyAV).

    "auto" uses PyAV when decord is not installed or cannot open the file (e.g. AV1), and redoes
    with PyAV any read that decord fails.
    """
    if backend == "auto":
        try:
            return DecordReader(path, num_threads, fallback=True)
        except (VideoDecodeError, ImportError) as e:
            log.debug("decord cannot open %s (%s); using PyAV", path, e)
            return PyAVReader(path, num_threads)
    if backend not in READERS:
        raise ValueError(f"unknown video backend {backend!r}; choose 'auto' or one of {sorted(READERS)}")
    return READERS[backend](path, num_threads)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The shape `resize_shorter_side` gives a `height` x `width` frame."""
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def crop_origin(height: int, width: int, size: int, position: float = 0.5) -> tuple[int, int]:
    """(top, left) of the square `crop_square` takes from `height` x `width` frames."""
    top = round((height - size) * (position if height > width else 0.5))
    left = round((width - size) * (position if width >= height else 0.5))
    return top, left


def resize_shorter_side(frames: np.ndarray | torch.Tensor, size: int, interpolation: str = "bicubic",
                        max_float: int = 1 << 24) -> torch.Tensor:
    """uint8 `[T, H, W, 3]` -> uint8 with the shorter side `size`, aspect kept; `interpolation` is
    "bicubic" or "bilinear" (antialiased) or "nearest".

    The float32 copy the filter needs is made `max_float` values at a time at most (whole frames, or one
    colour plane of one frame): an 8K frame costs one 133 MB plane, not 400 MB per frame sampled.
    Planes are filtered independently, so the result is the same bit for bit.
    """
    if interpolation not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"interpolation {interpolation!r} is not one of bicubic, bilinear, nearest")
    x = torch.as_tensor(frames)
    t, h, w = x.shape[:3]
    out_hw = resized_shape(h, w, size)
    if out_hw == (h, w):
        return x
    planes = x.permute(0, 3, 1, 2)
    step = max_float // (h * w)  # planes per filter call
    if step >= 3 * t:
        return _filter(planes, out_hw, interpolation).permute(0, 2, 3, 1).contiguous()
    out = torch.empty((t, 3, *out_hw), dtype=torch.uint8)
    flat_in, flat_out = planes.reshape(t * 3, 1, h, w), out.view(t * 3, 1, *out_hw)
    for i in range(0, t * 3, max(step, 1)):
        flat_out[i:i + max(step, 1)] = _filter(flat_in[i:i + max(step, 1)], out_hw, interpolation)
    return out.permute(0, 2, 3, 1).contiguous()


def _filter(planes: torch.Tensor, out_hw: tuple[int, int], interpolation: str) -> torch.Tensor:
    smooth = dict(antialias=True, align_corners=False) if interpolation != "nearest" else {}
    y = F.interpolate(planes.float(), size=out_hw, mode=interpolation, **smooth)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def crop_square(frames: torch.Tensor, size: int, position: float = 0.5) -> torch.Tensor:
    """A `size` x `size` crop centred on the shorter side, at `position` along the longer one.

    `position` 0 is the left (or top) end, 0.5 the centre, 1 the right (or bottom) end.
    """
    h, w = frames.shape[1:3]
    if min(h, w) < size:
        raise ValueError(f"cannot crop {size}x{size} from {h}x{w} frames; resize first")
    top, left = crop_origin(h, w, size, position)
    return frames[:, top:top + size, left:left + size]
