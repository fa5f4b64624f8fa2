"""Loaders on the real benchmark files (../shared/data): row counts and label mappings as in SOURCES.md."""
from collections import Counter

import pytest

from swag_lora.data import get_task, load_splits
from swag_lora.data.demo import DEMO_LABELS, demo_rows
from swag_lora.data.raw import raw_datasetdict, raw_rows
from swag_lora.data.tasks import MMLU_GROUPS, MMLU_SUBJECTS, check_subtask


def examples(task, rows):
    return [get_task(task).to_example(r) for r in rows]


def test_obqa_counts_and_labels(shared_data):
    rows = raw_rows("obqa", shared_data / "obqa")
    assert {s: len(r) for s, r in rows.items()} == {"train": 4957, "validation": 500, "test": 500}
    ex = examples("obqa", rows["train"])
    assert ex[0]["text"] == "The sun is responsible for" and ex[0]["label"] == 3
    assert ex[0]["choices"][3] == "plants sprouting, blooming and wilting"
    assert all(0 <= e["label"] < 4 and len(e["choices"]) == 4 for s in rows for e in examples("obqa", rows[s]))


def test_arc_keeps_the_original_four_choice_questions_unless_all_items(shared_data, tmp_path):
    raw_datasetdict("arc-c", shared_data / "arc-c").save_to_disk(str(tmp_path / "arc-c"))
    four = load_splits("arc-c", offline=True, data_path=str(tmp_path))
    every = load_splits("arc-c", offline=True, data_path=str(tmp_path), all_items=True)
    assert len(four.test) == 1165 and len(every.test) == 1172
    assert {len(e["choices"]) for e in four.train + four.validation + four.test} == {4}


def test_arc_rows_every_question(shared_data):
    """The raw files hold questions with 3 or 5 choices and numeric labels; all are converted."""
    rows = raw_rows("arc-c", shared_data / "arc-c")
    assert {s: len(r) for s, r in rows.items()} == {"train": 1119, "validation": 299, "test": 1172}
    test = examples("arc-c", rows["test"])
    assert Counter(len(e["choices"]) for e in test) == {4: 1165, 3: 4, 5: 3}
    numeric = [r for r in rows["test"] if r["answerKey"].isdigit()]
    assert len(numeric) == 22
    for r in numeric:
        e = get_task("arc-c").to_example(r)
        assert e["label"] == int(r["answerKey"]) - 1
    assert all(0 <= e["label"] < len(e["choices"]) for e in test)
    rows_e = raw_rows("arc-e", shared_data / "arc-e")
    assert {s: len(r) for s, r in rows_e.items()} == {"train": 2251, "validation": 570, "test": 2376}
    assert sum(r["answerKey"].isdigit() for r in rows_e["train"]) == 102


def test_cqa_offline_round_trip_carves_validation(shared_data, tmp_path):
    raw_datasetdict("cqa", shared_data / "cqa").save_to_disk(str(tmp_path / "cqa"))
    s = load_splits("cqa", offline=True, data_path=str(tmp_path), seed=3, val_fraction=0.1)
    assert len(s.train) + len(s.validation) == 9741 and len(s.validation) == 975
    # the same rows as the original's datasets.train_test_split(test_size=0.1, seed=3)
    from datasets import load_from_disk
    ref = load_from_disk(str(tmp_path / "cqa"))["train"].train_test_split(test_size=0.1, seed=3)
    assert sorted(r["question"] for r in ref["test"]) == sorted(e["text"] for e in s.validation)
    assert len(s.test) == 1221               # the official (labelled) validation split is the test split
    assert s.source["splits"]["test"] == "validation"
    again = load_splits("cqa", offline=True, data_path=str(tmp_path), seed=3, val_fraction=0.1)
    other = load_splits("cqa", offline=True, data_path=str(tmp_path), seed=4, val_fraction=0.1)
    assert [e["text"] for e in again.validation] == [e["text"] for e in s.validation]
    assert [e["text"] for e in other.validation] != [e["text"] for e in s.validation]
    with pytest.raises(ValueError, match="no label"):   # the unlabelled test split can never be scored
        tmp = raw_datasetdict("cqa", shared_data / "cqa")
        tmp["validation"] = tmp["test"]
        tmp.save_to_disk(str(tmp_path / "bad" / "cqa"))
        load_splits("cqa", offline=True, data_path=str(tmp_path / "bad"), roles=("test",))


def test_mmlu_subjects_and_groups(shared_data, tmp_path):
    assert len(MMLU_SUBJECTS) == 57
    rows = raw_rows("mmlu", shared_data / "mmlu", "anatomy")
    assert {s: len(r) for s, r in rows.items()} == {"test": 135, "validation": 14, "dev": 5}
    for subject in MMLU_GROUPS["physics"]:
        raw_datasetdict("mmlu", shared_data / "mmlu", subject).save_to_disk(str(tmp_path / f"mmlu_{subject}"))
    s = load_splits("mmlu", "physics", offline=True, data_path=str(tmp_path), roles=("test",))
    assert len(s.test) == 102 + 235 + 151
    total = sum(len(raw_rows("mmlu", shared_data / "mmlu", x)["test"]) for x in MMLU_SUBJECTS)
    assert total == 14042
    # multi-line quoted fields are parsed by the csv reader, answers map A..D -> 0..3
    assert all(len(e["choices"]) == 4 and 0 <= e["label"] < 4 for e in s.test)


@pytest.mark.parametrize("task,sizes", [
    ("cola", {"train": 8551, "validation": 1043, "test": 1063}),
    ("sst2", {"train": 67349, "validation": 872, "test": 1821}),
    ("mrpc", {"train": 3668, "validation": 408, "test": 1725}),
    ("rte", {"train": 2490, "validation": 277, "test": 3000}),
    ("wnli", {"train": 635, "validation": 71, "test": 146}),
    ("qnli", {"validation": 5463, "test": 5463}),
    ("stsb", {"train": 5749, "validation": 1500, "test": 1379}),
])
def test_glue_counts(shared_data, task, sizes):
    rows = raw_rows(task, shared_data / task)
    assert {s: len(r) for s, r in rows.items()} == sizes
    assert all(r["label"] in (-1, -1.0) for r in rows["test"])


def test_glue_label_mappings(shared_data):
    rte = raw_rows("rte", shared_data / "rte")["validation"][0]
    assert rte["label"] == 1 and rte["sentence2"] == "Christopher Reeve had an accident."   # not_entailment
    qnli = raw_rows("qnli", shared_data / "qnli")["validation"][0]
    assert qnli["label"] == 0                                                                # entailment
    wnli = raw_rows("wnli", shared_data / "wnli")["train"][0]
    assert wnli["label"] == 1 and wnli["sentence2"] == "The carrot had a hole."            # GLUE 1 = entailment
    assert get_task("wnli").to_example(wnli)["choices"][1] == "entailment"
    mrpc = raw_rows("mrpc", shared_data / "mrpc")["train"][0]
    assert mrpc["label"] == 1 and mrpc["sentence1"].startswith("Amrozi accused his brother, whom he called \"the witness\"")
    cola = raw_rows("cola", shared_data / "cola")
    assert Counter(r["label"] for r in cola["validation"]) == {1: 721, 0: 322}
    assert Counter(r["label"] for r in raw_rows("sst2", shared_data / "sst2")["validation"]) == {1: 444, 0: 428}


def test_swag_fixture_rows(shared_data):
    rows = raw_rows("swag", shared_data / "swag")["train"]
    assert len(rows) == 10
    e = get_task("swag").to_example(rows[0])
    assert e["label"] == 0 and len(e["choices"]) == 4
    assert e["text"] == "Members of the procession walk down the street holding small horn brass instruments. A drum line"


def test_demo_task_is_deterministic_and_shifted():
    a, b = demo_rows("train"), demo_rows("train")
    assert a == b and len(a) == 800
    assert {r["label"] for r in a} == set(range(len(DEMO_LABELS)))
    shifted = demo_rows("test", shifted=True)
    assert {r["sentence"] for r in shifted}.isdisjoint({r["sentence"] for r in demo_rows("test")})
    s = load_splits("demo", "shifted")
    assert len(s.test) == 400 and len(s.train) == 800


def test_subtask_checks():
    with pytest.raises(ValueError, match="experiment.subtask is required for task 'mmlu'"):
        check_subtask(get_task("mmlu"), "")
    with pytest.raises(ValueError, match="unknown experiment.subtask 'anatomyy'"):
        check_subtask(get_task("mmlu"), "anatomyy")
    with pytest.raises(ValueError, match="unknown experiment.subtask 'x' for task 'obqa'; allowed: none"):
        check_subtask(get_task("obqa"), "x")
    check_subtask(get_task("mmlu"), "stem")
    with pytest.raises(ValueError, match="unknown task 'obqa2'"):
        get_task("obqa2")


def test_winogrande_loader_on_the_real_files(shared_data, tmp_path):
    rows = raw_rows("winogrande", shared_data / "winogrande", "winogrande_xs")
    assert {s: len(r) for s, r in rows.items()} == {"validation": 1267, "train": 160}
    assert len(raw_rows("winogrande", shared_data / "winogrande", "winogrande_s")["train"]) == 640
    raw_datasetdict("winogrande", shared_data / "winogrande", "winogrande_s").save_to_disk(
        str(tmp_path / "winogrande_winogrande_s"))
    s = load_splits("winogrande", "winogrande_s", offline=True, data_path=str(tmp_path), seed=0, val_fraction=0.2)
    assert len(s.train) == 512 and len(s.validation) == 128 and len(s.test) == 1267   # dev is the test split
    first = s.test[0]
    assert first["text"] == "Sarah was a much better surgeon than Maria so _ always got the easier cases."
    assert first["choices"] == ["Sarah", "Maria"] and first["label"] == 1                 # answer "2"
    labels = open(shared_data / "winogrande" / "dev-labels.lst").read().split()
    assert [e["label"] + 1 for e in s.test] == [int(x) for x in labels]


def test_boolq_loader_on_the_real_dev_file(shared_data, tmp_path):
    raw_datasetdict("boolq", shared_data / "boolq").save_to_disk(str(tmp_path / "boolq"))
    s = load_splits("boolq", offline=True, data_path=str(tmp_path), roles=("test",))
    assert len(s.test) == 3270 and Counter(e["label"] for e in s.test) == {1: 2033, 0: 1237}
    first = s.test[0]
    assert first["text"] == "does ethanol take more energy make that produces" and first["label"] == 0
    assert first["choices"] == ["no", "yes"] and first["text_pair"].startswith("All biomass goes through")


def test_binary_classifiers_read_another_tasks_labels_by_their_yes_class():
    """An RTE classifier (0 = entailment) scores MRPC (1 = equivalent): MRPC's labels are flipped to its classes."""
    from swag_lora.data.tasks import label_alignment
    assert label_alignment(get_task("rte"), get_task("mrpc")) == [1, 0]
    assert label_alignment(get_task("rte"), get_task("qnli")) == [0, 1]
    assert label_alignment(get_task("mrpc"), get_task("sst2")) == [0, 1]
    assert label_alignment(get_task("rte"), get_task("rte")) == [0, 1]
    assert label_alignment(get_task("demo"), get_task("rte")) is None          # four topics vs two classes
    assert label_alignment(get_task("mnli"), get_task("rte")) is None
