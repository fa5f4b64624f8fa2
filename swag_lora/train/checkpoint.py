"""Resumable training state as safetensors + JSON (never pickles): trainable weights, AdamW moments,
SWAG posterior, epoch/step (the learning rate is a function of the step), and the RNG states.  Written atomically into
`<run dir>/checkpoint/`; a torn or corrupt checkpoint is reported and the previous good one is used.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from swag_lora.distributed import distribute_tensor, full, full_tensors, is_sharded, reshard, write_
from swag_lora.errors import CorruptFile
from swag_lora.io import atomic_dir
from swag_lora.posteriors.swag import SwagPosterior

STATE = "state.json"


class CheckpointError(CorruptFile):
    """No usable checkpoint (every candidate missing or corrupt)."""


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's random state (torch CPU and CUDA, numpy, python): (tensors, JSON-able metadata)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    meta = {"numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(whole tensors, JSON metadata) of an optimizer's state: per-parameter state (AdamW's moments; sharded ones
    gathered, a collective), tensors kept in the parameter groups (IVON's Hessian and momentum), other state
    entries and IVON's step counter."""
    inner = getattr(optimizer, "optimizer", optimizer)      # Accelerate's wrapper
    sd = optimizer.state_dict()
    tensors, scalars, groups = {}, {}, []
    for pid, st in sd["state"].items():
        if isinstance(st, dict):
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{pid}.{k}"] = full(v).detach().cpu().contiguous()
                else:
                    scalars[f"{pid}.{k}"] = v
        elif torch.is_tensor(st):
            tensors[f"state.{pid}"] = st.detach().cpu().contiguous()
        else:
            scalars[f"state.{pid}"] = st
    for i, group in enumerate(sd["param_groups"]):
        groups.append({k: v for k, v in group.items() if not torch.is_tensor(v)})
        tensors.update({f"group{i}.{k}": v.detach().cpu().contiguous() for k, v in group.items() if torch.is_tensor(v)})
    attrs = {"current_step": inner.current_step} if hasattr(inner, "current_step") else {}
    return tensors, {"param_groups": groups, "scalars": scalars, "attrs": attrs}


def _load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    groups = [dict(g) for g in meta["param_groups"]]
    state: dict = {}
    for key, v in tensors.items():
        head, k = key.split(".", 1)
        if head == "state":
            state[k] = v
        elif head.startswith("group"):
            p0 = optimizer.param_groups[int(head[5:])]["params"][0]
            groups[int(head[5:])][k] = v.to(p0.device)
        else:
            p = params[int(head)]
            if is_sharded(p) and v.shape == p.shape:   # a moment of a sharded parameter: this process's slice
                v = distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            state.setdefault(int(head), {})[k] = v
    for key, v in meta["scalars"].items():
        head, k = key.split(".", 1)
        if head == "state":
            state[k] = v
        else:
            state.setdefault(int(head), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    inner = getattr(optimizer, "optimizer", optimizer)
    for k, v in meta.get("attrs", {}).items():
        setattr(inner, k, v)


def save_checkpoint(folder: Path, *, trainable: dict[str, torch.Tensor], optimizer,
                    posterior: SwagPosterior | None, state: dict,
                    rng_states: list[tuple[dict[str, torch.Tensor], dict]] | None = None) -> None:
    """Write everything needed to resume into `folder` atomically (call on the main process).
    `trainable` holds whole tensors; `optimizer` is an optimizer or its `optimizer_state()` (gathered on every
    process beforehand when it is sharded); `rng_states` every process's `rng_state()` (rank order), by default
    this process's alone."""
    with atomic_dir(folder, keep_previous=previous_good(folder)) as tmp:
        save_file({n: full(t).detach().cpu().contiguous() for n, t in trainable.items()}, str(tmp / "trainable.safetensors"))
        opt_t, opt_meta = optimizer if isinstance(optimizer, tuple) else optimizer_state(optimizer)
        save_file(opt_t, str(tmp / "optimizer.safetensors"))
        rng_states = rng_states or [rng_state()]
        save_file({f"rank{r}.{k}": v for r, (t, _) in enumerate(rng_states) for k, v in t.items()},
                  str(tmp / "rng.safetensors"))
        rng_meta = [m for _, m in rng_states]
        if posterior is not None:
            posterior.save(tmp)
        meta = {**state, "optimizer": opt_meta, "rng": rng_meta, "has_posterior": posterior is not None}
        (tmp / STATE).write_text(json.dumps(meta))


def has_checkpoint(folder: Path) -> bool:
    """A checkpoint, or the previous one (a crash between the two renames of a save leaves only that)."""
    return (Path(folder) / STATE).is_file() or (previous_good(folder) / STATE).is_file()


def load_checkpoint(folder: Path, *, trainable: dict[str, torch.Tensor], optimizer,
                    posterior_device="cpu", rank: int = 0) -> tuple[dict, SwagPosterior | None]:
    """Restore weights, optimizer and this process's (`rank`) RNG in place; return (state, posterior or None).
    Raises CheckpointError with one line if any file is missing or corrupt."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / STATE).read_text())
        weights = load_file(str(folder / "trainable.safetensors"))
        opt_t = load_file(str(folder / "optimizer.safetensors"))
        rng_t = load_file(str(folder / "rng.safetensors"))
        post = None
        if meta["has_posterior"]:
            post = SwagPosterior.load(folder, device=posterior_device)
    except Exception as e:  # noqa: BLE001 -- any read failure means the checkpoint is unusable
        raise CheckpointError(f"checkpoint {folder} is unreadable ({type(e).__name__}: {str(e)[:120]})") from e
    missing = set(trainable) - set(weights)
    if missing:
        raise CheckpointError(f"checkpoint {folder} lacks weights {sorted(missing)[:3]} (another model or method?)")
    write_(trainable, {n: weights[n] for n in trainable})
    _load_optimizer_state(optimizer, opt_t, meta["optimizer"])
    ranks = len(meta["rng"])
    if rank >= ranks:
        raise CheckpointError(f"checkpoint {folder} holds the random state of {ranks} process(es), not of process {rank}: "
                              f"resume with the same number of processes")
    prefix = f"rank{rank}."
    _set_rng_state({k[len(prefix):]: v for k, v in rng_t.items() if k.startswith(prefix)}, meta["rng"][rank])
    return meta, post


def previous_good(folder: Path) -> Path:
    return folder.with_name(folder.name + ".prev")


class Checkpointer:
    """The loop's checkpoints in `<run dir>/checkpoint/`: every process gathers what is sharded and sends its
    random state, the main process writes; `resume` falls back to `checkpoint.prev/` when the newest is corrupt."""

    def __init__(self, folder: Path, accelerator, model, optimizer):
        self.folder, self.accelerator, self.model, self.optimizer = Path(folder), accelerator, model, optimizer

    def save(self, progress, best, collector) -> None:
        """Checkpoint the loop's `progress` (see loop.Progress), the MAP adapter's and the collector's state."""
        state = {**dataclasses.asdict(progress), "best": best.state(), "swag": collector.state() if collector else None}
        posterior = collector.posterior if collector else None
        acc = self.accelerator
        rngs = [rng_state()]
        if acc.num_processes > 1:            # every process's own random state (its dropout stream)
            from accelerate.utils import gather_object
            rngs = gather_object(rngs)
        weights, opt = full_tensors(self.model.trainable_state()), optimizer_state(self.optimizer)   # gathers shards
        if acc.is_main_process:
            save_checkpoint(self.folder, trainable=weights, optimizer=opt, posterior=posterior, state=state, rng_states=rngs)
        acc.wait_for_everyone()

    def resume(self, posterior_device) -> tuple[dict, SwagPosterior | None]:
        reshard(self.model)
        errors = []
        for folder in (self.folder, previous_good(self.folder)):
            if not (folder / STATE).is_file():
                continue
            try:
                return load_checkpoint(folder, trainable=self.model.trainable_state(), optimizer=self.optimizer,
                                       posterior_device=posterior_device, rank=self.accelerator.process_index)
            except CheckpointError as e:
                errors.append(str(e))
                self.accelerator.print(f"[swag-lora] WARNING: {e}; trying the previous checkpoint")
        raise CheckpointError("no usable checkpoint: " + " | ".join(errors))
