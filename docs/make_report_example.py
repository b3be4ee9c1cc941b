"""Regenerate the README's example report: a multirun of 4 budgets x 2 samplings x 2 backbones on the
generated task (random-weight backbones, a few minutes on a CPU), then `python -m probe.report`.

    python docs/make_report_example.py [WORK_DIR]     # records in WORK_DIR/results, report in docs/report
"""

from __future__ import annotations

import sys
import tempfile
from itertools import product
from pathlib import Path

from tqdm import tqdm

from probe.report import main as report
from probe.run.main import compose_config, run

BACKBONES = {
    "onevision_tiny": [],
    # A second, wider backbone (random weights, 2 of its 12 layers for speed) at 112 px: 64 patches a frame.
    "onevision_small": ["+backbone.args.input_size=112", "+backbone.args.num_hidden_layers=2"],
}
FRAMES = (1, 2, 4, 8)
SAMPLINGS = ("uniform", "codec")
COMMON = [
    "task.args.num_train=64",
    "task.args.num_test=32",
    "task.args.num_frames=32",
    "probe.recipe.epochs=5",
    "probe.recipe.lrs=[1e-3]",
    "probe.recipe.wds=[0.0,0.01]",
    "probe.recipe.val_fraction=0.25",
    "probe.recipe.bootstrap=200",
    "extract.train_views=1",
    "num_workers=0",
    "progress=false",
]


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ovprobe-example-"))
    grid = list(product(BACKBONES.items(), SAMPLINGS, FRAMES))
    for (name, extra), sampling, frames in tqdm(grid, desc="runs"):
        run(compose_config([
            *COMMON, f"backbone={name}", *extra, f"sampling={sampling}", f"sampling.frames_equiv={frames}",
            f"results_dir={work / 'results'}", f"cache_dir={work / 'cache'}",
        ]))
    report.main([str(work / "results"), "--out", str(Path(__file__).parent / "report")])


if __name__ == "__main__":
    main()
