"""HMDB51 in the official layout under `root` (or `$OVPROBE_DATA/hmdb51`):

    testTrainMulti_7030_splits/<class>_test_split<N>.txt   N = 1, 2, 3; one `<video>.avi <id>` line per
                                                           video of the class: id 1 train, 2 test,
                                                           0 not used in split N
    videos/<class>/<video>.avi                             hmdb51_org.rar, each class's .rar unpacked
                                                           into its own folder

Classes are the sorted class names of the split files (51). `split` (1, 2 or 3) picks the split files;
it is part of the task config, so it enters the run record, and the clip lists (hence the feature
stores) differ per split. The original OneVision-Encoder suite probes HMDB51 as one train/val pair of
converted CSVs (`hmdb51/train_new.csv`, `val_new.csv`, 51 classes, 30 epochs) without naming the split;
the default here is split 1, the common single-split protocol, and its "test" is the suite's "val".
Averaging the three splits, as the dataset's paper does, is three runs (`task.args.split=1,2,3`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tasks.clip import Clip
from tasks.datasets.registry import AnnotationError, Task, data_root, register_task
from tasks.datasets.textlists import text_lines

SPLITS_DIR = "testTrainMulti_7030_splits"
MARKERS = {"train": "1", "test": "2"}  # "0": not used in this split


@register_task(name="hmdb51")
class HMDB51(Task):
    name = "hmdb51"
    splits = ("train", "test")

    def __init__(self, root: str | Path | None = None, split: int = 1, splits_dir: str = SPLITS_DIR,
                 video_dir: str = "videos", on_bad_record: str = "error"):
        if split not in (1, 2, 3):
            raise AnnotationError(f"hmdb51: split must be 1, 2 or 3 (the official splits), got {split!r}")
        self.root = data_root(root, "hmdb51")
        self.split = split
        self.splits_dir = self.root / splits_dir
        self.video_folder = self.root / video_dir
        suffix = f"_test_split{split}.txt"
        files = sorted(self.splits_dir.glob(f"*{suffix}")) if self.splits_dir.is_dir() else []
        if not files:
            raise AnnotationError(f"no split files {self.splits_dir}/<class>{suffix}; check root and "
                                  f"splits_dir (the official test_train_splits.rar unpacks to {SPLITS_DIR})")
        self._files = {p.name[: -len(suffix)]: p for p in files}
        super().__init__(sorted(self._files), on_bad_record)

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        for label, name in enumerate(self.classes):
            for where, fields in text_lines(self._files[name]):
                if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                    self._reject(split, where, f"expected '<video>.avi <0|1|2>', got {' '.join(fields)!r}")
                    continue
                video, marker = fields
                if marker == MARKERS[split]:
                    yield where, Clip(clip_id=Path(video).stem, path=self.video_folder / name / video,
                                      label=label)
