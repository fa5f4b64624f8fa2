"""SWAG for any `transformers.Trainer`, with the collector this project's loop uses:

    from swag_lora import SwagCallback
    cb = SwagCallback(max_rank=20, start_step=100, every_steps=10)   # LoRA (+ head) tensors of a PEFT model
    trainer = Trainer(model=peft_model, args=args, train_dataset=ds, callbacks=[cb]); trainer.train()
    cb.posterior.save("swag/")            # SwagPosterior; None before the first collection
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from swag_lora.distributed import gathered_params
from swag_lora.model import swag_tensors
from swag_lora.config import MODULES_TO_SWAG
from swag_lora.posteriors.swag import SwagPosterior
from swag_lora.train.collector import SwagCollector


class SwagCallback(TrainerCallback):
    """Collect a SWAG snapshot every `every_steps` optimizer steps after `start_step` (steps start_step + every_steps,
    start_step + 2 every_steps, ...).

    Args:
        max_rank: K, deviation columns kept (the low-rank covariance; 1 with `keep_deviations=False` is fine).
        start_step: optimizer steps of ordinary training before the first collection.
        every_steps: collect every N optimizer steps from then on.
        modules: which tensors: `grad_only` (everything trained: LoRA + head), `lora_only`, `all` (`head`, last-layer
            SWAG, needs this project's ChoiceModel).
        keep_deviations: False for a diagonal posterior.
        device: where the posterior's buffers live (default: beside the weights).
    """

    def __init__(self, max_rank: int = 20, start_step: int = 0, every_steps: int = 1, modules: str = "grad_only",
                 keep_deviations: bool = True, device: torch.device | str | None = None):
        if every_steps < 1 or start_step < 0:
            raise ValueError(f"every_steps={every_steps} must be >= 1 and start_step={start_step} >= 0")
        if max_rank < 1:
            raise ValueError(f"max_rank={max_rank} must be >= 1 (with keep_deviations=False it is unused, but keep it 1)")
        if modules not in MODULES_TO_SWAG:
            raise ValueError(f"unknown modules={modules!r}; allowed: {', '.join(MODULES_TO_SWAG)}")
        self.max_rank, self.start_step, self.every_steps = max_rank, start_step, every_steps
        self.modules, self.keep_deviations, self.device = modules, keep_deviations, device
        self.collector: SwagCollector | None = None

    @property
    def posterior(self) -> SwagPosterior | None:
        return self.collector.posterior if self.collector else None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.modules == "head" and not hasattr(model, "head_tensors"):
            raise ValueError("SwagCallback(modules='head') needs swag_lora's ChoiceModel (its head_module); this model "
                             f"({type(model).__name__}) has none; allowed: grad_only, lora_only, all")
        named = swag_tensors(model, self.modules)
        if not named:
            raise ValueError(f"SwagCallback(modules={self.modules!r}) found no tensors in {type(model).__name__} (no LoRA "
                             f"layers, or nothing trainable); wrap the model with peft's get_peft_model first")
        device = self.device or next(iter(named.values())).device
        self.collector = SwagCollector(lambda: gathered_params(None, model, named), swag_start=0,
                                       max_rank=self.max_rank, c_steps=self.every_steps, start_step=self.start_step,
                                       keep_deviations=self.keep_deviations, device=device, named=named)

    def on_step_end(self, args, state, control, **kwargs):
        self.collector.on_optimizer_step(state.global_step)
