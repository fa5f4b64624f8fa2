"""IVON (Shen et al., 2024; for LoRA: Cong et al., 2024): variational learning with the `ivon-opt` optimizer, whose
state is a diagonal Gaussian posterior N(m, diag(1 / (ess * (h + delta)))) over the trained tensors -- m the
parameters, h the optimizer's Hessian estimate, delta its weight decay, ess its effective sample size (by default
the number of training rows).

`IvonPosterior.from_optimizer` reads that posterior off a trained optimizer; it samples, saves (safetensors + JSON)
and loads like `SwagPosterior`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from swag_lora.distributed import write_
from swag_lora.errors import CorruptFile
from swag_lora.io import atomic_write

TENSORS, META = "ivon_posterior.safetensors", "ivon_posterior.json"


def make_ivon(params: list[torch.Tensor], *, lr: float, ess: float, hess_init: float, beta1: float, beta2: float,
              weight_decay: float, clip_radius: float | None = None, rescale_lr: bool = True):
    """ivon-opt's IVON over `params` (one parameter group).  Its step, per element, is

        theta -= lr' * clip((m_hat + delta theta) / (h + delta), +-clip_radius),   lr' = lr (h0 + delta) if rescale_lr else lr

    with m_hat the debiased gradient momentum, h the Hessian estimate (started at h0 = hess_init) and delta the weight
    decay; the posterior it keeps is N(theta, 1 / (ess (h + delta)))."""
    import ivon
    return ivon.IVON(params, lr=lr, ess=ess, hess_init=hess_init, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                     clip_radius=float("inf") if clip_radius is None else clip_radius, rescale_lr=rescale_lr)


def hessian_movement(optimizer, hess_init: float) -> dict:
    """How far IVON's Hessian estimate moved from h0: quantiles of h / h0 over the trained tensors (1 everywhere: the
    posterior is still its isotropic initial guess, std 1 / sqrt(ess (h0 + delta)))."""
    opt = getattr(optimizer, "optimizer", optimizer)
    h = torch.cat([g["hess"].detach().flatten().float().cpu() for g in opt.param_groups]) / hess_init
    q = torch.quantile(h[torch.randperm(len(h), generator=torch.Generator().manual_seed(0))[:1_000_000]],
                       torch.tensor([0.05, 0.5, 0.95]))
    return {"hess_over_init_q05": float(q[0]), "hess_over_init_median": float(q[1]), "hess_over_init_q95": float(q[2]),
            "hess_over_init_mean": float(h.mean())}


class IvonPosterior:
    """A diagonal Gaussian over named tensors: mean and precision ess * (hess + weight_decay)."""

    def __init__(self, shapes: dict[str, torch.Size], mean: torch.Tensor, hess: torch.Tensor, ess: float,
                 weight_decay: float):
        self.shapes = {n: torch.Size(s) for n, s in shapes.items()}
        self.numels = [int(torch.Size(s).numel()) for s in self.shapes.values()]
        self._mean, self._hess = mean.detach().float().clone(), hess.detach().float().clone()
        self.ess, self.weight_decay = float(ess), float(weight_decay)

    @classmethod
    def from_optimizer(cls, optimizer, named: dict[str, torch.Tensor]) -> "IvonPosterior":
        """The posterior of a trained IVON whose single parameter group holds exactly `named`'s tensors, in order."""
        opt = getattr(optimizer, "optimizer", optimizer)   # Accelerate's wrapper
        (group,) = opt.param_groups
        by_id = {id(p): n for n, p in named.items()}
        names = [by_id[id(p)] for p in group["params"]]
        mean = torch.cat([p.detach().flatten() for p in group["params"]])
        return cls({n: named[n].shape for n in names}, mean, group["hess"], group["ess"], group["weight_decay"])

    def variance(self) -> torch.Tensor:
        """The flat posterior variance 1 / (ess * (hess + weight_decay))."""
        return 1.0 / (self.ess * (self._hess + self.weight_decay))

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: v.view(s) for (n, s), v in zip(self.shapes.items(), flat.split(self.numels))}

    def mean(self) -> dict[str, torch.Tensor]:
        return self._unflatten(self._mean)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None):
        """theta = m + z / sqrt(ess * (h + delta)), z ~ N(0, I): one draw (name -> tensor) with n=None, else a list of
        n (the posteriors' shared interface, `sample(n, generator)`)."""
        std = self.variance().sqrt()
        draws = [self._unflatten(self._mean + torch.randn(self._mean.shape, generator=generator, device=self._mean.device) * std)
                 for _ in range(1 if n is None else n)]
        return draws[0] if n is None else draws

    def sample_(self, target: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> None:
        write_(target, self.sample(generator=generator))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / TENSORS) as tmp:
            save_file({"mean": self._mean.cpu().contiguous(), "hess": self._hess.cpu().contiguous()}, str(tmp))
        with atomic_write(folder / META) as tmp:
            tmp.write_text(json.dumps({"ess": self.ess, "weight_decay": self.weight_decay, "names": list(self.shapes),
                                       "shapes": [list(s) for s in self.shapes.values()]}, indent=1))

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> "IvonPosterior":
        """Read a saved posterior; a malformed file or non-finite values are refused (`CorruptFile`, naming it)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / META).read_text())
            t = load_file(str(folder / TENSORS), device=str(device))
            post = cls(dict(zip(meta["names"], meta["shapes"])), t["mean"], t["hess"], meta["ess"], meta["weight_decay"])
            if sum(post.numels) != post._mean.numel() or post._hess.shape != post._mean.shape:
                raise ValueError("the tensors do not match the names and shapes of the metadata")
        except Exception as e:  # noqa: BLE001 -- safetensors, JSON or shape errors: the file is unusable
            raise CorruptFile(f"IVON posterior {folder / TENSORS} is unusable ({type(e).__name__}: {str(e)[:160]})") from None
        if not (torch.isfinite(post._mean).all() and torch.isfinite(post._hess).all()):
            raise CorruptFile(f"IVON posterior {folder / TENSORS} holds non-finite values; it cannot be sampled")
        return post

    def __repr__(self) -> str:
        return f"IvonPosterior(tensors={len(self.shapes)}, params={self._mean.numel()}, ess={self.ess:g})"
