"""2. training: epoch time with SWAG collection / the same run with collection off (tiny Llama, MiniLM)."""
from __future__ import annotations

import random
import statistics
import time

import torch

from bench.harness import demo_model, demo_rows, median_time, record
from swag_lora.posteriors.swag import SwagPosterior


def bench_training(quick: bool) -> None:
    """The training loop of swag_lora.train (forward, backward, clip, AdamW step) on the demo task, epochs
    alternating between collection off, once per epoch, and every 2 steps (the worst case), interleaved so
    that drift in machine load hits every setting alike; medians of the epoch times."""
    from swag_lora.model import swag_tensors
    models = [("tiny_llama", 640), ("minilm", 160)]
    rounds = 3 if quick else 8
    for name, rows in models:
        cfg, task, tok, model, enc = demo_model(name)
        loader = enc.loader(enc.features(demo_rows("train", n=rows), task), task, 16,
                            sampler=torch.utils.data.RandomSampler(range(rows), generator=torch.Generator().manual_seed(0)))
        named = swag_tensors(model, "grad_only")
        post = SwagPosterior.from_named_tensors(named, max_rank=20)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        model.train()

        def epoch(mode: str) -> float:
            t = time.perf_counter()
            for i, batch in enumerate(loader):
                labels = batch.pop("labels")
                loss = torch.nn.functional.cross_entropy(model(**batch), labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if mode == "steps" and i % 2 == 0:
                    post.collect(named)
            if mode == "epoch":
                post.collect(named)
            return time.perf_counter() - t
        epoch("off")   # warm-up
        times = {"off": [], "epoch": [], "steps": []}
        for r in range(rounds):   # a fresh random order each round: no setting always runs after another
            for mode in random.Random(r).sample(["off", "epoch", "off", "steps"], 4):
                times[mode].append(epoch(mode))
        off = statistics.median(times["off"])
        # the cost of one collect, timed over many calls (epoch times on a busy 2-core machine jitter by
        # several percent, more than the effect measured): epoch with collection = epoch off + n x collect
        t_collect = median_time(lambda: post.collect(named), 50, warmup=3)
        steps = len(loader)
        for mode, label, n in (("epoch", "per epoch", 1), ("steps", "every 2 steps", (steps + 1) // 2)):
            ratio = (off + n * t_collect) / off
            direct = statistics.median(times[mode]) / off
            record(f"training {name} collect {label}", ratio, "<= 1.03", ratio <= 1.03,
                   f"{n} x {t_collect * 1e6:.0f} us on a {off:.3f}s epoch ({steps} steps, P={post.num_params:,}); "
                   f"epoch times measured directly: ratio {direct:.3f} (median of {rounds} rounds in random order)")


