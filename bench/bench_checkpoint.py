"""4. checkpoint: the SWAG files vs a full-model save (the original's), measured and computed for Llama-2-7B."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path


from bench.harness import demo_model, record
from bench.original import llama7b_lora_shapes
from swag_lora.posteriors.swag import SwagPosterior


def bench_checkpoint(quick: bool) -> None:
    from swag_lora.model import swag_tensors
    for name in ("tiny_llama", "tiny_roberta", "minilm"):
        cfg, task, tok, model, _ = demo_model(name)
        named = swag_tensors(model, "grad_only")
        post = SwagPosterior.from_named_tensors(named, max_rank=20)
        for _ in range(20):
            post.collect(named)
        with tempfile.TemporaryDirectory() as tmp:
            post.save(tmp)
            model.save_adapter(tmp)
            ours = sum(f.stat().st_size for f in Path(tmp).iterdir())
            full_dir = Path(tmp) / "full"
            model.peft.get_base_model().save_pretrained(str(full_dir))
            full = sum(f.stat().st_size for f in full_dir.iterdir())
        record(f"checkpoint {name} SWAG files / full model (K=20)", ours / full, "info", True,
               f"{ours / 2**20:.2f} MiB vs {full / 2**20:.2f} MiB")
    P = sum(math.prod(s) for s in llama7b_lora_shapes(8).values())
    ours = (2 + 20) * P * 4
    full = 6_738_415_616 * 2   # Llama-2-7B in bf16
    record("checkpoint Llama-2-7B SWAG (r=8, K=20) / full model (computed)", ours / full, "info", True,
           f"{ours / 2**20:.0f} MiB vs {full / 2**30:.1f} GiB")


