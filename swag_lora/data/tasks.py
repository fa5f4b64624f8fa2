"""Task registry: one small description per task -- where it lives, which split plays which role,
and how a raw row becomes an example.  Adding a task is one entry here, not a branch in the loop.

An example is a dict: `text` (question or first sentence), `text_pair` (second sentence or None),
`choices` (answer texts for multiple choice; the label names for classification) and `label` (int).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from swag_lora.data.demo import DEMO_LABELS

Example = dict

# ---------------------------------------------------------------- MMLU subjects and groups
MMLU_GROUPS: dict[str, tuple[str, ...]] = {
    "stem": ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
             "high_school_physics", "high_school_statistics", "machine_learning"),
    "humanities": ("formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                   "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                   "world_religions"),
    "social_sciences": ("econometrics", "high_school_geography", "high_school_government_and_politics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"),
    "other": ("business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
              "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
              "professional_accounting", "professional_medicine", "virology"),
}
MMLU_SUBJECTS: tuple[str, ...] = tuple(sorted(s for g in MMLU_GROUPS.values() for s in g))
MMLU_GROUPS["chemistry"] = ("college_chemistry", "high_school_chemistry")
MMLU_GROUPS["physics"] = ("college_physics", "conceptual_physics", "high_school_physics")
MMLU_GROUPS["all"] = MMLU_SUBJECTS


# ---------------------------------------------------------------- row -> example
def _letter_mc(question_key: str) -> Callable[[dict], Example]:
    """OBQA / ARC / CQA rows: `choices = {"text": [...], "label": [...]}`, `answerKey` a label ("A".."E" or "1".."5")."""
    def convert(row: dict) -> Example:
        labels = list(row["choices"]["label"])
        key = row.get("answerKey") or ""
        return {"text": row[question_key], "text_pair": None, "choices": list(row["choices"]["text"]),
                "label": labels.index(key) if key in labels else -1}
    return convert


def _mmlu(row: dict) -> Example:
    return {"text": row["question"], "text_pair": None, "choices": list(row["choices"]), "label": int(row["answer"])}


def _swag(row: dict) -> Example:
    return {"text": f"{row['sent1']} {row['sent2']}".strip(), "text_pair": None,
            "choices": [row[f"ending{i}"] for i in range(4)], "label": int(row["label"])}


def _winogrande(row: dict) -> Example:
    ans = str(row.get("answer") or "")
    return {"text": row["sentence"], "text_pair": None, "choices": [row["option1"], row["option2"]],
            "label": int(ans) - 1 if ans in ("1", "2") else -1}


def _boolq(row: dict) -> Example:
    return {"text": row["question"], "text_pair": row["passage"], "choices": ["no", "yes"], "label": int(bool(row["answer"]))}


def _pair(a: str, b: str | None, names: tuple[str, ...]) -> Callable[[dict], Example]:
    def convert(row: dict) -> Example:
        return {"text": row[a], "text_pair": row[b] if b else None, "choices": list(names), "label": int(row["label"])}
    return convert


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Task:
    """How one task is loaded and read.

    `splits` maps the roles train/validation/test to the hub's split names; a validation of None means
    "carve `val_fraction` of train with the run's seed" (used where the official test has no labels, so the
    official validation split becomes the test split).
    """
    name: str
    hub_id: str
    format: str                                # "mc" (choose among answer texts) or "cls" (label names)
    to_example: Callable[[dict], Example]
    splits: dict[str, str | None]
    num_choices: int                           # the largest number of choices a question may have
    hub_config: str | None = None              # default config; subtask may choose another
    subtasks: tuple[str, ...] = ()             # allowed values of experiment.subtask ("" always allowed if no config needed)
    subtask_required: bool = False
    prompt: str = ""                           # cls tasks: the question a causal LM is asked
    text_names: tuple[str, str] = ("Text", "Text 2")
    report_mcc: bool = False
    regression: bool = False
    original_choices: int | None = None        # the original kept only questions with this many choices
    positive: int | None = None                # binary tasks: the "yes" class (entailment, equivalent, acceptable, ...)

    def config_for(self, subtask: str) -> str | None:
        return subtask if (subtask and self.subtasks) else self.hub_config

    def dir_name(self, subtask: str) -> str:
        """Folder name under `data_path`: `<task>_<subtask>` where the subtask picks a hub config (an MMLU
        subject or group, a WinoGrande size), else `<task>` (MNLI's matched/mismatched are splits of one folder)."""
        return f"{self.name}_{subtask}" if subtask and self.subtasks else self.name

    def split_names(self, subtask: str) -> dict[str, str | None]:
        if self.name == "mnli" and subtask == "mismatched":
            return {**self.splits, "test": "validation_mismatched"}
        return dict(self.splits)


OFFICIAL = {"train": "train", "validation": "validation", "test": "test"}
CARVED = {"train": "train", "validation": None, "test": "validation"}


def _glue(name: str, a: str, b: str | None, labels: tuple[str, ...], prompt: str, text_names=("Sentence", "Sentence 2"), **kw) -> Task:
    splits = dict(CARVED, test="validation_matched") if name == "mnli" else CARVED
    kw.setdefault("report_mcc", True)   # GLUE's own metric for CoLA; reported for every GLUE task
    return Task(name=name, hub_id="nyu-mll/glue", hub_config=name, format="cls", to_example=_pair(a, b, labels),
                splits=splits, num_choices=len(labels), prompt=prompt, text_names=text_names, **kw)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("obqa", "allenai/openbookqa", "mc", _letter_mc("question_stem"), OFFICIAL, 4, hub_config="main"),
    Task("arc-e", "allenai/ai2_arc", "mc", _letter_mc("question"), OFFICIAL, 5, hub_config="ARC-Easy", original_choices=4),
    Task("arc-c", "allenai/ai2_arc", "mc", _letter_mc("question"), OFFICIAL, 5, hub_config="ARC-Challenge", original_choices=4),
    Task("cqa", "tau/commonsense_qa", "mc", _letter_mc("question"), CARVED, 5),
    Task("mmlu", "cais/mmlu", "mc", _mmlu, {"train": "dev", "validation": "validation", "test": "test"}, 4,
         subtasks=MMLU_SUBJECTS + tuple(g for g in MMLU_GROUPS if g not in MMLU_SUBJECTS), subtask_required=True),
    Task("swag", "allenai/swag", "mc", _swag, CARVED, 4, hub_config="regular"),
    Task("winogrande", "allenai/winogrande", "mc", _winogrande, CARVED, 2, hub_config="winogrande_xl",
         subtasks=("winogrande_xs", "winogrande_s", "winogrande_m", "winogrande_l", "winogrande_xl", "winogrande_debiased")),
    Task("boolq", "google/boolq", "cls", _boolq, CARVED, 2, prompt="Is the answer to the question yes or no?", positive=1,
         text_names=("Question", "Passage")),
    _glue("cola", "sentence", None, ("unacceptable", "acceptable"), "Is this sentence grammatically acceptable?", positive=1),
    _glue("sst2", "sentence", None, ("negative", "positive"), "Is the sentiment of this sentence negative or positive?", positive=1),
    _glue("mrpc", "sentence1", "sentence2", ("not_equivalent", "equivalent"), "Do the two sentences mean the same thing?", positive=1),
    _glue("qqp", "question1", "question2", ("not_duplicate", "duplicate"), "Do the two questions ask the same thing?",
          text_names=("Question", "Question 2"), positive=1),
    _glue("stsb", "sentence1", "sentence2", ("score",), "How similar are the two sentences?", regression=True),
    _glue("mnli", "premise", "hypothesis", ("entailment", "neutral", "contradiction"),
          "Does the premise entail the hypothesis?", text_names=("Premise", "Hypothesis")),
    _glue("qnli", "question", "sentence", ("entailment", "not_entailment"), "Does the sentence answer the question?",
          text_names=("Question", "Sentence"), positive=0),
    _glue("rte", "sentence1", "sentence2", ("entailment", "not_entailment"), "Does the first sentence entail the second?", positive=0),
    _glue("wnli", "sentence1", "sentence2", ("not_entailment", "entailment"), "Does the first sentence entail the second?", positive=1),
]}


def _demo_task() -> Task:
    return Task("demo", "swag-lora/demo (generated)", "cls", _pair("sentence", None, DEMO_LABELS), OFFICIAL,
                len(DEMO_LABELS), subtasks=("shifted",), prompt="What is this sentence about?")


TASKS["demo"] = _demo_task()
TASK_NAMES = tuple(sorted(TASKS))


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(TASK_NAMES)}")
    return TASKS[name]


def check_subtask(task: Task, subtask: str, key: str = "experiment.subtask") -> None:
    """Raise a one-line ValueError if `subtask` is not valid for `task`."""
    subtask = subtask or ""
    if task.subtask_required and not subtask:
        raise ValueError(f"{key} is required for task {task.name!r}; allowed: a subject or group, e.g. "
                         f"anatomy, college_chemistry, stem, humanities, social_sciences, other, all")
    if task.name == "mnli":
        if subtask not in ("", "matched", "mismatched"):
            raise ValueError(f"unknown {key} {subtask!r} for task 'mnli'; allowed: matched, mismatched")
        return
    if subtask and subtask not in task.subtasks:
        allowed = ", ".join(task.subtasks) if task.subtasks else "none (leave it empty)"
        if len(task.subtasks) > 12:
            allowed = ", ".join(task.subtasks[:6]) + f", ... ({len(task.subtasks)} in all)"
        raise ValueError(f"unknown {key} {subtask!r} for task {task.name!r}; allowed: {allowed}")


def label_alignment(trained: Task, other: Task) -> list[int] | None:
    """How a classifier trained on `trained` reads `other`'s labels: `other` label i -> `trained` class map[i], by
    their "yes" classes (RTE's entailment is MRPC's equivalent).  None when the two cannot be matched."""
    if trained.name == other.name:
        return list(range(other.num_choices))
    if trained.num_choices != 2 or other.num_choices != 2 or trained.positive is None or other.positive is None:
        return None
    return [0, 1] if trained.positive == other.positive else [1, 0]


def mmlu_subjects(subtask: str) -> tuple[str, ...]:
    return MMLU_GROUPS.get(subtask, (subtask,))


@dataclass
class Splits:
    """The examples of one task, by role, with what was used to get them."""
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    source: dict = field(default_factory=dict)
    all: list[Example] = field(default_factory=list)    # roles=("all",): every labelled row of the published splits

    def __getitem__(self, role: str) -> list[Example]:
        return getattr(self, role)
