"""Pre-emption: SIGTERM / SIGUSR1 (Slurm's warning) and Ctrl-C (SIGINT), alike.  Inside the epochs the loop checkpoints at the next step or
epoch end and exits 99 ("requeue me"); anywhere else (loading, the closing evaluation) the process ends at once
with status 128 + the signal number -- every file is written atomically, so nothing is left half-written."""
from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import torch

REQUEUE_EXIT_CODE = 99


class Stop:
    requested = False
    deferring = False

    @classmethod
    def install(cls) -> None:
        def handler(signum, frame):
            cls.requested = True
            if not cls.deferring:
                raise SystemExit(128 + signum)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):   # not the main thread
                pass

    @classmethod
    @contextlib.contextmanager
    def deferred(cls) -> Iterator[None]:
        """Inside: a signal only sets `requested`; the loop checks it at safe points."""
        cls.deferring = True
        try:
            yield
        finally:
            cls.deferring = False

    @classmethod
    def agreed(cls, accelerator) -> bool:
        """Whether any process was signalled (a collective: every process calls it at the same point)."""
        if accelerator.num_processes == 1:
            return cls.requested
        flag = torch.tensor(float(cls.requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, "max") > 0)
