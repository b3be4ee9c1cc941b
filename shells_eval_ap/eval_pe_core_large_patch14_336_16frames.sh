#!/usr/bin/env bash
# Perception Encoder core ViT-L/14 at 336 px (timm's release), 16 uniformly sampled frames,
# on each of $DATASETS.
# Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR, NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval timm_pe_core_large14_336 sampling=uniform sampling.frames_equiv=16 -- "$@"
