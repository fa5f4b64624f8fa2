"""GPU benchmark (run when an accelerator is lent): a ~1B Llama built from a config, LoRA r=8 on q_proj/v_proj,
bf16 weights and autocast, in one process:

* training tokens/s and peak GPU memory with SWAG collection (every step: the worst case; K=20) and without,
  in interleaved rounds: the median of the per-round ratios (each round times both, so drift in the GPU's clocks
  hits both alike) -- target: time ratio on/off <= 1.03; also the cost of one collect timed over 50 calls;
* evaluation: S SWAG samples (draw, write into the LoRA tensors, forward) / (S x one MAP forward pass) over the
  same batches -- target <= 1.05.

Prints one line per result and appends them to BENCHMARKS.md (or --out).

    python bench/gpu_train.py [--steps 20] [--rounds 3] [--seq 512] [--batch 8] [--out BENCHMARKS.md]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from swag_lora.posteriors.swag import SwagPosterior  # noqa: E402

VOCAB = 32000
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build(seq: int, layers: int):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=seq)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))


def train_steps(model, opt, named, post, x, steps: int) -> float:
    """Seconds for `steps` optimizer steps (collecting after each one when `post` is given)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if post is not None:
            post.collect(named)
    sync()
    return time.perf_counter() - t0


def peak_gib(fn) -> float:
    """Peak GPU memory allocated while `fn` runs (everything allocated, not only its own)."""
    if DEVICE != "cuda":
        fn()
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


@torch.no_grad()
def forward_all(model, batches) -> None:
    for x in batches:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            model(input_ids=x).logits[:, -1].float().softmax(-1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved off/on rounds")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", type=int, default=16, help="16 layers of width 2048: about 1B parameters")
    ap.add_argument("--samples", type=int, default=10, help="S, SWAG samples in the evaluation benchmark")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke test of this script only")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; this benchmark needs a GPU", file=sys.stderr)
        return 2
    model = build(args.seq, args.layers)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(list(named.values()), lr=1e-4)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randint(0, VOCAB, (args.batch, args.seq), device=DEVICE, generator=g)

    # peak memory without, then with the posterior (its buffers count only in the second)
    train_steps(model, opt, named, None, x, 3)
    mem_off = peak_gib(lambda: train_steps(model, opt, named, None, x, 2))
    post = SwagPosterior.from_named_tensors(named, max_rank=20)
    train_steps(model, opt, named, post, x, 20)   # fills the ring buffer: the steady state
    mem_on = peak_gib(lambda: train_steps(model, opt, named, post, x, 2))

    # training: interleaved rounds
    times = {"off": [], "on": []}
    for r in range(args.rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            times[mode].append(train_steps(model, opt, named, post if mode == "on" else None, x, args.steps))
    t_off, t_on = statistics.median(times["off"]), statistics.median(times["on"])
    round_ratios = [b / a for a, b in zip(times["off"], times["on"])]
    sync()
    t0 = time.perf_counter()
    for _ in range(50):
        post.collect(named)
    sync()
    t_collect = (time.perf_counter() - t0) / 50

    # evaluation: S weight draws, each followed by the same forward passes, vs S x MAP
    model.eval()
    batches = [torch.randint(0, VOCAB, (args.batch, args.seq), device=DEVICE, generator=g) for _ in range(4)]
    forward_all(model, batches)
    S = args.samples
    t_map, t_swag = [], []
    for _ in range(args.rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(S):
            forward_all(model, batches)
        sync()
        t_map.append((time.perf_counter() - t0) / S)
        t0 = time.perf_counter()
        for _ in range(S):
            post.sample_(named, 0.5, cov=True, generator=g)
            forward_all(model, batches)
        sync()
        t_swag.append(time.perf_counter() - t0)
    t_map_m, t_swag_m = statistics.median(t_map), statistics.median(t_swag)
    eval_ratios = [b / (S * a) for a, b in zip(t_map, t_swag)]

    tokens = args.steps * args.batch * args.seq
    params = sum(p.numel() for p in model.parameters())
    ratio_t, ratio_e = statistics.median(round_ratios), statistics.median(eval_ratios)
    accounted = (t_off / args.steps + t_collect) / (t_off / args.steps)
    lines = [
        f"GPU: {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'none (cpu smoke test)'}; torch {torch.__version__}; Llama {params / 1e9:.2f}B from a config "
        f"({args.layers} layers, width 2048), LoRA r=8 q_proj/v_proj: {post.num_params:,} SWAG parameters; "
        f"batch {args.batch} x {args.seq} tokens, bf16 weights + autocast; {args.rounds} interleaved rounds of {args.steps} steps",
        f"training SWAG on (collect every step, K=20) / off: time ratio {ratio_t:.3f} (target <= 1.03: "
        f"{'met' if ratio_t <= 1.03 else 'MISSED'}); {tokens / t_on:,.0f} vs {tokens / t_off:,.0f} tokens/s; "
        f"rounds: {', '.join(f'{r:.3f}' for r in round_ratios)}; one collect {t_collect * 1e6:.0f} us vs one step "
        f"{t_off / args.steps * 1e3:.1f} ms, i.e. (step + collect) / step = {accounted:.4f}",
        f"training peak GPU memory SWAG on / off: {mem_on / mem_off:.3f} ({mem_on:.2f} vs {mem_off:.2f} GiB; "
        f"posterior buffers {post.nbytes() / 2**20:.0f} MiB)",
        f"evaluation SWAG S={S} / (S x MAP): {ratio_e:.3f} (target <= 1.05: {'met' if ratio_e <= 1.05 else 'MISSED'}); "
        f"{t_swag_m:.3f} s vs {S} x {t_map_m:.4f} s over {len(batches)} batches of {args.batch} x {args.seq}; "
        f"rounds: {', '.join(f'{r:.3f}' for r in eval_ratios)}",
    ]
    print("\n".join(lines), flush=True)
    with open(args.out, "a") as f:
        f.write("\n## GPU training and evaluation (`python bench/gpu_train.py`)\n\n"
                + "\n".join(f"- {line}" for line in lines) + "\n")
    return 0 if ratio_t <= 1.03 and ratio_e <= 1.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
