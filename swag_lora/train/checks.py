"""Checks across training settings, before any model loads (the per-field ones ran in config/parse.py): the
model's options, the task pair, the schedule, each method's combinations (MethodConfig.check), the closing table's
methods, the offline folders and the outputs."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from swag_lora.config import RunConfig, check_task
from swag_lora.config.schema import NO_LOGLIK_HEAD, ModelConfig
from swag_lora.errors import ConfigError
from swag_lora.predict.methods import TABLE_METHODS
from swag_lora.sources import check_offline


def _fail(msg: str):
    raise ConfigError(msg)


NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_outputs(exp) -> None:
    """experiment.exp_name is a name, not a path (overwrite=true deletes the run directory); save_folder can be
    written."""
    if exp.exp_name and (not NAME_OK.fullmatch(exp.exp_name) or exp.exp_name in (".", "..")):
        _fail(f"experiment.exp_name={exp.exp_name!r} must be a name (letters, digits, . _ + = -), not a path; the run "
              f"directory is <save_folder>/<task>/<model>/<method>/<exp_name>_seed<N>_<fingerprint>")
    folder = Path(exp.save_folder)
    if folder.exists() and not folder.is_dir():
        _fail(f"experiment.save_folder={exp.save_folder!r} is a file; allowed: a folder")
    probe = folder if folder.exists() else next((p for p in folder.resolve().parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK):
        _fail(f"experiment.save_folder={exp.save_folder!r} cannot be written ({probe} is read-only); allowed: a "
              f"writable folder")


def check_model(m: ModelConfig) -> None:
    if m.quantization != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            _fail(f"model.quantization={m.quantization} needs bitsandbytes: pip install -r requirements-dev.txt "
                  f"(bitsandbytes==0.50.2; runs on the CPU and on CUDA)")
        if m.tiny:
            _fail(f"model.quantization={m.quantization} quantizes weights loaded from a folder or the hub; "
                  f"model {m.name!r} is built from a config (save it with save_pretrained and set model.model_name)")
    if m.package and importlib.util.find_spec(m.package) is None:
        _fail(f"model {m.name!r} loads from the package {m.package!r}, which is not installed: pip install -r requirements.txt")


def validate_train(run: RunConfig) -> None:
    """Checks across fields for a training run (the per-field ones ran in `parse_run`)."""
    exp, m = run.experiment, run.method
    check_model(run.model)
    check_task(exp, "task", "subtask")
    if exp.ood_task:
        check_task(exp, "ood_task", "ood_subtask")
        if exp.ood_task == exp.task and exp.ood_subtask == exp.subtask:
            _fail(f"experiment.ood_task={exp.ood_task!r} with ood_subtask={exp.ood_subtask!r} is the in-distribution task "
                  f"itself; choose another task or subtask")
    if exp.choice_scoring != "letter":
        if run.model.family != "causal":
            _fail(f"experiment.choice_scoring={exp.choice_scoring} scores a causal LM's choice tokens; model "
                  f"{run.model.name!r} is an encoder; allowed: letter")
        if "ll-laplace" in run.evaluation.table_methods:
            _fail(f"evaluation.table_methods entry 'll-laplace' with experiment.choice_scoring={exp.choice_scoring}: "
                  f"{NO_LOGLIK_HEAD}")
    if exp.scheduler == "cosine_hard_restarts" and not float(exp.num_lr_cycles).is_integer():
        _fail(f"experiment.num_lr_cycles={exp.num_lr_cycles} must be an integer for experiment.scheduler=cosine_hard_restarts")
    if exp.batch_size % exp.gradient_accumulation_steps:
        _fail(f"experiment.batch_size={exp.batch_size} is the batch per optimizer step and must be a multiple of "
              f"experiment.gradient_accumulation_steps={exp.gradient_accumulation_steps} (loader batch = their quotient)")
    m.check(exp)                        # the method's own combinations (config/schema.py)
    unknown = [name for name in run.evaluation.table_methods if name not in TABLE_METHODS]
    if unknown:
        _fail(f"unknown evaluation.table_methods entry {unknown[0]!r}; allowed: {', '.join(TABLE_METHODS)}")
    check_offline(run, [(exp.task, exp.subtask), (exp.ood_task, exp.ood_subtask)])
    check_outputs(exp)


