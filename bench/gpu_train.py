"""GPU benchmark (run when an accelerator is lent): training tokens/s and peak GPU memory of a ~1B Llama
built from a config, LoRA r=8 on q_proj/v_proj, with SWAG collection (every step: the worst case) and
without, in the same process.  Prints one line per setting and the ratios; appends them to BENCHMARKS.md.

    python bench/gpu_train.py [--steps 30] [--seq 512] [--batch 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from swag_lora.swag import SwagPosterior  # noqa: E402


def build(seq: int):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=seq)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).cuda()
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))


def run(model, steps: int, seq: int, batch: int, collect_every: int | None, max_rank: int = 20) -> dict:
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    post = SwagPosterior.from_named_tensors(named, max_rank=max_rank) if collect_every else None
    opt = torch.optim.AdamW(list(named.values()), lr=1e-4)
    x = torch.randint(0, 32000, (batch, seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if post is not None and i % collect_every == 0:
            post.collect(named)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": steps * batch * seq / dt, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "params": sum(p.numel() for p in model.parameters()), "swag_params": sum(p.numel() for p in named.values())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device; this benchmark needs a GPU", file=sys.stderr)
        return 2
    model = build(args.seq)
    off = run(model, args.steps, args.seq, args.batch, None)
    on = run(model, args.steps, args.seq, args.batch, 1)
    off2 = run(model, args.steps, args.seq, args.batch, None)
    base = max(off["tokens_per_s"], off2["tokens_per_s"])
    lines = [f"GPU: {torch.cuda.get_device_name()}; Llama {off['params'] / 1e9:.2f}B from a config, LoRA params "
             f"{off['swag_params']:,}; batch {args.batch} x {args.seq} tokens, bf16 autocast, {args.steps} steps",
             f"SWAG off: {off['tokens_per_s']:.0f} / {off2['tokens_per_s']:.0f} tokens/s, peak {off['peak_gib']:.2f} GiB",
             f"SWAG on (collect every step, K=20): {on['tokens_per_s']:.0f} tokens/s, peak {on['peak_gib']:.2f} GiB",
             f"time ratio on/off: {base / on['tokens_per_s']:.3f} (target <= 1.03); peak memory ratio: {on['peak_gib'] / off['peak_gib']:.3f}"]
    print("\n".join(lines))
    with open(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", "a") as f:
        f.write("\n## GPU (bench/gpu_train.py)\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
