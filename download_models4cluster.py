"""Download models for offline clusters, in exactly the layout `experiment.offline=true` reads:
`<model_path>/<model.model_name>` written by `save_pretrained` (weights in safetensors, tokenizer included).

    python download_models4cluster.py --models llama_7b_hf roberta-base --model_path ./models --dtype bfloat16
    python download_models4cluster.py --models meta-llama/Llama-3.2-1B --family causal --model_path ./models
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent / "conf" / "model"
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve(name: str, family: str | None) -> tuple[str, str]:
    """(hub id, family) for a model config name (conf/model/<name>.yaml) or a raw hub id."""
    path = CONF / f"{name}.yaml"
    if path.is_file():
        cfg = OmegaConf.load(path)
        if cfg.get("tiny"):
            raise ValueError(f"model {name!r} is built from a config in-process; nothing to download")
        return cfg.model_name, cfg.family
    if "/" not in name:
        known = ", ".join(sorted(p.stem for p in CONF.glob("*.yaml")))
        raise ValueError(f"unknown model {name!r}; allowed: {known}, or a hub id (org/name) with --family")
    return name, family or "causal"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["llama_7b_hf"])
    ap.add_argument("--model_path", default="./models", help="output folder (experiment.model_path)")
    ap.add_argument("--dtype", default="auto", choices=DTYPES)
    ap.add_argument("--family", choices=("causal", "encoder"), default=None, help="for raw hub ids")
    ap.add_argument("--hub_root", default=None, help="read <hub_root>/<hub id> instead of the hub (a local mirror)")
    ap.add_argument("--trust_remote_code", action="store_true")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        todo = [resolve(m, args.family) for m in args.models]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    for hub_id, family in todo:
        out = Path(args.model_path) / hub_id
        if (out / "config.json").exists() and not args.overwrite:
            print(f"[skip] {out} exists (--overwrite to replace)")
            continue
        src = str(Path(args.hub_root) / hub_id) if args.hub_root else hub_id
        dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
        cls = AutoModelForCausalLM if family == "causal" else AutoModel
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=args.trust_remote_code)
        model = cls.from_pretrained(src, dtype=dtype, trust_remote_code=args.trust_remote_code)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        print(f"[saved] {out} ({family}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
