"""The condensed tables of README and RESULTS.md from a protocol's report.csv (python -m swag_lora.report):
    python experiments/tables.py docs/results/<protocol>/report.csv accuracy,nll,ece_10,ece,ece_20,brier,auroc_entropy
Per split: value ± s.e. over seeds, the paired Δ vs MAP with its 95% t interval (bold where it excludes 0), the
settings read from the records; ECE in %; a split where MAP is not above chance shows the gate's line only."""
import sys

from swag_lora.report.tables import condensed

if __name__ == "__main__":
    metrics = sys.argv[2].split(",") if len(sys.argv) > 2 else ["accuracy", "nll", "ece", "brier"]
    deltas = sys.argv[3].split(",") if len(sys.argv) > 3 else [m for m in metrics if m not in ("ece_10", "ece_20")]
    print(condensed(sys.argv[1], metrics, deltas, percent=("ece", "ece_10", "ece_20")))
