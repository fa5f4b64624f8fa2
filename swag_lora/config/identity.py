"""Run identity: a run directory's name and fingerprint (every training setting but the seed), finding the run
directory of a path, and reading a run's config.yaml back."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from swag_lora.config.parse import compose, parse_run
from swag_lora.config.schema import RunConfig


# ---------------------------------------------------------------- run directories
# keys that never change what is trained: paths, logging, resume policy, the closing evaluation
NOT_TRAINING = ("experiment.resume", "experiment.overwrite", "experiment.wandb_mode", "experiment.wandb_path",
                "experiment.wandb_group", "experiment.wandb_project", "experiment.log_every_steps",
                "experiment.checkpoint_every_steps", "experiment.data_path", "experiment.model_path", "experiment.offline",
                "experiment.save_folder", "experiment.save_path", "experiment.exp_name", "experiment.eval_upon_save",
                "experiment.evaluate_after_training", "experiment.ood_task", "experiment.ood_subtask",
                "experiment.ood_batch_size", "evaluation", "hydra")


def training_settings(cfg: DictConfig | dict) -> dict:
    """Every setting that can change what a run trains, flattened to `group.key` -> value."""
    data = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)

    def flat(c, prefix=""):
        out = {}
        for k, v in c.items():
            key = f"{prefix}{k}"
            if key in NOT_TRAINING:
                continue
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out
    return flat(data)


def default_exp_name(run: RunConfig) -> str:
    exp = run.experiment
    return f"lr{exp.learning_rate:g}_bs{exp.batch_size}_ep{exp.num_epochs}_r{exp.lora_r}" + run.method.name_suffix(exp)


def task_dir_name(task: str, subtask: str) -> str:
    """`<task>` or `<task>_<subtask>`: the folder of a task in run directories and in the offline data layout."""
    return f"{task}_{subtask}" if subtask else task


def run_dir(run: RunConfig) -> Path:
    """`<save_folder>/<task>[_<subtask>]/<model>/<method>/<exp_name>_seed<seed>_<fingerprint>/` -- the same on every
    rank.  The fingerprint hashes every training setting but the seed, so two runs that differ in any of them
    never share a directory (and `overwrite` can only replace the same run), while seeds differ only in `seed<N>`."""
    exp = run.experiment
    settings = {k: v for k, v in training_settings(run.raw).items() if k != "experiment.seed"}
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"{exp.exp_name or default_exp_name(run)}_seed{exp.seed}_{fingerprint}"
    return (Path(exp.save_folder) / task_dir_name(exp.task, exp.subtask) / run.model.name / run.method.method_name
            / name)


def find_run_dir(path: str | os.PathLike) -> Path | None:
    """The run directory at or above `path` (the folder holding config.yaml)."""
    p = Path(path).resolve()
    for cand in (p, p.parent):
        if (cand / "config.yaml").is_file():
            return cand
    return None


def load_run_config(run_directory: Path) -> RunConfig:
    """A run's config.yaml -> RunConfig.  Keys added to experiment / method / evaluation since the run was trained
    take today's defaults for its method; the model block is the run's own."""
    saved = OmegaConf.load(Path(run_directory) / "config.yaml")
    base = compose("config", [f"method={saved.method.method_name}"])
    OmegaConf.set_struct(base, False)
    base.model = {}
    return parse_run(OmegaConf.merge(base, saved))


