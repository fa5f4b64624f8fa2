"""What the loop needs from sharded training: full copies of sharded tensors, and writes of full values into
shards.  Under FSDP2 (`fully_shard`, Accelerate's `fsdp_version: 2`) every parameter is a DTensor whose local
part is a slice of dim 0; everywhere else tensors are plain and these functions are plain copies.

Every function that gathers is a collective: all processes call it, in the same order.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from swag_lora.config import ConfigError

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch builds without distributed
    DTensor = ()  # type: ignore[assignment]
    distribute_tensor = None


def is_sharded(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (an all-gather for a shard; the tensor itself otherwise)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_tensors(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: full(t.detach()) for n, t in named.items()}


@torch.no_grad()
def write_(targets: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> None:
    """Copy `values` (whole tensors, or shards placed like the targets) into `targets[name]` in place, casting to
    the target's dtype/device.  A sharded target receives its own slice of the whole value (no communication:
    every process holds the same value).  Plain targets get one batched copy."""
    dst, src = [], []
    for name, value in values.items():
        target = targets[name]
        if isinstance(target, DTensor):
            if isinstance(value, DTensor):
                value = value.to_local()
            else:
                value = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements,
                                          src_data_rank=None).to_local()
            target = target.to_local()
        dst.append(target)
        src.append(value)
    torch._foreach_copy_(dst, src)


def reshard(model: torch.nn.Module) -> None:
    """Put every FSDP2 module of `model` back in its sharded state.  FSDP2 keeps the root's gathered copy after
    a forward pass and computes with it until it reshards; writes go to the shards, so reshard before writing."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextlib.contextmanager
def gathered_params(accelerator, model, named: Mapping[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Yield name -> whole tensor for the SWAG'd tensors (gathered where they are sharded)."""
    yield full_tensors(named) if any(isinstance(t, DTensor) for t in named.values()) else dict(named)


def refuse_untested_backends(accelerator) -> None:
    """DeepSpeed and FSDP1 have never run with this code (no CUDA here, and neither runs on the CPU); FSDP2 has
    (torch's `fully_shard` on 2 CPU processes, tests/test_distributed.py).  Refuse the others at start."""
    from accelerate.utils import DistributedType
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError("DeepSpeed (ZeRO-2/3) is untested with swag-lora (its gathering, checkpoints and sharded "
                          "writes never ran); allowed: DDP (accelerate_configs/multi_gpu_ddp.yaml) or FSDP2 "
                          "(accelerate_configs/fsdp.yaml)")
    if kind == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        raise ConfigError("FSDP1 is untested with swag-lora (its flat 1-D shards are not handled); allowed: FSDP2, "
                          "fsdp_version: 2 (accelerate_configs/fsdp.yaml), or DDP")
