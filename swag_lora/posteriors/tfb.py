"""TFB (training-free Bayesianization of LoRA; Shi et al., NeurIPS'25), post hoc on a trained (MAP) adapter.

For each LoRA layer, B = U diag(d) V^T (its SVD).  TFB re-factors B' = U diag(d), A' = V^T A (B'A' = BA) and puts
an elementwise Gaussian on A' with std s / d_i for row i: the weight noise B' (A'_s - A') = s U Z is isotropic, of scale
s, in the column space of B.  In A's own coordinates that is A_s = A + s V (Z / d) -- `LoraAPosterior` with rotation V
and std 1 / d_i (at scale 1), sampled at scale s.

The scale s is the largest for which the predictive on in-distribution validation rows stays within a tolerance of
the MAP adapter's, found by bisection (`search_scale`): `nll` (default) -- NLL(s) <= NLL(0) (1 + tol); `accuracy`
(TFB's other criterion) -- accuracy(s) >= accuracy(0) - tol.  The S samples are the same standard normals at every s
(common random numbers), so the criterion is a smooth function of s.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from swag_lora.posteriors.lora_gaussian import LoraAPosterior, lora_layers

SINGULAR_FLOOR = 1e-6     # TFB's own: std s / (d + 1e-6), so that a zero singular value gives a finite std


def tfb_posterior(model, named: dict[str, torch.Tensor], meta: dict | None = None) -> LoraAPosterior:
    """The unit-scale TFB posterior of the model's current adapter: per LoRA layer, rotation V and std 1 / d_i."""
    by_id = {id(t): n for n, t in named.items()}
    means, stds, rotations = {}, {}, {}
    for _, (_, a, b) in lora_layers(model).items():
        name = by_id[id(a)]
        _, d, vh = torch.linalg.svd(b.detach().float().cpu(), full_matrices=False)
        means[name] = a.detach().float().cpu()
        stds[name] = (1.0 / (d + SINGULAR_FLOOR))[:, None].expand_as(means[name]).clone()
        rotations[name] = vh.T.contiguous()
    return LoraAPosterior(means, stds, rotations, meta={"method": "tfb", **(meta or {})})


def search_scale(metric: Callable[[float], float], feasible: Callable[[float], bool], upper: float, steps: int,
                 grow: int = 12) -> tuple[float, list[tuple[float, float, bool]]]:
    """The largest feasible scale by bisection: start from [0, upper], doubling `upper` (at most `grow` times) while it
    is still feasible, then `steps` halvings; returns the feasible end of the bracket and the (scale, metric, feasible)
    trace.  `metric(s)` is the validation metric at scale s; `feasible(value)` the constraint."""
    trace = []

    def ok(s: float) -> bool:
        value = metric(s)
        good = feasible(value)
        trace.append((s, value, good))
        return good
    lo, hi = 0.0, float(upper)
    for _ in range(grow):
        if not ok(hi):
            break
        lo, hi = hi, 2 * hi
    else:
        return lo, trace                    # feasible up to the last doubling: the largest scale tried
    for _ in range(steps):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, trace
