"""docs/configuration.md's table, generated from the declarations (schema.py) and the composed defaults:
`python -m swag_lora.config [--write docs/configuration.md]`; tests/test_config_docs.py keeps the two equal."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from omegaconf import OmegaConf

from swag_lora.config.parse import compose
from swag_lora.config.schema import METHOD_CONFIGS, EvaluationConfig, ExperimentConfig, MethodConfig, ModelConfig, SwagConfig


def markdown_table() -> str:
    """docs/configuration.md's table, generated from the dataclasses above and the composed defaults (experiment and
    evaluation keys: the default config; method keys: method=swag, then each other method's own keys under its
    method=<name>; model keys: per model)."""
    default = OmegaConf.to_container(compose("config"), resolve=False)
    swag = OmegaConf.to_container(compose("config", ["method=swag"]), resolve=False)
    own = {name: ([f for f in dataclasses.fields(cls) if f.name not in {g.name for g in dataclasses.fields(MethodConfig)}],
                  OmegaConf.to_container(compose("config", [f"method={name}"]), resolve=False)["method"])
           for name, cls in METHOD_CONFIGS.items() if name not in ("swag", "map")}

    def fmt(v):
        return "`null`" if v is None else '`""`' if v == "" else f"`{json.dumps(v) if isinstance(v, (list, dict)) else v}`"
    checks = {"positive": "> 0", "positive_int": "integer > 0", "nonneg": ">= 0", "nonneg_int": "integer >= 0",
              "fraction": "(0, 1)", "fraction0": "[0, 1)"}
    rows = ["| key | meaning | allowed | default |", "|---|---|---|---|"]
    for group, cls, values in (("experiment", ExperimentConfig, default["experiment"]), ("method", SwagConfig, swag["method"]),
                               *(("method", fields, values) for fields, values in own.values()),
                               ("model", ModelConfig, None), ("evaluation", EvaluationConfig, default["evaluation"])):
        for f in cls if isinstance(cls, list) else dataclasses.fields(cls):
            meta = f.metadata
            if meta.get("help", "").startswith("this project's name of"):
                continue
            key = f"`{group}.{f.name}`" + (f" (= `{group}.{meta['alias']}`)" if meta.get("alias") else "")
            allowed = ", ".join(f"`{c}`" for c in meta["choices"]) if meta.get("choices") else checks.get(meta.get("check"), "")
            rows.append(f"| {key} | {meta['help']} | {allowed} | {'per model' if values is None else fmt(values.get(f.name))} |")
    demo = {k: v for k, v in default["method"].items() if swag["method"].get(k) != v}
    rows += ["", "`method=swag_demo` (the default) differs from `method=swag` in: "
             + ", ".join(f"`{k}={v}`" for k, v in demo.items() if k != "method_name") + "."]
    return "\n".join(rows)


def write_docs(path: str | os.PathLike) -> None:
    """Replace the generated table between the config-table markers of `path` (docs/configuration.md)."""
    path = Path(path)
    text = path.read_text()
    head, rest = re.split(r"(?<=-->\n)", text.split("<!-- config-table", 1)[1], maxsplit=1)
    tail = rest.split("<!-- /config-table -->", 1)[1]
    path.write_text(text.split("<!-- config-table", 1)[0] + "<!-- config-table" + head + markdown_table().strip()
                    + "\n<!-- /config-table -->" + tail)


