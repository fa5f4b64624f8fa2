"""Train one SWAG-LoRA (or MAP) run: `accelerate launch launch_exp_hydra.py [overrides]` (conf/config.yaml).

With no overrides: the offline demo (MiniLM on the generated demo task), then the evaluation table.
"""
from swag_lora.cli import hydra_entry, main_train

if __name__ == "__main__":
    hydra_entry("config", main_train)
