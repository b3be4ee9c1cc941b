#!/usr/bin/env bash
# CLIP ViT-B/16, 4096 codec-selected patches, on each of $DATASETS.
# Extra arguments go to every ovprobe run; the environment (DATA_ROOT, CKPT_DIR, NPROC, ...): common.sh.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_eval clip_base16 sampling=codec sampling.budget=4096 -- "$@"
