"""Regenerate the example report in `docs/report/`: the generated motion task under uniform, codec,
random and pixel-difference sampling at two budgets, for two tiny random-weight OneVision encoders (more
`SEEDS` add repeats: same config and data, the seed drawing the probes' initialisation and the training
views), then `ovprobe-report`. Writes `docs/report/HOW_MADE.md` with the command and its wall time.

    python docs/make_report_example.py [WORK_DIR]     # records in WORK_DIR/results, report in docs/report
"""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

from tqdm import tqdm

from probe.report import main as report
from probe.run.main import compose_config, run

BACKBONES = {
    "onevision_tiny": [],
    # A second, wider backbone (random weights, 2 of its 12 layers for speed) at 112 px: 64 patches a frame.
    "onevision_small": ["backbone.args.input_size=112", "+backbone.args.num_hidden_layers=2"],
}
SAMPLINGS = ("uniform", "codec", "random", "pixel_diff")
FRAMES = (2, 4, 8)  # budgets of 128, 256 and 512 patches (64 a frame)
SEEDS = (0,)
COMMON = [
    "task.args.num_train=200",
    "task.args.num_test=320",  # intervals are over test clips: twice the default's, 0.7 as wide
    "task.args.seed=0",  # one data set: the seeds are repeats of one configuration
    "probe.recipe.lrs=[1.0e-3,3.0e-4]",  # the embedded default's grid and epochs (synthetic.yaml: 30)
    "probe.recipe.bootstrap=1000",
    "extract.train_views=2",
    "num_workers=0",
    "progress=false",
]
OUT = Path(__file__).parent / "report"


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ovprobe-example-"))
    started = time.perf_counter()
    grid = list(product(BACKBONES.items(), SAMPLINGS, FRAMES, SEEDS))
    for (name, extra), sampling, frames, seed in tqdm(grid, desc="runs"):
        run(compose_config([
            *COMMON, f"backbone={name}", *extra, f"sampling={sampling}", f"sampling.frames_equiv={frames}",
            f"seed={seed}", f"results_dir={work / 'results'}", f"cache_dir={work / 'cache'}",
        ]))
    shutil.rmtree(OUT, ignore_errors=True)  # nothing stale: the folder holds this report only
    report.main([str(work / "results"), "--out", str(OUT)])
    minutes = (time.perf_counter() - started) / 60
    (OUT / "HOW_MADE.md").write_text(
        "# How this report was made\n\n"
        "    PYTHONPATH=. python docs/make_report_example.py\n\n"
        f"{len(grid)} runs ({len(BACKBONES)} backbones x {len(SAMPLINGS)} samplings x {len(FRAMES)} budgets "
        f"x {len(SEEDS)} seed{'s' * (len(SEEDS) > 1)}) and the report took {minutes:.0f} minutes on {platform.machine()} "
        "(a shared, loaded 2-core machine: the time depends on the load; the numbers do not).\n"
    )


if __name__ == "__main__":
    main()
