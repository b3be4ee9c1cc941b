#!/usr/bin/env bash
# V-JEPA 2 ViT-L/16 (tubelets 2x16x16), 16 uniformly sampled frames, on each of $DATASETS.
# Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR, NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval vjepa2_large sampling=uniform sampling.frames_equiv=16 -- "$@"
