"""Laplace-LoRA (Yang et al., 2024): a Gaussian N(theta_MAP, (GGN + lambda I)^-1) over the trained tensors at the MAP
adapter -- LoRA + head (`subset="all"`) or the head alone (`subset="head"`, last-layer Laplace) -- fitted with
laplace-torch: the generalised Gauss-Newton over the training rows, Kronecker-factored (`kron`, KFAC) or diagonal
(`diag`), and the prior precision lambda chosen by the marginal likelihood (laplace-torch's, as Laplace-LoRA does by
default) or by the validation NLL over a grid of values (Laplace-LoRA's other way; `select_prior`).

Predictives (each S x N x C, the caller averages them):
    glm_probit  the linearised model f(x; theta) ~ N(f_MAP, J Sigma J^T), through the probit approximation
                softmax(f_MAP / sqrt(1 + pi/8 diag(J Sigma J^T))) (one draw);
    glm_mc      S samples of the linearised logits, softmaxed;
    nn_mc       S weight samples theta_s ~ N(theta_MAP, Sigma) put into the network.
glm_probit is the default, as in Laplace-LoRA: weight samples from a prior fitted over every LoRA tensor can be far
off the data (on the demo, nn_mc fell to chance accuracy where glm_probit kept the MAP's).
For the head alone the Jacobians and the samples act on features cached from one backbone pass.

The fitted factors are saved in `<run>/laplace_model/` (safetensors + JSON), so later evaluations do not refit.
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from swag_lora.io import atomic_write

HESSIANS = ("kron", "diag")
JACOBIAN_ROWS = 8           # rows per laplace-torch GLM call over the whole model (bounds the Jacobians' memory)


class _DictModel(torch.nn.Module):
    """batch dict -> logits: the form laplace-torch takes (dict_key_x / dict_key_y)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(**{k: v for k, v in batch.items() if k != "labels"})


@contextlib.contextmanager
def only_trainable(named: dict[str, torch.Tensor], model) -> Iterator[None]:
    """laplace-torch covers the parameters that require grad: make those exactly `named` for a while."""
    keep = {id(p) for p in named.values()}
    before = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for p, flag in before.items():
            p.requires_grad_(flag)


class LoraLaplace:
    """A Laplace approximation over `named` (the subset's tensors of `model`, in `named_parameters` order).

    Args:
        model: the ChoiceModel at its MAP adapter.
        named: the tensors covered (`model.trainable_state()` or `model.head_tensors()`).
        hessian: kron or diag.
    """

    def __init__(self, model, named: dict[str, torch.Tensor], hessian: str = "kron"):
        from laplace import Laplace
        if hessian not in HESSIANS:
            raise ValueError(f"unknown Laplace hessian {hessian!r}; allowed: {', '.join(HESSIANS)}")
        self.model, self.named, self.hessian = model, named, hessian
        with only_trainable(named, model):
            self.la = Laplace(_DictModel(model), "classification", subset_of_weights="all", hessian_structure=hessian,
                              dict_key_x="input_ids", dict_key_y="labels")

    # ---------------------------------------------------------------- fit
    def fit(self, loader, optimize_prior: bool = True) -> None:
        """GGN over `loader`'s rows, then (by default) the prior precision by the marginal likelihood."""
        self.model.eval()
        with only_trainable(self.named, self.model):
            self.la.fit(loader)
            if optimize_prior:
                self.la.optimize_prior_precision(method="marglik")

    @property
    def prior_precision(self) -> float:
        return float(self.la.prior_precision.mean())

    def jacobians(self, batch: dict, rows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits B x C, their Jacobians B x C x P w.r.t. the covered tensors) of the whole model, by laplace-torch's
        backend, `rows` rows at a time."""
        size = len(batch["input_ids"])
        Js, fs = [], []
        with only_trainable(self.named, self.model):
            for start in range(0, size, rows):
                part = {k: v[start: start + rows] if torch.is_tensor(v) and v.dim() and len(v) == size else v
                        for k, v in batch.items()}
                J, f = self.la.backend.jacobians(part, enable_backprop=False)
                Js.append(J.detach())
                fs.append(f.detach())
        return torch.cat(fs), torch.cat(Js)

    def select_prior(self, moments, grid: list[float]) -> dict:
        """The prior precision of `grid` with the lowest NLL of the probit GLM predictive on validation rows, from
        `moments`: an iterable of (logits B x C, Jacobians B x C x P, labels B).  Sets it; returns the NLL per value."""
        nll = torch.zeros(len(grid), dtype=torch.float64)
        count = 0
        for f_mu, J, y in moments:
            for g, delta in enumerate(grid):
                self.la.prior_precision = float(delta)
                probs = self.glm(f_mu, J, "glm_probit", 1)[0].double()
                nll[g] += -torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).sum()
            count += len(y)
        best = int(torch.argmin(nll))
        self.la.prior_precision = float(grid[best])
        return {"grid": [float(d) for d in grid], "validation_nll": (nll / max(count, 1)).tolist(), "rows": count}

    # ---------------------------------------------------------------- posterior
    def sample(self, n: int, generator: torch.Generator | None = None) -> list[dict[str, torch.Tensor]]:
        """n weight samples theta_s ~ N(theta_MAP, Sigma), as name -> tensor."""
        flat = self.la.sample(n_samples=n, generator=generator)
        out = []
        for row in flat:
            values, offset = {}, 0
            for name, t in self.named.items():
                values[name] = row[offset: offset + t.numel()].view(t.shape)
                offset += t.numel()
            out.append(values)
        return out

    def glm(self, f_mu: torch.Tensor, jacobians: torch.Tensor, predictive: str, num_samples: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """S x B x C probabilities of the linearised model from logits `f_mu` (B x C) and Jacobians (B x C x P)."""
        f_var = self.la.functional_variance(jacobians)                       # B x C x C
        if predictive == "glm_probit":
            kappa = 1 / torch.sqrt(1 + math.pi / 8 * f_var.diagonal(dim1=-2, dim2=-1))
            return torch.softmax(f_mu * kappa, -1)[None]
        scale = torch.linalg.cholesky(f_var + 1e-8 * torch.eye(f_var.shape[-1], dtype=f_var.dtype, device=f_var.device))
        z = torch.randn((num_samples, *f_mu.shape), generator=generator, dtype=f_mu.dtype, device=f_mu.device)
        return torch.softmax(f_mu[None] + torch.einsum("bij,sbj->sbi", scale, z), -1)

    def predictive(self, batch: dict, predictive: str, num_samples: int, generator=None,
                   rows: int = JACOBIAN_ROWS) -> torch.Tensor:
        """S x B x C probabilities of the linearised whole model (laplace-torch's Jacobians of the covered tensors),
        `rows` rows at a time: the Jacobians' memory grows with the rows (a MiniLM batch of 64 took over 13 GB)."""
        size = len(batch["input_ids"])
        out = []
        with only_trainable(self.named, self.model):
            for start in range(0, size, rows):
                part = {k: v[start: start + rows] if torch.is_tensor(v) and v.dim() and len(v) == size else v
                        for k, v in batch.items()}
                if predictive == "glm_probit":
                    out.append(self.la(part, pred_type="glm", link_approx="probit")[None])
                else:
                    out.append(self.la.predictive_samples(part, pred_type="glm", n_samples=num_samples,
                                                          generator=generator))
        return torch.cat(out, 1)

    # ---------------------------------------------------------------- files
    def save(self, folder: str | Path, name: str) -> None:
        """`<folder>/<name>.safetensors` (the Hessian factors, MAP mean, prior) + `<name>.json`."""
        state = self.la.state_dict()
        tensors = {k: state[k].detach().cpu().contiguous() for k in ("mean", "loss", "prior_precision", "sigma_noise")}
        if state.get("prior_mean") is not None:
            tensors["prior_mean"] = torch.as_tensor(state["prior_mean"]).detach().cpu().reshape(-1)
        blocks = []
        if self.hessian == "kron":
            for i, block in enumerate(state["H"]):
                blocks.append(len(block))
                for j, factor in enumerate(block):
                    tensors[f"H.{i}.{j}"] = factor.detach().cpu().contiguous()
        else:
            tensors["H"] = state["H"].detach().cpu().contiguous()
        meta = {k: state[k] for k in ("n_data", "n_outputs", "likelihood", "temperature", "enable_backprop", "cls_name")}
        meta.update(hessian=self.hessian, blocks=blocks, names=list(self.named),
                    shapes=[list(t.shape) for t in self.named.values()], prior_precision=self.prior_precision,
                    prior_source=getattr(self, "prior_source", "marglik"))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / f"{name}.safetensors") as tmp:
            save_file(tensors, str(tmp))
        with atomic_write(folder / f"{name}.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: str | Path, name: str, model, named: dict[str, torch.Tensor]) -> "LoraLaplace":
        folder = Path(folder)
        meta = json.loads((folder / f"{name}.json").read_text())
        if meta["names"] != list(named):
            raise ValueError(f"{folder / name} covers other tensors than this model's {len(named)} (another subset or model?)")
        tensors = load_file(str(folder / f"{name}.safetensors"))
        post = cls(model, named, meta["hessian"])
        if meta["hessian"] == "kron":
            H = [[tensors[f"H.{i}.{j}"] for j in range(n)] for i, n in enumerate(meta["blocks"])]
        else:
            H = tensors["H"]
        state = {k: meta[k] for k in ("n_data", "n_outputs", "likelihood", "temperature", "enable_backprop", "cls_name")}
        state.update(mean=tensors["mean"], H=H, loss=tensors["loss"], prior_precision=tensors["prior_precision"],
                     sigma_noise=tensors["sigma_noise"], prior_mean=tensors.get("prior_mean", torch.zeros(1)).squeeze())
        with only_trainable(named, model):
            post.la.load_state_dict(state)
        return post
