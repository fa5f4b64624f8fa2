"""Figures: reliability diagrams, selective-prediction curves, and the metric-vs-method comparison across seeds."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from swag_lora.io import atomic_write
from swag_lora.metrics import accuracy, expected_calibration_error, reliability_bins


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


def comparison_figure(rows: list[dict], metrics: tuple[str, ...], path: Path) -> None:
    """Mean of each metric per method, one row of panels per evaluated split; error bars are standard errors over
    seeds where there are at least two, and a method with a single value (n = 1) is drawn hatched, without one."""
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
            for k, r in enumerate(rs):
                se = r[m][1]
                single = math.isnan(se)
                ax.bar(k, r[m][0], yerr=None if single else se, capsize=3, color="#4c72b0",
                       hatch="//" if single else None, alpha=0.55 if single else 1.0, edgecolor="black" if single else None)
            ax.set_xticks(range(len(rs)), labels, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{m} ({d.upper()} {task})", fontsize=9)
    fig.text(0.5, 0.0, "error bars: standard error over seeds; hatched: a single value (n = 1), no spread", ha="center",
             fontsize=7)
    save_figure(fig, path)


def pooled_figures(records: list[dict], out: Path) -> None:
    """Per distribution and task: reliability diagrams and selective-prediction curves of every method, the rows of
    all its seeds pooled (`<out>_reliability_<dist>_<task>.png`, `<out>_selective_<dist>_<task>.png`)."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if Path(r.get("_npz", "")).is_file():
            groups[(r["distribution"], r["task"] + (f"_{r['subtask']}" if r["subtask"] else ""))][r["label"]].append(r["_npz"])
    order = {r["label"]: r.get("order", 99) for r in records}
    for (dist, task), by_label in groups.items():
        entries = []
        for label in sorted(by_label, key=lambda m: (order.get(m, 99), m)):
            data = [np.load(f) for f in by_label[label]]
            entries.append((label, np.concatenate([d["probs"].astype(np.float64) for d in data]),
                            np.concatenate([d["labels"] for d in data])))
        stem = f"{out.name}_{{}}_{dist}_{task}.png"
        reliability_diagram(entries, out.with_name(stem.format("reliability")), title=f"{dist.upper()}: {task} (seeds pooled)")
        selective_figure(entries, out.with_name(stem.format("selective")), title=f"{dist.upper()}: {task} (seeds pooled)")


