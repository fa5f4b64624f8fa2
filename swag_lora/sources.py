"""Where a run's weights and data come from, checked before any model loads, and what they are beyond their paths.

* `model_source`: `<model_path>/<model_name>` offline, the installed package's folder for `package:` models, else the
  hub id.
* `check_offline`: with experiment.offline=true, the model folder and every data folder exist, and the model folder
  holds the family the model config names (its config.json `model_type`): `model=roberta-base` over a folder that
  holds MiniLM is refused, not trained under the wrong name.
* `model_identity` / `data_identity`: recorded in the run's sources.json, so that a resume with other weights or other
  data is refused (paths may change; contents may not).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from swag_lora.data.loading import offline_dirs
from swag_lora.data.tasks import get_task
from swag_lora.errors import ConfigError


def go_offline() -> None:
    """experiment.offline=true: nothing may touch the network (the libraries read these at call time)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"


def model_source(model_cfg, offline: bool, model_path: str | None) -> str:
    """`<model_path>/<model_name>` offline; the installed package for `package:` models; else the hub id."""
    if model_cfg.package:
        import importlib
        return str(importlib.import_module(model_cfg.package).get_model_path())
    if offline:
        return str(Path(model_path or ".") / model_cfg.model_name)
    return model_cfg.model_name


def check_model_folder(model_cfg, folder: Path) -> None:
    """The folder holds a transformers model of the family `model_cfg.model_type` names (when it names one)."""
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"model folder {folder} has no config.json (not a save_pretrained folder); write it with "
                          f"download_models4cluster.py")
    try:
        found = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ConfigError(f"{config} is not a valid config.json ({e})") from None
    if model_cfg.model_type and found != model_cfg.model_type:
        raise ConfigError(f"model {model_cfg.name!r} expects a {model_cfg.model_type} model, but {folder} holds a {found} "
                          f"model (config.json model_type); allowed: the model config that matches the folder, or the "
                          f"right folder")


def check_offline(run, tasks: list[tuple[str, str]]) -> None:
    """With experiment.offline=true: the model folder (and its family) and every task's data folders exist."""
    exp = run.experiment
    if not exp.offline:
        local = Path(model_source(run.model, False, None)) if not run.model.tiny else None
        if local is not None and local.is_dir():        # a local folder given as model_name (or a package's)
            check_model_folder(run.model, local)
        return
    if not run.model.tiny:
        src = Path(model_source(run.model, True, exp.model_path))
        if not src.is_dir():
            raise ConfigError(f"experiment.offline=true but the model folder {src} does not exist "
                              f"(experiment.model_path={exp.model_path!r}; write it with download_models4cluster.py)")
        check_model_folder(run.model, src)
    for task_name, subtask in tasks:
        if task_name:
            for d in offline_dirs(get_task(task_name), subtask or "", exp.data_path):
                if not d.is_dir():
                    raise ConfigError(f"experiment.offline=true but the data folder {d} does not exist "
                                      f"(experiment.data_path={exp.data_path!r}; write it with download_datasets4cluster.py)")


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def model_identity(model_cfg, source: str) -> dict:
    """The weights' identity: a tiny model's config; a folder's config.json digest and its weight files' names and
    sizes; else the hub id."""
    if model_cfg.tiny:
        return {"tiny": dict(model_cfg.tiny)}
    folder = Path(source)
    if folder.is_dir():
        weights = sorted((p.name, p.stat().st_size) for p in folder.iterdir()
                         if p.suffix in (".safetensors", ".bin", ".gguf") and p.is_file())
        return {"config_sha1": _sha1(folder / "config.json") if (folder / "config.json").is_file() else None,
                "weights": [list(w) for w in weights]}
    return {"hub": source}


def data_identity(exp, tasks: list[tuple[str, str]]) -> dict:
    """The data's identity per task: generated (the demo), the `datasets` fingerprints of the offline folders'
    splits, or the hub id."""
    out = {}
    for task_name, subtask in tasks:
        if not task_name:
            continue
        task = get_task(task_name)
        key = f"{task_name}/{subtask}" if subtask else task_name
        if task.name == "demo":
            out[key] = "generated"
        elif exp.offline:
            out[key] = {str(d.name): sorted(json.loads(p.read_text()).get("_fingerprint", "") for p in d.glob("*/state.json"))
                        for d in offline_dirs(task, subtask or "", exp.data_path) if d.is_dir()}
        else:
            out[key] = {"hub": task.hub_id, "config": task.config_for(subtask or "")}
    return out
