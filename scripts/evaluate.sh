# The body of every evaluate/*.bash (sourced after the script sets METHOD, RUNS=one|several and its variables):
# finds the repository, turns the variables into Hydra overrides and runs `python -m swag_lora.evaluate`.
# Empty task variables are left out, so the evaluated run's own task and OOD task are used.
# shellcheck disable=SC1091
USER_OFFLINE="${OFFLINE:-}"        # set by the user: overrides the run's experiment.offline; unset: the run's own
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
OOD_BATCH_SIZE="${OOD_BATCH_SIZE:-}"
SWAG_COV_MAT="${SWAG_COV_MAT:-true}"
ONLY_OOD="${ONLY_OOD:-false}"
SEED="${SEED:-10}"
TEMPERATURE_SCALING="${TEMPERATURE_SCALING:-false}"
DATA_PATH="${DATA_PATH:-}"
EVAL_ARGS=(evaluation.eval_method="$METHOD" evaluation.num_samples="$NUM_SAMPLES"
           evaluation.swag_sample_scale="$SWAG_SAMPLE_SCALE" evaluation.swag_cov_mat="$SWAG_COV_MAT"
           evaluation.only_ood="$ONLY_OOD" evaluation.seed="$SEED" evaluation.temperature_scaling="$TEMPERATURE_SCALING")
[[ -n "$USER_OFFLINE" ]] && EVAL_ARGS+=(experiment.offline="$USER_OFFLINE")
[[ -n "$TASK" ]] && EVAL_ARGS+=(experiment.task="$TASK" experiment.subtask="$SUBTASK")
[[ -n "$OOD_TASK" ]] && EVAL_ARGS+=(experiment.ood_task="$OOD_TASK" experiment.ood_subtask="$OOD_SUBTASK")
[[ -n "$OOD_BATCH_SIZE" ]] && EVAL_ARGS+=(experiment.ood_batch_size="$OOD_BATCH_SIZE")
[[ -n "$DATA_PATH" ]] && EVAL_ARGS+=(experiment.data_path="$DATA_PATH")
[[ -n "${LAPLACE_SUBSET:-}" ]] && EVAL_ARGS+=(evaluation.laplace_subset="$LAPLACE_SUBSET")
[[ -n "${LAPLACE_HESSIAN:-}" ]] && EVAL_ARGS+=(evaluation.laplace_hessian="$LAPLACE_HESSIAN")
[[ -n "${LAPLACE_PREDICTIVE:-}" ]] && EVAL_ARGS+=(evaluation.laplace_predictive="$LAPLACE_PREDICTIVE")
[[ -n "${LAPLACE_BATCH_SIZE:-}" ]] && EVAL_ARGS+=(evaluation.laplace_batch_size="$LAPLACE_BATCH_SIZE")
[[ -n "${LAPLACE_JACOBIAN_ROWS:-}" ]] && EVAL_ARGS+=(evaluation.laplace_jacobian_rows="$LAPLACE_JACOBIAN_ROWS")
[[ -n "${LAPLACE_PRIOR:-}" ]] && EVAL_ARGS+=(evaluation.laplace_prior="$LAPLACE_PRIOR")
[[ -n "${DROPOUT_SCOPE:-}" ]] && EVAL_ARGS+=(evaluation.dropout_scope="$DROPOUT_SCOPE")
[[ -n "${BLOB_MEAN:-}" ]] && EVAL_ARGS+=(evaluation.blob_mean="$BLOB_MEAN")
[[ -n "${TFB_METRIC:-}" ]] && EVAL_ARGS+=(evaluation.tfb_metric="$TFB_METRIC")
[[ -n "${TFB_TOLERANCE:-}" ]] && EVAL_ARGS+=(evaluation.tfb_tolerance="$TFB_TOLERANCE")
if [[ "$RUNS" == several ]]; then
  [[ -n "$PATHS" ]] || { echo "error: set PATHS to two or more run directories (space-separated)" >&2; exit 2; }
  read -r -a MEMBERS <<< "$PATHS"
  LIST=$(printf '"%s",' "${MEMBERS[@]}")
  EVAL_ARGS+=("evaluation.eval_model_paths=[${LIST%,}]")
else
  [[ -n "$MODEL_PATH" ]] || { echo "error: set MODEL_PATH to a run directory" >&2; exit 2; }
  EVAL_ARGS+=(evaluation.eval_model_path="$MODEL_PATH")
fi
"$PYTHON" -m swag_lora.evaluate "${EVAL_ARGS[@]}" "$@"
