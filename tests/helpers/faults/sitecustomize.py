"""Test-only fault injection, imported by Python at start-up when this folder is on PYTHONPATH (the pre-emption
tests put it there); nothing of it is in swag_lora.

    SWAG_LORA_TEST_KILL_AFTER_EPOCH=N   SIGKILL right after the checkpoint that ends epoch N
    SWAG_LORA_TEST_SIGNAL_AT_STEP=N     SIGUSR1 at optimizer step N (the run checkpoints and exits 99)
    SWAG_LORA_TEST_SIGNAL=SIGINT        the signal SIGNAL_AT_STEP sends instead (Ctrl-C)
    SWAG_LORA_TEST_SIGNAL_IN_VALIDATION=N   SIGUSR1 while epoch N is validated (the run finishes the epoch, exits 99)
"""
import os
import signal

KILL_AFTER = os.environ.get("SWAG_LORA_TEST_KILL_AFTER_EPOCH")
SIGNAL_AT = os.environ.get("SWAG_LORA_TEST_SIGNAL_AT_STEP")
SIGNAL_IN_VALIDATION = os.environ.get("SWAG_LORA_TEST_SIGNAL_IN_VALIDATION")

if KILL_AFTER:
    from swag_lora.train.checkpoint import Checkpointer
    _save = Checkpointer.save

    def save(self, progress, best, collector):
        _save(self, progress, best, collector)
        if progress.batches_done == 0 and progress.epoch == int(KILL_AFTER):
            os.kill(os.getpid(), signal.SIGKILL)
    Checkpointer.save = save

if SIGNAL_AT:
    import torch
    _step = torch.optim.AdamW.step
    calls = [0]

    def step(self, *args, **kwargs):
        out = _step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == int(SIGNAL_AT):
            os.kill(os.getpid(), getattr(signal, os.environ.get("SWAG_LORA_TEST_SIGNAL", "SIGUSR1")))
        return out
    torch.optim.AdamW.step = step

if SIGNAL_IN_VALIDATION:
    import swag_lora.train.loop as loop
    _validate = loop.validate
    validations = [0]

    def validate(*args, **kwargs):
        validations[0] += 1
        if validations[0] == int(SIGNAL_IN_VALIDATION):
            os.kill(os.getpid(), signal.SIGUSR1)
        return _validate(*args, **kwargs)
    loop.validate = validate
