"""Checks on the raw command line that must run before Hydra composes (Hydra's own message for an
unknown config-group option is many lines; ours is one)."""
from __future__ import annotations

import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


# (this project's key, the original's key): both spellings work; config.yaml interpolates the first from the second
ALIASES = (("experiment.lr_scheduler", "experiment.scheduler"), ("experiment.val_fraction", "experiment.val_split_size"),
           ("experiment.evaluate_after_training", "experiment.eval_upon_save"),
           ("model.lora_target_modules", "model.target_modules"), ("model.head_modules", "model.modules_to_save"))


def check_group_overrides(argv: list[str]) -> None:
    given = dict(a.lstrip("+~").split("=", 1) for a in argv if "=" in a)
    for ours, theirs in ALIASES:
        if ours in given and theirs in given and given[ours] != given[theirs]:
            print(f"error: {ours}={given[ours]} and {theirs}={given[theirs]} name the same setting; give one of them",
                  file=sys.stderr)
            raise SystemExit(2)
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if sep and key in ("model", "method"):
            allowed = sorted(p.stem for p in (CONF / key).glob("*.yaml"))
            if value not in allowed:
                print(f"error: unknown {key} {value!r}; allowed: {', '.join(allowed)}", file=sys.stderr)
                raise SystemExit(2)
