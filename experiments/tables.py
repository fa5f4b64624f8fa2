"""The condensed tables of README and RESULTS.md, from a protocol's report.csv (python -m swag_lora.report):

    python experiments/tables.py docs/results/<protocol>/report.csv accuracy,nll,ece_10,ece,ece_20,brier,auroc_entropy
    python experiments/tables.py --write RESULTS.md README.md     # regenerate every table and marks block in place

Per split: value ± s.e. over seeds, the paired Δ vs MAP with its 95% t interval (bold where it excludes 0), the
settings read from the records; ECE in %; a split where MAP is not above chance shows the gate's line only.  The
marks blocks state what the marks support, and nothing else."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swag_lora.report.tables import condensed, write_results  # noqa: E402

if __name__ == "__main__":
    missing = [a for a in (sys.argv[2:] if sys.argv[1:2] == ["--write"] else sys.argv[1:2]) if not Path(a).is_file()]
    if len(sys.argv) < 2 or missing:
        raise SystemExit(f"error: {missing[0] if missing else 'no report.csv given'} does not exist; usage: "
                         f"python experiments/tables.py <report.csv> [metrics] [deltas] | --write <file.md> ...")
    if sys.argv[1:2] == ["--write"]:
        for path in sys.argv[2:]:
            write_results(path)
    else:
        metrics = sys.argv[2].split(",") if len(sys.argv) > 2 else ["accuracy", "nll", "ece", "brier"]
        deltas = sys.argv[3].split(",") if len(sys.argv) > 3 else [m for m in metrics if m not in ("ece_10", "ece_20")]
        print(condensed(sys.argv[1], metrics, deltas, percent=("ece", "ece_10", "ece_20")))
