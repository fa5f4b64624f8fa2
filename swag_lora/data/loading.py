"""Load a task's splits: from the hub, from `save_to_disk` folders (offline), or generated (demo)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swag_lora.data.demo import demo_datasetdict
from swag_lora.data.tasks import Splits, Task, get_task, mmlu_subjects
from swag_lora.errors import DataError


def offline_dirs(task: Task, subtask: str, data_path: str | os.PathLike) -> list[Path]:
    """The `save_to_disk` folders an offline run reads: `<data_path>/<task>[_<subtask>]` (an MMLU group
    reads its own folder when present, else one folder per subject)."""
    if task.name == "demo":
        return []
    root = Path(data_path)
    if task.name == "mmlu" and not (root / task.dir_name(subtask)).is_dir():
        return [root / f"mmlu_{s}" for s in mmlu_subjects(subtask)]
    return [root / task.dir_name(subtask)]


def _load_datasetdicts(task: Task, subtask: str, offline: bool, data_path: str | None) -> list:
    if task.name == "demo":
        return [demo_datasetdict(shifted=subtask == "shifted")]
    if offline:
        from datasets import load_from_disk
        dirs = offline_dirs(task, subtask, data_path or ".")
        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            raise DataError(f"offline data folder not found: {missing[0]} (write it with download_datasets4cluster.py)")
        out = []
        for d in dirs:
            try:
                dd = load_from_disk(str(d))
            except Exception as e:  # noqa: BLE001 -- datasets raises many kinds for an empty, foreign or truncated folder
                raise DataError(f"offline data folder {d} is not a readable `datasets` save_to_disk folder "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); write it again "
                                f"with download_datasets4cluster.py") from None
            if not hasattr(dd, "keys"):
                raise DataError(f"offline data folder {d} holds one split, not a DatasetDict of splits; write it with "
                                f"download_datasets4cluster.py")
            dd.source_dir = d
            out.append(dd)
        return out
    from datasets import load_dataset
    if task.name == "mmlu":
        return [load_dataset(task.hub_id, s) for s in mmlu_subjects(subtask)]
    return [load_dataset(task.hub_id, task.config_for(subtask))]


def _examples(task: Task, dds: list, split: str, all_items: bool) -> list[dict]:
    """The split's rows as examples; a missing split or column, a malformed row or a label out of range is refused
    naming the folder, split and row."""
    out = []
    for dd in dds:
        where = getattr(dd, "source_dir", task.hub_id)
        if split not in dd:
            raise DataError(f"task {task.name!r} has no split {split!r} in {where} (found: {', '.join(dd) or 'none'})")
        for i, row in enumerate(dd[split]):
            try:
                ex = task.to_example(row)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise DataError(f"{where}, split {split}, row {i}: not a {task.name} row ({type(e).__name__}: {e}; "
                                f"columns: {', '.join(row)})") from None
            n = len(ex["choices"]) if task.format == "mc" else task.num_choices
            if not -1 <= ex["label"] < n:
                raise DataError(f"{where}, split {split}, row {i}: label {ex['label']} is out of range; allowed: "
                                f"0..{n - 1} (or -1, unlabelled)")
            out.append(ex)
    if task.original_choices and not all_items:
        out = [e for e in out if len(e["choices"]) == task.original_choices]
    return out


def carved_rows(n: int, seed: int, fraction: float) -> list[int]:
    """Indices (sorted) of the train rows carved as validation: `datasets`' `train_test_split(test_size=fraction,
    seed=seed)` takes the first ceil(fraction * n) of `np.random.default_rng(seed).permutation(n)`."""
    return sorted(np.random.default_rng(seed).permutation(n)[: math.ceil(fraction * n)].tolist())


def held_out_validation(task_name: str, subtask: str, members: list[tuple[int, float]], *, offline: bool = False,
                        data_path: str | None = None, all_items: bool = False, test_fraction: float = 0.0) -> tuple[list[dict], str]:
    """Validation rows that no member of an ensemble trained on: the official validation split where the task has
    one; else the train rows that every member's carving (its seed, its fraction) held out.  Returns (rows, source)."""
    task = get_task(task_name)
    names = task.split_names(subtask or "")
    dds = _load_datasetdicts(task, subtask or "", offline, data_path)
    if names["validation"] is not None and not test_fraction:
        return _examples(task, dds, names["validation"], all_items), f"{names['validation']} (official)"
    if test_fraction:
        train, _, pool = _carve_test(task, dds, names, all_items, test_fraction)
    else:
        train, pool = _examples(task, dds, names["train"], all_items), names["train"]
    common = set(range(len(train)))
    for seed, fraction in members:
        common &= set(carved_rows(len(train), seed, fraction))
    desc = ", ".join(f"seed {s}: {f:g}" for s, f in members)
    return [train[i] for i in sorted(common)], f"{len(common)} rows of {pool} held out by every member ({desc})"


TEST_CARVE_SEED = 0   # the carved test rows are the same for every run seed, so that seeds are scored on the same rows


def _carve_test(task: Task, dds: list, names: dict, all_items: bool, fraction: float) -> tuple[list[dict], list[dict], str]:
    """(train pool, test rows, description): `fraction` of the task's labelled evaluation split (the one playing the
    test role) becomes test -- the same rows for every seed -- and the rest is the pool train and validation are
    carved from."""
    rows = _examples(task, dds, names["test"], all_items)
    test = set(carved_rows(len(rows), TEST_CARVE_SEED, fraction))
    rest = f"{names['test']} less its carved test rows"
    return [r for i, r in enumerate(rows) if i not in test], [rows[i] for i in sorted(test)], rest


def load_splits(
    task_name: str,
    subtask: str = "",
    *,
    offline: bool = False,
    data_path: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    roles: tuple[str, ...] = ("train", "validation", "test"),
    all_items: bool = False,
    test_fraction: float = 0.0,
) -> Splits:
    """Examples by role.  Where the task's validation is carved, `val_fraction` of train becomes validation
    and the rest trains -- the same rows as the original's `datasets` `train_test_split(test_size=val_fraction,
    seed=seed)` -- and the official validation split is then the test split.  Tasks whose original loader kept
    only questions with `Task.original_choices` choices (ARC: 4) are filtered so unless `all_items`.
    Rows without a label are never returned for a role that needs one.  `test_fraction` > 0 carves all three roles
    from the task's labelled evaluation split (for a task whose training split is not at hand, e.g. QNLI offline):
    that fraction becomes test (the same rows for every seed), `val_fraction` of the rest validation (by `seed`),
    the rest trains."""
    task = get_task(task_name)
    subtask = subtask or ""
    dds = _load_datasetdicts(task, subtask, offline, data_path)
    names = task.split_names(subtask)
    if roles == ("all",):       # every labelled row of the published splits (an OOD task): test, validation, train
        published = list(dict.fromkeys(n for n in (names["test"], names["validation"], names["train"]) if n))
        present = [n for n in published if all(n in dd for dd in dds)]
        rows = [e for n in present for e in _examples(task, dds, n, all_items) if e["label"] >= 0]
        return Splits([], [], [], {"task": task.name, "subtask": subtask, "all_items": all_items,
                                   "splits": {"all": "all labelled rows of " + ", ".join(present)}, "sizes": {"all": len(rows)}},
                      all=rows)
    result: dict[str, list[dict]] = {r: [] for r in ("train", "validation", "test")}
    if test_fraction:
        train, result["test"], pool = _carve_test(task, dds, names, all_items, test_fraction)
        val = carved_rows(len(train), seed, val_fraction)
        result["validation"] = [train[i] for i in val]
        result["train"] = [train[i] for i in sorted(set(range(len(train))) - set(val))]
        names = {"train": f"{pool}, less validation", "validation": f"carved {val_fraction:g} of {pool} (seed {seed})",
                 "test": f"carved {test_fraction:g} of {names['test']} (seed {TEST_CARVE_SEED})"}
        roles_loaded = ()
    else:
        roles_loaded = roles
    need_train = "train" in roles_loaded or ("validation" in roles_loaded and names["validation"] is None)
    if need_train:
        train = _examples(task, dds, names["train"], all_items)
        if names["validation"] is None:
            val = carved_rows(len(train), seed, val_fraction)
            result["validation"] = [train[i] for i in val]
            train = [train[i] for i in sorted(set(range(len(train))) - set(val))]
        result["train"] = train
    if "validation" in roles_loaded and names["validation"] is not None:
        result["validation"] = _examples(task, dds, names["validation"], all_items)
    if "test" in roles_loaded:
        result["test"] = _examples(task, dds, names["test"], all_items)
    for role in roles:
        unlabelled = sum(1 for e in result[role] if e["label"] < 0)
        if unlabelled:
            raise DataError(f"{unlabelled} rows of {task.name} {role} split have no label; this split cannot be scored")
    source = {"task": task.name, "subtask": subtask, "all_items": all_items, **({"test_fraction": test_fraction} if test_fraction else {}), "splits": {r: names[r] or f"carved {val_fraction:g} of {names['train']} (seed {seed})"
                                                              for r in ("train", "validation", "test")},
              "sizes": {r: len(result[r]) for r in roles}}
    return Splits(result["train"], result["validation"], result["test"], source)


@dataclass(frozen=True)
class DataSource:
    """Where a run's rows come from and how its splits are carved -- built once from the experiment config and used
    by training, evaluation and the benchmarks alike.  `test_fraction` carves the run's own task only (`task`);
    any other task (an OOD task) is read as it is."""
    offline: bool = False
    data_path: str | None = None
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    all_items: bool = False
    task: tuple[str, str] = ("", "")

    @classmethod
    def of(cls, exp, offline: bool | None = None, data_path: str | None = None) -> "DataSource":
        """The data source of an experiment config (`offline` / `data_path` override it: a run read elsewhere)."""
        return cls(offline=exp.offline if offline is None else offline, data_path=data_path or exp.data_path,
                   seed=exp.seed, val_fraction=exp.val_fraction, test_fraction=getattr(exp, "test_split_size", 0.0),
                   all_items=exp.arc_all_items, task=(exp.task, exp.subtask or ""))

    def _test_fraction(self, task: str, subtask: str) -> float:
        return self.test_fraction if (task, subtask or "") == self.task else 0.0

    def splits(self, task: str, subtask: str = "", roles: tuple[str, ...] = ("train", "validation", "test")) -> Splits:
        return load_splits(task, subtask, offline=self.offline, data_path=self.data_path, seed=self.seed,
                           val_fraction=self.val_fraction, roles=roles, all_items=self.all_items,
                           test_fraction=self._test_fraction(task, subtask))

    def held_out_validation(self, task: str, subtask: str, members: list[tuple[int, float]]) -> tuple[list[dict], str]:
        """Validation rows no member trained on (see `held_out_validation`)."""
        return held_out_validation(task, subtask, members, offline=self.offline, data_path=self.data_path,
                                   all_items=self.all_items, test_fraction=self._test_fraction(task, subtask))
