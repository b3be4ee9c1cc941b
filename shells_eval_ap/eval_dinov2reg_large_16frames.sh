#!/usr/bin/env bash
# DINOv2 large with registers, 16 uniformly sampled frames, on each of $DATASETS.
# Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR, NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval dinov2reg_large sampling=uniform sampling.frames_equiv=16 -- "$@"
