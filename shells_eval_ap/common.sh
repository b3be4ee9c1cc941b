# shellcheck shell=bash
# Shared by the eval_*.sh scripts: they source this file and call `run_eval BACKBONE SETTING... -- "$@"`.
# As in the original suite, the checkpoint folder may come first: `eval_ov_encoder_large_8frames.sh /ckpt`.
# One `ovprobe` run per dataset; the task config carries the reference recipe's epochs (Diving-48 and
# HMDB51 30, the others 10). Environment:
#   DATASETS    tasks to evaluate, space separated (default: the original suite's eight, "ssv2 diving48
#               perception_test epic_verb epic_noun hmdb51 kinetics400 charades_ego")
#   DATA_ROOT   folder with one folder per dataset, <DATA_ROOT>/<task> (default: $OVPROBE_DATA/<task>)
#   CKPT_DIR    the backbone's checkpoint folder (config.json + weights; default: the Hugging Face cache);
#               a first argument without `=` is taken as the checkpoint folder instead
#   NPROC       processes per node; above 1 the run is launched with torchrun
#   NNODES      nodes; above 1 run the script on every node with RDZV_ENDPOINT=<first node>:<port>
#   BATCH_SIZE  clips per backbone batch during feature extraction (default: the config's)
#   DRY_RUN=1   print the resolved commands instead of running them
#   PLAN=1      run nothing: print the plan of these runs (`ovprobe-plan`: finished or not, feature stores,
#               bytes to write, clips, encode FLOPs and hours), from the annotation files alone
# Extra arguments are Hydra overrides passed to every run, e.g. `probe.recipe.epochs=5 device=cuda:1`.
# A dataset whose run fails does not stop the others: every dataset runs, and the failed ones are listed
# at the end (exit status 1), as a sweep lists its failed jobs.

set -euo pipefail

PAPER_DATASETS="ssv2 diving48 perception_test epic_verb epic_noun hmdb51 kinetics400 charades_ego"

run_eval() {
    local backbone=$1
    shift
    local setting=()
    while (($#)) && [[ $1 != -- ]]; do
        setting+=("$1")
        shift
    done
    if (($#)); then shift; fi # the --
    local checkpoint=${CKPT_DIR:-}
    if (($#)) && [[ $1 != *=* && $1 != -* ]]; then # the original suite's habit: the checkpoint first
        checkpoint=$1
        shift
    fi
    local launcher=(ovprobe)
    if ((${NPROC:-1} > 1 || ${NNODES:-1} > 1)); then
        launcher=(torchrun "--nproc_per_node=${NPROC:-1}")
        if ((${NNODES:-1} > 1)); then
            launcher+=("--nnodes=$NNODES" --rdzv-backend=c10d
                "--rdzv-endpoint=${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the first node}")
        fi
        launcher+=(-m probe.run)
    fi
    local dataset failed=() plan=()
    for dataset in ${DATASETS:-$PAPER_DATASETS}; do
        local args=("backbone=$backbone" "task=$dataset" "${setting[@]}")
        if [[ -n ${DATA_ROOT:-} ]]; then args+=("++task.args.root=$DATA_ROOT/$dataset"); fi
        if [[ -n $checkpoint ]]; then args+=("backbone.args.checkpoint=$checkpoint"); fi
        if [[ -n ${BATCH_SIZE:-} ]]; then args+=("extract.batch_size=$BATCH_SIZE"); fi
        args+=("$@")
        local cmd=("${launcher[@]}" "${args[@]}")
        if [[ ${PLAN:-0} == 1 ]]; then # one plan of every dataset's run: `ovprobe-plan A --and B ...`
            if ((${#plan[@]})); then plan+=(--and); fi
            plan+=("${args[@]}")
        elif [[ ${DRY_RUN:-0} == 1 ]]; then
            printf '%q' "${cmd[0]}"
            printf ' %q' "${cmd[@]:1}"
            printf '\n'
        elif ! "${cmd[@]}"; then
            failed+=("$dataset")
        fi
    done
    if ((${#plan[@]})); then ovprobe-plan "${plan[@]}"; fi
    if ((${#failed[@]})); then
        echo "run_eval: ${#failed[@]} dataset(s) failed (their messages are above): ${failed[*]}" >&2
        return 1
    fi
}
