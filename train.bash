#!/usr/bin/env bash
#SBATCH --job-name=swag-lora-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
# Train one SWAG-LoRA run (the paper's OBQA setting by default).
#   bash train.bash                         # here: no Slurm, runs on what this machine has
#   sbatch train.bash                       # on Slurm; account/partition/time/GPUs: sbatch -A/-p/-t/--gres, or
#                                           # SBATCH_ACCOUNT, SBATCH_PARTITION, SBATCH_TIMELIMIT, SBATCH_GRES
#   GPUS_PER_NODE=4 ACCELERATE_CONFIG=accelerate_configs/multi_gpu_ddp.yaml sbatch --gres=gpu:4 train.bash
# Pre-emption: Slurm sends USR1 180 s before the end; the run checkpoints, exits 99, and the job requeues
# itself. The requeued job runs the same command and resumes from <run dir>/checkpoint automatically.
# Every variable below can be set from the environment; extra arguments are passed on as Hydra overrides.
set -uo pipefail

MODEL="${MODEL:-llama_7b_hf}"
METHOD="${METHOD:-swag}"
TASK="${TASK:-obqa}"
SUBTASK="${SUBTASK:-}"
OOD_TASK="${OOD_TASK:-}"
OOD_SUBTASK="${OOD_SUBTASK:-}"
OOD_BATCH_SIZE="${OOD_BATCH_SIZE:-8}"
LR="${LR:-6e-4}"
BSZ="${BSZ:-16}"
EPOCHS="${EPOCHS:-18}"
SWAG_START="${SWAG_START:-8}"
SWAG_LR="${SWAG_LR:-1e-4}"
SWAG_ANNEAL_EPOCHS="${SWAG_ANNEAL_EPOCHS:-5}"
FORCE_SAVE="${FORCE_SAVE:-5}"
SEED="${SEED:-0}"
EXP_NAME="${EXP_NAME:-}"
SAVE_FOLDER="${SAVE_FOLDER:-./results}"
WANDB_GROUP="${WANDB_GROUP:-default}"
WANDB_MODE_SETTING="${WANDB_MODE_SETTING:-offline}"
OFFLINE="${OFFLINE:-false}"
DATA_PATH="${DATA_PATH:-./data}"
MODEL_PATH="${MODEL_PATH:-./models}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-}"

source "$(dirname "${BASH_SOURCE[0]}")/scripts/common.sh" 2>/dev/null || source "${SLURM_SUBMIT_DIR:-.}/scripts/common.sh"

ARGS=(model="$MODEL" method="$METHOD" experiment.task="$TASK" experiment.subtask="$SUBTASK"
      experiment.ood_task="$OOD_TASK" experiment.ood_subtask="$OOD_SUBTASK" experiment.ood_batch_size="$OOD_BATCH_SIZE"
      experiment.learning_rate="$LR" experiment.batch_size="$BSZ" experiment.num_epochs="$EPOCHS"
      experiment.seed="$SEED" experiment.exp_name="$EXP_NAME" experiment.save_folder="$SAVE_FOLDER"
      experiment.wandb_group="$WANDB_GROUP" experiment.wandb_mode="$WANDB_MODE_SETTING"
      experiment.offline="$OFFLINE" experiment.data_path="$DATA_PATH" experiment.model_path="$MODEL_PATH")
if [[ "$METHOD" == "swag" ]]; then
  ARGS+=(method.swag_start="$SWAG_START" method.swag_learning_rate="$SWAG_LR"
         method.swag_anneal_epochs="$SWAG_ANNEAL_EPOCHS" method.force_save="$FORCE_SAVE")
fi

source scripts/run_training.sh
run_training "${ARGS[@]}" "$@"
