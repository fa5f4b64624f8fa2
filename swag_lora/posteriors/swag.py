"""SWAG posterior over a named set of tensors (Maddox et al., 2019), in the style of laplace-torch.

The posterior knows names and shapes only; it never holds or copies a model.  Inside it keeps
flat fp32 buffers: the running mean, the running sum of squared deviations (Welford's update, so that
the variance of weights that move by 1e-5 keeps its precision, which E[x^2] - mu^2 in fp32 loses), and a
ring buffer of up to K deviation columns (snapshot minus the running mean after the update).  Collecting
and sampling are a handful of vector operations whatever the number of tensors.

    post = SwagPosterior.from_named_tensors(named, max_rank=20)
    post.collect(named)                       # one snapshot
    draw = post.sample(scale=0.5, cov=True, generator=g)   # name -> tensor; scale 0 gives the mean (SWA)
    draws = post.sample(10, g, scale=0.5)                  # a list of 10 (every posterior: sample(n, generator))
    post.write_(named, draw)                  # copy a draw into the model's tensors, in place
    post.sample_(named, scale=0.5, generator=g)            # the same two steps in one, with no new tensors
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from swag_lora.distributed import is_sharded, write_
from swag_lora.errors import CorruptFile
from swag_lora.io import atomic_write

POSTERIOR_TENSORS = "swag_posterior.safetensors"
POSTERIOR_META = "swag_posterior.json"
FORMAT_VERSION = 2      # 2: the running sum of squared deviations ("var_sum"); 1 (read too): the second moment


class SwagPosterior:
    """Gaussian N(mu, 0.5*(diag(sigma^2) + D D^T / (K-1))) over named tensors, fitted by SWAG.

    Args:
        shapes: name -> shape of every tensor the posterior covers (the order is kept).
        max_rank: K, the number of deviation columns kept (the oldest is dropped first).
        var_clamp: floor for the diagonal variance (a weight that never moved has variance 0).
        device: where the buffers live (defaults to the CPU; the trainer passes the parameters' device).
        keep_deviations: False gives a diagonal posterior (SWAG-diag): no deviation columns are stored.
    """

    def __init__(
        self,
        shapes: Mapping[str, Iterable[int]],
        max_rank: int = 20,
        var_clamp: float = 1e-30,
        device: torch.device | str = "cpu",
        keep_deviations: bool = True,
    ) -> None:
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self.shapes: dict[str, torch.Size] = {n: torch.Size(s) for n, s in shapes.items()}
        if not self.shapes:
            raise ValueError("SwagPosterior needs at least one tensor")
        self.max_rank = int(max_rank)
        self.var_clamp = float(var_clamp)
        self.numels = [math.prod(s) for s in self.shapes.values()]
        self.num_params = sum(self.numels)
        device = torch.device(device)
        self._mean = torch.zeros(self.num_params, dtype=torch.float32, device=device)
        self._var_sum = torch.zeros_like(self._mean)    # sum_i (x_i - mean_n)^2 over the n snapshots (Welford)
        self.keep_deviations = bool(keep_deviations)
        # K x P deviation columns; a diagonal posterior keeps one column only as the snapshot's staging buffer
        self._dev = torch.zeros(self.max_rank if keep_deviations else 1, self.num_params, dtype=torch.float32, device=device)
        self._std: torch.Tensor | None = None   # sqrt of the clamped variance, cached between collects
        self._draw: torch.Tensor | None = None  # sample_'s flat buffer
        self._views: dict[object, list[torch.Tensor]] = {}   # buffer key -> its views shaped like the tensors
        self.num_snapshots = 0   # n: snapshots averaged into mean and second moment
        self.rank = 0            # deviation columns held, <= max_rank
        self._next_col = 0       # ring-buffer write position

    @classmethod
    def from_named_tensors(cls, named: Mapping[str, torch.Tensor], **kwargs) -> "SwagPosterior":
        """Build an empty posterior with the names and shapes of `named` (on their device)."""
        kwargs.setdefault("device", next(iter(named.values())).device)
        return cls({n: t.shape for n, t in named.items()}, **kwargs)

    # ------------------------------------------------------------------ fit
    def _tensors(self, named: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The tensors of `named` in the posterior's order, checked against its names and shapes."""
        try:
            tensors = [named[name] for name in self.shapes]
        except KeyError:
            missing = [n for n in self.shapes if n not in named]
            raise KeyError(f"tensors missing from the snapshot: {missing[:5]}") from None
        if [t.shape for t in tensors] != list(self.shapes.values()):
            name, t = next((n, t) for n, t in zip(self.shapes, tensors) if t.shape != self.shapes[n])
            raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, posterior expects {tuple(self.shapes[name])}")
        return tensors

    def _shaped_views(self, key: object, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of one of the posterior's own flat buffers (deviation column `key`, or "draw") shaped like the
        tensors; made once per buffer, since the buffers are never reallocated."""
        views = self._views.get(key)
        if views is None:
            views = [v.view(s) for v, s in zip(flat.split(self.numels), self.shapes.values())]
            self._views[key] = views
        return views

    @torch.no_grad()
    def collect(self, named: Mapping[str, torch.Tensor]) -> None:
        """Add one snapshot x: with w = 1 / (n + 1) and delta = x - mean,

            mean += w * delta,    var_sum += (1 - w) * delta^2,    column = x - mean_new = (1 - w) * delta

        (Welford's update; (1 - w) * delta is x minus the new mean).  Five passes over P floats and no temporaries:
        the snapshot is staged in the deviation column it ends up in."""
        col = self._dev[self._next_col]
        # one batched copy of the snapshot (a few kernel launches on a GPU, not one per tensor; casts dtype/device)
        torch._foreach_copy_(self._shaped_views(self._next_col, col), self._tensors(named))
        w = 1.0 / (self.num_snapshots + 1)
        col.sub_(self._mean)                                   # delta
        self._mean.add_(col, alpha=w)
        self._var_sum.addcmul_(col, col, value=1.0 - w)
        self.num_snapshots += 1
        self._std = None
        if not self.keep_deviations:
            return
        col.mul_(1.0 - w)                                      # x - mean_new
        self._next_col = (self._next_col + 1) % self.max_rank
        self.rank = min(self.rank + 1, self.max_rank)

    # ------------------------------------------------------------------ moments
    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: v.view(s) for (n, s), v in zip(self.shapes.items(), flat.split(self.numels))}

    def flat_variance(self) -> torch.Tensor:
        """sigma^2 = var_sum / n, the snapshots' (population) variance, floored at var_clamp."""
        return (self._var_sum / max(self.num_snapshots, 1)).clamp_(min=self.var_clamp)

    def _flat_std(self) -> torch.Tensor:
        if self._std is None:
            self._std = self.flat_variance().sqrt_()
        return self._std

    def mean(self) -> dict[str, torch.Tensor]:
        """The SWA solution: name -> running mean (views into the buffer; copy before editing)."""
        return self._unflatten(self._mean)

    def variance(self) -> dict[str, torch.Tensor]:
        return self._unflatten(self.flat_variance())

    def deviations(self) -> torch.Tensor:
        """The K x P deviation matrix, columns in the order they were collected (oldest first)."""
        if self.rank < self.max_rank:
            return self._dev[: self.rank]
        return torch.roll(self._dev, -self._next_col, dims=0)

    # ------------------------------------------------------------------ sample
    def _draw_into(self, theta: torch.Tensor, scale: float, cov: bool, generator: torch.Generator | None,
                   k: int | None) -> None:
        if self.num_snapshots == 0:
            raise RuntimeError("cannot sample from a SWAG posterior with no snapshots")
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"scale must be a finite number >= 0, got {scale}")
        if scale == 0:
            theta.copy_(self._mean)
            return
        if cov and not self.keep_deviations:
            raise ValueError("this SWAG posterior is diagonal (collected with swag_cov_mat=false): it has no "
                             "low-rank term; sample with cov=False")
        root = math.sqrt(scale)
        theta.normal_(generator=generator)   # z1
        k = self.rank if k is None else int(k)
        z2 = None
        if cov and self.rank >= 1 and k >= 2:
            z2 = torch.randn(self.rank, generator=generator, device=self._mean.device)
        # theta = mu + sqrt(s) * sigma * z1: one fused pass, in place
        torch.addcmul(self._mean, theta, self._flat_std(), value=root, out=theta)
        if z2 is not None:   # + sqrt(s) * D^T z2 / sqrt(K - 1): one pass over the K x P deviations
            theta.addmv_(self._dev[: self.rank].T, z2, alpha=root / math.sqrt(k - 1))

    @torch.no_grad()
    def sample(
        self,
        n: int | None = None,
        generator: torch.Generator | None = None,
        *,
        scale: float = 0.5,
        cov: bool = True,
        k: int | None = None,
    ):
        """Draw theta = mu + sqrt(scale) * (sigma * z1 + D^T z2 / sqrt(K - 1)) over the D columns held: one draw (name ->
        tensor) with n=None, else a list of n (the posteriors' shared interface, `sample(n, generator)`).

        scale=0 returns the mean (SWA); scale=0.5 is the SWAG paper's formula.  K is `k`: None counts the
        columns held (this project's choice, `method.swag_k_held=true`); the original divides by
        `max_rank - 1` however many columns are held (pass `k=max_rank`).  The low-rank term needs cov=True,
        a column and K >= 2.  The generator must live on the posterior's device; z1 and z2 are drawn from it
        in that order (reproducible by seed and device type).
        """
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
            raise TypeError(f"SwagPosterior.sample(n, generator, scale=...): n={n!r} is not a number of draws; give the "
                            f"scale by name (scale={n!r})")
        draws = []
        for _ in range(1 if n is None else n):
            theta = torch.empty_like(self._mean)
            self._draw_into(theta, scale, cov, generator, k)
            draws.append(self._unflatten(theta))
        return draws[0] if n is None else draws

    @torch.no_grad()
    def sample_(
        self,
        target: Mapping[str, torch.Tensor],
        scale: float = 0.5,
        cov: bool = True,
        generator: torch.Generator | None = None,
        k: int | None = None,
    ) -> None:
        """Draw one sample straight into the tensors of `target` (the model's), in place.

        The same draw as `write_(target, sample(scale, cov, generator, k))`, through one reused buffer and
        one batched copy: what evaluation does S times."""
        tensors = self._tensors(target)
        if self._draw is None:
            self._draw = torch.empty_like(self._mean)
        self._draw_into(self._draw, scale, cov, generator, k)
        views = self._shaped_views("draw", self._draw)
        if any(is_sharded(t) for t in tensors):     # FSDP2 shards: each process writes its slice
            write_(target, dict(zip(self.shapes, views)))
        else:
            torch._foreach_copy_(tensors, views)

    @staticmethod
    @torch.no_grad()
    def write_(target: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> None:
        """Copy `values` into the tensors of `target` in place (casting to their dtype/device; a sharded target
        gets its slice).  One batched copy: on a GPU a few kernel launches instead of one per tensor."""
        write_(target, values)

    # ------------------------------------------------------------------ state
    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "max_rank": self.max_rank,
            "rank": self.rank,
            "next_col": self._next_col,
            "num_snapshots": self.num_snapshots,
            "var_clamp": self.var_clamp,
            "keep_deviations": self.keep_deviations,
            "num_params": self.num_params,
            "names": list(self.shapes),
            "shapes": [list(s) for s in self.shapes.values()],
        }

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, metadata): the flat buffers and a JSON-able description."""
        tensors = {"mean": self._mean, "var_sum": self._var_sum}
        if self.keep_deviations:
            tensors["deviations"] = self._dev[: self.rank]
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, self.metadata()

    @classmethod
    def from_state_dict(
        cls, tensors: Mapping[str, torch.Tensor], meta: Mapping, device: torch.device | str = "cpu"
    ) -> "SwagPosterior":
        if meta.get("format_version") not in (1, FORMAT_VERSION):
            raise ValueError(f"unknown SWAG posterior format_version {meta.get('format_version')!r}; allowed: 1, {FORMAT_VERSION}")
        post = cls(dict(zip(meta["names"], meta["shapes"])), max_rank=meta["max_rank"],
                   var_clamp=meta["var_clamp"], device=device, keep_deviations=meta.get("keep_deviations", True))
        expected = {"mean": (post.num_params,), "var_sum" if meta["format_version"] != 1 else "sq_mean": (post.num_params,)}
        if post.keep_deviations:
            expected["deviations"] = (int(meta["rank"]), post.num_params)
        for key, shape in expected.items():
            if key not in tensors or tuple(tensors[key].shape) != shape:
                got = tuple(tensors[key].shape) if key in tensors else "missing"
                raise ValueError(f"tensor {key!r} is {got}, the metadata says {shape}")
        post._mean.copy_(tensors["mean"])
        if meta["format_version"] == 1:      # the second moment: var_sum = n (E[x^2] - mu^2), as precise as it was
            post._var_sum.copy_((tensors["sq_mean"] - tensors["mean"].square()).clamp_(min=0) * int(meta["num_snapshots"]))
        else:
            post._var_sum.copy_(tensors["var_sum"])
        post.rank = int(meta["rank"])
        if post.keep_deviations:
            post._dev[: post.rank].copy_(tensors["deviations"])
        post._next_col = int(meta["next_col"])
        post.num_snapshots = int(meta["num_snapshots"])
        post._std = None
        return post

    def save(self, folder: str | os.PathLike) -> None:
        """Write `swag_posterior.safetensors` + `swag_posterior.json` atomically into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.state_dict()
        with atomic_write(folder / POSTERIOR_TENSORS) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "swag_lora.SwagPosterior"})
        with atomic_write(folder / POSTERIOR_META) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))

    @staticmethod
    def read_metadata(folder: str | os.PathLike) -> dict:
        """The JSON description of a saved posterior (no tensors read)."""
        return json.loads((Path(folder) / POSTERIOR_META).read_text())

    @classmethod
    def load(cls, folder: str | os.PathLike, device: torch.device | str = "cpu") -> "SwagPosterior":
        """Read a saved posterior.  A truncated or malformed file, tensors that do not match the metadata and
        non-finite values are refused (`CorruptFile`, naming the file)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / POSTERIOR_META).read_text())
            if not isinstance(meta, dict):
                raise ValueError(f"{POSTERIOR_META} holds a {type(meta).__name__}, not the posterior's description")
            tensors = load_file(str(folder / POSTERIOR_TENSORS))
            post = cls.from_state_dict(tensors, meta, device=device)
        except Exception as e:  # noqa: BLE001 -- safetensors, JSON or shape errors: the file is unusable
            raise CorruptFile(f"SWAG posterior {folder / POSTERIOR_TENSORS} is unusable ({type(e).__name__}: "
                              f"{str(e)[:160]})") from None
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                raise CorruptFile(f"SWAG posterior {folder / POSTERIOR_TENSORS} holds non-finite values in {name!r}; "
                                  f"it cannot be sampled (retrain, or restore the file)")
        return post

    def nbytes(self) -> int:
        return (self._mean.numel() * 2 + (self._dev.numel() if self.keep_deviations else 0)) * 4

    def __repr__(self) -> str:
        return (f"SwagPosterior(tensors={len(self.shapes)}, params={self.num_params}, "
                f"snapshots={self.num_snapshots}, rank={self.rank}/{self.max_rank})")
