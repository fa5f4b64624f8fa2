# Shared by train.bash, scripts/run_training.sh, scripts/evaluate.sh and so every evaluate/*.bash (sourced, not run).
# Finds the repository, detects Slurm, and sets up offline mode and the launcher.

# Under sbatch the script runs from a spool copy: the repository is where it was submitted from.
if [[ -n "${SWAG_LORA_DIR:-}" ]]; then
  REPO_DIR="$SWAG_LORA_DIR"
elif [[ -n "${SLURM_JOB_ID:-}" && -n "${SLURM_SUBMIT_DIR:-}" && -f "${SLURM_SUBMIT_DIR}/launch_exp_hydra.py" ]]; then
  REPO_DIR="$SLURM_SUBMIT_DIR"
else
  REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
cd "$REPO_DIR" || exit 1
mkdir -p logs

# Activate an environment if one is named (conda env or venv path).
if [[ -n "${VENV:-}" && -f "${VENV}/bin/activate" ]]; then
  # shellcheck disable=SC1091
  source "${VENV}/bin/activate"
fi

PYTHON="${PYTHON:-python}"
OFFLINE="${OFFLINE:-false}"
if [[ "$OFFLINE" == "true" ]]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
fi

in_slurm() { [[ -n "${SLURM_JOB_ID:-}" ]]; }

# The Accelerate launch command, in the array LAUNCH (the script is appended by the caller).
# Locally: what the machine has (or ACCELERATE_CONFIG). Under Slurm: one process per GPU and, across
# several nodes, one launcher per node with machine rank, main process address and port from Slurm.
build_launch() {
  if command -v accelerate >/dev/null 2>&1; then
    LAUNCH=(accelerate launch)
  else   # e.g. a fresh pyenv whose shims were not rehashed
    LAUNCH=("$PYTHON" -m accelerate.commands.launch)
  fi
  [[ -n "${ACCELERATE_CONFIG:-}" ]] && LAUNCH+=(--config_file "$ACCELERATE_CONFIG")
  if in_slurm; then
    local nnodes="${SLURM_JOB_NUM_NODES:-1}"
    local gpus_per_node="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
    local nproc=$(( nnodes * gpus_per_node ))
    if (( nnodes > 1 )); then
      local master
      master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
      LAUNCH=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c
              "${LAUNCH[*]} --num_machines $nnodes --num_processes $nproc --machine_rank \$SLURM_NODEID --main_process_ip $master --main_process_port ${MAIN_PROCESS_PORT:-29500} \"\$0\" \"\$@\"")
    elif (( nproc > 1 )); then
      LAUNCH+=(--multi_gpu --num_processes "$nproc")
    fi
  fi
}
