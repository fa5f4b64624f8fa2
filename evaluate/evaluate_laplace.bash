#!/usr/bin/env bash
#SBATCH --job-name=swag-lora-eval-laplace
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x-%j.out
# Evaluate Laplace-LoRA at the MAP adapter (post hoc; fitted once, kept in laplace_model/): LAPLACE_SUBSET all (LoRA + head)
# or head (last-layer Laplace), LAPLACE_HESSIAN kron or diag, LAPLACE_PREDICTIVE glm_probit (the default), nn_mc (NUM_SAMPLES weight samples),
# or glm_mc (NUM_SAMPLES linearised-logit samples); LAPLACE_BATCH_SIZE (rows per batch of the fit; empty = the run's
# eval batch size) and LAPLACE_JACOBIAN_ROWS (rows per Jacobian call of the whole-model GLM) bound the memory,
# in distribution (TASK/SUBTASK; empty = the run's own task) and out of distribution (OOD_TASK/OOD_SUBTASK).
#   bash evaluate/evaluate_laplace.bash      # here, without Slurm
#   sbatch evaluate/evaluate_laplace.bash    # on Slurm (account/partition/time: sbatch -A/-p/-t or SBATCH_ACCOUNT, SBATCH_PARTITION, SBATCH_TIMELIMIT)
# Every variable below can be set from the environment, e.g. MODEL_PATH=results/... bash evaluate/evaluate_laplace.bash
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
LAPLACE_SUBSET="${LAPLACE_SUBSET:-all}"
LAPLACE_HESSIAN="${LAPLACE_HESSIAN:-kron}"
LAPLACE_PREDICTIVE="${LAPLACE_PREDICTIVE:-glm_probit}"
LAPLACE_BATCH_SIZE="${LAPLACE_BATCH_SIZE:-}"
LAPLACE_JACOBIAN_ROWS="${LAPLACE_JACOBIAN_ROWS:-8}"
LAPLACE_PRIOR="${LAPLACE_PRIOR:-marglik}"   # or val_nll: the prior precision with the lowest validation NLL over a grid
METHOD=laplace RUNS=one
BODY="$(dirname "${BASH_SOURCE[0]}")/../scripts/evaluate.sh"   # under sbatch: the submit directory's copy
[[ -f "$BODY" ]] || BODY="${SLURM_SUBMIT_DIR:-.}/scripts/evaluate.sh"
source "$BODY"
