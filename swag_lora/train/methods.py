"""Training methods: what each adds to the loop -- its optimizer, its step, its learning-rate schedule, its posterior
and what it saves.  The loop (loop.py) has no method branches; `training_method(run)` picks the class by
`method.method_name`, and adding a method is one class here, its config class and YAML (config.py, conf/method/).

    map    AdamW; the lowest-validation-loss adapter (base_model/)
    swag   map + the SWAG collector over the LoRA (+ head) weights (swag_model/; the original's procedure)
    ivon   IVON (ivon-opt) instead of AdamW; its posterior at the lowest validation loss of its mean (ivon_model/)
    blob   BLoB: AdamW on the NLL with flipout noise on LoRA's A, and an SGD step on the KL (blob_model/, at the end)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
from omegaconf import OmegaConf

from swag_lora.config import ConfigError, RunConfig
from swag_lora.distributed import full_tensors, gathered_params
from swag_lora.io import atomic_dir
from swag_lora.model import swag_tensors
from swag_lora.posteriors.blob import BlobVariational, kl_weight
from swag_lora.posteriors.ivon import IvonPosterior, hessian_movement, make_ivon
from swag_lora.posteriors.swag import SwagPosterior
from swag_lora.train.collector import SwagCollector
from swag_lora.train.schedule import LRSchedule


class TrainingMethod:
    """MAP: plain LoRA fine-tuning with AdamW; the lowest-validation-loss adapter is the result."""
    name: ClassVar[str] = "map"

    def __init__(self, run: RunConfig):
        self.run, self.exp, self.cfg = run, run.experiment, run.method

    # ---------------------------------------------------------------- before the model loads
    def check(self, accelerator, steps_per_epoch: int) -> None:
        """Refuse, in one line, a combination this method does not support (data-dependent or process-dependent)."""

    def last_epoch(self) -> int:
        return self.exp.num_epochs

    def base_lr(self) -> float:
        return self.exp.learning_rate

    def schedule(self, batches_per_epoch: int) -> LRSchedule:
        """The original's schedule over loader batches: transformers' warm-up schedule (SWAG: then SWALR)."""
        total = batches_per_epoch * self.exp.num_epochs
        return LRSchedule(base_lr=self.base_lr(), total_steps=total, warmup_steps=self.warmup() * total,
                          scheduler=self.exp.scheduler, num_cycles=self.exp.num_lr_cycles, cycle_steps=batches_per_epoch)

    def warmup(self) -> float:
        return self.exp.warmup_length

    def keeps_base_model(self) -> bool:
        return True

    # ---------------------------------------------------------------- with the model
    def setup(self, model) -> None:
        """Add what the method trains beside LoRA (+ head), before the optimizer is built."""

    def optimizer(self, model, train_rows: int) -> torch.optim.Optimizer:
        return torch.optim.AdamW(list(model.trainable_state().values()), lr=self.exp.learning_rate,
                                 weight_decay=self.exp.weight_decay)

    def collector(self, model, inner, accelerator, steps_per_epoch: int) -> SwagCollector | None:
        return None

    def forward_backward(self, model, batch: dict, optimizer, accelerator) -> torch.Tensor:
        """The loss of one batch and its gradients."""
        labels = batch.pop("labels")
        loss = torch.nn.functional.cross_entropy(model(**batch), labels)
        accelerator.backward(loss)
        return loss

    def step(self, optimizer, lr: float, global_step: int) -> None:
        """One optimizer step at the end of an accumulation window (`global_step`: the step it makes, 1-based)."""
        optimizer.step()

    # ---------------------------------------------------------------- what it saves
    def on_new_best(self, inner, optimizer, directory: Path, accelerator) -> None:
        """After a new lowest validation loss (base_model/ was just written)."""

    def on_epoch_end(self, inner, collector, epoch: int, row: dict, directory: Path, accelerator) -> None:
        """After validation of `epoch`."""

    def on_finish(self, inner, optimizer, directory: Path, accelerator) -> None:
        """After the last epoch, before run_info.json (every process calls it)."""

    def run_info(self, optimizer) -> dict:
        return {}


class Swag(TrainingMethod):
    """SWAG: the original's collection over the LoRA (+ head) weights, SWALR from method.swag_start."""
    name = "swag"

    def check(self, accelerator, steps_per_epoch):
        m = self.cfg
        swag_steps = (self.last_epoch() - m.swag_start) * steps_per_epoch
        if m.swag_c_steps > swag_steps:
            raise ConfigError(f"method.swag_c_steps={m.swag_c_steps} exceeds the {swag_steps} optimizer steps after "
                              f"method.swag_start, so nothing would be collected; allowed: <= {swag_steps}, or 0 (per epoch)")

    def last_epoch(self):
        m = self.cfg
        if m.stop_at_force_save and m.force_save >= 0:
            return min(self.exp.num_epochs, m.swag_start + m.force_save + 1)
        return self.exp.num_epochs

    def schedule(self, batches_per_epoch):
        m, exp = self.cfg, self.exp
        total = batches_per_epoch * exp.num_epochs
        return LRSchedule(base_lr=exp.learning_rate, total_steps=total, warmup_steps=exp.warmup_length * total,
                          scheduler=exp.scheduler, num_cycles=exp.num_lr_cycles, cycle_steps=batches_per_epoch,
                          swag_start_step=m.swag_start * batches_per_epoch, swag_lr=m.swag_learning_rate,
                          anneal_steps=m.swag_anneal_epochs * batches_per_epoch, anneal_strategy=m.swag_anneal_strategy)

    def keeps_base_model(self):
        return self.cfg.swag_save_base_model

    def collector(self, model, inner, accelerator, steps_per_epoch):
        m = self.cfg
        named = swag_tensors(inner, m.modules_to_swag)
        return SwagCollector(lambda: gathered_params(accelerator, model, named), swag_start=m.swag_start,
                             max_rank=m.swag_max_num_models, c_epochs=m.swag_c_epochs, c_steps=m.swag_c_steps,
                             steps_per_epoch=steps_per_epoch, force_save=m.force_save,
                             reload_best=m.swag_start_with_lowest_loss, keep_deviations=m.swag_cov_mat,
                             device="cpu" if m.swag_device == "cpu" else accelerator.device, named=named)

    def on_epoch_end(self, inner, collector, epoch, row, directory, accelerator):
        if collector.should_save(epoch, row.get("swa_val_loss")):
            save_swag_model(inner, collector.posterior, directory / "swag_model", self.run, accelerator)


class Ivon(TrainingMethod):
    """IVON (ivon-opt) in place of AdamW; its posterior is kept at the lowest validation loss of its mean."""
    name = "ivon"

    def check(self, accelerator, steps_per_epoch):
        if accelerator.num_processes > 1:
            raise ConfigError(f"method=ivon with {accelerator.num_processes} processes: each would draw its own weight sample "
                              f"and IVON's Hessian estimate needs its own sample's gradient (never run here); allowed: 1 process")

    def base_lr(self):
        return self.cfg.learning_rate(self.exp)

    def warmup(self):
        return self.cfg.ivon_warmup_length

    def optimizer(self, model, train_rows):
        m = self.cfg
        return make_ivon(list(model.trainable_state().values()), lr=self.base_lr(), ess=m.ivon_ess or train_rows,
                         hess_init=m.ivon_hess_init, beta1=m.ivon_beta1, beta2=m.ivon_beta2, weight_decay=m.ivon_weight_decay,
                         clip_radius=m.ivon_clip_radius, rescale_lr=m.ivon_rescale_lr)

    def forward_backward(self, model, batch, optimizer, accelerator):
        """Each of IVON's weight samples' loss and gradients (it reads them at once)."""
        labels = batch.pop("labels")
        ivon, losses = optimizer.optimizer, []
        for _ in range(self.cfg.ivon_train_samples):
            with ivon.sampled_params(train=True):
                ivon.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(**batch), labels)
                accelerator.backward(loss)
            losses.append(loss.detach())
        return torch.stack(losses).mean()

    def on_new_best(self, inner, optimizer, directory, accelerator):
        posterior = IvonPosterior.from_optimizer(optimizer, inner.trainable_state())
        state = full_tensors(inner.trainable_state())     # a collective under FSDP: every process, before rank 0 writes
        if accelerator.is_main_process:
            with atomic_dir(directory / "ivon_model") as tmp:
                inner.save_adapter(tmp, state)
                posterior.save(tmp)

    def run_info(self, optimizer):
        return hessian_movement(optimizer, self.cfg.ivon_hess_init)


class Blob(TrainingMethod):
    """BLoB (posteriors/blob.py): AdamW on the NLL of flipout-noised forward passes; an SGD step on the weighted KL."""
    name = "blob"

    def check(self, accelerator, steps_per_epoch):
        if self.exp.gradient_accumulation_steps > 1:
            raise ConfigError(f"method=blob with experiment.gradient_accumulation_steps={self.exp.gradient_accumulation_steps}: "
                              f"its KL step follows each optimizer step of one batch; allowed: 1 (use a larger batch_size)")
        from accelerate.utils import DistributedType
        if accelerator.distributed_type == DistributedType.FSDP:
            raise ConfigError("method=blob under FSDP (sharded LoRA A and rho) is not run here; allowed: DDP or one process")
        self.cycle = self.cfg.blob_kl_cycle_steps or steps_per_epoch

    def setup(self, model):
        model.blob = self._blob = BlobVariational(model, init_std=self.cfg.blob_init_std, prior_std=self.cfg.blob_prior_std)

    def optimizer(self, model, train_rows):
        rho = {id(p) for p in model.blob.parameters()}
        params = [p for p in model.trainable_state().values() if id(p) not in rho]
        return torch.optim.AdamW(params, lr=self.exp.learning_rate, weight_decay=self.exp.weight_decay)

    def forward_backward(self, model, batch, optimizer, accelerator):
        """The NLL of the logits averaged over blob_train_samples noised passes (as bayesian-peft)."""
        labels = batch.pop("labels")
        logits = torch.stack([model(**batch) for _ in range(self.cfg.blob_train_samples)]).mean(0)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        accelerator.backward(loss)
        return loss

    def step(self, optimizer, lr, global_step):
        optimizer.step()
        self._blob.kl_step(self.cfg.blob_kl_lr * lr / self.base_lr(),
                           kl_weight(global_step, self.cycle, self.cfg.blob_kl_reweighting))

    def on_finish(self, inner, optimizer, directory, accelerator):
        posterior = inner.blob.posterior(inner.trainable_state(), meta={
            "init_std": self.cfg.blob_init_std, "kl_lr": self.cfg.blob_kl_lr, "kl_cycle_steps": self.cycle,
            "kl_reweighting": self.cfg.blob_kl_reweighting, "kl": float(inner.blob.kl().detach())})
        state = {n: t for n, t in full_tensors(inner.trainable_state()).items() if not n.startswith("blob.")}
        if accelerator.is_main_process:
            with atomic_dir(directory / "blob_model") as tmp:
                inner.save_adapter(tmp, state)
                posterior.save(tmp, "blob_posterior")

    def run_info(self, optimizer):
        sigma = torch.cat([s.detach().flatten() for s in (self._blob.sigma(i) for i in range(len(self._blob.names)))])
        return {"blob_kl": float(self._blob.kl().detach()), "blob_sigma_median": float(sigma.median()),
                "blob_sigma_max": float(sigma.max())}


TRAINING_METHODS: dict[str, type[TrainingMethod]] = {m.name: m for m in (TrainingMethod, Swag, Ivon, Blob)}


def training_method(run: RunConfig) -> TrainingMethod:
    return TRAINING_METHODS[run.method.method_name](run)


def save_adapter(inner, folder: Path, accelerator) -> None:
    """The current adapter (every process gathers its shards; the main process writes)."""
    state = {n: t for n, t in full_tensors(inner.trainable_state()).items() if not n.startswith("blob.")}
    if accelerator.is_main_process:
        with atomic_dir(folder) as tmp:
            inner.save_adapter(tmp, state)


def save_swag_model(inner, posterior: SwagPosterior, folder: Path, run: RunConfig, accelerator) -> None:
    """Adapter at the SWA mean + the posterior (only the SWAG'd tensors, never the base model)."""
    state = {**full_tensors(inner.trainable_state()), **posterior.mean()}
    if accelerator.is_main_process:
        with atomic_dir(folder) as tmp:
            inner.save_adapter(tmp, state)
            posterior.save(tmp)
            (tmp / "swag_config.json").write_text(json.dumps(OmegaConf.to_container(run.raw.method, resolve=True), indent=1))


__all__ = ["TRAINING_METHODS", "TrainingMethod", "training_method"]
