"""Reports: one JSON + npz + reliability diagram per evaluation, and tables across runs.

    python -m swag_lora.report RUN_OR_EVAL_PATH [...] [--out report] [--metrics accuracy nll ece brier]

gathers every `eval/*.json` under the given paths into `report.md`, `report.csv` and `report.png`.
Runs that differ only in their training seed are grouped: each cell is mean ± standard error over seeds
(n = number of seeds), and each method's difference from MAP is paired by seed.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from swag_lora.metrics import accuracy, expected_calibration_error, reliability_bins
from swag_lora.io import atomic_write

TABLE_METRICS = ("accuracy", "nll", "ece", "brier")
METHOD_ORDER = ("map", "temperature", "dropout", "swa", "swag", "ll-swag", "laplace", "ll-laplace", "ivon", "ensemble",
                "multiswa", "multiswag")
HIGHER_IS_BETTER = {"accuracy", "mcc"} | {m for m in ("auroc", "aupr_in", "aupr_out")}


def eval_name(record: dict) -> str:
    task = record["task"] + (f"_{record['subtask']}" if record["subtask"] else "")
    s = record["settings"]
    extra = ""
    if s.get("num_samples", 1) > 1 and record["label"].replace("+ts", "") not in ("swa", "multiswa", "ll-swa"):
        extra = f"_s{s['num_draws'] // max(s['num_members'], 1)}"
        if s.get("swag_sample_scale") is not None:
            extra += f"_scale{s['swag_sample_scale']:g}" + ("" if s.get("swag_cov_mat") else "_diag")
    if s.get("laplace_hessian"):
        extra += f"_{s['laplace_hessian']}_{s['laplace_predictive']}"
    if s.get("temperature") is not None and record["method"] != "temperature":
        extra += "_ts"
    if s.get("num_members", 1) > 1:
        extra += f"_m{s['num_members']}"
    return f"{record['label'].replace('+ts', '')}{extra}_{record['distribution']}_{task}_{record['split']}"


def write_evaluation(record: dict, probs: np.ndarray, labels: np.ndarray, out_dir: Path, ece_bins: int = 15) -> Path:
    """`<name>.json` (metrics and settings), `<name>.npz` (probs N x C, labels N), `<name>.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = eval_name(record)
    record["name"] = name
    with atomic_write(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    with atomic_write(out_dir / f"{name}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probs=probs.astype(np.float32), labels=labels.astype(np.int64))
    title = f"{record['label']} on {record['task']} {record['subtask']} ({record['distribution'].upper()})"
    reliability_diagram([(record["label"], probs, labels)], out_dir / f"{name}.png", n_bins=ece_bins, title=title)
    selective_figure([(record["label"], probs, labels)], out_dir / f"{name}_selective.png", title=title)
    return out_dir / f"{name}.json"


def save_figure(fig, path) -> None:
    """Lay out, write atomically as PNG, close."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def selective_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selective prediction: answering only the most confident fraction c of the rows, the accuracy on them --
    (coverage k/N, accuracy of the k most confident) for k = 1..N."""
    order = np.argsort(-probs.max(axis=1), kind="stable")
    correct = (np.argmax(probs, axis=1) == labels)[order]
    k = np.arange(1, len(labels) + 1)
    return k / len(labels), np.cumsum(correct) / k


def selective_figure(entries: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str = "") -> None:
    """Accuracy against coverage (the most confident rows first), one curve per entry."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for i, (label, probs, labels) in enumerate(entries):
        coverage, acc = selective_curve(probs, labels)
        ax.plot(coverage, acc, label=label, lw=1.4, ls="-" if i < 10 else "--")     # 10 colours, then dashed
    ax.set_xlabel("coverage (most confident first)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def reliability_diagram(entries: list[tuple[str, np.ndarray, np.ndarray]], path: Path, n_bins: int = 15, title: str = "") -> None:
    """One panel per entry: accuracy per confidence bin against the diagonal, with the confidence histogram."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(len(entries), 6)                     # at most 6 panels a row
    grid = -(-len(entries) // cols)
    fig, axes = plt.subplots(2 * grid, cols, figsize=(3.2 * cols, 4.6 * grid), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1] * grid}, sharex=True)
    for ax in axes[:, len(entries) - (grid - 1) * cols:][-2:].flat:
        ax.set_axis_off()                           # the empty places of the last row
    for k, (label, probs, labels) in enumerate(entries):
        i, j = 2 * (k // cols), k % cols
        b = reliability_bins(probs, labels, n_bins)
        centers = (b["edges"][:-1] + b["edges"][1:]) / 2
        width = 1.0 / n_bins
        ax = axes[i, j]
        ax.bar(centers, b["accuracy"], width=width, edgecolor="black", color="#4c72b0", label="accuracy")
        has = b["count"] > 0
        ax.bar(centers[has], np.abs(b["confidence"] - b["accuracy"])[has], bottom=np.minimum(b["confidence"], b["accuracy"])[has],
               width=width, color="#dd8452", alpha=0.45, edgecolor="#c44e52", hatch="//", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ece = expected_calibration_error(probs, labels, n_bins)
        ax.set_title(f"{label}\nacc {accuracy(probs, labels):.3f}  ECE {ece:.3f}", fontsize=9)
        ax.set_ylim(0, 1)
        if j == 0:
            ax.set_ylabel("accuracy")
            ax.legend(loc="upper left", fontsize=7)
        h = axes[i + 1, j]
        h.bar(centers, b["count"] / max(b["count"].sum(), 1), width=width, color="gray", edgecolor="black")
        h.set_xlabel("confidence")
        if j == 0:
            h.set_ylabel("fraction")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


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


# ---------------------------------------------------------------- tables across runs
def _seedless(run_dir: str) -> str:
    return re.sub(r"seed ?\d+", "seed*", run_dir)


def load_records(paths: list[str | Path]) -> list[dict]:
    """The evaluation records among `paths`: JSON files, or folders searched recursively (a run directory, an
    evaluation output_dir, a protocol's eval/ tree); other JSON files (run_info.json, configs) are passed over."""
    recs = []
    for p in paths:
        p = Path(p)
        for f in [p] if p.suffix == ".json" else sorted(p.rglob("*.json")):
            r = json.loads(f.read_text())
            if isinstance(r, dict) and {"metrics", "method", "label", "distribution"} <= r.keys():
                r["_npz"] = str(f.with_suffix(".npz"))
                recs.append(r)
    return recs


def aggregate(records: list[dict], metrics: tuple[str, ...] = TABLE_METRICS) -> list[dict]:
    """Group by (distribution, task, model, method label, settings, run family without seed)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        fam = " ".join(sorted({_seedless(d) for d in r["run_dirs"]})) if len(r["run_dirs"]) == 1 else "members"
        key = (r["distribution"], r["task"], r["subtask"], r["split"], r["model"], r["label"], r.get("name", "").split("_")[0],
               json.dumps({k: _seedless(str(v)) if k == "temperature_source" else v          # "carved ... (seed 1)"
                           for k, v in r["settings"].items() if k not in ("temperature", "seed")}, sort_keys=True), fam)
        groups[key].append(r)
    # MAP per (dist, task, split, family, seeds) for paired differences; a method from another run (IVON, last-layer
    # SWAG) or from several seeds (ensemble, MultiSWAG) is paired with the MAP of its training seeds where exactly one
    # run family has a MAP for each of them (several seeds: the mean of their MAPs)
    map_by_seed, map_any_family = {}, defaultdict(list)
    for key, rs in groups.items():
        if key[5] == "map":
            for r in rs:
                map_by_seed[(*key[:4], key[8], tuple(r["train_seeds"]))] = r
                map_any_family[(*key[:4], tuple(r["train_seeds"]))].append(r)

    def reference(key, r, m):
        exact = map_by_seed.get((*key[:4], key[8], tuple(r["train_seeds"])))
        if exact is not None:
            return exact["metrics"].get(m, np.nan)
        per_seed = [map_any_family.get((*key[:4], (seed,)), []) for seed in r["train_seeds"]]
        if per_seed and all(len(found) == 1 for found in per_seed):
            return float(np.mean([found[0]["metrics"].get(m, np.nan) for found in per_seed]))
        return None

    rows = []
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                          order.get(kv[0][5].replace("+ts", ""), 99), kv[0][5], kv[0][8])):
        row = {"distribution": key[0], "task": key[1] + (f"/{key[2]}" if key[2] else ""), "split": key[3], "model": key[4],
               "method": key[5], "n": len(rs), "settings": key[7], "runs": key[8]}
        for m in metrics:
            vals = np.array([r["metrics"].get(m, np.nan) for r in rs], float)
            row[m] = (float(np.nanmean(vals)), float(np.nanstd(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan"))
            refs = [(r, reference(key, r, m)) for r in rs] if key[5] != "map" else []
            diffs = [r["metrics"].get(m, np.nan) - ref for r, ref in refs if ref is not None]
            if diffs:
                d = np.array(diffs, float)
                row[f"d_{m}"] = (float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan"), len(d))
        rows.append(row)
    return rows


def _fmt(mean_se: tuple) -> str:
    mean, se = mean_se[0], mean_se[1]
    return f"{mean:.4f}" if math.isnan(se) else f"{mean:.4f} ± {se:.4f}"


def render(rows: list[dict], metrics: tuple[str, ...]) -> str:
    head = ["dist", "task", "model", "method", "n"] + list(metrics) + [f"Δ{m} vs MAP (paired)" for m in metrics]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["distribution"], r["task"], r["model"], r["method"], str(r["n"])]
        cells += [_fmt(r[m]) for m in metrics]
        cells += [(_fmt(r[f"d_{m}"]) + f" (n={r[f'd_{m}'][2]})") if f"d_{m}" in r else "" for m in metrics]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def comparison_figure(rows: list[dict], metrics: tuple[str, ...], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = sorted({(r["distribution"], r["task"]) for r in rows})     # one row of panels per evaluated split
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(3.3 * len(metrics), 2.8 * len(groups)), squeeze=False)
    for i, (d, task) in enumerate(groups):
        rs = [r for r in rows if (r["distribution"], r["task"]) == (d, task)]
        labels = [r["method"] for r in rs]
        for j, m in enumerate(metrics):
            ax = axes[i, j]
            means = [r[m][0] for r in rs]
            if all(math.isnan(v) for v in means):       # e.g. OOD detection on the in-distribution rows alone
                ax.set_axis_off()
                ax.set_title(f"{m} ({d.upper()} {task}): not defined", fontsize=9)
                continue
            errs = [0 if math.isnan(r[m][1]) else r[m][1] for r in rs]
            ax.bar(range(len(rs)), means, yerr=errs, capsize=3, color="#4c72b0")
            ax.set_xticks(range(len(rs)), labels, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{m} ({d.upper()} {task})", fontsize=9)
    save_figure(fig, path)


def build_report(paths: list[str], out: str, metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    records = load_records(paths)
    if not records:
        raise SystemExit(f"error: no evaluation JSON found under {', '.join(map(str, paths))}")
    rows = aggregate(records, metrics)
    md = render(rows, metrics)
    out_p = Path(out)
    with atomic_write(out_p.with_suffix(".md")) as tmp:
        tmp.write_text(f"# swag-lora report\n\n{len(records)} evaluations; cells are mean ± standard error over "
                       f"training seeds (n); Δ is the seed-paired difference from MAP (the same run's MAP; for another run, "
                       f"such as IVON, the MAP of the same training seed; for an ensemble, the mean of its members' "
                       f"MAPs).\n\n{md}\n")
    with atomic_write(out_p.with_suffix(".csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["distribution", "task", "model", "method", "n", "settings", "runs"] +
                       [x for m in metrics for x in (m, f"{m}_se", f"d_{m}", f"d_{m}_se")])
            for r in rows:
                w.writerow([r["distribution"], r["task"], r["model"], r["method"], r["n"], r["settings"], r["runs"]] +
                           [x for m in metrics for x in (r[m][0], r[m][1], *(r[f"d_{m}"][:2] if f"d_{m}" in r else ("", "")))])
    comparison_figure(rows, metrics, out_p.with_suffix(".png"))
    pooled_figures(records, out_p)
    print(md)
    return md


def pooled_figures(records: list[dict], out: Path) -> None:
    """Per distribution and task: reliability diagrams and selective-prediction curves of every method, the rows of
    all its seeds pooled (`<out>_reliability_<dist>_<task>.png`, `<out>_selective_<dist>_<task>.png`)."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if Path(r.get("_npz", "")).is_file():
            groups[(r["distribution"], r["task"] + (f"_{r['subtask']}" if r["subtask"] else ""))][r["label"]].append(r["_npz"])
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    for (dist, task), by_label in groups.items():
        entries = []
        for label in sorted(by_label, key=lambda m: (order.get(m.replace("+ts", ""), 99), m)):
            data = [np.load(f) for f in by_label[label]]
            entries.append((label, np.concatenate([d["probs"].astype(np.float64) for d in data]),
                            np.concatenate([d["labels"] for d in data])))
        stem = f"{out.name}_{{}}_{dist}_{task}.png"
        reliability_diagram(entries, out.with_name(stem.format("reliability")), title=f"{dist.upper()}: {task} (seeds pooled)")
        selective_figure(entries, out.with_name(stem.format("selective")), title=f"{dist.upper()}: {task} (seeds pooled)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Gather swag-lora evaluations into one table and figure.")
    ap.add_argument("paths", nargs="+", help="run directories, eval folders or evaluation JSON files")
    ap.add_argument("--out", default="report", help="output path without suffix (writes .md, .csv, .png)")
    ap.add_argument("--metrics", nargs="+", default=list(TABLE_METRICS))
    args = ap.parse_args(argv)
    build_report(args.paths, args.out, tuple(args.metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
