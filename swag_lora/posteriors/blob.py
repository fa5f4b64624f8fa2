"""BLoB (Bayesian LoRA by backpropagation; Wang et al., NeurIPS'24), as Wang-ML-Lab/bayesian-peft trains it.

* Only A is Bayesian: q(A) = N(mu, sigma^2) elementwise, mu the LoRA A weight, sigma = rho^2 with rho learned
  (rho starts uniform in [sqrt(s0 / 2), sqrt(s0)], so sigma starts in [s0 / 2, s0]; BLoB: s0 = 0.05^2).  B stays a point
  estimate.  The prior is N(0, beta^2) (BLoB: beta = 0.2).
* The forward pass adds flipout noise: with E = sigma * eps (one draw per call, eps ~ N(0, I) of A's shape) and random
  signs r (per input element) and t (per rank), per token,

      noise = (((drop(x) * r) E^T) * t) B^T * scaling,

  whose per-example distribution is that of B (A_s - mu) drop(x) with A_s ~ q(A) (the signs decorrelate examples).
* KL(q || p) = sum over every element of log(beta / sigma) + (sigma^2 + mu^2) / (2 beta^2) - 1/2, in closed form,
  weighted at optimizer step g by pi_g = 2^i / (2^(M+1) - 1), i = g mod M (0 read as M): within each cycle of M
  steps (by default one epoch) the weights grow exponentially and sum to ~1 (bayesian-peft's --bayes-klreweighting);
  without reweighting pi = 1 / M.
* Two updates per step: AdamW on the NLL for A, B (and a head); then plain SGD at the KL learning rate for A on
  pi * dKL/dmu and for rho on dNLL/drho + pi * dKL/drho (bayesian-peft's second optimizer).  The KL gradients are
  applied in closed form (dKL/dmu = mu / beta^2, dKL/dsigma = -1/sigma + sigma / beta^2), so no second backward pass
  runs through a distributed model.

At evaluation the posterior is `LoraAPosterior(means=A, stds=sigma)`: S weight samples written into the model (the
Bayesian model average), or its mean alone (BLoB-Mean).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from swag_lora.posteriors.lora_gaussian import LoraAPosterior, lora_layers


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_std: float) -> torch.Tensor:
    """sum KL(N(mu, sigma^2) || N(0, prior_std^2)) over the elements."""
    return (math.log(prior_std) - torch.log(sigma) + (sigma ** 2 + mu ** 2) / (2 * prior_std ** 2) - 0.5).sum()


def kl_weight(global_step: int, cycle: int, reweighting: bool = True) -> float:
    """BLoB's KL weight at optimizer step `global_step` (1-based): 2^i / (2^(cycle+1) - 1), i = step mod cycle (0 read
    as cycle), computed without overflow; 1 / cycle without reweighting."""
    if not reweighting:
        return 1.0 / cycle
    i = global_step % cycle or cycle
    return 2.0 ** (i - cycle - 1) / (1.0 - 2.0 ** (-cycle - 1))


def flipout_noise(x: torch.Tensor, sigma: torch.Tensor, B: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(((x * r) E^T) * t) B^T for E = sigma * eps: flipout's per-example noise of B A x with A ~ N(., sigma^2)."""
    eps = torch.randn(sigma.shape, generator=generator, device=sigma.device, dtype=sigma.dtype)
    E = (sigma * eps).to(x.dtype)
    r = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    h = (x * r) @ E.T
    t = torch.randint(0, 2, h.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    return (h * t) @ B.to(x.dtype).T


class BlobVariational(nn.Module):
    """BLoB's variational part of a LoRA model: the learned rho of every LoRA A (sigma = rho^2), the flipout noise its
    forward pass adds while the model trains, the KL to the prior and its closed-form SGD step.

    Args:
        model: the LoRA model (peft layers, adapter "default"); the noise hooks go on its layers.
        init_std: s0: sigma starts uniform in [s0 / 2, s0] (BLoB: 0.05^2 = 0.0025).
        prior_std: beta (BLoB: 0.2).
    """

    def __init__(self, model: nn.Module, init_std: float, prior_std: float):
        super().__init__()
        layers = lora_layers(model)
        self.names = list(layers)
        self.prior_std = float(prior_std)
        lo, hi = math.sqrt(init_std / 2), math.sqrt(init_std)
        self.rho = nn.ParameterList([nn.Parameter(torch.empty_like(a, dtype=torch.float32).uniform_(lo, hi))
                                     for _, a, _ in layers.values()])
        self._layers = [(module, a, b) for module, a, b in layers.values()]     # a list: not registered as submodules
        self._hooks = [module.register_forward_hook(self._hook(i)) for i, (module, _, _) in enumerate(self._layers)]

    def _hook(self, i: int):
        def add_noise(module, args, output):
            if not self.training:               # the mean at validation and evaluation
                return output
            x = module.lora_dropout["default"](args[0])       # a dropout call of its own, as BLoB's
            noise = flipout_noise(x, self.sigma(i), self._layers[i][2])
            return output + noise * module.scaling["default"]
        return add_noise

    def sigma(self, i: int) -> torch.Tensor:
        return self.rho[i] ** 2

    def kl(self) -> torch.Tensor:
        """KL(q(A) || p(A)) summed over every LoRA A."""
        return sum(gaussian_kl(a.float(), self.sigma(i), self.prior_std) for i, (_, a, _) in enumerate(self._layers))

    @torch.no_grad()
    def kl_step(self, lr: float, weight: float) -> None:
        """BLoB's second update: SGD at `lr` on weight * KL for A, and on dNLL/drho (already in rho.grad) + weight * dKL/drho
        for rho; rho's gradient is then cleared."""
        beta2 = self.prior_std ** 2
        for i, (_, a, _) in enumerate(self._layers):
            rho = self.rho[i]
            sigma = rho ** 2
            a.sub_((lr * weight) * a.float().div(beta2).to(a.dtype))
            grad = weight * (-1.0 / sigma + sigma / beta2) * 2 * rho
            if rho.grad is not None:
                grad = grad + rho.grad
                rho.grad = None
            rho.sub_(lr * grad)

    def posterior(self, named: dict[str, torch.Tensor], meta: dict | None = None) -> LoraAPosterior:
        """q(A) as a LoraAPosterior over the A tensors, named as in `named` (the model's parameter names)."""
        by_id = {id(t): n for n, t in named.items()}
        means, stds = {}, {}
        for i, (_, a, _) in enumerate(self._layers):
            name = by_id[id(a)]
            means[name], stds[name] = a.detach().float(), self.sigma(i).detach()
        return LoraAPosterior(means, stds, meta={"method": "blob", "prior_std": self.prior_std, **(meta or {})})

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
