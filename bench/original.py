"""The original design (fortuinlab/swag-lora), re-stated for comparison: per-parameter buffers on the CPU, the
deviation matrix grown with torch.cat, a full copy of the model to the CPU at every collect, and samples drawn on the
CPU and copied into the model's tensors.  Its code is not copied: this is its behaviour, as measured against."""
from __future__ import annotations

import copy
import math

import torch


def llama7b_lora_shapes(r: int, layers: int = 32, width: int = 4096) -> dict[str, tuple]:
    shapes = {}
    for i in range(layers):
        for m in ("q_proj", "v_proj"):
            shapes[f"layers.{i}.{m}.lora_A"] = (r, width)
            shapes[f"layers.{i}.{m}.lora_B"] = (width, r)
    shapes["letter_head"] = (5, width)
    return shapes


class OriginalSwag:
    """The original design, for comparison: per-parameter buffers on the CPU, the deviation matrix grown
    with torch.cat (and sliced when full), a full copy of the model to the CPU at every collect, and
    samples drawn on the CPU and copied into the model's tensors (on its device)."""

    def __init__(self, module: torch.nn.Module, max_rank: int):
        self.module, self.max_rank, self.n = module, max_rank, 0
        self.mean = {n: torch.zeros(p.shape) for n, p in module.named_parameters()}
        self.sq = {n: torch.zeros(p.shape) for n, p in module.named_parameters()}
        self.dev = {n: torch.zeros(0, p.numel()) for n, p in module.named_parameters()}

    @torch.no_grad()
    def collect(self) -> None:
        snapshot = copy.deepcopy(self.module).cpu()
        for n, p in snapshot.named_parameters():
            self.mean[n] = self.mean[n] * self.n / (self.n + 1) + p / (self.n + 1)
            self.sq[n] = self.sq[n] * self.n / (self.n + 1) + p ** 2 / (self.n + 1)
            d = (p - self.mean[n]).view(1, -1)
            self.dev[n] = torch.cat([self.dev[n], d], dim=0)
            if self.dev[n].shape[0] > self.max_rank:
                self.dev[n] = self.dev[n][1:]
        self.n += 1

    @torch.no_grad()
    def sample(self, scale: float = 0.5) -> None:
        means = torch.cat([m.view(-1) for m in self.mean.values()])
        var = torch.clamp(torch.cat([s.view(-1) for s in self.sq.values()]) - means ** 2, 1e-30)
        d = torch.cat(list(self.dev.values()), dim=1)
        z = var.sqrt() * torch.randn_like(var) + d.t().matmul(torch.randn(d.shape[0])) / math.sqrt(self.max_rank - 1)
        theta = means + math.sqrt(scale) * z
        offset = 0
        for p in self.module.parameters():
            p.copy_(theta[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


