"""SWAG collection as the original runs it: when to collect, what is reloaded at `swag_start`, and which
epoch's posterior is kept.  The training loop (and `SwagCallback` for a `transformers.Trainer`) call it at
four points; it owns the `SwagPosterior` and checkpoints its own state.

Rules (epochs are 0-based here; files and logs count from 1):

* **reload** -- at the start of epoch `swag_start`, with `reload_best`, the lowest-validation-loss adapter
  saved so far is loaded into the model; the optimizer state is kept.
* **collect** -- at the end of epochs `swag_start, swag_start + c_epochs, ...`, or, with `c_steps > 0`,
  every `c_steps` optimizer steps after `start_step` (the first `swag_start` epochs' steps; `SwagCallback` sets it).
* **save** -- after an epoch that collected, the posterior is saved when the validation loss of its mean
  (SWA) is a new minimum; otherwise at epoch `swag_start + force_save` it is saved regardless.  A later
  new minimum overwrites the file.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import torch

from swag_lora.posteriors.swag import SwagPosterior

Snapshot = Callable[[], AbstractContextManager[Mapping[str, torch.Tensor]]]


class SwagCollector:
    """Args:
        snapshot: a context manager factory yielding the full (unsharded) SWAG'd tensors by name.
        swag_start: epochs of ordinary training before collection.
        max_rank: K, deviation columns kept.
        c_epochs / c_steps: collect every `c_epochs` epochs, or every `c_steps` optimizer steps when > 0.
        steps_per_epoch: optimizer steps per epoch (for `c_steps`).
        start_step: with `c_steps`, collect at start_step + c_steps, + 2 c_steps, ... (default: swag_start epochs).
        force_save: save at epoch `swag_start + force_save` if no new minimum came then.
        reload_best: reload the lowest-validation-loss adapter at the start of epoch `swag_start`.
        keep_deviations: False for a diagonal posterior (no deviation columns are stored).
        device: where the posterior's buffers live.
        named: the model's tensors the posterior covers (for writing samples back; not needed to collect).
    """

    def __init__(self, snapshot: Snapshot, *, swag_start: int, max_rank: int, c_epochs: int = 1, c_steps: int = 0,
                 steps_per_epoch: int = 1, force_save: int = -1, reload_best: bool = True, keep_deviations: bool = True,
                 device: torch.device | str = "cpu", start_step: int | None = None,
                 named: Mapping[str, torch.Tensor] | None = None):
        self.snapshot, self.swag_start, self.max_rank = snapshot, swag_start, max_rank
        self.start_step = swag_start * steps_per_epoch if start_step is None else start_step
        self.named = named
        self.c_epochs, self.c_steps, self.steps_per_epoch = c_epochs, c_steps, steps_per_epoch
        self.force_save, self.reload_best, self.keep_deviations, self.device = force_save, reload_best, keep_deviations, device
        self.posterior: SwagPosterior | None = None
        self.best_swa_loss = math.inf
        self.saved_epoch: int | None = None         # 1-based epoch whose posterior is on disk
        self.reloaded_from_epoch: int | None = None  # 1-based epoch of the adapter reloaded at swag_start
        self.collected_this_epoch = False

    # ------------------------------------------------------------------ the loop's four calls
    def on_epoch_start(self, epoch: int, reload: Callable[[], int | None]) -> None:
        """`reload()` loads the lowest-loss adapter into the model and returns its 1-based epoch (None: none yet)."""
        self.collected_this_epoch = False
        if epoch == self.swag_start and self.reload_best:
            self.reloaded_from_epoch = reload()

    def on_optimizer_step(self, global_step: int) -> None:
        since = global_step - self.start_step
        if self.c_steps > 0 and since > 0 and since % self.c_steps == 0:
            self.collect()

    def on_epoch_end(self, epoch: int) -> None:
        if self.c_steps == 0 and epoch >= self.swag_start and (epoch - self.swag_start) % self.c_epochs == 0:
            self.collect()

    def should_save(self, epoch: int, swa_val_loss: float | None) -> bool:
        """After validation: True if this epoch's posterior is the one to keep (the caller then saves it)."""
        if self.posterior is None:
            return False
        if self.collected_this_epoch and swa_val_loss is not None and swa_val_loss < self.best_swa_loss:
            self.best_swa_loss = swa_val_loss
        elif epoch != self.swag_start + self.force_save:
            return False
        self.saved_epoch = epoch + 1
        return True

    # ------------------------------------------------------------------ collection
    def collect(self) -> None:
        with self.snapshot() as full:
            if self.posterior is None:
                self.posterior = SwagPosterior({n: t.shape for n, t in full.items()}, max_rank=self.max_rank,
                                               device=self.device, keep_deviations=self.keep_deviations)
            self.posterior.collect(full)
        self.collected_this_epoch = True

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        return {"best_swa_loss": self.best_swa_loss if math.isfinite(self.best_swa_loss) else None,
                "saved_epoch": self.saved_epoch, "reloaded_from_epoch": self.reloaded_from_epoch,
                "collected_this_epoch": self.collected_this_epoch}     # a mid-epoch checkpoint after a step collection

    def load_state(self, state: dict, posterior: SwagPosterior | None) -> None:
        best = state.get("best_swa_loss")
        self.best_swa_loss = math.inf if best is None else float(best)
        self.saved_epoch, self.reloaded_from_epoch = state.get("saved_epoch"), state.get("reloaded_from_epoch")
        self.collected_this_epoch = bool(state.get("collected_this_epoch", False))
        self.posterior = posterior


class BestAdapter:
    """The MAP adapter: the lowest validation loss over all epochs (SWAG's included), kept in `folder`."""

    def __init__(self, folder, keep: bool = True):
        self.folder, self.keep = folder, keep
        self.loss, self.epoch = math.inf, None

    def update(self, loss: float, epoch: int, save: Callable[[object], None]) -> bool:
        """After validation of epoch `epoch` (0-based): a new minimum is kept (`save(folder)`, on every process)."""
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

    def load_into(self, model, accelerator=None) -> int | None:
        """Load the kept adapter into `model` (the original's swag_start_with_lowest_loss); its 1-based epoch."""
        if self.epoch is not None:
            model.load_adapter(self.folder)
            if accelerator is not None:
                accelerator.print(f"[swag-lora] SWAG starts from the lowest-validation-loss adapter (epoch {self.epoch})")
        return self.epoch
