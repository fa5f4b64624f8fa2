# Turns the evaluation scripts' variables into Hydra overrides (sourced). Empty task variables are
# left out, so the evaluated run's own task and OOD task are used.
OOD_BATCH_SIZE="${OOD_BATCH_SIZE:-}"
SWAG_COV_MAT="${SWAG_COV_MAT:-true}"
ONLY_OOD="${ONLY_OOD:-false}"
SEED="${SEED:-0}"
TEMPERATURE_SCALING="${TEMPERATURE_SCALING:-false}"
OFFLINE="${OFFLINE:-false}"
DATA_PATH="${DATA_PATH:-}"
EVAL_ARGS=(evaluation.num_samples="$NUM_SAMPLES" evaluation.swag_sample_scale="$SWAG_SAMPLE_SCALE"
           evaluation.swag_cov_mat="$SWAG_COV_MAT" evaluation.only_ood="$ONLY_OOD" evaluation.seed="$SEED"
           evaluation.temperature_scaling="$TEMPERATURE_SCALING" experiment.offline="$OFFLINE")
[[ -n "$TASK" ]] && EVAL_ARGS+=(experiment.task="$TASK" experiment.subtask="$SUBTASK")
[[ -n "$OOD_TASK" ]] && EVAL_ARGS+=(experiment.ood_task="$OOD_TASK" experiment.ood_subtask="$OOD_SUBTASK")
[[ -n "$OOD_BATCH_SIZE" ]] && EVAL_ARGS+=(experiment.ood_batch_size="$OOD_BATCH_SIZE")
[[ -n "$DATA_PATH" ]] && EVAL_ARGS+=(experiment.data_path="$DATA_PATH")
true
