#!/usr/bin/env bash
#SBATCH --job-name=swag-lora-eval-ivon
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x-%j.out
# Evaluate IVON: NUM_SAMPLES samples from the posterior of a method=ivon run (ivon_model/),
# in distribution (TASK/SUBTASK; empty = the run's own task) and out of distribution (OOD_TASK/OOD_SUBTASK).
#   bash evaluate/evaluate_ivon.bash      # here, without Slurm
#   sbatch evaluate/evaluate_ivon.bash    # on Slurm (account/partition/time: sbatch -A/-p/-t or SBATCH_ACCOUNT, SBATCH_PARTITION, SBATCH_TIMELIMIT)
# Every variable below can be set from the environment, e.g. MODEL_PATH=results/... bash evaluate/evaluate_ivon.bash
# Also: OOD_BATCH_SIZE, SWAG_COV_MAT, ONLY_OOD, SEED, TEMPERATURE_SCALING, OFFLINE, DATA_PATH (scripts/evaluate.sh).
# Extra arguments are passed on as Hydra overrides.
set -euo pipefail
MODEL_PATH="${MODEL_PATH:-}"        # a run directory: <save_folder>/<task>/<model>/<method>/<name>_seed<N>_<fingerprint>
TASK="${TASK:-}"
SUBTASK="${SUBTASK:-}"
OOD_TASK="${OOD_TASK:-}"
OOD_SUBTASK="${OOD_SUBTASK:-}"
NUM_SAMPLES="${NUM_SAMPLES:-15}"
SWAG_SAMPLE_SCALE="${SWAG_SAMPLE_SCALE:-1.0}"
METHOD=ivon RUNS=one
BODY="$(dirname "${BASH_SOURCE[0]}")/../scripts/evaluate.sh"   # under sbatch: the submit directory's copy
[[ -f "$BODY" ]] || BODY="${SLURM_SUBMIT_DIR:-.}/scripts/evaluate.sh"
source "$BODY"
