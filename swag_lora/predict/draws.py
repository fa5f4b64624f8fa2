"""Weight draws -> probabilities.  A draw is one weight setting of the model -- as it is (MAP), a dropout pass, a
sample written into some of its tensors (SWAG, Laplace, IVON, BLoB, TFB) -- and `score` turns an iterable of draws
into S x N x C probabilities, one forward pass over the split each; features are tokenised once and batches are
length-sorted.  Samples are written into the model's tensors in place (only those tensors are saved and restored --
no model copies).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from swag_lora.data.encode import eval_batches
from swag_lora.distributed import reshard, write_
from swag_lora.posteriors.swag import SwagPosterior


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def prepare_batches(feats: list[dict], collator, batch_size: int, accelerator=None, sort_by_length: bool = True,
                    device=None) -> list[tuple[np.ndarray, dict]]:
    """Collate this process's share of the (length-sorted) batches once, on the device: every weight draw
    reuses them, so S draws cost S forward passes and nothing more.

    Every process gets the same number of batches: a share that is short (5 rows, 2 processes, batch 64) is
    padded with a copy of the first batch whose rows are dropped (an empty index).  Under DDP and FSDP a forward
    pass can be a collective, so a process without a batch would otherwise leave the others waiting forever."""
    batches = eval_batches([f["length"] for f in feats], batch_size, sort_by_length)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    share = [(np.asarray(b), b) for b in batches[rank::world]]
    share += [(np.asarray([], dtype=int), batches[0])] * (-(-len(batches) // world) - len(share))
    out = []
    for index, b in share:
        batch = collator([feats[i] for i in b])
        batch.pop("labels")
        out.append((index, _to_device(batch, device)))
    return out


@torch.inference_mode()
def predict_prepared(model, prepared: list[tuple[np.ndarray, dict]], n: int, num_choices: int, accelerator=None) -> np.ndarray:
    """N x C probabilities from prepared batches; every row scored exactly once (gathered across processes)."""
    idx_out = [i for i, _ in prepared]
    prob_out = [torch.softmax(model(**batch).float(), dim=-1).cpu().numpy().astype(np.float64) for _, batch in prepared]
    return gather_rows(idx_out, prob_out, n, num_choices, accelerator)


def gather_rows(idx_out: list, prob_out: list, n: int, num_choices: int, accelerator=None) -> np.ndarray:
    """N x C probabilities from this process's batches (row indices, probabilities), gathered across processes."""
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object
        gathered = gather_object([(idx_out, prob_out)])
        idx_out = [i for part in gathered for i in part[0]]
        prob_out = [p for part in gathered for p in part[1]]
    probs = np.zeros((n, num_choices))
    seen = np.zeros(n, dtype=int)
    for i, p in zip(idx_out, prob_out):
        if len(i):                      # an empty index: a padding batch (see prepare_batches)
            probs[i] = p
            seen[i] += 1
    assert (seen == 1).all(), "every row must be scored exactly once"
    return probs


def predict_probs(model, feats: list[dict], collator, batch_size: int, accelerator=None, sort_by_length: bool = True) -> np.ndarray:
    """N x C probabilities in the order of `feats` (one weight draw)."""
    device = accelerator.device if accelerator else next(model.parameters()).device
    prepared = prepare_batches(feats, collator, batch_size, accelerator, sort_by_length, device)
    return predict_prepared(model, prepared, len(feats), collator.num_choices, accelerator)


DROPOUT_SCOPES = ("modules", "whole_model")


@contextlib.contextmanager
def dropout_on(model, scope: str = "modules") -> Iterator[None]:
    """MC dropout's training-mode switch.  `modules` (the original's `set_dropout_training`): only the `nn.Dropout`
    modules (exactly that type: LoRA's dropout, an encoder's hidden and classifier dropout) sample; attention
    dropout, which transformers applies by the attention module's own training flag, stays off.  `whole_model`:
    `model.train()`, attention dropout (and any other train-time behaviour) too."""
    if scope not in DROPOUT_SCOPES:
        raise ValueError(f"unknown dropout scope {scope!r}; allowed: {', '.join(DROPOUT_SCOPES)}")
    modes = {m: m.training for m in model.modules()}
    if scope == "whole_model":
        model.train()
    else:
        for m in model.modules():
            if type(m) is torch.nn.Dropout:
                m.train()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.train(mode)


@contextlib.contextmanager
def swapped(named: dict[str, torch.Tensor], model=None) -> Iterator[None]:
    """Keep a copy of the (small) SWAG'd tensors and put them back afterwards (resharding `model` first)."""
    saved = {n: t.detach().clone() for n, t in named.items()}
    try:
        yield
    finally:
        if model is not None:
            reshard(model)
        write_(named, saved)


class AsIs(contextlib.AbstractContextManager):
    """The model's weights as they are, dropout off: the MAP draw."""

    def __exit__(self, *exc):
        return None


class DropoutPass(contextlib.AbstractContextManager):
    """One MC-dropout pass: dropout on (`scope`, see `dropout_on`), the dropout stream seeded by `seed`."""

    def __init__(self, model, scope: str, seed: int):
        self.model, self.scope, self.seed = model, scope, seed

    def __enter__(self):
        self._on = dropout_on(self.model, self.scope)
        self._on.__enter__()
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._on.__exit__(*exc)


class Written(contextlib.AbstractContextManager):
    """Given values written into the `named` tensors (a Laplace, IVON, BLoB or TFB sample; a SWAG sample drawn
    beforehand); `score` restores the tensors once, after the last draw."""

    def __init__(self, named: dict[str, torch.Tensor], values: dict[str, torch.Tensor]):
        self.named, self.values = named, values

    def __enter__(self):
        write_(self.named, self.values)
        return self

    def __exit__(self, *exc):
        return None


class SwagSample(contextlib.AbstractContextManager):
    """A fresh SWAG sample written straight into the `named` tensors (no new tensors: `SwagPosterior.sample_`)."""

    def __init__(self, posterior: SwagPosterior, named: dict, scale: float, cov: bool, k: int | None, generator):
        self.posterior, self.named, self.scale, self.cov, self.k, self.generator = posterior, named, scale, cov, k, generator

    def __enter__(self):
        self.posterior.sample_(self.named, self.scale, cov=self.cov, generator=self.generator, k=self.k)
        return self

    def __exit__(self, *exc):
        return None


def written(named: dict, samples) -> list[Written]:
    """One `Written` draw per sample (name -> tensor dicts)."""
    return [Written(named, values) for values in samples]


def dropout_passes(model, num_samples: int, seed: int, scope: str = "modules") -> list[DropoutPass]:
    return [DropoutPass(model, scope, seed + s) for s in range(num_samples)]


def swag_samples(posterior: SwagPosterior, named: dict, num_samples: int, scale: float, cov: bool = True,
                 k: int | None = None, seed: int = 0) -> list:
    """S SWAG draws from one generator seeded by `seed` (scale 0: the mean once, SWA); drawn as the passes run, or up
    front (`Written`) when the model's head alone is sampled, so that the head-only path can use them."""
    gen = torch.Generator(device=posterior._mean.device).manual_seed(seed)
    n = 1 if scale == 0 else num_samples
    return [SwagSample(posterior, named, scale, cov, k, gen) for _ in range(n)]


def score(model, feats: list[dict], collator, batch_size: int, draws, *, restore: dict | None = None,
          accelerator=None, sort_by_length: bool = True) -> np.ndarray:
    """S x N x C probabilities of one model under each of `draws` (weight settings: `AsIs`, `DropoutPass`, `Written`,
    `SwagSample`), one forward pass over the (once collated, length-sorted) batches per draw.  The `restore` tensors
    are put back afterwards.  When every draw writes the model's head alone, every batch takes one backbone pass and
    the S draws only re-run the head on its features (`head_probs`): the same numbers for a fraction of the cost."""
    device = accelerator.device if accelerator else next(model.parameters()).device
    prepared = prepare_batches(feats, collator, batch_size, accelerator, sort_by_length, device)
    draws = list(draws)
    model.eval()
    if draws and all(isinstance(d, SwagSample) for d in draws) and head_only(model, draws[0].named):
        d = draws[0]
        draws = written(d.named, d.posterior.sample(len(draws), d.generator, scale=d.scale, cov=d.cov, k=d.k))
    if draws and all(isinstance(d, Written) for d in draws) and head_only(model, draws[0].named):
        return head_probs(model, prepared, len(feats), collator.num_choices, draws[0].named, [d.values for d in draws],
                          accelerator)
    out = []
    with swapped(restore, model) if restore else contextlib.nullcontext():
        for draw in draws:
            reshard(model)      # FSDP2: compute with the written shards, not a stale gathered copy
            with draw:
                out.append(predict_prepared(model, prepared, len(feats), collator.num_choices, accelerator))
    return np.stack(out)


def head_only(model, named: dict | None) -> bool:
    """Whether the sampled tensors are all in the model's head (a last-layer posterior)."""
    return bool(named) and hasattr(model, "has_head") and model.has_head() and set(named) <= set(model.head_tensors())


@torch.inference_mode()
def head_probs(model, prepared, n: int, num_choices: int, named: dict, samples: list[dict], accelerator=None) -> np.ndarray:
    """S x N x C probabilities of `samples` of the head's tensors: one backbone pass per batch (`head_inputs`), then
    the head alone per sample on the cached features (`logits_from_head`)."""
    out = [[] for _ in samples]
    indices = []
    with swapped(named, model):
        for index, batch in prepared:
            features = model.head_inputs(batch)
            for s, values in enumerate(samples):
                write_(named, values)
                out[s].append(torch.softmax(model.logits_from_head(features, batch), -1).cpu().numpy().astype(np.float64))
            indices.append(index)
    return np.stack([gather_rows(indices, probs, n, num_choices, accelerator) for probs in out])
