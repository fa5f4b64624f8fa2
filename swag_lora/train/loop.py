"""The training loop, read top to bottom: `train` is the paper's algorithm in one screen (epochs, steps,
validation, checkpoint); the pieces it builds are below it, and in records.py, checkpoint.py and collector.py."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from omegaconf import open_dict
from tqdm.auto import tqdm

from swag_lora import metrics
from swag_lora.config import ConfigError, RunConfig, run_dir
from swag_lora.data import DataSource, get_task
from swag_lora.data.encode import Encoding, labels_of
from swag_lora.distributed import refuse_untested_backends
from swag_lora.errors import TrainingDiverged
from swag_lora.model import build_model, load_tokenizer, model_arch
from swag_lora.sources import data_identity, go_offline, model_identity, model_source
from swag_lora.predict.draws import AsIs, score, swag_samples
from swag_lora.train.checkpoint import Checkpointer
from swag_lora.train.collector import BestAdapter
from swag_lora.train.methods import save_adapter, training_method
from swag_lora.train.records import EpochLog, open_run_dir, release_run_dir, write_run_info
from swag_lora.train.signals import REQUEUE_EXIT_CODE, Stop


def train(run: RunConfig) -> Path:
    """Train one run (MAP, SWAG, IVON or BLoB: `method` holds what each adds); return its run directory.  The run
    directory is locked while it trains (a second live process is refused)."""
    try:
        return _train(run)
    finally:
        release_run_dir(run_dir(run))


def _train(run: RunConfig) -> Path:
    exp, method = run.experiment, training_method(run)
    accelerator = make_accelerator(run)
    data = TrainingData(run, accelerator)               # tokenizer, features and loader; the model comes later
    batches_per_epoch = len(data.loader)
    steps_per_epoch, epochs = math.ceil(batches_per_epoch / exp.gradient_accumulation_steps), method.last_epoch()
    method.check(accelerator, steps_per_epoch)          # data- and process-dependent settings, before the model loads
    directory = run_dir(run)
    with open_dict(run.raw):
        run.raw.experiment.save_path = str(directory)     # config.yaml records where the run lives
    resuming = open_run_dir(run, directory, accelerator, sources=data.sources())
    accelerator.print(f"[swag-lora] run directory: {directory}")
    model, optimizer, loader = accelerator.prepare(*data.model_and_optimizer(accelerator, method), data.loader)
    inner = accelerator.unwrap_model(model)
    schedule = method.schedule(batches_per_epoch)
    best = BestAdapter(directory / "base_model", keep=method.keeps_base_model())
    collector = method.collector(model, inner, accelerator, steps_per_epoch)
    checkpoints = Checkpointer(directory / "checkpoint", accelerator, inner, optimizer)
    log = EpochLog(run, directory, accelerator)
    progress = Progress()
    if resuming:
        progress = resume(checkpoints, best, collector, log, accelerator)

    with Stop.deferred():
        for epoch in range(progress.epoch, epochs):
            t0 = time.time()
            if collector and progress.batches_done == 0:
                collector.on_epoch_start(epoch, reload=lambda: best.load_into(inner, accelerator))
            row = train_epoch(run, method, epoch, model, optimizer, loader, schedule, collector, progress, accelerator, log,
                              save=lambda: checkpoints.save(progress, best, collector))
            if collector:
                t = time.time()
                collector.on_epoch_end(epoch)
                row["collect_seconds"] = round(row["collect_seconds"] + time.time() - t, 4)
            row.update(validate(run, model, data, collector, accelerator))
            if best.update(row["val_loss"], epoch, lambda folder: save_adapter(inner, folder, accelerator)):
                method.on_new_best(inner, optimizer, directory, accelerator)
            method.on_epoch_end(inner, collector, epoch, row, directory, accelerator)
            row["epoch_seconds"] = round(time.time() - t0, 2)
            log.write(row, step=progress.global_step)
            accelerator.print("[swag-lora] " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in row.items()))
            progress.epoch_done(epoch)
            checkpoints.save(progress, best, collector)
            if Stop.agreed(accelerator):      # the last epoch too: the resumed job writes run_info and evaluates
                accelerator.print(f"[swag-lora] pre-emption signal: checkpoint written after epoch {epoch + 1}; exiting")
                raise SystemExit(REQUEUE_EXIT_CODE)

    method.on_finish(inner, optimizer, directory, accelerator)
    if accelerator.is_main_process:
        post = collector.posterior if collector else None
        write_run_info(directory, {
            "epochs_trained": epochs, "global_step": progress.global_step, "base_model_epoch": best.epoch,
            "base_model_val_loss": best.state()["loss"],
            "reloaded_from_epoch": collector.reloaded_from_epoch if collector else None,
            "swag_saved_epoch": collector.saved_epoch if collector else None,
            "num_snapshots": post.num_snapshots if post else 0, "num_processes": accelerator.num_processes,
            "train_rows": len(data.features["train"]), "validation_rows": len(data.features["validation"]),
            **method.run_info(optimizer), "data": data.source})
    accelerator.wait_for_everyone()
    log.finish()
    accelerator.print(f"[swag-lora] finished: {directory}")
    return directory


def train_epoch(run, method, epoch, model, optimizer, loader, schedule, collector, progress, accelerator, log, save) -> dict:
    """One epoch of steps: the learning rate of each loader batch, forward, backward, an optimizer step at the end of
    each accumulation window; per-step collection, step checkpoints (`save()`) and pre-emption between steps.
    Advances `progress` (global step; inside the epoch, the batches done and the running loss)."""
    exp = run.experiment
    skip, t0, collect_seconds = progress.batches_done, time.time(), 0.0
    loader.set_epoch(epoch)            # the sampler's permutation for this epoch, also after a resume
    batches = accelerator.skip_first_batches(loader, skip) if skip else loader
    if skip:
        batches.set_epoch(epoch)
    loss_sum = torch.full((), progress.loss_sum, device=accelerator.device)
    loss_count, lr = progress.loss_count, schedule(epoch * len(loader) + skip)
    model.train()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{method.last_epoch()}", leave=False, mininterval=1.0, initial=skip,
               total=len(loader), disable=not accelerator.is_local_main_process)
    for i, batch in enumerate(bar, start=skip):
        lr = schedule(epoch * len(loader) + i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with accelerator.accumulate(model):
            loss = method.forward_backward(model, batch, optimizer, accelerator)
            check_finite(loss, epoch, i, progress.global_step + 1, accelerator)    # before the step: weights stay good
            if accelerator.sync_gradients and exp.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), exp.max_grad_norm)
            method.step(optimizer, lr, progress.global_step + 1)
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_count += 1
        if i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
        if not accelerator.sync_gradients:
            continue
        progress.global_step += 1
        if collector:
            t = time.time()
            collector.on_optimizer_step(progress.global_step)
            collect_seconds += time.time() - t
        if exp.log_every_steps and progress.global_step % exp.log_every_steps == 0:
            log.step(float(accelerator.reduce(loss.detach(), "mean")), lr, progress.global_step)   # a collective
        signalled = Stop.agreed(accelerator)
        if signalled or exp.checkpoint_every_steps and progress.global_step % exp.checkpoint_every_steps == 0:
            progress.inside(epoch, i + 1, float(accelerator.reduce(loss_sum, "mean")), loss_count)
            save()
        if signalled:
            accelerator.print(f"[swag-lora] pre-emption signal: checkpoint written at epoch {epoch + 1}, batch {i + 1}; exiting")
            raise SystemExit(REQUEUE_EXIT_CODE)
    return {"epoch": epoch + 1, "step": progress.global_step, "lr": lr,
            "train_loss": float(accelerator.reduce(loss_sum / max(loss_count, 1), "mean")),   # mean over processes
            "train_seconds": round(time.time() - t0, 3), "collect_seconds": round(collect_seconds, 4)}


def check_finite(loss: torch.Tensor, epoch: int, batch: int, step: int, accelerator) -> None:
    """Stop at the first non-finite loss (any process: a collective), before it reaches the weights; the run keeps its
    last good checkpoint and writes no run_info.json."""
    bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "max")
    if bad > 0:
        raise TrainingDiverged(f"the training loss is {float(loss.detach()):g} at epoch {epoch + 1}, batch {batch + 1} "
                               f"(optimizer step {step}): training stops here and the last good checkpoint is kept; "
                               f"allowed: a smaller experiment.learning_rate, or experiment.max_grad_norm > 0")


# ---------------------------------------------------------------- what the loop builds
@dataclass
class Progress:
    """Where the run is: epochs done, batches done inside the current epoch (a mid-epoch checkpoint), optimizer
    steps, and the current epoch's running train loss (so a resumed epoch logs the same mean)."""
    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0

    def inside(self, epoch: int, batches_done: int, loss_sum: float, loss_count: int) -> None:
        self.epoch, self.batches_done, self.loss_sum, self.loss_count = epoch, batches_done, loss_sum, loss_count

    def epoch_done(self, epoch: int) -> None:
        self.epoch, self.batches_done, self.loss_sum, self.loss_count = epoch + 1, 0, 0.0, 0


def resume(checkpoints: Checkpointer, best: BestAdapter, collector, log: EpochLog, accelerator) -> Progress:
    """Load the newest usable checkpoint into the model, optimizer, MAP and SWAG state; return where it was."""
    state, posterior = checkpoints.resume(collector.device if collector else "cpu")
    progress = Progress(**{k: state[k] for k in ("epoch", "batches_done", "global_step", "loss_sum", "loss_count")})
    best.load_state(state["best"])
    if collector:
        collector.load_state(state["swag"], posterior)
    log.truncate(progress.epoch)
    accelerator.print(f"[swag-lora] resumed from checkpoint: epoch {progress.epoch + 1}, batch {progress.batches_done}, "
                      f"step {progress.global_step}")
    return progress


def make_accelerator(run: RunConfig) -> Accelerator:
    exp = run.experiment
    if exp.offline:
        go_offline()
    accelerator = Accelerator(gradient_accumulation_steps=exp.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              mixed_precision=exp.mixed_precision or None)
    refuse_untested_backends(accelerator)
    loader_batch = exp.batch_size // exp.gradient_accumulation_steps
    if loader_batch % accelerator.num_processes:
        raise ConfigError(f"experiment.batch_size={exp.batch_size} is the batch per optimizer step: it must be a multiple "
                          f"of experiment.gradient_accumulation_steps={exp.gradient_accumulation_steps} x "
                          f"{accelerator.num_processes} process(es)")
    return accelerator


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


class TrainingData:
    """The tokenizer, the encoded train/validation features and the loader of a run; then its model and optimizer."""

    def __init__(self, run: RunConfig, accelerator):
        exp = self.exp = run.experiment
        self.run, self.task = run, get_task(exp.task)
        splits = DataSource.of(exp).splits(exp.task, exp.subtask, roles=("train", "validation"))   # data errors first
        self.source_path = model_source(run.model, exp.offline, exp.model_path)
        self.tokenizer = load_tokenizer(run.model, self.source_path)
        self.arch = model_arch(run.model, exp, self.task)
        self.encoding = Encoding(self.tokenizer, self.arch, run.model.max_length, exp.prompt_style)
        self.source = splits.source
        cap = {"train": exp.max_train_samples, "validation": exp.max_eval_samples}
        self.features = {role: self.encoding.features(splits[role][: cap[role] or None], self.task) for role in cap}
        check_truncation(self.features["train"], run.model.max_length, accelerator)
        self.labels = {role: labels_of(feats) for role, feats in self.features.items()}
        self.collator = self.encoding.collator(self.task)
        self.loader = self.encoding.loader(self.features["train"], self.task, exp.batch_size // exp.gradient_accumulation_steps,
                                           sampler=EpochSampler(len(self.features["train"]), exp.seed))

    def sources(self) -> dict:
        """What the weights and the data are, beyond their paths: the model folder's config.json and weights files
        (name and size), and the data folders' `datasets` fingerprints (or the hub id / the generated task)."""
        return {"model": model_identity(self.run.model, self.source_path),
                "data": data_identity(self.exp, [(self.exp.task, self.exp.subtask)])}

    def model_and_optimizer(self, accelerator, method):
        """The base model + LoRA + head (+ what the method adds), seeded as every process's; the method's optimizer."""
        exp, run = self.exp, self.run
        set_seed(exp.seed)
        self.model = build_model(run.model, exp, self.task, self.tokenizer, self.source_path)
        method.setup(self.model)
        if accelerator.num_processes > 1:   # the same initial weights everywhere, then a dropout stream per process
            set_seed(exp.seed, device_specific=True)
        optimizer = method.optimizer(self.model, len(self.features["train"]))
        accelerator.print(
            f"[swag-lora] {exp.task}{'/' + exp.subtask if exp.subtask else ''}: {len(self.features['train'])} train / "
            f"{len(self.features['validation'])} validation rows; {run.model.name} ({self.arch}), "
            f"{sum(p.numel() for p in self.model.trainable_state().values()):,} trainable parameters; "
            f"{accelerator.num_processes} process(es)")
        return self.model, optimizer


def check_truncation(features: list[dict], max_length: int, accelerator) -> None:
    """Say how many training prompts model.max_length cuts; refuse when it cuts every one (a model that never sees a
    whole prompt trains at chance, silently)."""
    cut = sum(f.get("truncated", False) for f in features)
    if not cut:
        return
    if cut == len(features) and len(features) >= 10:
        raise ConfigError(f"model.max_length={max_length} truncates all {len(features)} training prompts; allowed: a "
                          f"larger model.max_length (the prompts of this task are longer)")
    accelerator.print(f"[swag-lora] model.max_length={max_length} truncates {cut} of {len(features)} training prompts "
                      f"({100 * cut / len(features):.0f}%)")


def validate(run: RunConfig, model, data: TrainingData, collector, accelerator) -> dict:
    """Validation loss (mean cross-entropy) of the current weights and, after an epoch that collected, of SWA."""
    batch, feats, labels = run.experiment.eval_batch_size, data.features["validation"], data.labels["validation"]
    probs = score(model, feats, data.collator, batch, [AsIs()], accelerator=accelerator)[0]
    loss = metrics.nll(probs, labels)
    row = {"val_loss": loss, "val_accuracy": metrics.accuracy(probs, labels), "val_nll": loss,
           "val_ece": metrics.expected_calibration_error(probs, labels)}
    if collector and collector.collected_this_epoch:
        t = time.time()
        swa = score(model, feats, data.collator, batch, swag_samples(collector.posterior, collector.named, 1, 0.0),
                    restore=collector.named, accelerator=accelerator)[0]
        swa_loss = metrics.nll(swa, labels)
        row.update({"swa_val_loss": swa_loss, "swa_val_accuracy": metrics.accuracy(swa, labels), "swa_val_nll": swa_loss,
                    "swa_val_ece": metrics.expected_calibration_error(swa, labels),
                    "swa_val_seconds": round(time.time() - t, 3)})
    if collector and collector.posterior is not None:
        row["num_snapshots"] = collector.posterior.num_snapshots
    return row
