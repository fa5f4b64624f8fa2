"""Weight draws -> probabilities.  One draw is a weight setting of the model: the MAP weights, a dropout
pass, a SWAG sample, an ensemble member.  Each draw costs one forward pass over the split; features are
tokenised once and batches are length-sorted.  SWAG samples are written into the model's tensors in
place (only the SWAG'd tensors are saved and restored -- no model copies).
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


def draw_probs(
    model,
    feats: list[dict],
    collator,
    batch_size: int,
    method: str,
    *,
    posterior: SwagPosterior | None = None,
    named: dict[str, torch.Tensor] | None = None,
    num_samples: int = 1,
    scale: float = 0.5,
    cov: bool = True,
    k: int | None = None,
    seed: int = 0,
    accelerator=None,
    sort_by_length: bool = True,
    samples: list[dict[str, torch.Tensor]] | None = None,
    dropout_scope: str = "modules",
) -> np.ndarray:
    """S x N x C probabilities of one model under `method`:
    base (1 draw, dropout off), dropout (S passes, dropout on: `dropout_scope`, see `dropout_on`), swag (S posterior samples; scale 0 = SWA;
    `k` as in `SwagPosterior.sample`), weights (the given `samples` of the `named` tensors, e.g. Laplace's or
    IVON's).  When the sampled tensors are the model's head alone, every batch takes one backbone pass and the
    S samples only re-run the head on its features (`head_probs`): the same draws for a fraction of the cost."""
    device = accelerator.device if accelerator else next(model.parameters()).device
    prepared = prepare_batches(feats, collator, batch_size, accelerator, sort_by_length, device)
    run = lambda: predict_prepared(model, prepared, len(feats), collator.num_choices, accelerator)  # noqa: E731
    model.eval()
    if method == "base":
        return run()[None]
    if method == "dropout":
        out = []
        with dropout_on(model, dropout_scope):
            for s in range(num_samples):
                torch.manual_seed(seed + s)
                out.append(run())
        return np.stack(out)
    if method == "swag":
        if posterior is None or named is None:
            raise ValueError("swag draws need the posterior and the model's SWAG'd tensors")
        device = posterior._mean.device
        gen = torch.Generator(device=device).manual_seed(seed)
        if head_only(model, named):
            samples = [posterior.sample(scale, cov, generator=gen, k=k) for _ in range(1 if scale == 0 else num_samples)]
            return head_probs(model, prepared, len(feats), collator.num_choices, named, samples, accelerator)
        out = []
        with swapped(named, model):
            for _ in range(1 if scale == 0 else num_samples):
                reshard(model)      # FSDP2: compute with the written shards, not a stale gathered copy
                posterior.sample_(named, scale, cov=cov, generator=gen, k=k)
                out.append(run())
        return np.stack(out)
    if method == "weights":
        if head_only(model, named):
            return head_probs(model, prepared, len(feats), collator.num_choices, named, samples, accelerator)
        out = []
        with swapped(named, model):
            for values in samples:
                reshard(model)
                write_(named, values)
                out.append(run())
        return np.stack(out)
    raise ValueError(f"unknown draw method {method!r}; allowed: base, dropout, swag, weights")


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
