"""One evaluation's record: `<name>.json` (metrics, settings, where it came from), `<name>.npz` (probabilities and
labels), its reliability diagram and selective-prediction curve; the summary table a run prints; and reading the
records back (`load_records`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from swag_lora.errors import UserError
from swag_lora.io import atomic_write
from swag_lora.report.figures import reliability_diagram, selective_figure


class ReportError(UserError):
    """A record or report input that cannot be used: the message is one line for the user."""


def record_name(label: str, parts: list[str], members: int, temperature: bool, dist: str, task: str, subtask: str,
                split: str) -> str:
    """An evaluation's file name: the method's label and name parts (its draws per member, its own settings; the
    method supplies them), _ts with temperature scaling, _m<members>, then the split."""
    extra = "".join(f"_{p}" for p in parts) + ("_ts" if temperature else "") + (f"_m{members}" if members > 1 else "")
    return f"{label.replace('+ts', '')}{extra}_{dist}_{task}{f'_{subtask}' if subtask else ''}_{split}"


def finite_or_null(value):
    """The record as valid JSON: a metric that is undefined (NaN, inf) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def write_evaluation(record: dict, probs: np.ndarray, labels: np.ndarray, out_dir: Path, ece_bins: int = 15) -> Path:
    """`<name>.json` (metrics and settings), `<name>.npz` (probs N x C, labels N), `<name>.png`; the name is the
    record's own (`record_name`, from its method)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = record["name"]
    with atomic_write(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(finite_or_null(record), indent=1, allow_nan=False))
    with atomic_write(out_dir / f"{name}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probs=probs.astype(np.float32), labels=labels.astype(np.int64))
    title = f"{record['label']} on {record['task']} {record['subtask']} ({record['distribution'].upper()})"
    reliability_diagram([(record["label"], probs, labels)], out_dir / f"{name}.png", n_bins=ece_bins, title=title)
    selective_figure([(record["label"], probs, labels)], out_dir / f"{name}_selective.png", title=title)
    return out_dir / f"{name}.json"


def print_summary(results: list[dict], eval_dir: Path | None) -> str:
    """A Markdown table of the results of one run (and the combined reliability diagram)."""
    lines = ["| method | split | accuracy | nll | ece | brier | mutual_information | auroc_entropy |", "|" + "---|" * 8]
    for r in results:
        m = r["metrics"]
        cells = [f"{m[k]:.4f}" if k in m and not math.isnan(m[k]) else "" for k in
                 ("accuracy", "nll", "ece", "brier", "mutual_information", "auroc_entropy")]
        lines.append(f"| {r['label']} | {r['distribution']}: {r['task']} {r['subtask']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if eval_dir is not None:
        with atomic_write(Path(eval_dir) / "summary.md") as tmp:
            tmp.write_text(table + "\n")
        for dist in ("id", "ood"):
            entries = []
            for r in results:
                if r["distribution"] == dist:
                    d = np.load(Path(eval_dir) / f"{r['name']}.npz")
                    entries.append((r["label"], d["probs"].astype(np.float64), d["labels"]))
            if entries:
                r0 = next(r for r in results if r["distribution"] == dist)
                reliability_diagram(entries, Path(eval_dir) / f"reliability_{dist}.png",
                                    title=f"{dist.upper()}: {r0['task']} {r0['subtask']} ({r0['split']}, {r0['num_examples']} rows)")
        print(f"[swag-lora] evaluation written to {eval_dir} (summary.md, reliability_id.png, reliability_ood.png)")
    return table


def load_records(paths: list[str | Path]) -> list[dict]:
    """The evaluation records among `paths`: JSON files, or folders searched recursively (a run directory, an
    evaluation output_dir, a protocol's eval/ tree); other JSON files (run_info.json, configs) are passed over.
    A file that is not valid JSON is refused, naming it."""
    recs = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ReportError(f"{p} does not exist; allowed: run directories, eval folders or evaluation JSON files")
        for f in [p] if p.suffix == ".json" else sorted(p.rglob("*.json")):
            try:
                r = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ReportError(f"{f} is not valid JSON ({e}); remove it or evaluate again") from None
            if isinstance(r, dict) and {"metrics", "method", "label", "distribution"} <= r.keys():
                r["_npz"] = str(f.with_suffix(".npz"))
                r["_file"] = str(f)
                recs.append(r)
    return recs
