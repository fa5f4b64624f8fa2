"""Convert the tasks' original files (jsonl / csv / GLUE tsv) into the hub's row schema.

`download_datasets4cluster.py --from-raw DIR` uses this to build the offline layout from files a user
already has (and the tests use it on ../shared/data).  Each function returns {hub split name: rows}.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from swag_lora.data.tasks import MMLU_SUBJECTS
from swag_lora.errors import DataError

RAW_TASKS = ("obqa", "arc-e", "arc-c", "cqa", "mmlu", "swag", "winogrande", "boolq", "cola", "sst2", "mrpc", "rte", "wnli",
             "qnli", "stsb")
WINOGRANDE_FILES = {"winogrande_xs": "train_xs", "winogrande_s": "train_s", "winogrande_m": "train_m",
                    "winogrande_l": "train_l", "winogrande_xl": "train_xl", "winogrande_debiased": "train_debiased"}


def _jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not a JSON row ({e.msg})") from None
    return rows


def _letter_rows(path: Path, question_key: str, concept: bool = False) -> list[dict]:
    rows = []
    for r in _jsonl(path):
        q = r["question"]
        row = {"id": r["id"], question_key: q["stem"],
               "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
               "answerKey": r.get("answerKey", "")}
        if concept:
            row["question_concept"] = q.get("question_concept", "")
        rows.append(row)
    return rows


def _tsv(path: Path, header: bool = True) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:] if header else rows


def _glue(task: str, root: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for split, fname in (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")):
        path = root / fname
        if not path.exists():
            continue
        test = split == "test"
        rows = _tsv(path, header=not (task == "cola" and not test))
        conv: list[dict] = []
        for i, r in enumerate(rows):
            if task == "cola":
                conv.append({"sentence": r[1], "label": -1, "idx": int(r[0])} if test else
                            {"sentence": r[3], "label": int(r[1]), "idx": i})
            elif task == "sst2":
                conv.append({"sentence": r[1], "label": -1, "idx": int(r[0])} if test else
                            {"sentence": r[0], "label": int(r[1]), "idx": i})
            elif task == "mrpc":
                conv.append({"sentence1": r[3], "sentence2": r[4], "label": -1 if test else int(r[0]), "idx": i})
            elif task in ("rte", "qnli"):
                a, b = ("sentence1", "sentence2") if task == "rte" else ("question", "sentence")
                label = -1 if test else {"entailment": 0, "not_entailment": 1}[r[3]]
                conv.append({a: r[1], b: r[2], "label": label, "idx": int(r[0])})
            elif task == "wnli":   # GLUE tsv: 1 = entailment; HF: 0 not_entailment, 1 entailment
                conv.append({"sentence1": r[1], "sentence2": r[2], "label": -1 if test else int(r[3]), "idx": int(r[0])})
            elif task == "stsb":
                conv.append({"sentence1": r[7], "sentence2": r[8], "label": -1.0 if test else float(r[9]), "idx": int(r[0])})
        out[split] = conv
    return out


def raw_rows(task: str, root: str | Path, subject: str | None = None) -> dict[str, list[dict]]:
    """Rows in the hub's schema, by hub split name, read from the original files under `root`
    (the folder of that task, e.g. `../shared/data/obqa`).  A missing folder or file, or a malformed line, is
    refused naming it; a reader that finds no rows at all is refused too."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"raw data folder {root} does not exist (expected the task's original files there)")
    try:
        out = _raw_rows(task, root, subject)
    except FileNotFoundError as e:
        raise DataError(f"raw data file {e.filename} is missing") from None
    except (IndexError, KeyError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"a raw {task} file under {root} has a malformed row ({type(e).__name__}: {e})") from None
    if not any(out.values()):
        raise DataError(f"no {task} rows found under {root}")
    return out


def _raw_rows(task: str, root: Path, subject: str | None = None) -> dict[str, list[dict]]:
    if task == "obqa":
        return {s: _letter_rows(root / f"{f}.jsonl", "question_stem") for s, f in
                (("train", "train"), ("validation", "dev"), ("test", "test"))}
    if task in ("arc-e", "arc-c"):
        stem = "ARC-Easy" if task == "arc-e" else "ARC-Challenge"
        return {s: _letter_rows(root / f"{stem}-{f}.jsonl", "question") for s, f in
                (("train", "Train"), ("validation", "Dev"), ("test", "Test"))}
    if task == "cqa":
        return {s: _letter_rows(root / f, "question", concept=True) for s, f in
                (("train", "train_rand_split.jsonl"), ("validation", "dev_rand_split.jsonl"),
                 ("test", "test_rand_split_no_answers.jsonl"))}
    if task == "mmlu":
        if subject not in MMLU_SUBJECTS:
            raise ValueError(f"unknown MMLU subject {subject!r}")
        out = {}
        for split, folder in (("test", "test"), ("validation", "val"), ("dev", "dev")):
            with open(root / folder / f"{subject}_{folder}.csv", encoding="utf-8", newline="") as f:
                out[split] = [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5].strip())}
                              for r in csv.reader(f)]
        return out
    if task == "winogrande":   # the size's train file (where present) and dev.jsonl, the validation of every size
        size = subject or "winogrande_xl"
        if size not in WINOGRANDE_FILES:
            raise ValueError(f"unknown WinoGrande size {size!r}; allowed: {', '.join(WINOGRANDE_FILES)}")
        keep = ("sentence", "option1", "option2", "answer")
        out = {"validation": [{k: r[k] for k in keep} for r in _jsonl(root / "dev.jsonl")]}
        if (root / f"{WINOGRANDE_FILES[size]}.jsonl").is_file():
            out["train"] = [{k: r[k] for k in keep} for r in _jsonl(root / f"{WINOGRANDE_FILES[size]}.jsonl")]
        return out
    if task == "boolq":   # google's format; the hub's rows have no title
        return {s: [{"question": r["question"], "answer": bool(r["answer"]), "passage": r["passage"]}
                    for r in _jsonl(root / f"{f}.jsonl")]
                for s, f in (("train", "train"), ("validation", "dev")) if (root / f"{f}.jsonl").is_file()}
    if task == "swag":   # only a small fixture is at hand: it is the train split, nothing else
        return {"train": [{**r, "video-id": "", "fold-ind": "", "startphrase": f"{r['sent1']} {r['sent2']}", "gold-source": ""}
                          for r in _jsonl(root / "sample.json")]}
    if task in ("cola", "sst2", "mrpc", "rte", "wnli", "qnli", "stsb"):
        return _glue(task, root)
    raise ValueError(f"no raw-file reader for task {task!r}; allowed: {', '.join(RAW_TASKS)}")


def raw_datasetdict(task: str, root: str | Path, subject: str | None = None):
    from datasets import Dataset, DatasetDict
    return DatasetDict({s: Dataset.from_list(rows) for s, rows in raw_rows(task, root, subject).items()})
