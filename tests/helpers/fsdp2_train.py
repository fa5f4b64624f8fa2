"""swag-lora's training loop with its parameters sharded by torch's FSDP2 (`fully_shard`), as Accelerate's
`fsdp_version: 2` shards them (Accelerate refuses FSDP on a CPU-only machine, torch's FSDP2 does not):

    ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 tests/helpers/fsdp2_train.py <overrides>

Every decoder layer and the root are sharded over the processes, and the optimizer is pointed at the sharded
parameters (what Accelerate's FSDP2 prepare does); everything after that is the production loop, unchanged."""
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
torch.set_num_threads(1)
_prepare = Accelerator.prepare


def prepare_fsdp2(self, model, optimizer, loader):
    before = dict(model.named_parameters())
    mesh = init_device_mesh("cpu", (self.num_processes,))
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    after = dict(model.named_parameters())
    sharded = {id(before[n]): after[n] for n in before}
    for group in optimizer.param_groups:
        group["params"] = [sharded[id(p)] for p in group["params"]]
    optimizer, loader = _prepare(self, optimizer, loader)
    return model, optimizer, loader


if __name__ == "__main__":
    Accelerator.prepare = prepare_fsdp2
    from hydra import compose, initialize_config_dir

    from swag_lora.cli import main_train
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=sys.argv[1:])
    sys.exit(main_train(cfg))
