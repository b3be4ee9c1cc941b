#!/usr/bin/env bash
# SigLIP2 large (patch 16, 256 px), the 4096 codec-selected patches of 64 frames, on each of $DATASETS.
# Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR, NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval siglip2_large16_256 sampling=codec sampling.budget=4096 -- "$@"
