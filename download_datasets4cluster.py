"""Download datasets for offline clusters, in exactly the layout `experiment.offline=true` reads:
`<data_path>/<task>` or `<data_path>/<task>_<subtask>` (a `DatasetDict.save_to_disk` folder with the hub's
split names and features).  MMLU is written as one folder per subject (`mmlu_<subject>`); groups read them.

    python download_datasets4cluster.py --tasks obqa arc-e arc-c cqa mmlu --data_path ./data
    python download_datasets4cluster.py --tasks mmlu --mmlu_subjects anatomy college_chemistry --data_path ./data
    python download_datasets4cluster.py --tasks obqa cqa --from_raw ../shared/data --data_path ./data   # original files, no hub
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from swag_lora.data.tasks import MMLU_GROUPS, MMLU_SUBJECTS, TASK_NAMES, get_task

DOWNLOADABLE = tuple(t for t in TASK_NAMES if t != "demo")


def targets(tasks: list[str], mmlu_subjects: list[str], winogrande: list[str]) -> list[tuple[str, str]]:
    """(task, subtask) pairs to write; MMLU groups expand to their subjects."""
    out = []
    for t in tasks:
        if t == "mmlu":
            subjects = []
            for s in mmlu_subjects:
                subjects += list(MMLU_GROUPS.get(s, (s,)))
            out += [("mmlu", s) for s in dict.fromkeys(subjects)]
        elif t == "winogrande":
            out += [("winogrande", s) for s in winogrande]
        else:
            out.append((t, ""))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["obqa", "arc-e", "arc-c", "cqa", "mmlu"], help=f"any of: {' '.join(DOWNLOADABLE)}")
    ap.add_argument("--mmlu_subjects", nargs="+", default=["all"], help="subjects or groups (stem, humanities, social_sciences, other, all)")
    ap.add_argument("--winogrande_sizes", nargs="+", default=["winogrande_xl"])
    ap.add_argument("--data_path", default="./data", help="output folder (experiment.data_path)")
    ap.add_argument("--from_raw", default=None, help="build from the original files in this folder (<dir>/<task>/...) instead of the hub")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    for t in args.tasks:
        if t not in DOWNLOADABLE:
            print(f"error: unknown task {t!r}; allowed: {', '.join(DOWNLOADABLE)}", file=sys.stderr)
            return 2
    for s in args.mmlu_subjects:
        if s not in MMLU_SUBJECTS and s not in MMLU_GROUPS:
            print(f"error: unknown MMLU subject or group {s!r}; allowed: a subject, or {', '.join(MMLU_GROUPS)}", file=sys.stderr)
            return 2
    root = Path(args.data_path)
    for task_name, subtask in targets(args.tasks, args.mmlu_subjects, args.winogrande_sizes):
        task = get_task(task_name)
        out = root / task.dir_name(subtask)
        if out.exists() and not args.overwrite:
            print(f"[skip] {out} exists (--overwrite to replace)")
            continue
        if args.from_raw:
            from swag_lora.data.raw import raw_datasetdict
            from swag_lora.errors import DataError
            try:
                dd = raw_datasetdict(task_name, Path(args.from_raw) / task_name, subtask or None)
            except DataError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        else:
            from datasets import load_dataset
            dd = load_dataset(task.hub_id, subtask if task_name == "mmlu" else task.config_for(subtask))
        dd.save_to_disk(str(out))
        print(f"[saved] {out}: " + ", ".join(f"{k} {len(v)}" for k, v in dd.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
