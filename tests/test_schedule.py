"""The learning rate at every optimizer step equals transformers' warm-up schedule followed by
torch.optim.swa_utils.SWALR, built and stepped as the original train.py does (one .step() per loader batch)."""
import math

import pytest
import torch
from torch.optim.swa_utils import SWALR
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_cosine_with_hard_restarts_schedule_with_warmup, get_linear_schedule_with_warmup)

from swag_lora.train.schedule import LRSchedule

pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")

BUILDERS = {"constant": get_constant_schedule_with_warmup, "linear": get_linear_schedule_with_warmup,
            "cosine": get_cosine_schedule_with_warmup, "cosine_hard_restarts": get_cosine_with_hard_restarts_schedule_with_warmup}


def original_lrs(*, lr, batches, epochs, swag_start, anneal_epochs, swag_lr, strategy, scheduler="linear",
                 warmup_length=0.06, num_cycles=0.5, accum=1):
    """The original's schedule: lr at each optimizer step (the last batch of each accumulation window)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    num_steps = batches * epochs
    kwargs = {"num_warmup_steps": warmup_length * num_steps}
    if scheduler != "constant":
        kwargs["num_training_steps"] = num_steps
    if scheduler.startswith("cosine"):
        kwargs["num_cycles"] = num_cycles
    base = BUILDERS[scheduler](opt, **kwargs)
    swag = SWALR(opt, anneal_strategy=strategy, anneal_epochs=anneal_epochs * batches, swa_lr=swag_lr)
    out = []
    for epoch in range(epochs):
        for b in range(batches):
            if (b + 1) % accum == 0 or b == batches - 1:     # Accelerate's sync steps inside an epoch
                out.append(opt.param_groups[0]["lr"])
            (base if epoch < swag_start else swag).step()
    return out


def ours(*, lr, batches, epochs, swag_start, anneal_epochs, swag_lr, strategy, scheduler="linear",
         warmup_length=0.06, num_cycles=0.5, accum=1):
    total = batches * epochs
    s = LRSchedule(base_lr=lr, total_steps=total, warmup_steps=warmup_length * total, scheduler=scheduler,
                   num_cycles=num_cycles, swag_start_step=swag_start * batches, swag_lr=swag_lr,
                   anneal_steps=anneal_epochs * batches, anneal_strategy=strategy, cycle_steps=batches)
    return [s(e * batches + b) for e in range(epochs) for b in range(batches) if (b + 1) % accum == 0 or b == batches - 1]


SEED_COMMAND = dict(lr=6e-4, batches=310, epochs=18, swag_start=8, anneal_epochs=5, swag_lr=1e-4)


@pytest.mark.parametrize("strategy", ["linear", "cos"])
@pytest.mark.parametrize("scheduler,num_cycles", [("linear", 0.5), ("cosine", 0.5), ("constant", 0.5),
                                                  ("cosine_hard_restarts", 2)])
def test_every_step_equals_transformers_then_swalr(strategy, scheduler, num_cycles):
    kw = dict(SEED_COMMAND, strategy=strategy, scheduler=scheduler, num_cycles=num_cycles)
    ref, got = original_lrs(**kw), ours(**kw)
    assert len(ref) == len(got) == 310 * 18
    for a, b in zip(ref, got):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-18)


@pytest.mark.parametrize("strategy", ["linear", "cos"])
@pytest.mark.parametrize("accum", [2, 3])
def test_gradient_accumulation_uses_the_value_at_the_last_batch_of_each_window(strategy, accum):
    # 31 loader batches per epoch (not a multiple of accum): the last window of an epoch is shorter
    kw = dict(lr=3e-4, batches=31, epochs=6, swag_start=2, anneal_epochs=2, swag_lr=2e-5, strategy=strategy,
              warmup_length=0.1, accum=accum)
    ref, got = original_lrs(**kw), ours(**kw)
    assert len(ref) == len(got) == 6 * math.ceil(31 / accum)
    for a, b in zip(ref, got):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-18)


def test_anneal_epochs_zero_jumps_after_the_first_swag_batch():
    kw = dict(lr=1e-3, batches=10, epochs=4, swag_start=2, anneal_epochs=0, swag_lr=1e-5, strategy="linear")
    ref, got = original_lrs(**kw)[1:], ours(**kw)[1:]   # batch 0: SWALR's constructor set swag_lr (see README)
    for a, b in zip(ref, got):
        assert b == pytest.approx(a, rel=1e-9)
    assert got[20 - 1] == pytest.approx(1e-3 * (40 - 20) / (40 - 2.4))   # step S: still the warm-up schedule's value
    assert got[21 - 1] == 1e-5


def test_seed_command_end_of_epoch_values():
    """The note's table: the lr after each epoch of the paper's OBQA command (310 batches per epoch)."""
    s = LRSchedule(base_lr=6e-4, total_steps=5580, warmup_steps=0.06 * 5580, scheduler="linear", num_cycles=0.5,
                   swag_start_step=8 * 310, swag_lr=1e-4, anneal_steps=5 * 310, anneal_strategy="linear", cycle_steps=310)
    assert s(10 * 310) == pytest.approx(2.528e-4, rel=1e-3)       # after 0-based epoch 9, as the original
    assert s(13 * 310) == pytest.approx(1e-4)


def test_opt_in_strategies():
    s = LRSchedule(base_lr=1.0, total_steps=100, swag_start_step=40, swag_lr=0.1, anneal_steps=20,
                   anneal_strategy="constant", cycle_steps=10)
    assert s(39) == pytest.approx(0.61) and s(40) == 0.1 and s(99) == 0.1
    r = LRSchedule(base_lr=1.0, total_steps=100, swag_start_step=40, swag_lr=0.1, anneal_steps=20,
                   anneal_strategy="cosine_hard_restarts", cycle_steps=10)
    lr0 = 0.6
    assert r(40) == pytest.approx(lr0) and r(50) == pytest.approx(lr0)          # a restart every epoch
    assert r(45) == pytest.approx(0.1 + (lr0 - 0.1) * 0.5)
    assert r(60) == 0.1


def test_unknown_values_rejected():
    with pytest.raises(ValueError, match="unknown swag_anneal_strategy 'cosh'"):
        LRSchedule(base_lr=1.0, total_steps=10, anneal_strategy="cosh")
    with pytest.raises(ValueError, match="unknown lr scheduler 'step'"):
        LRSchedule(base_lr=1.0, total_steps=10, scheduler="step")
