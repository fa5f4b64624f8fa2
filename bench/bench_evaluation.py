"""3. evaluation: S-sample SWAG evaluation / (S x one MAP evaluation); length-sorted vs padded-to-longest."""
from __future__ import annotations

import statistics

import torch

from bench.harness import demo_model, demo_rows, median_time, record
from swag_lora.posteriors.swag import SwagPosterior


def bench_evaluation(quick: bool) -> None:
    import numpy as np

    from swag_lora.data.encode import Collator
    from swag_lora.model import swag_tensors
    from swag_lora.predict.draws import AsIs, predict_probs, score, swag_samples
    S = 10
    models = ["tiny_llama", "minilm"]
    for name in models:
        cfg, task, tok, model, enc = demo_model(name)
        feats = enc.features(demo_rows("test", "shifted", 200 if quick else 400), task)
        coll = enc.collator(task)
        named = swag_tensors(model, "grad_only")
        post = SwagPosterior.from_named_tensors(named, max_rank=10)
        g = torch.Generator().manual_seed(0)
        for _ in range(10):
            post.collect({n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in named.items()})
        reps = 3 if quick else 5
        maps, swags = [], []
        score(model, feats, coll, 64, [AsIs()])   # warm-up
        for _ in range(reps):   # interleaved: S x MAP, then S SWAG samples
            maps.append(sum(median_time(lambda: score(model, feats, coll, 64, [AsIs()]), 1, warmup=0) for _ in range(S)) / S)
            swags.append(median_time(lambda: score(model, feats, coll, 64, swag_samples(post, named, S, 0.5), restore=named),
                                     1, warmup=0))
        t_map, t_swag = statistics.median(maps), statistics.median(swags)
        ratios = [b / (S * a) for a, b in zip(maps, swags)]   # per round: drift hits both halves alike
        ratio = statistics.median(ratios)
        record(f"evaluation {name} SWAG S={S} / (S x MAP)", ratio, "<= 1.05", ratio <= 1.05,
               f"{t_swag:.2f}s vs {S} x {t_map:.3f}s; median of {reps} rounds ({', '.join(f'{r:.3f}' for r in ratios)})")
        model.eval()
        longest = max(f["length"] for f in feats)

        class PadToLongest(Collator):
            def __call__(self, fs):
                out = super().__call__(fs)
                pad = longest - out["input_ids"].shape[-1]
                if pad > 0:
                    side = (pad, 0) if self.left else (0, pad)
                    out["input_ids"] = torch.nn.functional.pad(out["input_ids"], side, value=self.pad_id)
                    out["attention_mask"] = torch.nn.functional.pad(out["attention_mask"], side, value=0)
                    if "token_type_ids" in out:
                        out["token_type_ids"] = torch.nn.functional.pad(out["token_type_ids"], side, value=0)
                return out
        padded = PadToLongest(tok.pad_token_id, model.arch, model.num_choices, tok.padding_side)
        t_sorted = median_time(lambda: predict_probs(model, feats, coll, 64, sort_by_length=True), reps)
        t_padded = median_time(lambda: predict_probs(model, feats, padded, 64, sort_by_length=False), reps)
        a = predict_probs(model, feats, coll, 64, sort_by_length=True)
        b = predict_probs(model, feats, padded, 64, sort_by_length=False)
        assert np.allclose(a, b, atol=1e-4), "padding must not change the predictions"
        record(f"evaluation {name} examples/s sorted / padded", t_padded / t_sorted, "info", True,
               f"{len(feats) / t_sorted:.0f} vs {len(feats) / t_padded:.0f} examples/s (longest {longest} tokens)")


