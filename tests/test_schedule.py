"""Learning-rate values per base scheduler and anneal strategy, against closed forms."""
import math

import pytest
import torch

from swag_lora.schedule import ANNEAL_STRATEGIES, LRSchedule

SPE = 10  # steps per epoch


def sched(strategy, scheduler="linear"):
    # 18 epochs, warm-up 5 steps, SWAG from epoch 8 (step 80), anneal over 5 epochs (50 steps)
    return LRSchedule(base_lr=6e-4, total_steps=18 * SPE, warmup_steps=5, scheduler=scheduler,
                      swag_start_step=8 * SPE, swag_lr=1e-4, anneal_steps=5 * SPE,
                      anneal_strategy=strategy, cycle_steps=SPE)


def test_warmup_and_linear_base():
    s = sched("cosine")
    assert s(0) == 0.0
    assert s(2) == pytest.approx(6e-4 * 2 / 5)
    assert s(5) == pytest.approx(6e-4)
    assert s(40) == pytest.approx(6e-4 * (1 - 35 / 175))


@pytest.mark.parametrize("scheduler,expected", [
    ("constant", lambda p: 1.0),
    ("linear", lambda p: 1 - p),
    ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
    ("cosine_hard_restarts", lambda p: 0.5 * (1 + math.cos(math.pi * ((2 * p) % 1)))),
])
def test_base_schedulers(scheduler, expected):
    s = LRSchedule(base_lr=1.0, total_steps=100, warmup_steps=0, scheduler=scheduler, num_cycles=2)
    for step in (0, 13, 50, 77, 99):
        assert s(step) == pytest.approx(expected(step / 100))


@pytest.mark.parametrize("strategy", ANNEAL_STRATEGIES)
def test_every_anneal_strategy(strategy):
    s = sched(strategy)
    start = s.base(80)
    assert start == pytest.approx(6e-4 * (1 - 75 / 175))
    assert s(79) == pytest.approx(s.base(79))
    for t in range(0, 50):
        q = t / 50
        expected = {
            "constant": 1e-4,
            "linear": start + (1e-4 - start) * q,
            "cosine": 1e-4 + (start - 1e-4) * 0.5 * (1 + math.cos(math.pi * q)),
            "cosine_hard_restarts": 1e-4 + (start - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t % SPE) / SPE)),
        }[strategy]
        assert s(80 + t) == pytest.approx(expected)
    for step in (130, 150, 179):   # after the anneal: hold the SWAG lr
        assert s(step) == pytest.approx(1e-4)


def test_torch_scheduler_follows_schedule():
    s = sched("linear")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=6e-4)
    lr_sched = s.torch_scheduler(opt)
    seen = []
    for _ in range(180):
        seen.append(opt.param_groups[0]["lr"])
        opt.step(); lr_sched.step()
    assert seen == pytest.approx([s(i) for i in range(180)])


def test_unknown_strategy_rejected():
    with pytest.raises(ValueError, match="swag_anneal_strategy 'cos'.*allowed"):
        LRSchedule(base_lr=1, total_steps=10, anneal_strategy="cos")
