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


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark data not found at {SHARED_DATA} (../shared/data is absent on this machine)")
    return SHARED_DATA


def compose(*overrides: str, config_name: str = "config"):
    """The composed config exactly as `launch_exp_hydra.py` would see it (no working-dir change)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


TINY = ("experiment.wandb_mode=disabled", "experiment.max_train_samples=48", "experiment.max_eval_samples=32",
        "experiment.batch_size=8", "experiment.eval_batch_size=16")
