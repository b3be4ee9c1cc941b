"""UCF101 in the official layout under `root` (or `$OVPROBE_DATA/ucf101`):

    ucfTrainTestlist/classInd.txt        `<index> <class>` lines, index 1..101
    ucfTrainTestlist/trainlist0<N>.txt   `<class>/v_<class>_gXX_cYY.avi <index>` lines, N = 1, 2, 3
    ucfTrainTestlist/testlist0<N>.txt    `<class>/v_<class>_gXX_cYY.avi` lines (no label)
    UCF-101/<class>/v_<class>_gXX_cYY.avi

Class indices are classInd's, made 0-based. A video's class is its folder: the file names do not always
spell it as classInd does (`HandstandPushups/v_HandStandPushups_...`); a trainlist label that contradicts
the folder is a bad record. `split` (1, 2 or 3) picks the list files and enters the run record with the
task config. The original suite lists UCF101 (101 classes) but does not probe it in its averages; its
default of 10 epochs applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tasks.clip import Clip
from tasks.datasets.registry import AnnotationError, Task, data_root, register_task
from tasks.datasets.textlists import text_lines

LISTS_DIR = "ucfTrainTestlist"
LIST_FILES = {"train": "trainlist0{}.txt", "test": "testlist0{}.txt"}


def read_class_index(path: Path) -> list[str]:
    """Class names in classInd order, checked to be numbered 1..K once each."""
    index: dict[int, str] = {}
    for where, fields in text_lines(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise AnnotationError(f"{where}: expected '<index> <class>', got {' '.join(fields)!r}")
        index[int(fields[0])] = fields[1]
    if sorted(index) != list(range(1, len(index) + 1)) or len(set(index.values())) != len(index):
        raise AnnotationError(f"{path}: class indices must be 1..{len(index)} and names distinct, each once")
    return [index[i] for i in sorted(index)]


@register_task(name="ucf101")
class UCF101(Task):
    name = "ucf101"
    splits = ("train", "test")

    def __init__(self, root: str | Path | None = None, split: int = 1, lists_dir: str = LISTS_DIR,
                 video_dir: str = "UCF-101", on_bad_record: str = "error"):
        if split not in (1, 2, 3):
            raise AnnotationError(f"ucf101: split must be 1, 2 or 3 (the official splits), got {split!r}")
        self.root = data_root(root, "ucf101")
        self.split = split
        self.lists_dir = self.root / lists_dir
        self.video_folder = self.root / video_dir
        super().__init__(read_class_index(self.lists_dir / "classInd.txt"), on_bad_record)
        self._index = {c: i for i, c in enumerate(self.classes)}

    def _read_split(self, split: str) -> Iterable[tuple[str, Clip]]:
        labelled = split == "train"
        for where, fields in text_lines(self.lists_dir / LIST_FILES[split].format(self.split)):
            folder = fields[0].split("/")[0] if "/" in fields[0] else None
            problem = None
            if len(fields) != 1 + labelled or (labelled and not fields[1].isdigit()):
                form = "<class>/<video>.avi" + (" <index>" if labelled else "")
                problem = f"expected '{form}', got {' '.join(fields)!r}"
            elif folder not in self._index:
                problem = f"{fields[0]!r} is not in a class folder of classInd.txt"
            elif labelled and int(fields[1]) - 1 != self._index[folder]:
                problem = f"label {fields[1]} contradicts the class folder {folder!r}, whose index is " \
                          f"{self._index[folder] + 1} in classInd.txt"
            if problem:
                self._reject(split, where, problem)
                continue
            yield where, Clip(clip_id=Path(fields[0]).stem, path=self.video_folder / fields[0],
                              label=self._index[folder])
