# run_training ARGS...: launch training through Accelerate; forward Slurm's pre-emption signal to the
# training processes; when they checkpoint and exit 99, requeue this job (Slurm) or say how to resume.
run_training() {
  local pid rc
  build_launch
  echo "[train] ${LAUNCH[*]} launch_exp_hydra.py $*"
  "${LAUNCH[@]}" launch_exp_hydra.py "$@" &
  pid=$!
  # the training processes are the launcher's children (the launcher itself would die of USR1)
  forward() { echo "[train] pre-emption signal: asking the run to checkpoint"; pkill -USR1 -P "$pid" 2>/dev/null; }
  trap forward USR1 TERM
  while true; do
    wait "$pid"; rc=$?
    # wait returns >128 when interrupted by a trapped signal while the child still runs
    if (( rc > 128 )) && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  trap - USR1 TERM
  if (( rc == 99 )); then
    if in_slurm; then
      echo "[train] checkpoint written; requeueing job $SLURM_JOB_ID"
      scontrol requeue "$SLURM_JOB_ID"
      return 0
    fi
    echo "[train] checkpoint written; run the same command again to resume"
  fi
  return "$rc"
}
