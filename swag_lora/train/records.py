"""What a run directory records: the overwrite / resume policy, config.yaml, training_log.csv, run_info.json,
and the W&B run.  Everything is written by the main process, atomically."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from swag_lora.config import ConfigError, RunConfig, training_settings
from swag_lora.io import atomic_write
from swag_lora.train import checkpoint as ckpt

RUN_INFO = "run_info.json"
LOG_FIELDS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_accuracy", "val_nll", "val_ece",
              "swa_val_loss", "swa_val_accuracy", "swa_val_nll", "swa_val_ece", "num_snapshots", "train_seconds",
              "collect_seconds", "swa_val_seconds", "epoch_seconds"]


_LOCKS: dict[Path, object] = {}     # run directory -> its open, locked lock file (held while the process lives)


def lock_run_dir(directory: Path, accelerator) -> None:
    """One live process tree per run directory: the main process takes an exclusive lock on `.<name>.lock` beside the
    directory (fcntl; released by the operating system when the process ends, so a crash leaves nothing stuck); a
    second launch into the same directory is refused on every process."""
    import fcntl
    held = None
    if directory in _LOCKS:                 # this process holds it already (a library call training it again)
        return
    if accelerator.is_main_process:
        directory.parent.mkdir(parents=True, exist_ok=True)
        f = open(directory.parent / f".{directory.name}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _LOCKS[directory] = f
            held = True
        except OSError:
            f.close()
            held = False
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        held = broadcast_object_list([held])[0]
    if not held:
        raise ConfigError(f"run directory {directory} is in use by another live process (it holds "
                          f"{directory.parent / ('.' + directory.name + '.lock')}); wait for it to end, or set another "
                          f"experiment.exp_name or experiment.seed")


def release_run_dir(directory: Path) -> None:
    """Drop this process's lock on the run directory (training ended, or failed)."""
    f = _LOCKS.pop(directory, None)
    if f is not None:
        f.close()


def open_run_dir(run: RunConfig, directory: Path, accelerator, sources: dict | None = None) -> bool:
    """Take the run directory's lock, apply experiment.overwrite / experiment.resume and write config.yaml and
    sources.json (the model's and the data's identity); True if a checkpoint is to be resumed."""
    lock_run_dir(directory, accelerator)
    exp = run.experiment
    finished = (directory / RUN_INFO).is_file()
    has_ckpt = ckpt.has_checkpoint(directory / "checkpoint")
    if exp.overwrite:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and directory.exists():
            shutil.rmtree(directory)
        accelerator.wait_for_everyone()
        finished = has_ckpt = False
    elif finished:
        raise ConfigError(f"run directory {directory} holds a finished run; set experiment.overwrite=true or another "
                          f"experiment.exp_name")
    elif exp.resume == "must" and not has_ckpt:
        raise ConfigError(f"experiment.resume=must but {directory / 'checkpoint'} holds no checkpoint")
    elif exp.resume == "never" and (has_ckpt or directory.exists() and any(directory.iterdir())):
        raise ConfigError(f"experiment.resume=never but {directory} already holds a run; set experiment.overwrite=true "
                          f"or experiment.resume=auto")
    if has_ckpt and exp.resume != "never":
        if (directory / "config.yaml").is_file():
            check_same_run(OmegaConf.load(directory / "config.yaml"), run.raw)
        if sources is not None and (directory / SOURCES).is_file():
            check_same_sources(json.loads((directory / SOURCES).read_text()), sources, directory)
        return True
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(run.raw, resolve=True))
        if sources is not None:
            with atomic_write(directory / SOURCES) as tmp:
                tmp.write_text(json.dumps(sources, indent=1))
    accelerator.wait_for_everyone()
    return False


SOURCES = "sources.json"


def check_same_sources(old: dict, new: dict, directory: Path) -> None:
    """A resumed run must read the same weights and data (model_path / data_path are not in the directory's
    fingerprint, so that a run can move; what they hold is checked here)."""
    for what in ("model", "data"):
        if old.get(what) != new.get(what):
            raise ConfigError(f"cannot resume {directory}: its {what} source was {old.get(what)}, now {new.get(what)}; "
                              f"allowed: the same {what} (experiment.model_path / data_path), or experiment.overwrite=true")


def check_same_run(old, new) -> None:
    """A resumed run must train the same thing (the directory's fingerprint says so; this guards edited files)."""
    a, b = training_settings(old), training_settings(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise ConfigError(f"cannot resume: {diff[0]}={b.get(diff[0])!r} differs from the checkpointed run's "
                          f"{a.get(diff[0])!r}; set experiment.overwrite=true or another experiment.exp_name")


class EpochLog:
    """training_log.csv (one row per epoch) and, when enabled, the W&B run."""

    def __init__(self, run: RunConfig, directory: Path, accelerator):
        self.path, self.main = directory / "training_log.csv", accelerator.is_main_process
        self.wandb = _init_wandb(run, directory) if self.main else None

    def truncate(self, epochs_done: int) -> None:
        """Drop rows of epochs after a checkpoint (they are trained again)."""
        if not self.main or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= epochs_done]
        with atomic_write(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
                w.writeheader()
                w.writerows(rows)

    def write(self, row: dict, step: int) -> None:
        """Add one epoch's row: the whole file is rewritten atomically (a crash leaves the previous rows intact)."""
        if self.main:
            rows = list(csv.DictReader(open(self.path, newline=""))) if self.path.exists() else []
            with atomic_write(self.path) as tmp:
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
                    w.writeheader()
                    w.writerows(rows + [row])
        if self.wandb:
            self.wandb.log({k.replace("val_", "val/", 1) if k.startswith("val_") else k: v for k, v in row.items()}, step=step)

    def step(self, loss: float, lr: float, step: int) -> None:
        if self.wandb:
            self.wandb.log({"train/loss_step": loss, "train/lr": lr}, step=step)

    def finish(self) -> None:
        if self.wandb:
            self.wandb.finish()


def write_run_info(directory: Path, info: dict) -> None:
    """run_info.json, written last: the run finished."""
    with atomic_write(directory / RUN_INFO) as tmp:
        tmp.write_text(json.dumps({"status": "finished", **info}, indent=1))


def _init_wandb(run: RunConfig, directory: Path):
    exp = run.experiment
    mode = os.environ.get("WANDB_MODE") or exp.wandb_mode
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        print("[swag-lora] wandb is not installed; logging to training_log.csv only")
        return None
    Path(exp.wandb_path).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")   # README says where the W&B files go; WANDB_SILENT=false to see them
    return wandb.init(project=exp.wandb_project, group=exp.wandb_group, name=directory.name, dir=str(exp.wandb_path),
                      mode=mode, config=OmegaConf.to_container(run.raw, resolve=True), resume="allow",
                      id=re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(directory.parts[-4:]))[:128])
