"""Learning rate as the original drives it, as one pure function of the scheduler step.

The original builds a transformers warm-up schedule over every loader batch of the run and a
`torch.optim.swa_utils.SWALR`, and calls one `.step()` per loader batch: the warm-up schedule before
`swag_start`, SWALR from then on.  `LRSchedule(n)` is the learning rate after `n` such steps, i.e. the
rate the optimizer uses for loader batch `n` (0-based over the whole run).  With gradient accumulation
the optimizer step at the end of a window uses the value of its last batch.

Let `S = swag_start_step`, `A = anneal_steps`, `lr0 = base_lr * f(S)`:

    n <= S:   base_lr * f(n)      f = transformers' `get_<scheduler>_schedule_with_warmup` lambda
    n  > S:   swag_lr * a + lr0 * (1 - a),   a = g(min(1, (n - S) / A))   (a = 1 when A = 0)

with g(t) = t (linear) or (1 - cos(pi t)) / 2 (cos), exactly SWALR's interpolation.  Two strategies are
this project's own (opt-in): `constant` holds `swag_lr` from step S on, and `cosine_hard_restarts`
restarts a cosine from lr0 to `swag_lr` every `cycle_steps` (one epoch) inside the anneal window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from swag_lora.config import ANNEAL_STRATEGIES, SCHEDULERS


def warmup_factor(n: float, *, scheduler: str, warmup_steps: float, total_steps: float, num_cycles: float) -> float:
    """transformers' schedule-with-warm-up factor after `n` steps (warm-up may be fractional, as there)."""
    if n < warmup_steps:
        return float(n) / float(max(1.0, warmup_steps))
    if scheduler == "constant":
        return 1.0
    progress = float(n - warmup_steps) / float(max(1, total_steps - warmup_steps))
    if scheduler == "linear":
        return max(0.0, float(total_steps - n) / float(max(1, total_steps - warmup_steps)))
    if scheduler == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))
    if progress >= 1.0:   # cosine_hard_restarts
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


@dataclass(frozen=True)
class LRSchedule:
    """lr(n) after n scheduler steps (loader batches).  See the module docstring for the formulas.

    Args:
        base_lr: experiment.learning_rate.
        total_steps: the warm-up schedule's horizon: loader batches per epoch x num_epochs.
        warmup_steps: experiment.warmup_length x total_steps (not rounded, as the original passes it).
        scheduler: experiment.scheduler (constant, linear, cosine, cosine_hard_restarts).
        num_cycles: experiment.num_lr_cycles (cosine: 0.5 is one half-cosine to 0; hard restarts: an integer).
        swag_start_step: method.swag_start x loader batches per epoch; None for no SWAG phase.
        swag_lr: method.swag_learning_rate.
        anneal_steps: method.swag_anneal_epochs x loader batches per epoch.
        anneal_strategy: method.swag_anneal_strategy (linear, cos/cosine; opt-in constant, cosine_hard_restarts).
        cycle_steps: loader batches per epoch (cosine_hard_restarts only).
    """
    base_lr: float
    total_steps: int
    warmup_steps: float = 0.0
    scheduler: str = "linear"
    num_cycles: float = 0.5
    swag_start_step: int | None = None
    swag_lr: float | None = None
    anneal_steps: int = 0
    anneal_strategy: str = "linear"
    cycle_steps: int = 1

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown lr scheduler {self.scheduler!r}; allowed: {', '.join(SCHEDULERS)}")
        if self.anneal_strategy not in ANNEAL_STRATEGIES:
            raise ValueError(f"unknown swag_anneal_strategy {self.anneal_strategy!r}; allowed: {', '.join(ANNEAL_STRATEGIES)}")

    def base(self, n: int) -> float:
        return self.base_lr * warmup_factor(n, scheduler=self.scheduler, warmup_steps=self.warmup_steps,
                                            total_steps=self.total_steps, num_cycles=self.num_cycles)

    def __call__(self, n: int) -> float:
        S = self.swag_start_step
        if S is None or n < S or (n == S and self.anneal_strategy != "constant"):
            return self.base(n)
        target, k, A = float(self.swag_lr), n - S, self.anneal_steps
        if self.anneal_strategy == "constant" or k >= A > 0 or A == 0:
            return target
        lr0 = self.base(S)
        if self.anneal_strategy == "cosine_hard_restarts":
            q = (k % self.cycle_steps) / self.cycle_steps
            return target + (lr0 - target) * 0.5 * (1.0 + math.cos(math.pi * q))
        t = k / A
        a = t if self.anneal_strategy == "linear" else (1 - math.cos(math.pi * t)) / 2
        return target * a + lr0 * (1 - a)
