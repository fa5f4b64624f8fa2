"""Composed config -> checked objects: Hydra composes `conf/` (the values), `parse_run` / `parse_eval` convert and
check every field against its declaration (schema.py), keep the original's aliases equal, and resolve `auto`.
Every bad value raises `ConfigError` with one line naming it and what is allowed, before any model loads.
Checks that need a run (its files, its trained method) sit on the evaluation side (predict/evaluation.py), and
checks across training settings on the training side (train/checks.py)."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from swag_lora.config.schema import (METHOD_CONFIGS, DataOverrides, EvalConfig, EvaluationConfig, ExperimentConfig,
                                     ModelConfig, RunConfig)
from swag_lora.data.tasks import TASK_NAMES, check_subtask, get_task
from swag_lora.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


# ---------------------------------------------------------------- conversion and checks
def _fail(msg: str) -> typing.NoReturn:
    raise ConfigError(msg)


CHECKS = {
    "positive": (lambda v: v > 0, "must be a positive number"),
    "positive_int": (lambda v: v > 0, "must be a positive integer"),
    "nonneg": (lambda v: v >= 0, "must be >= 0"),
    "nonneg_int": (lambda v: v >= 0, "must be >= 0"),
    "fraction": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "fraction0": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}


def _convert(value: Any, typ: Any, key: str) -> Any:
    """Coerce a composed value to the declared type (ints stay ints, '1e-4' becomes a float, ...)."""
    if value is None:
        return None
    origin = typing.get_origin(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        _fail(f"{key}={value!r} must be true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            _fail(f"{key}={value!r} must be an integer")
        try:
            f = float(value)
        except ValueError:
            _fail(f"{key}={value!r} must be an integer")
        if f != int(f):
            _fail(f"{key}={value!r} must be an integer")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            _fail(f"{key}={value!r} must be a number")
    if typ is str:
        return "" if value == "" else str(value)
    if typ is list:
        return list(value) if isinstance(value, (list, tuple)) else _fail(f"{key}={value!r} must be a list")
    if typ is dict:
        return dict(value) if isinstance(value, dict) else _fail(f"{key}={value!r} must be a mapping")
    return value


def _build(cls, data: dict, group: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        _fail(f"unknown key {group}.{unknown[0]}; allowed: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{group}.{f.name}"
        if f.name not in data:
            if f.metadata.get("optional"):
                continue
            _fail(f"missing key {key}")
        v = _convert(data[f.name], hints[f.name], key)
        choices, check = f.metadata.get("choices"), f.metadata.get("check")
        if choices is not None and v not in choices:
            _fail(f"unknown {key} {v!r}; allowed: {', '.join(map(str, choices))}")
        if check and v is not None and not CHECKS[check][0](v):
            _fail(f"{key}={data[f.name]!r} {CHECKS[check][1]}")
        values[f.name] = v
    return cls(**values)


def _container(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # noqa: BLE001 -- an unresolvable interpolation
        _fail(f"the configuration does not resolve: {str(e).splitlines()[0]}")


# (group, the original's key, this project's key): config.yaml interpolates ours from the original's
ALIASES = (("experiment", "scheduler", "lr_scheduler"), ("experiment", "val_split_size", "val_fraction"),
           ("experiment", "eval_upon_save", "evaluate_after_training"), ("model", "target_modules", "lora_target_modules"),
           ("model", "modules_to_save", "head_modules"))


def sync_aliases(cfg: DictConfig) -> None:
    """Where this project's spelling was set (it no longer interpolates the original's), copy it to the original's
    key, so both read the same and config.yaml records one value.  (Setting both differently is refused earlier,
    on the command line, by `cli.check_group_overrides`.)"""
    for group, theirs, ours in ALIASES:
        node = cfg.get(group)
        if node is None or ours not in node:
            continue
        raw = OmegaConf.to_container(node, resolve=False).get(ours)
        if not (isinstance(raw, str) and raw.startswith("${")):
            with open_dict(node):
                node[theirs] = node[ours]
                node[ours] = f"${{{group}.{theirs}}}"


def parse_run(cfg: DictConfig) -> RunConfig:
    """The composed training config -> typed, checked `RunConfig` (resolves `auto` values)."""
    sync_aliases(cfg)
    data = _container(cfg)
    method = data.get("method", {})
    name = method.get("method_name")
    if name not in METHOD_CONFIGS:
        _fail(f"unknown method {name!r}; allowed: {', '.join(METHOD_CONFIGS)}")
    run = RunConfig(model=_build(ModelConfig, data.get("model", {}), "model"),
                    experiment=_build(ExperimentConfig, data.get("experiment", {}), "experiment"),
                    method=_build(METHOD_CONFIGS[name], method, "method"),
                    evaluation=_build(EvaluationConfig, data.get("evaluation", {}), "evaluation"), raw=cfg)
    resolve_auto(run.experiment)
    return run


def resolve_auto(exp: ExperimentConfig) -> None:
    """`experiment.ood_task=auto`: the demo task's shifted split for the demo task, no OOD task otherwise."""
    if exp.ood_task == "auto":
        demo = exp.task == "demo" and exp.subtask == ""
        exp.ood_task, exp.ood_subtask = ("demo", "shifted") if demo else ("", "")


# ---------------------------------------------------------------- checks across fields
def check_task(exp, task_key: str, subtask_key: str, names: tuple[str, str] | None = None, prefix: str = "") -> None:
    """`exp.<task_key>` / `exp.<subtask_key>` name a known classification task; errors name them as
    `experiment.<key>`, or as `names` after `prefix` (e.g. an entry of a list key)."""
    task_name, subtask = getattr(exp, task_key), getattr(exp, subtask_key) or ""
    task_label, subtask_label = names or (f"experiment.{task_key}", f"experiment.{subtask_key}")
    if task_name not in TASK_NAMES:
        _fail(f"{prefix}unknown {task_label} {task_name!r}; allowed: {', '.join(TASK_NAMES)}")
    task = get_task(task_name)
    try:
        check_subtask(task, subtask, subtask_label)
    except ValueError as e:
        _fail(f"{prefix}{e}")
    if task.regression:
        _fail(f"{prefix}{task_label}={task.name!r} is a regression task (similarity scores 0-5); swag-lora's "
              f"training and metrics are for classification; allowed: any other task")


def parse_eval(cfg: DictConfig) -> EvalConfig:
    """The composed evaluation config (conf/eval.yaml) -> typed `EvalConfig`, every field checked; the checks that need
    the method registry or the runs are `resolve_plan`'s (predict/evaluation.py)."""
    data = _container(cfg)
    evaluation = _build(EvaluationConfig, data.get("evaluation", {}), "evaluation")
    grid = evaluation.laplace_prior_grid
    if not grid or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in grid):
        _fail(f"evaluation.laplace_prior_grid={grid!r} must be a non-empty list of prior precisions > 0")
    return EvalConfig(evaluation=evaluation, experiment=_build(DataOverrides, data.get("experiment", {}), "experiment"))


def evaluation_config(overrides: list[str] | None = None) -> EvaluationConfig:
    """The evaluation settings of conf/eval.yaml with `overrides` (no run needed: for library use and benchmarks)."""
    return _build(EvaluationConfig, _container(compose("eval", overrides))["evaluation"], "evaluation")


def ood_task_list(overrides: DataOverrides) -> list[tuple[str, str]]:
    """`experiment.ood_tasks` entries (`task` or `task/subtask`) as (task, subtask) pairs."""
    pairs = []
    for entry in overrides.ood_tasks:
        if not isinstance(entry, str) or entry.count("/") > 1 or not entry.split("/")[0]:
            _fail(f"experiment.ood_tasks entry {entry!r}; allowed: a task name or task/subtask, e.g. mmlu/chemistry")
        task, _, subtask = entry.partition("/")
        pairs.append((task, subtask))
    return pairs


def compose(config_name: str = "config", overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/<config_name>.yaml (inside a running Hydra app too)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=overrides or [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


