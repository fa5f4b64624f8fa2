"""Typed configuration, declared once: the dataclasses (schema.py), composed config -> checked objects (parse.py), run
identity (identity.py) and the generated table (docs.py, docs/configuration.md).  Keys the original
(fortuinlab/swag-lora) spells differently exist under both names; config.yaml interpolates ours from the original's,
so either can be set (`alias` in the metadata)."""
from swag_lora.config.identity import (NOT_TRAINING, default_exp_name, find_run_dir, load_run_config, run_dir,
                                       task_dir_name, training_settings)
from swag_lora.config.parse import (ALIASES, CONF, _build, _container, check_task, compose, evaluation_config,
                                    ood_task_list, parse_eval, parse_run, sync_aliases)
from swag_lora.config.schema import (ANNEAL_STRATEGIES, CHOICE_SCORINGS, METHOD_CONFIGS, MODULES_TO_SWAG, SCHEDULERS,
                                     BlobConfig, DataOverrides, EvalConfig, EvaluationConfig, ExperimentConfig, IvonConfig,
                                     MapConfig, MethodConfig, ModelConfig, RunConfig, SwagConfig, opt)
from swag_lora.errors import ConfigError

__all__ = ["ALIASES", "ANNEAL_STRATEGIES", "CHOICE_SCORINGS", "CONF", "METHOD_CONFIGS", "MODULES_TO_SWAG", "NOT_TRAINING",
           "SCHEDULERS", "BlobConfig", "ConfigError", "DataOverrides", "EvalConfig", "EvaluationConfig", "ExperimentConfig",
           "IvonConfig", "MapConfig", "MethodConfig", "ModelConfig", "RunConfig", "SwagConfig", "_build", "_container",
           "check_task", "compose", "default_exp_name", "evaluation_config", "find_run_dir", "load_run_config",
           "ood_task_list", "opt", "parse_eval", "parse_run", "run_dir", "sync_aliases", "task_dir_name",
           "training_settings"]
