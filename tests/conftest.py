"""Test settings: offline, no W&B, one torch thread (2 threads on a busy 2-core box run 9-20x slower)."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# The costliest files first (each takes 4-10 minutes on one core), so that pytest-xdist's `--dist loadfile` hands them
# out before the short ones and its two workers finish together (longest first); the rest keep their order.
COSTLIEST_FIRST = ("test_protocol_records.py", "test_resume.py", "test_distributed.py", "test_experiments.py",
                   "test_evaluation.py", "test_bad_input.py", "test_methods.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(COSTLIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable: a file's tests keep their order


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark data not found at {SHARED_DATA} (../shared/data is absent on this machine)")
    return SHARED_DATA


def compose(*overrides: str, config_name: str = "config"):
    """The composed config exactly as `launch_exp_hydra.py` (config) or `python -m swag_lora.evaluate` (eval) sees it."""
    from swag_lora.config import compose as compose_config
    return compose_config(config_name, list(overrides))


def run_config(*overrides: str):
    """The typed, checked training config of `launch_exp_hydra.py <overrides>`."""
    from swag_lora.config import parse_run
    from swag_lora.train.checks import validate_train
    run = parse_run(compose(*overrides))
    validate_train(run)
    return run


FAULTS = str(REPO / "tests" / "helpers" / "faults")   # sitecustomize: SWAG_LORA_TEST_* fault injection


def subprocess_env(**extra) -> dict:
    """The environment of a training subprocess: offline, no W&B, one thread, test fault injection available, the
    repository importable (also from tests/helpers scripts), and unbuffered output (tests that time a signal by the
    lines the run prints would otherwise read them only when the pipe's buffer flushes)."""
    path = os.pathsep.join(p for p in (FAULTS, str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path,
            "PYTHONUNBUFFERED": "1",
            **extra}


def load_runner():
    """experiments/run.py as a module (the protocol runner's functions, for tests that check them directly)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("protocol_runner", REPO / "experiments" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runner(protocol, *filters):
    """`python experiments/run.py <protocol> <filters>`, as a user starts it."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "experiments/run.py", str(protocol), *filters], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=900)


TINY = ("experiment.wandb_mode=disabled", "experiment.max_train_samples=48", "experiment.max_eval_samples=32",
        "experiment.batch_size=8", "experiment.eval_batch_size=16")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every test starts with no Accelerate state (a Trainer or an earlier run would fix e.g. mixed precision)."""
    yield
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)


def kill_and_resume(tmp_path, args: list[str]):
    """An uninterrupted run and a run SIGKILLed after epoch 2 then relaunched, with the same `args`; returns the two
    run directories (the relaunch asserted to resume at epoch 3)."""
    import subprocess
    import sys

    def launch(save, env=None):
        return subprocess.run([sys.executable, "launch_exp_hydra.py", *args, f"experiment.save_folder={save}"], cwd=REPO,
                              env=subprocess_env(**(env or {})), capture_output=True, text=True, timeout=600)
    ref = launch(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert launch(tmp_path / "cut", {"SWAG_LORA_TEST_KILL_AFTER_EPOCH": "2"}).returncode != 0
    resumed = launch(tmp_path / "cut")
    assert resumed.returncode == 0 and "resumed from checkpoint: epoch 3" in resumed.stdout, resumed.stderr[-2000:]
    return tuple(next((tmp_path / d).rglob("run_info.json")).parent for d in ("ref", "cut"))
