"""Tasks: datasets in their official formats, video decoding, and frame samplers."""

from tasks.clip import Clip, SampledClip
from tasks.datasets.registry import AnnotationError, Task, create_task, list_tasks, register_task
from tasks.decode.video import VideoDecodeError, VideoReader, open_video
from tasks.loader import Batch, ClipDataset, SkippedClip, collate_views, make_loader
from tasks.sampling.samplers import Sampler, create_sampler, list_samplers, register_sampler

__all__ = [
    "AnnotationError", "Batch", "Clip", "ClipDataset", "SampledClip", "Sampler", "SkippedClip", "Task",
    "VideoDecodeError", "VideoReader", "collate_views", "create_sampler", "create_task", "list_samplers",
    "list_tasks", "make_loader", "open_video", "register_sampler", "register_task",
]
