#!/usr/bin/env bash
# AIMv2 ViT-L/14 native (the original suite's AIMv2) at 224 px,
# 16 uniformly sampled frames, on each of $DATASETS.
# Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR, NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval aimv2_large14_native sampling=uniform sampling.frames_equiv=16 -- "$@"
