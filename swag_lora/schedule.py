"""Learning-rate schedule: warm-up and a base schedule until `swag_start`, then an anneal to the SWAG
learning rate over `swag_anneal_epochs`, then hold.  One pure function of the optimizer step."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BASE_SCHEDULERS = ("constant", "linear", "cosine", "cosine_hard_restarts")
ANNEAL_STRATEGIES = ("constant", "linear", "cosine", "cosine_hard_restarts")


@dataclass(frozen=True)
class LRSchedule:
    """lr(step) for a run of `total_steps` optimizer steps.

    Before `swag_start_step` (or always, when it is None): linear warm-up over `warmup_steps`, then
    `scheduler` over the remaining horizon (constant; linear to 0; cosine to 0; cosine with
    `num_cycles` hard restarts).  From `swag_start_step`: go from the base value reached there to
    `swag_lr` over `anneal_steps` by `anneal_strategy` -- constant jumps at once, linear and cosine are
    monotone, cosine_hard_restarts restarts a cosine every `cycle_steps` (one epoch) -- then hold.
    """
    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    scheduler: str = "linear"
    num_cycles: int = 1
    swag_start_step: int | None = None
    swag_lr: float | None = None
    anneal_steps: int = 0
    anneal_strategy: str = "cosine"
    cycle_steps: int = 1

    def __post_init__(self) -> None:
        if self.scheduler not in BASE_SCHEDULERS:
            raise ValueError(f"unknown lr scheduler {self.scheduler!r}; allowed: {', '.join(BASE_SCHEDULERS)}")
        if self.anneal_strategy not in ANNEAL_STRATEGIES:
            raise ValueError(f"unknown swag_anneal_strategy {self.anneal_strategy!r}; allowed: {', '.join(ANNEAL_STRATEGIES)}")

    def base(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * step / max(1, self.warmup_steps)
        p = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        p = min(max(p, 0.0), 1.0)
        if self.scheduler == "constant":
            f = 1.0
        elif self.scheduler == "linear":
            f = 1.0 - p
        elif self.scheduler == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * p))
        else:
            f = 0.0 if p >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((self.num_cycles * p) % 1.0)))
        return self.base_lr * f

    def __call__(self, step: int) -> float:
        if self.swag_start_step is None or step < self.swag_start_step:
            return self.base(step)
        start, target = self.base(self.swag_start_step), float(self.swag_lr)
        t = step - self.swag_start_step
        if self.anneal_strategy == "constant" or t >= self.anneal_steps:
            return target
        if self.anneal_strategy == "linear":
            return start + (target - start) * t / self.anneal_steps
        if self.anneal_strategy == "cosine":
            q = t / self.anneal_steps
        else:
            q = (t % self.cycle_steps) / self.cycle_steps
        return target + (start - target) * 0.5 * (1.0 + math.cos(math.pi * q))

    def torch_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR whose factor makes every group's lr follow this schedule (relative to its own base)."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self(step) / self.base_lr)
