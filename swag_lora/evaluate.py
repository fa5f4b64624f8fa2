"""Evaluate runs: `python -m swag_lora.evaluate evaluation.eval_method=swag evaluation.eval_model_path=RUN ...`
(the scripts in evaluate/ call this)."""
import sys

import hydra
from omegaconf import DictConfig

from swag_lora.cli import check_group_overrides


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from swag_lora.run import main_evaluate
    rc = main_evaluate(cfg)
    if rc:
        sys.exit(rc)


if __name__ == "__main__":
    check_group_overrides(sys.argv[1:])
    main()
