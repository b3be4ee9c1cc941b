#!/usr/bin/env bash
# OneVision-Encoder large, the 4096 patches drawn at random from 64 frames (the control for codec),
# on each of $DATASETS. Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR,
# NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval onevision_large sampling=random sampling.budget=4096 -- "$@"
