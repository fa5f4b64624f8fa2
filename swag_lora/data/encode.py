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

`experiment.choice_scoring=loglik` / `loglik_norm` (causal LMs) scores each choice by the log-likelihood of its
tokens as the continuation of (lm-eval's acc / acc_norm, the latter per token here)

    Question: <question>            (classification: the "<Text name>: <text>" lines, then "Question: <task prompt>")
    Answer: <choice>

the prompt once (its keys and values are shared by the choices' tokens), then each choice's tokens.
"""
from __future__ import annotations

import numpy as np
import torch

LETTERS = "ABCDEFGHIJ"
CAUSAL_HEAD_SIZE = 5   # letters A-E: every multiple-choice and classification task fits, so any task can be OOD
ARCHS = ("causal", "loglik", "seq_cls", "multiple_choice")   # letter head; choice log-likelihood; the encoder heads

PERIOD_TASKS = ("obqa", "mmlu")   # the original appended a period to these tasks' choices


def _original_choice(task, text: str) -> str:
    if task.name in PERIOD_TASKS and not text.endswith("."):
        text += "."
    return text[:1].upper() + text[1:]


def _question_lines(task, ex: dict) -> list[str]:
    """The prompt's lines before the choices: "<Text name>: <text>" lines and the task's question (classification),
    or "Question: <question>"."""
    if task.format != "cls":
        return [f"Question: {ex['text']}"]
    lines = [f"{task.text_names[0]}: {ex['text']}"]
    if ex.get("text_pair"):
        lines.append(f"{task.text_names[1]}: {ex['text_pair']}")
    return lines + [f"Question: {task.prompt}"]


def causal_prompt(task, ex: dict, style: str = "original") -> str:
    if style == "original" and task.format == "mc":
        choices = " ".join(f"{LETTERS[i]}. {_original_choice(task, c)}" for i, c in enumerate(ex["choices"]))
        return f"Select one of the choices that answers the following question: {ex['text']} Choices: {choices} Answer:"
    return "\n".join(_question_lines(task, ex) + [f"{LETTERS[i]}. {c}" for i, c in enumerate(ex["choices"])] + ["Answer:"])


def loglik_prompt(task, ex: dict) -> str:
    """The context whose continuations are the choices (choice_scoring=loglik)."""
    return "\n".join(_question_lines(task, ex) + ["Answer:"])


def loglik_choices(tokenizer, prompt: str, choices: list[str], max_length: int) -> tuple[list[int], list[list[int]]]:
    """The prompt's tokens (the context every choice continues) and each choice's tokens (" <choice>"); where the
    context and the longest choice exceed `max_length`, the context loses tokens from its start."""
    context = tokenizer(prompt)["input_ids"]
    conts = [(tokenizer(" " + c, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id])[: max_length - 1]
             for c in choices]
    keep = max_length - max(len(c) for c in conts)
    return (context[-keep:] if len(context) > keep else context), conts


def encode(examples: list[dict], tokenizer, arch: str, task, max_length: int, prompt_style: str = "original") -> list[dict]:
    """Tokenise every example once: features with `input_ids` (a list, or one list per choice for
    multiple choice), optional `token_type_ids`, `cont_ids` (loglik: the tokens of each choice, continuing
    `input_ids`, the prompt), `num_choices`, `label` and `length`."""
    feats = []
    for ex in examples:
        n = len(ex["choices"])
        if arch == "loglik":
            prompt = loglik_prompt(task, ex)
            context, conts = loglik_choices(tokenizer, prompt, list(ex["choices"]), max_length)
            f = {"input_ids": context, "cont_ids": conts}
            f["truncated"] = len(context) < len(tokenizer(prompt)["input_ids"])
        else:
            args = ((causal_prompt(task, ex, prompt_style),) if arch == "causal" else
                    (ex["text"], ex.get("text_pair")) if arch == "seq_cls" else ([ex["text"]] * n, list(ex["choices"])))
            enc = tokenizer(*args)                     # truncated only where it is too long (and then noted)
            longest = max(map(len, enc["input_ids"])) if arch == "multiple_choice" else len(enc["input_ids"])
            truncated = longest > max_length
            if truncated:
                enc = tokenizer(*args, truncation=True, max_length=max_length)
            f = {"input_ids": enc["input_ids"], "truncated": truncated}
            if arch != "causal" and "token_type_ids" in enc:
                f["token_type_ids"] = enc["token_type_ids"]
        ids = f["input_ids"]
        f.update(num_choices=n if arch != "seq_cls" else task.num_choices, label=int(ex["label"]),
                 length=max(len(x) for x in ids) if arch == "multiple_choice" else
                 len(ids) + max(len(c) for c in f["cont_ids"]) if arch == "loglik" else len(ids))
        feats.append(f)
    return feats


def labels_of(features: list[dict]) -> np.ndarray:
    """The labels of encoded features, in order."""
    return np.array([f["label"] for f in features], dtype=np.int64)


def choice_width(arch: str, task) -> int:
    """Columns of a model's output: a causal LM's letter head has 5 (A-E, for any task), a classifier the task's
    labels, a multiple-choice encoder and choice log-likelihoods one per choice."""
    return CAUSAL_HEAD_SIZE if arch == "causal" else max(task.num_choices, 1)


def _pad(seqs: list[list[int]], length: int, value: int, left: bool) -> list[list[int]]:
    return [([value] * (length - len(s)) + s) if left else (s + [value] * (length - len(s))) for s in seqs]


class Collator:
    """Pads a list of features into tensors; multiple choice gives B x C x L with dummy choices masked; choice
    log-likelihoods give the prompts (B x L, left-padded) and the choices (`cont_ids`, `cont_mask`: B x C x K)."""

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
        if self.arch == "loglik":       # the prompt (left-padded, as every causal prompt) and its choices (right-padded)
            conts = [f["cont_ids"] + [f["cont_ids"][0]] * (C - len(f["cont_ids"])) for f in feats]
            K = max(len(c) for cs in conts for c in cs)
            out["cont_ids"] = torch.tensor([_pad(cs, K, self.pad_id, False) for cs in conts])
            out["cont_mask"] = torch.tensor([[_mask(len(c), K, False) for c in cs] for cs in conts], dtype=torch.bool)
            L = max(len(f["input_ids"]) for f in feats)
            out["input_ids"] = torch.tensor(_pad([f["input_ids"] for f in feats], L, self.pad_id, True))
            out["attention_mask"] = torch.tensor([_mask(len(f["input_ids"]), L, True) for f in feats])
            return out
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


class Encoding:
    """How one run turns rows into model inputs -- its tokenizer, its model's arch, max_length and prompt style --
    and the one path from rows to features, collator and loader that training, evaluation and the benchmarks share.
    `width` is the output width of a fixed-width model (a letter head, a classifier); per task otherwise."""

    def __init__(self, tokenizer, arch: str, max_length: int, prompt_style: str = "original", width: int | None = None):
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")
        self.tokenizer, self.arch, self.max_length, self.prompt_style, self.width = (tokenizer, arch, max_length,
                                                                                      prompt_style, width)

    @classmethod
    def of_model(cls, tokenizer, model, max_length: int, prompt_style: str = "original") -> "Encoding":
        """The encoding of a built ChoiceModel (its arch and output width)."""
        return cls(tokenizer, model.arch, max_length, prompt_style, model.num_choices)

    def features(self, rows: list[dict], task) -> list[dict]:
        return encode(rows, self.tokenizer, self.arch, task, self.max_length, self.prompt_style)

    def width_for(self, task) -> int:
        if self.arch in ("multiple_choice", "loglik") or self.width is None:
            return choice_width(self.arch, task)
        return self.width

    def collator(self, task) -> Collator:
        return Collator(self.tokenizer.pad_token_id, self.arch, self.width_for(task), self.tokenizer.padding_side)

    def loader(self, features: list[dict], task, batch_size: int, sampler=None):
        """A DataLoader over encoded features (in order, or in the sampler's)."""
        return torch.utils.data.DataLoader(features, batch_size=batch_size, sampler=sampler, collate_fn=self.collator(task),
                                           generator=torch.Generator() if sampler is not None else None)
