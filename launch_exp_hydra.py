"""Train one SWAG-LoRA (or MAP) run: `accelerate launch launch_exp_hydra.py [overrides]`.

With no overrides: the offline demo (MiniLM on the generated demo task), then the evaluation table.
"""
import sys

import hydra
from omegaconf import DictConfig

from swag_lora.cli import check_group_overrides


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from swag_lora.run import main_train
    rc = main_train(cfg)
    if rc:
        sys.exit(rc)


if __name__ == "__main__":
    check_group_overrides(sys.argv[1:])
    main()
