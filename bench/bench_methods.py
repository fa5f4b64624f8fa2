"""5. methods: each evaluation method's cost over one MAP pass at S = 10 (MC dropout, SWAG, last-layer SWAG and
Laplace, IVON, BLoB, TFB, the whole-model Laplace); Laplace's fit and TFB's scale search against one training epoch;
an IVON step and a BLoB step against an AdamW step -- the demo's MiniLM, every ratio against a baseline timed in the
same run."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from bench.harness import demo_model, demo_rows, median_time, paired, record
from swag_lora import metrics
from swag_lora.posteriors.blob import BlobVariational, kl_weight
from swag_lora.posteriors.ivon import IvonPosterior, make_ivon
from swag_lora.posteriors.laplace import LoraLaplace
from swag_lora.posteriors.swag import SwagPosterior
from swag_lora.posteriors.tfb import search_scale, tfb_posterior
from swag_lora.predict.draws import AsIs, dropout_passes, score, swag_samples, written


def bench_methods(quick: bool) -> None:
    from swag_lora.config import evaluation_config
    from swag_lora.posteriors.lora_gaussian import LoraAPosterior
    from swag_lora.predict.methods import Batches, Laplace
    S, reps = 10, 3 if quick else 5
    cfg, task, tok, model, enc = demo_model("minilm")
    model.eval()
    test = enc.features(demo_rows("test", "shifted", 200 if quick else 400), task)
    train = enc.features(demo_rows("train"), task)
    val = enc.features(demo_rows("validation"), task)
    coll = enc.collator(task)
    loader = enc.loader(train, task, 16, sampler=torch.utils.data.RandomSampler(range(len(train)),
                                                                                 generator=torch.Generator().manual_seed(0)))
    trained, head = model.trainable_state(), model.head_tensors()
    g = torch.Generator().manual_seed(0)

    def noisy(named):
        return {n: t.detach() + 0.01 * torch.randn(t.shape, generator=g) for n, t in named.items()}
    swag = SwagPosterior.from_named_tensors(trained, max_rank=10)
    ll_swag = SwagPosterior.from_named_tensors(head, max_rank=10)
    for _ in range(10):
        swag.collect(noisy(trained))
        ll_swag.collect(noisy(head))
    t0 = time.perf_counter()
    la_head = LoraLaplace(model, head, "kron")
    la_head.fit(enc.loader(train, task, 64))
    t_fit_head = time.perf_counter() - t0
    ll_laplace = Laplace(evaluation_config(["evaluation.eval_method=laplace", "evaluation.laplace_subset=head",
                                            "evaluation.laplace_predictive=glm_mc", f"evaluation.num_samples={S}"]))
    ivon_post = IvonPosterior({n: t.shape for n, t in trained.items()}, torch.cat([t.detach().flatten() for t in trained.values()]),
                              torch.full((sum(t.numel() for t in trained.values()),), 5.0), ess=800, weight_decay=1e-4)
    A = {n: t for n, t in trained.items() if "lora_A" in n}
    blob_post = LoraAPosterior({n: t.detach() for n, t in A.items()}, {n: torch.full_like(t, 0.002) for n, t in A.items()})
    tfb_post = tfb_posterior(model, trained)
    runs = {
        "MC dropout": lambda: score(model, test, coll, 64, dropout_passes(model, S, 0)),
        "SWAG (LoRA + head)": lambda: score(model, test, coll, 64, swag_samples(swag, trained, S, 0.5), restore=trained),
        "last-layer SWAG": lambda: score(model, test, coll, 64, swag_samples(ll_swag, head, S, 0.5), restore=head),
        "last-layer Laplace (GLM, MC)": lambda: ll_laplace.linearised(model, la_head, head, Batches(test, coll, 64), g),
        "IVON": lambda: score(model, test, coll, 64, written(trained, ivon_post.sample(S, g)), restore=trained),
        "BLoB": lambda: score(model, test, coll, 64, written(A, blob_post.sample(S, g)), restore=A),
        "TFB": lambda: score(model, test, coll, 64, written(A, tfb_post.sample(S, g, scale=0.01)), restore=A),
    }
    base = lambda: score(model, test, coll, 64, [AsIs()])   # noqa: E731
    for name, fn in runs.items():
        t_method, t_map, ratio = paired(fn, base, reps)
        target = "<= 1.2" if name.startswith("last-layer") else "<= 11" if name in ("BLoB", "TFB") else "info"
        ok = ratio <= {"<= 1.2": 1.2, "<= 11": 11.0}.get(target, float("inf"))
        record(f"methods evaluation {name} S={S} / one MAP pass", ratio, target, ok,
               f"{t_method:.2f}s vs {t_map:.3f}s over {len(test)} rows")

    # ---------------------------------------------------------------- training steps: IVON, BLoB vs AdamW
    params = list(trained.values())
    saved = {n: t.detach().clone() for n, t in trained.items()}
    blob = BlobVariational(model, init_std=0.0025, prior_std=0.2)

    def one_epoch(kind, optimizer):
        model.train()
        blob.train(kind == "blob")       # flipout noise only in the BLoB epochs
        t = time.perf_counter()
        for step, batch in enumerate(loader, 1):
            labels = batch.pop("labels")
            if kind == "ivon":
                with optimizer.sampled_params(train=True):
                    optimizer.zero_grad()
                    torch.nn.functional.cross_entropy(model(**batch), labels).backward()
            else:
                torch.nn.functional.cross_entropy(model(**batch), labels).backward()
            optimizer.step()
            if kind == "blob":
                blob.kl_step(0.01, kl_weight(step, len(loader)))
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        return time.perf_counter() - t
    opts = {"adamw": torch.optim.AdamW(params, lr=1e-4), "blob": torch.optim.AdamW(params, lr=1e-4),
            "ivon": make_ivon(params, lr=0.01, ess=800, hess_init=1.0, beta1=0.9, beta2=0.99999, weight_decay=1e-4)}
    epochs = {k: [] for k in opts}
    for _ in range(2 if quick else 3):
        for kind, opt in opts.items():
            epochs[kind].append(one_epoch(kind, opt))
    blob.remove()
    SwagPosterior.write_(trained, saved)
    t_adamw = statistics.median(epochs["adamw"])
    for kind, label, target in (("ivon", "IVON", "info"), ("blob", "BLoB", "<= 1.3")):
        t = statistics.median(epochs[kind])
        record(f"methods training {label} step / AdamW step", t / t_adamw, target, target == "info" or t / t_adamw <= 1.3,
               f"epochs of {len(loader)} steps: {t:.2f}s vs {t_adamw:.2f}s (median of {len(epochs['adamw'])}, alternating)")

    # ---------------------------------------------------------------- post hoc fits vs one epoch
    record("methods Laplace fit, last layer (KFAC) / one training epoch", t_fit_head / t_adamw, "info", True,
           f"{t_fit_head:.2f}s over {len(train)} rows vs {t_adamw:.2f}s")
    t0 = time.perf_counter()
    LoraLaplace(model, trained, "kron").fit(enc.loader(train, task, 64))
    record("methods Laplace fit, LoRA + head (KFAC) / one training epoch", (time.perf_counter() - t0) / t_adamw, "info", True,
           f"{time.perf_counter() - t0:.2f}s over {len(train)} rows vs {t_adamw:.2f}s")
    labels = np.array([f["label"] for f in val])

    def val_nll(scale):
        probs = score(model, val, coll, 64, written(A, tfb_post.sample(S, torch.Generator().manual_seed(0), scale=scale)),
                      restore=A).mean(0)
        return metrics.nll(probs, labels)
    t0 = time.perf_counter()
    base_nll = val_nll(0.0)
    sigma, trace = search_scale(val_nll, lambda v: v <= base_nll * 1.01, upper=0.01, steps=5)
    t_tfb = time.perf_counter() - t0
    record("methods TFB scale search / one training epoch", t_tfb / t_adamw, "info", True,
           f"{len(trace) + 1} evaluations of S={S} over {len(val)} validation rows ({t_tfb:.1f}s; sigma {sigma:.3g}) vs "
           f"{t_adamw:.2f}s")
    rows = 32
    batch = coll(test[:rows])
    batch.pop("labels")
    la_all = LoraLaplace(model, trained, "kron")
    la_all.fit(enc.loader(train[:128], task, 64), optimize_prior=False)
    t_map = median_time(lambda: score(model, test[:rows], coll, 64, [AsIs()]), reps)
    t0 = time.perf_counter()
    la_all.predictive(batch, "glm_probit", 1)
    record("methods evaluation Laplace (LoRA + head, GLM probit) / one MAP pass", (time.perf_counter() - t0) / t_map,
           "info", True, f"{rows} rows: Jacobians of every LoRA tensor per row and class (laplace-torch)")
    t_nn, t_base, ratio = paired(lambda: score(model, test, coll, 64, written(trained, la_all.sample(S, g)), restore=trained),
                                 base, reps)
    record(f"methods evaluation Laplace (LoRA + head, weight samples) S={S} / one MAP pass", ratio, "info", True,
           f"{t_nn:.2f}s vs {t_base:.3f}s")
