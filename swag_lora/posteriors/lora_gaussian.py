"""A Gaussian over LoRA's A matrices with B fixed -- the posterior of BLoB and of TFB.

For every LoRA layer l with A_l (r x in) and B_l (out x r):

    A_l ~ A_l + R_l (S_l * Z),    Z ~ N(0, I) of shape r x in,

with S_l (r x in) elementwise standard deviations and R_l (r x r) a rotation (the identity unless given):

* BLoB (Wang et al., NeurIPS'24): R = I and S = sigma, learned by variational inference (posteriors/blob.py).
* TFB (Shi et al., NeurIPS'25): with B = U diag(d) V^T, R = V and S_ij = s / d_i, so that B (A_s - A) = s U Z': an
  isotropic Gaussian of scale s in the column space of B (the same as re-factoring B' = U diag(d), A' = V^T A).

Samples are name -> tensor dicts of the A matrices (as named in the model), written into the model for each draw.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from swag_lora.errors import CorruptFile
from swag_lora.io import atomic_write


class LoraAPosterior:
    """N(A, R diag(S^2) R^T) per LoRA A matrix (columns independent), over named A tensors.

    Args:
        means: name -> A (r x in), the posterior mean.
        stds: name -> S (r x in), the elementwise standard deviation (in R's basis).
        rotations: name -> R (r x r); None (or a missing name): the identity.
        meta: JSON-able description kept with the files (the method and its settings).
    """

    def __init__(self, means: dict[str, torch.Tensor], stds: dict[str, torch.Tensor],
                 rotations: dict[str, torch.Tensor] | None = None, meta: dict | None = None):
        if set(means) != set(stds):
            raise ValueError("LoraAPosterior: means and stds cover different tensors")
        for n, a in means.items():
            if stds[n].shape != a.shape:
                raise ValueError(f"LoraAPosterior: std of {n!r} has shape {tuple(stds[n].shape)}, A has {tuple(a.shape)}")
            if not torch.isfinite(a).all() or not torch.isfinite(stds[n]).all() or (stds[n] < 0).any():
                raise ValueError(f"LoraAPosterior: {n!r} has non-finite values or a negative std")
        self.means = {n: a.detach().float().cpu() for n, a in means.items()}
        self.stds = {n: s.detach().float().cpu() for n, s in stds.items()}
        self.rotations = {n: r.detach().float().cpu() for n, r in (rotations or {}).items()}
        self.meta = dict(meta or {})

    def mean(self) -> dict[str, torch.Tensor]:
        return dict(self.means)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, scale: float = 1.0) -> list[dict[str, torch.Tensor]]:
        """n draws A + scale * R (S * Z), Z drawn from `generator` tensor by tensor in name order (reproducible)."""
        out = []
        for _ in range(n):
            draw = {}
            for name, a in self.means.items():
                z = torch.randn(a.shape, generator=generator) * self.stds[name]
                rot = self.rotations.get(name)
                draw[name] = a + scale * (rot @ z if rot is not None else z)
            out.append(draw)
        return out

    # ---------------------------------------------------------------- files
    def save(self, folder: str | Path, prefix: str) -> None:
        """`<prefix>.safetensors` (mean.<name>, std.<name>, rotation.<name>) + `<prefix>.json`, atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"mean.{n}": t.contiguous() for n, t in self.means.items()}
        tensors.update({f"std.{n}": t.contiguous() for n, t in self.stds.items()})
        tensors.update({f"rotation.{n}": t.contiguous() for n, t in self.rotations.items()})
        with atomic_write(folder / f"{prefix}.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "swag_lora.LoraAPosterior"})
        with atomic_write(folder / f"{prefix}.json") as tmp:
            tmp.write_text(json.dumps({**self.meta, "names": list(self.means)}, indent=1))

    @classmethod
    def load(cls, folder: str | Path, prefix: str) -> "LoraAPosterior":
        """Read a saved posterior; a file of the wrong kind, a missing tensor or a non-finite value is refused,
        naming the file."""
        folder = Path(folder)
        path = folder / f"{prefix}.safetensors"
        try:
            meta = json.loads((folder / f"{prefix}.json").read_text())
            tensors = load_file(str(path))
            names = meta["names"]
            means = {n: tensors[f"mean.{n}"] for n in names}
            stds = {n: tensors[f"std.{n}"] for n in names}
            rotations = {n: tensors[f"rotation.{n}"] for n in names if f"rotation.{n}" in tensors}
            return cls(means, stds, rotations, {k: v for k, v in meta.items() if k != "names"})
        except Exception as e:  # noqa: BLE001 -- safetensors, JSON or shape errors: the file is unusable
            raise CorruptFile(f"{path} is not a usable LoRA-A posterior ({type(e).__name__}: {str(e)[:120]})") from None

    def __repr__(self) -> str:
        return f"LoraAPosterior(layers={len(self.means)}, params={sum(a.numel() for a in self.means.values())})"


def lora_layers(model) -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    """The model's LoRA layers (peft, adapter "default"): name of the A weight -> (layer, A weight, B weight)."""
    out = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for _, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and "default" in lora_a:
            a, b = lora_a["default"].weight, lora_b["default"].weight
            out[names[id(a)]] = (module, a, b)
    if not out:
        raise ValueError("the model has no LoRA layers (peft adapter 'default'); BLoB and TFB need them")
    return out
