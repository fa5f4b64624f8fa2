"""What the loop needs from distributed training: full (unsharded) copies of the SWAG'd tensors under
DeepSpeed ZeRO-3 or FSDP, so the posterior never holds a shard."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

FSDP_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.")


def _clean(name: str) -> str:
    for p in FSDP_PREFIXES:
        name = name.replace(p, "")
    return name


@contextlib.contextmanager
def gathered_params(accelerator, model, named: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Yield name -> full tensor for the SWAG'd tensors.  Plain and DDP runs hold full tensors already;
    ZeRO-3 gathers them with `GatheredParameters`, FSDP with `summon_full_params` (read-only)."""
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds is not None and int(ds.zero_stage) == 3:
        import deepspeed
        params = list(named.values())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield {n: p.data for n, p in named.items()}
        return
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        with FSDP.summon_full_params(model, writeback=False, rank0_only=False):
            full = {_clean(n): p for n, p in model.named_parameters()}
            yield {n: full[_clean(n)].detach().reshape(named[n].shape) if _clean(n) in full else named[n] for n in named}
        return
    yield named
