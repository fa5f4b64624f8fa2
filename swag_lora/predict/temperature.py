"""Temperature scaling over a Bayesian model average: each draw's log probabilities divided by T, then averaged."""
from __future__ import annotations

import math

import numpy as np
import torch


def fit_temperature(member_probs: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the validation NLL of the average *as it is applied*:

        NLL(T) = -mean_n log( mean_s softmax(log p_sn / T)[y_n] )

    i.e. each draw's distribution is tempered, then the draws are averaged (`apply_temperature`).  For one draw
    this is Guo et al.'s (2017) temperature scaling.  `member_probs` is S x N x C (N x C is one draw); a probability
    of exactly 0 (an absent choice, masked) stays 0 at every T."""
    p = np.asarray(member_probs, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    logp = torch.log(torch.as_tensor(p).clamp_min(1e-12))
    absent = torch.as_tensor(p == 0)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_s = math.log(p.shape[0])
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        scaled = torch.where(absent, -1e4, logp / log_t.exp())      # absent: exp(-1e4) = 0, and finite gradients
        tempered = torch.log_softmax(scaled, dim=-1)                        # S x N x C
        avg = torch.logsumexp(tempered, dim=0) - log_s                     # log of the average, N x C
        loss = -avg[torch.arange(len(y)), y].mean()
        loss.backward()
        return loss
    opt.step(closure)
    return float(log_t.detach().exp())


def apply_temperature(member_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale each member's distribution: softmax(log p / T); absent choices (p = 0) stay 0."""
    p = np.asarray(member_probs)
    logp = np.where(p > 0, np.log(np.clip(p, 1e-12, None)) / temperature, -np.inf)
    logp -= logp.max(-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(-1, keepdims=True)
