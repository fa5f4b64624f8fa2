"""The condensed tables of README and RESULTS.md from a protocol's report.csv (python -m swag_lora.report):
    python experiments/tables.py docs/results/<protocol>/report.csv accuracy,nll,ece,brier,auroc_entropy
Per distribution and task: value ± s.e. over seeds, paired Δ vs MAP, bold where |Δ| > 2 s.e. of the differences."""
import csv
import math
import sys


def number(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def cell(value: str, se: str) -> str:
    v, s = number(value), number(se)
    return "" if math.isnan(v) else f"{v:.4f}" if math.isnan(s) else f"{v:.4f} ± {s:.4f}"


def delta(row: dict, metric: str) -> str:
    d, s = number(row.get(f"d_{metric}", "")), number(row.get(f"d_{metric}_se", ""))
    if math.isnan(d):
        return ""
    text = f"{d:+.4f}" if math.isnan(s) else f"{d:+.4f} ± {s:.4f}"
    return f"**{text}**" if not math.isnan(s) and abs(d) > 2 * s else text


def main(path: str, metrics: list[str]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for row in csv.DictReader(open(path)):
        groups.setdefault((row["distribution"], row["task"]), []).append(row)
    for (dist, task), rows in groups.items():
        shown = [m for m in metrics if any(not math.isnan(number(r.get(m, ""))) for r in rows)]
        deltas = [m for m in shown if m != "accuracy"] + ["accuracy"]
        print(f"\n**{dist.upper()}: {task}**\n")
        print("| method | n | " + " | ".join(shown) + " | " + " | ".join(f"Δ{m}" for m in deltas) + " |")
        print("|---|---|" + "---|" * (len(shown) + len(deltas)))
        for r in rows:
            print(f"| {r['method']} | {r['n']} | " + " | ".join(cell(r[m], r[f"{m}_se"]) for m in shown) + " | "
                  + " | ".join(delta(r, m) for m in deltas) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) > 2 else ["accuracy", "nll", "ece", "brier"])
