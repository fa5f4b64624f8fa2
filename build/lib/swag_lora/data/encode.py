"""Examples -> token ids (once per run) -> padded batches.

Causal prompts (the model reads the answer letter after "Answer:").  `experiment.prompt_style=original`
(the default) gives multiple-choice tasks the original's one-line prompt, with its choice clean-up (first
letter capitalised; OBQA and MMLU choices end with a period):

    Select one of the choices that answers the following question: <question> Choices: A. <c0> B. <c1> ... Answer:

`lines` (and every classification task, which the original scored with a sequence-classification head):

    Question: <question>            (classification: "<Text name>: <text>" lines, then "Question: <task prompt>")
    A. <choice 0>
    B. <choice 1>
    ...
    Answer:
"""
from __future__ import annotations

import numpy as np
import torch

from swag_lora.model import CAUSAL_HEAD_SIZE, LETTERS


PERIOD_TASKS = ("obqa", "mmlu")   # the original appended a period to these tasks' choices


def _original_choice(task, text: str) -> str:
    if task.name in PERIOD_TASKS and not text.endswith("."):
        text += "."
    return text[:1].upper() + text[1:]


def causal_prompt(task, ex: dict, style: str = "original") -> str:
    if style == "original" and task.format == "mc":
        choices = " ".join(f"{LETTERS[i]}. {_original_choice(task, c)}" for i, c in enumerate(ex["choices"]))
        return f"Select one of the choices that answers the following question: {ex['text']} Choices: {choices} Answer:"
    lines = []
    if task.format == "cls":
        lines.append(f"{task.text_names[0]}: {ex['text']}")
        if ex.get("text_pair"):
            lines.append(f"{task.text_names[1]}: {ex['text_pair']}")
        lines.append(f"Question: {task.prompt}")
    else:
        lines.append(f"Question: {ex['text']}")
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(ex["choices"])]
    lines.append("Answer:")
    return "\n".join(lines)


def encode(examples: list[dict], tokenizer, arch: str, task, max_length: int, prompt_style: str = "original") -> list[dict]:
    """Tokenise every example once: features with `input_ids` (a list, or one list per choice for
    multiple choice), optional `token_type_ids`, `num_choices`, `label` and `length`."""
    feats = []
    for ex in examples:
        n = len(ex["choices"])
        if arch == "causal":
            enc = tokenizer(causal_prompt(task, ex, prompt_style), truncation=True, max_length=max_length)
            f = {"input_ids": enc["input_ids"]}
        elif arch == "seq_cls":
            enc = tokenizer(ex["text"], ex.get("text_pair"), truncation=True, max_length=max_length)
            f = {"input_ids": enc["input_ids"]}
            if "token_type_ids" in enc:
                f["token_type_ids"] = enc["token_type_ids"]
        else:
            enc = tokenizer([ex["text"]] * n, list(ex["choices"]), truncation=True, max_length=max_length)
            f = {"input_ids": enc["input_ids"]}
            if "token_type_ids" in enc:
                f["token_type_ids"] = enc["token_type_ids"]
        ids = f["input_ids"]
        f.update(num_choices=n if arch != "seq_cls" else task.num_choices, label=int(ex["label"]),
                 length=max(len(x) for x in ids) if arch == "multiple_choice" else len(ids))
        feats.append(f)
    return feats


def labels_of(features: list[dict]) -> np.ndarray:
    """The labels of encoded features, in order."""
    return np.array([f["label"] for f in features], dtype=np.int64)


def choice_width(arch: str, task) -> int:
    """Columns of a model's output: a causal LM's letter head has 5 (A-E, for any task), a classifier the task's
    labels, a multiple-choice encoder one per choice."""
    return CAUSAL_HEAD_SIZE if arch == "causal" else max(task.num_choices, 1)


def _pad(seqs: list[list[int]], length: int, value: int, left: bool) -> list[list[int]]:
    return [([value] * (length - len(s)) + s) if left else (s + [value] * (length - len(s))) for s in seqs]


class Collator:
    """Pads a list of features into tensors; multiple choice gives B x C x L with dummy choices masked."""

    def __init__(self, pad_id: int, arch: str, num_choices: int, padding_side: str = "right"):
        self.pad_id, self.arch, self.num_choices, self.left = pad_id, arch, num_choices, padding_side == "left"

    def __call__(self, feats: list[dict]) -> dict[str, torch.Tensor]:
        C = self.num_choices
        choice_mask = torch.zeros(len(feats), C, dtype=torch.bool)
        for i, f in enumerate(feats):
            choice_mask[i, : f["num_choices"]] = True
        out = {"choice_mask": choice_mask, "labels": torch.tensor([f["label"] for f in feats], dtype=torch.long)}
        L = max(f["length"] for f in feats)
        has_tt = "token_type_ids" in feats[0]
        if self.arch == "multiple_choice":
            ids, tts = [], []
            for f in feats:
                seqs = f["input_ids"] + [f["input_ids"][0][:2]] * (C - len(f["input_ids"]))   # dummy choices (masked)
                ids.append(_pad(seqs, L, self.pad_id, self.left))
                if has_tt:
                    tt = f["token_type_ids"] + [[0, 0]] * (C - len(f["token_type_ids"]))
                    tts.append(_pad(tt, L, 0, self.left))
            input_ids = torch.tensor(ids)
            if has_tt:
                out["token_type_ids"] = torch.tensor(tts)
            mask = torch.tensor([[_mask(len(s), L, self.left) for s in
                                  f["input_ids"] + [f["input_ids"][0][:2]] * (C - len(f["input_ids"]))] for f in feats])
        else:
            input_ids = torch.tensor(_pad([f["input_ids"] for f in feats], L, self.pad_id, self.left))
            if has_tt:
                out["token_type_ids"] = torch.tensor(_pad([f["token_type_ids"] for f in feats], L, 0, self.left))
            mask = torch.tensor([_mask(len(f["input_ids"]), L, self.left) for f in feats])
        out["input_ids"], out["attention_mask"] = input_ids, mask
        return out


def _mask(n: int, length: int, left: bool) -> list[int]:
    return [0] * (length - n) + [1] * n if left else [1] * n + [0] * (length - n)


def eval_batches(lengths: list[int], batch_size: int, sort_by_length: bool = True) -> list[list[int]]:
    """Index batches covering every row exactly once; sorted by length so padding is small."""
    order = np.argsort(lengths, kind="stable") if sort_by_length else np.arange(len(lengths))
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
