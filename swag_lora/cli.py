"""Checks on the raw command line that must run before Hydra composes (Hydra's own message for an
unknown config-group option is many lines; ours is one)."""
from __future__ import annotations

import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def check_group_overrides(argv: list[str]) -> None:
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if sep and key in ("model", "method"):
            allowed = sorted(p.stem for p in (CONF / key).glob("*.yaml"))
            if value not in allowed:
                print(f"error: unknown {key} {value!r}; allowed: {', '.join(allowed)}", file=sys.stderr)
                raise SystemExit(2)
