#!/usr/bin/env bash
# OneVision-Encoder large, the 2048 patches of 64 frames that changed most in decoded pixels,
# on each of $DATASETS. Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR,
# NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval onevision_large sampling=pixel_diff sampling.budget=2048 -- "$@"
