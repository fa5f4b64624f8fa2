"""Evaluate runs: `python -m swag_lora.evaluate evaluation.eval_method=swag evaluation.eval_model_path=RUN ...`
(conf/eval.yaml; the scripts in evaluate/ call this)."""
from swag_lora.cli import hydra_entry, main_evaluate

if __name__ == "__main__":
    hydra_entry("eval", main_evaluate)
