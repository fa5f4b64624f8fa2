"""Benchmarks: SWAG must cost almost nothing next to training, and evaluation only its forward passes.

Each benchmark is a ratio against a baseline measured in the same run (medians of several repeats):

1. posterior   collect and sample at Llama-2-7B LoRA scale (no base model) vs memory-traffic floors, and
               vs the original design (per-parameter buffers grown with torch.cat + a model copy per collect)
2. training    epoch time with SWAG collection / the same run with collection off (tiny Llama, MiniLM)
3. evaluation  S-sample SWAG evaluation / (S x one MAP evaluation); length-sorted vs padded-to-longest
4. checkpoint  the SWAG files vs a full-model save (the original's), measured and computed for Llama-2-7B
5. methods     each evaluation method's cost / one MAP pass (last-layer SWAG and Laplace, SWAG, dropout, IVON);
               Laplace fitting / one training epoch; an IVON step / an AdamW step (`--only methods`)

    python bench/run.py --quick          # reduced, <= 5 min on 2 cores; one line per benchmark; exit 1 on a miss
    python bench/run.py                  # full; also writes BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import harness  # noqa: E402
from bench.bench_checkpoint import bench_checkpoint  # noqa: E402
from bench.bench_evaluation import bench_evaluation  # noqa: E402
from bench.bench_methods import bench_methods  # noqa: E402
from bench.bench_posterior import bench_posterior  # noqa: E402
from bench.bench_training import bench_training  # noqa: E402
from bench.harness import REPO, RESULTS, write_markdown  # noqa: E402

BENCHES = {"posterior": bench_posterior, "training": bench_training, "evaluation": bench_evaluation,
           "checkpoint": bench_checkpoint, "methods": bench_methods}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="swag-lora benchmarks")
    ap.add_argument("--quick", action="store_true", help="reduced run (<= 5 minutes on 2 cores); prints only")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=None,
                    help="benchmarks to run (default: all; with --device cuda: posterior)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the posterior benchmark runs (the others run on the CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    harness.DEVICE[0] = torch.device(args.device)
    args.only = args.only or (["posterior"] if args.device == "cuda" else list(BENCHES))
    torch.set_num_threads(args.threads)
    t0 = time.time()
    for name in args.only:
        BENCHES[name](args.quick)
    if not args.quick:
        write_markdown(Path(args.out), argv, time.time() - t0)
        print(f"written {args.out}")
    missed = [r["name"] for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(missed)} met, {len(missed)} missed, {time.time() - t0:.0f} s")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
