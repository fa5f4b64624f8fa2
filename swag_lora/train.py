"""The training loop (Accelerate), read top to bottom: data -> model -> optimizer and schedule -> epochs,
with SWAG collection when due, validation, best-MAP and SWAG saves, and resumable checkpoints."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from swag_lora import checkpoint as ckpt
from swag_lora import metrics as M
from swag_lora.config import ConfigError, go_offline, run_dir, training_settings
from swag_lora.data import get_task, load_splits
from swag_lora.data.encode import Collator, encode
from swag_lora.distributed import full_tensors, gathered_params, refuse_untested_backends, reshard
from swag_lora.io import atomic_dir, atomic_write
from swag_lora.model import load_model, swag_tensors
from swag_lora.collector import SwagCollector
from swag_lora.predict import draw_probs
from swag_lora.schedule import LRSchedule
from swag_lora.swag import SwagPosterior

RUN_INFO = "run_info.json"
SIGNAL_EXIT_CODE = 99       # "checkpoint written on a pre-emption signal: requeue me"
LOG_FIELDS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_accuracy", "val_nll", "val_ece",
              "swa_val_loss", "swa_val_accuracy", "swa_val_nll", "swa_val_ece", "num_snapshots", "train_seconds", "collect_seconds",
              "swa_val_seconds", "epoch_seconds"]


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the training rows fixed by (seed, epoch): the data order a resumed run repeats."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _Stop:
    """SIGTERM/SIGUSR1 (Slurm's pre-emption warning).  Inside the epochs (`deferring`) the loop checkpoints at the
    next step or epoch end and exits 99; anywhere else (loading, the closing evaluation) the process ends at once
    with status 128 + signal number -- every file is written atomically, so nothing is left half-written."""
    requested = False
    deferring = False

    @classmethod
    def install(cls) -> None:
        def handler(signum, frame):
            cls.requested = True
            if not cls.deferring:
                raise SystemExit(128 + signum)
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):   # not the main thread
                pass


def prepare_data(cfg: DictConfig, task, tokenizer, kind: str, rd_seed: int):
    exp = cfg.experiment
    splits = load_splits(exp.task, exp.subtask or "", offline=exp.offline, data_path=exp.data_path,
                         seed=rd_seed, val_fraction=float(exp.val_fraction), all_items=bool(exp.arc_all_items),
                         roles=("train", "validation"))
    cap = lambda rows, n: rows[: int(n)] if int(n) > 0 else rows  # noqa: E731
    feats = {role: encode(cap(splits[role], n), tokenizer, kind, task, cfg.model.max_length, exp.prompt_style)
             for role, n in (("train", exp.max_train_samples), ("validation", exp.max_eval_samples))}
    return splits, feats


def lr_schedule(cfg: DictConfig, batches_per_epoch: int) -> LRSchedule:
    """The original's schedule over loader batches: warm-up schedule, then SWALR from swag_start."""
    exp, meth = cfg.experiment, cfg.method
    total = batches_per_epoch * int(exp.num_epochs)
    swag = meth.method_name == "swag"
    return LRSchedule(
        base_lr=float(exp.learning_rate), total_steps=total, warmup_steps=float(exp.warmup_length) * total,
        scheduler=exp.lr_scheduler, num_cycles=float(exp.num_lr_cycles),
        swag_start_step=int(meth.swag_start) * batches_per_epoch if swag else None,
        swag_lr=float(meth.swag_learning_rate) if swag else None,
        anneal_steps=int(meth.swag_anneal_epochs) * batches_per_epoch if swag else 0,
        anneal_strategy=meth.swag_anneal_strategy if swag else "linear", cycle_steps=batches_per_epoch)


class BestAdapter:
    """The MAP adapter: the lowest validation loss over all epochs (SWAG's included), kept in `folder`."""

    def __init__(self, folder: Path, keep: bool = True):
        self.folder, self.keep = folder, keep
        self.loss, self.epoch = math.inf, None

    def update(self, loss: float, epoch: int, save) -> bool:
        if not loss < self.loss:
            return False
        self.loss, self.epoch = loss, epoch + 1
        if self.keep:
            save(self.folder)
        return True

    def state(self) -> dict:
        return {"loss": self.loss if math.isfinite(self.loss) else None, "epoch": self.epoch}

    def load_state(self, state: dict) -> None:
        self.loss = math.inf if state.get("loss") is None else float(state["loss"])
        self.epoch = state.get("epoch")


def train(cfg: DictConfig) -> Path:
    """Train one run; return its run directory."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed

    exp, meth = cfg.experiment, cfg.method
    swag_on = meth.method_name == "swag"
    if exp.offline:
        go_offline()
    accum = int(exp.gradient_accumulation_steps)
    accelerator = Accelerator(gradient_accumulation_steps=accum,
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              mixed_precision=exp.get("mixed_precision") or None)
    refuse_untested_backends(accelerator)
    world = accelerator.num_processes
    loader_batch = int(exp.batch_size) // accum     # batch_size is the batch per optimizer step, as in the original
    if int(exp.batch_size) % accum or loader_batch % world:
        raise ConfigError(f"experiment.batch_size={exp.batch_size} is the batch per optimizer step: it must be a multiple of "
                          f"experiment.gradient_accumulation_steps={accum} x {world} process(es)")
    rd = run_dir(cfg)
    with open_dict(cfg):
        cfg.experiment.save_path = str(rd)         # config.yaml records where the run lives (the original's key)
    resume_state = _prepare_run_dir(cfg, rd, accelerator)
    set_seed(int(exp.seed))
    log = accelerator.print

    # ---------------------------------------------------------------- data and model
    task = get_task(exp.task)
    tokenizer, model = load_model(cfg.model, exp, task, exp.offline, exp.model_path)
    kind = model.kind
    splits, feats = prepare_data(cfg, task, tokenizer, kind, int(exp.seed))
    collator = Collator(tokenizer.pad_token_id, kind, model.num_choices, tokenizer.padding_side)
    sampler = EpochSampler(len(feats["train"]), int(exp.seed))
    loader = torch.utils.data.DataLoader(feats["train"], batch_size=loader_batch, sampler=sampler,
                                         collate_fn=collator, generator=torch.Generator())
    if world > 1:   # the same initial weights everywhere, then an independent dropout stream per process
        set_seed(int(exp.seed), device_specific=True)
    trainable = model.trainable_state()
    n_train = sum(p.numel() for p in trainable.values())
    log(f"[swag-lora] {exp.task}{'/' + exp.subtask if exp.subtask else ''}: {len(feats['train'])} train / "
        f"{len(feats['validation'])} validation rows; {cfg.model.name} ({kind}), {n_train:,} trainable parameters; "
        f"{world} process(es); run dir {rd}")

    optimizer = torch.optim.AdamW([p for p in trainable.values()], lr=float(exp.learning_rate),
                                  weight_decay=float(exp.weight_decay))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    inner = accelerator.unwrap_model(model)
    batches_per_epoch = len(loader)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    schedule = lr_schedule(cfg, batches_per_epoch)
    last_epoch = int(exp.num_epochs)
    if swag_on and meth.get("stop_at_force_save") and int(meth.force_save) >= 0:
        last_epoch = min(last_epoch, int(meth.swag_start) + int(meth.force_save) + 1)

    # ---------------------------------------------------------------- the MAP adapter and the SWAG collector
    best = BestAdapter(rd / "base_model", keep=bool(meth.get("swag_save_base_model", True)))
    named = swag_tensors(inner, meth.modules_to_swag) if swag_on else {}
    collector = None
    if swag_on:
        swag_steps = (last_epoch - int(meth.swag_start)) * steps_per_epoch
        if int(meth.swag_c_steps) > swag_steps:
            raise ConfigError(f"method.swag_c_steps={meth.swag_c_steps} exceeds the {swag_steps} optimizer steps after "
                              f"method.swag_start, so nothing would be collected; allowed: <= {swag_steps}, or 0 (per epoch)")
        collector = SwagCollector(
            lambda: gathered_params(accelerator, model, named), swag_start=int(meth.swag_start),
            max_rank=int(meth.swag_max_num_models), c_epochs=int(meth.swag_c_epochs), c_steps=int(meth.swag_c_steps),
            steps_per_epoch=steps_per_epoch, force_save=int(meth.force_save),
            reload_best=bool(meth.swag_start_with_lowest_loss), keep_deviations=bool(meth.swag_cov_mat),
            device="cpu" if meth.swag_device == "cpu" else accelerator.device)

    def reload_best() -> int | None:
        if best.epoch is None:
            return None
        inner.load_adapter(best.folder)
        log(f"[swag-lora] SWAG starts from the lowest-validation-loss adapter (epoch {best.epoch})")
        return best.epoch

    # ---------------------------------------------------------------- resume
    start_epoch, skip_batches, global_step, resumed_loss = 0, 0, 0, (0.0, 0)
    if resume_state is not None:
        reshard(inner)
        state, posterior = resume_state(inner.trainable_state(), optimizer, collector.device if collector else "cpu")
        start_epoch, skip_batches, global_step = state["epoch"], state["batches_done"], state["global_step"]
        best.load_state(state["best"])
        if collector:
            collector.load_state(state["swag"], posterior)
        resumed_loss = (state.get("loss_sum", 0.0), state.get("loss_count", 0))
        _truncate_log(rd, start_epoch)
        log(f"[swag-lora] resumed from checkpoint: epoch {start_epoch + 1}, batch {skip_batches}, step {global_step}")

    wandb_run = _init_wandb(cfg, rd, accelerator)

    def save_state(epoch: int, batches_done: int, loss_sum=None, loss_count: int = 0) -> None:
        """Checkpoint; mid-epoch (batches_done > 0) also keeps the epoch's running train loss."""
        partial = float(accelerator.reduce(loss_sum, "mean")) if batches_done else 0.0
        rngs = [ckpt.rng_state()]
        if world > 1:                  # every process's own random state (dropout streams differ per process)
            from accelerate.utils import gather_object
            rngs = gather_object(rngs)
        weights, opt_state = full_tensors(inner.trainable_state()), ckpt.optimizer_state(optimizer)   # gathers shards
        if accelerator.is_main_process:
            ckpt.save_checkpoint(rd / "checkpoint", trainable=weights, optimizer=opt_state, rng_states=rngs,
                                 posterior=collector.posterior if collector else None,
                                 state={"epoch": epoch, "batches_done": batches_done, "global_step": global_step,
                                        "best": best.state(), "swag": collector.state() if collector else None,
                                        "loss_sum": partial, "loss_count": loss_count if batches_done else 0})
        accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- epochs
    _Stop.deferring = True
    for epoch in range(start_epoch, last_epoch):
        t0 = time.time()
        if collector and skip_batches == 0:
            collector.on_epoch_start(epoch, reload_best)
        sampler.set_epoch(epoch)
        loader.set_epoch(epoch)        # Accelerate's loader would otherwise count epochs from 0 after a resume
        model.train()
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        if epoch_loader is not loader:
            epoch_loader.set_epoch(epoch)
        loss_sum = torch.full((), resumed_loss[0], device=accelerator.device)
        loss_count = resumed_loss[1]
        resumed_loss = (0.0, 0)
        collect_seconds = 0.0
        bar = tqdm(epoch_loader, desc=f"epoch {epoch + 1}/{last_epoch}", leave=False, mininterval=1.0,
                   disable=not accelerator.is_local_main_process, initial=skip_batches, total=len(loader))
        for batch_idx, batch in enumerate(bar, start=skip_batches):
            lr = schedule(epoch * batches_per_epoch + batch_idx)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with accelerator.accumulate(model):
                labels = batch.pop("labels")
                logits = model(**batch)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients and float(exp.max_grad_norm) > 0:
                    accelerator.clip_grad_norm_(model.parameters(), float(exp.max_grad_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            loss_count += 1
            if batch_idx % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
            if accelerator.sync_gradients:
                global_step += 1
                if collector:
                    t = time.time()
                    collector.on_optimizer_step(global_step)
                    collect_seconds += time.time() - t
                if int(exp.log_every_steps) > 0 and global_step % int(exp.log_every_steps) == 0:
                    step_loss = float(accelerator.reduce(loss.detach(), "mean"))   # a collective: every rank
                    if wandb_run:
                        wandb_run.log({"train/loss_step": step_loss, "train/lr": lr}, step=global_step)
                if int(exp.checkpoint_every_steps) > 0 and global_step % int(exp.checkpoint_every_steps) == 0:
                    save_state(epoch, batch_idx + 1, loss_sum, loss_count)
                _fault_injection("SWAG_LORA_TEST_SIGNAL_AT_STEP", global_step, signal.SIGUSR1)
                if _stop_requested(accelerator):
                    save_state(epoch, batch_idx + 1, loss_sum, loss_count)
                    log(f"[swag-lora] pre-emption signal: checkpoint written at epoch {epoch + 1}, batch {batch_idx + 1}; exiting")
                    raise SystemExit(SIGNAL_EXIT_CODE)
        skip_batches = 0
        train_loss = float(accelerator.reduce(loss_sum / max(loss_count, 1), "mean"))   # mean over processes
        if collector:
            t = time.time()
            collector.on_epoch_end(epoch)
            collect_seconds += time.time() - t
        row = {"epoch": epoch + 1, "step": global_step, "lr": lr, "train_loss": train_loss,
               "train_seconds": round(time.time() - t0, 3), "collect_seconds": round(collect_seconds, 4)}

        # validation: the current weights, and the SWA mean after an epoch that collected
        val = _validate(model, feats["validation"], collator, cfg, accelerator)
        row.update({f"val_{k}": v for k, v in val.items()})
        if collector and collector.collected_this_epoch:
            t_swa = time.time()
            swa = draw_probs(model, feats["validation"], collator, int(exp.eval_batch_size), "swag",
                             posterior=collector.posterior, named=named, scale=0.0, accelerator=accelerator)[0]
            labels = np.array([f["label"] for f in feats["validation"]])
            row.update({"swa_val_loss": M.nll(swa, labels), "swa_val_accuracy": M.accuracy(swa, labels),
                        "swa_val_ece": M.expected_calibration_error(swa, labels)})
            row["swa_val_nll"] = row["swa_val_loss"]
            row["swa_val_seconds"] = round(time.time() - t_swa, 3)
        if collector and collector.posterior is not None:
            row["num_snapshots"] = collector.posterior.num_snapshots
        row["epoch_seconds"] = round(time.time() - t0, 2)

        # the MAP adapter (lowest validation loss) and the SWAG model (the original's save rule)
        best.update(val["loss"], epoch, lambda folder: _save_adapter(inner, folder, accelerator))
        if collector and collector.should_save(epoch, row.get("swa_val_loss")):
            _save_swag_model(inner, collector.posterior, rd / "swag_model", cfg, accelerator)
        if accelerator.is_main_process:
            _append_log(rd, row)
        if wandb_run:
            wandb_run.log({k.replace("val_", "val/", 1) if k.startswith("val_") else k: v for k, v in row.items()}, step=global_step)
        log("[swag-lora] " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        save_state(epoch + 1, 0)
        _fault_injection("SWAG_LORA_TEST_KILL_AFTER_EPOCH", epoch + 1, signal.SIGKILL)
        if epoch + 1 < last_epoch and _stop_requested(accelerator):
            log(f"[swag-lora] pre-emption signal: checkpoint written at the end of epoch {epoch + 1}; exiting")
            raise SystemExit(SIGNAL_EXIT_CODE)
    _Stop.deferring = False

    # ---------------------------------------------------------------- the run's record
    if accelerator.is_main_process:
        post = collector.posterior if collector else None
        info = {"status": "finished", "epochs_trained": last_epoch, "global_step": global_step,
                "base_model_epoch": best.epoch, "base_model_val_loss": best.state()["loss"],
                "reloaded_from_epoch": collector.reloaded_from_epoch if collector else None,
                "swag_saved_epoch": collector.saved_epoch if collector else None,
                "num_snapshots": post.num_snapshots if post else 0, "num_processes": world, "data": splits.source}
        with atomic_write(rd / RUN_INFO) as tmp:
            tmp.write_text(json.dumps(info, indent=1))
    accelerator.wait_for_everyone()
    if wandb_run:
        wandb_run.finish()
    log(f"[swag-lora] finished: {rd}")
    return rd


# ---------------------------------------------------------------- helpers
def _fault_injection(var: str, now: int, sig: int) -> None:
    """For the pre-emption tests: send this process `sig` when the counter reaches $var (unset: never)."""
    at = os.environ.get(var)
    if at and int(at) == now:
        os.kill(os.getpid(), sig)


def _stop_requested(accelerator) -> bool:
    if accelerator.num_processes == 1:
        return _Stop.requested
    flag = torch.tensor(float(_Stop.requested), device=accelerator.device)
    return bool(accelerator.reduce(flag, "max") > 0)


def _validate(model, feats, collator, cfg, accelerator) -> dict[str, float]:
    """Validation metrics of the current weights; `loss` is the mean cross-entropy (also logged as `nll`)."""
    probs = draw_probs(model, feats, collator, int(cfg.experiment.eval_batch_size), "base", accelerator=accelerator)[0]
    labels = np.array([f["label"] for f in feats])
    loss = M.nll(probs, labels)
    return {"loss": loss, "accuracy": M.accuracy(probs, labels), "nll": loss,
            "ece": M.expected_calibration_error(probs, labels)}


def _save_adapter(inner, folder: Path, accelerator) -> None:
    """The current adapter (every process gathers its shards; the main process writes)."""
    state = full_tensors(inner.trainable_state())
    if accelerator.is_main_process:
        with atomic_dir(folder) as tmp:
            inner.save_adapter(tmp, state)


def _save_swag_model(inner, posterior: SwagPosterior, folder: Path, cfg, accelerator) -> None:
    """Adapter at the SWA mean + the posterior (only the SWAG'd tensors, never the base model)."""
    state = {**full_tensors(inner.trainable_state()), **posterior.mean()}
    if accelerator.is_main_process:
        with atomic_dir(folder) as tmp:
            inner.save_adapter(tmp, state)
            posterior.save(tmp)
            (tmp / "swag_config.json").write_text(json.dumps(OmegaConf.to_container(cfg.method), indent=1))


def _prepare_run_dir(cfg: DictConfig, rd: Path, accelerator):
    """Apply experiment.overwrite / experiment.resume; write config.yaml.  Returns a resume callable or None."""
    exp = cfg.experiment
    finished = (rd / RUN_INFO).is_file()
    has_ckpt = ckpt.has_checkpoint(rd / "checkpoint")
    if exp.overwrite:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and rd.exists():
            shutil.rmtree(rd)
        accelerator.wait_for_everyone()
        finished = has_ckpt = False
    elif finished:
        raise ConfigError(f"run directory {rd} holds a finished run; set experiment.overwrite=true or another experiment.exp_name")
    elif exp.resume == "must" and not has_ckpt:
        raise ConfigError(f"experiment.resume=must but {rd / 'checkpoint'} holds no checkpoint")
    elif exp.resume == "never" and (has_ckpt or rd.exists() and any(rd.iterdir())):
        raise ConfigError(f"experiment.resume=never but {rd} already holds a run; set experiment.overwrite=true "
                          f"or experiment.resume=auto")
    if has_ckpt and exp.resume != "never":
        old = OmegaConf.load(rd / "config.yaml") if (rd / "config.yaml").is_file() else None
        if old is not None:
            _check_same_run(old, cfg)

        def resume(trainable, optimizer, post_device):
            errors = []
            for folder in (rd / "checkpoint", ckpt.previous_good(rd / "checkpoint")):
                if not (folder / ckpt.STATE).is_file():
                    continue
                try:
                    return ckpt.load_checkpoint(folder, trainable=trainable, optimizer=optimizer,
                                                posterior_device=post_device, rank=accelerator.process_index)
                except ckpt.CheckpointError as e:
                    errors.append(str(e))
                    accelerator.print(f"[swag-lora] WARNING: {e}; trying the previous checkpoint")
            raise ckpt.CheckpointError("no usable checkpoint: " + " | ".join(errors))
        return resume
    if accelerator.is_main_process:
        rd.mkdir(parents=True, exist_ok=True)
        with atomic_write(rd / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    accelerator.wait_for_everyone()
    return None


def _check_same_run(old: DictConfig, new: DictConfig) -> None:
    """A resumed run must train the same thing (the directory's fingerprint says so; this guards edited files)."""
    a, b = training_settings(old), training_settings(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise ConfigError(f"cannot resume: {diff[0]}={b.get(diff[0])!r} differs from the checkpointed run's "
                          f"{a.get(diff[0])!r}; set experiment.overwrite=true or another experiment.exp_name")


def _append_log(rd: Path, row: dict) -> None:
    path = rd / "training_log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def _truncate_log(rd: Path, epochs_done: int) -> None:
    """Drop log rows of epochs after the checkpoint (they will be trained again)."""
    path = rd / "training_log.csv"
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= epochs_done]
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)


def _init_wandb(cfg: DictConfig, rd: Path, accelerator):
    exp = cfg.experiment
    mode = os.environ.get("WANDB_MODE") or exp.wandb_mode
    if mode == "disabled" or not accelerator.is_main_process:
        return None
    try:
        import wandb
    except ImportError:
        accelerator.print("[swag-lora] wandb is not installed; logging to training_log.csv only")
        return None
    Path(exp.wandb_path).mkdir(parents=True, exist_ok=True)
    return wandb.init(project=exp.wandb_project, group=exp.wandb_group, name=rd.name, dir=str(exp.wandb_path),
                      mode=mode, config=OmegaConf.to_container(cfg, resolve=True), resume="allow",
                      id=re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(rd.parts[-4:]))[:128])
