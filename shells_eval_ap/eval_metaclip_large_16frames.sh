#!/usr/bin/env bash
# MetaCLIP ViT-L/14 (fullcc2.5b), 16 uniformly sampled frames, on each of $DATASETS.
# Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR, NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval metaclip_large14 sampling=uniform sampling.frames_equiv=16 -- "$@"
