"""Evaluation methods, one class each, picked by `evaluation.eval_method` (the key) from `METHODS`.

A method turns a set of runs (one, or an ensemble's members) into weight draws and their probabilities on a set
of batches: `draws(run, member, data)` returns S x N x C for one member; the evaluation concatenates the members'
draws and averages them (the Bayesian model average).  Adding a method is one class here (with `@register`)
and its keys in conf/eval.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from swag_lora.config import ConfigError, EvaluationConfig, RunConfig, SwagConfig
from swag_lora.posteriors.swag import SwagPosterior
from swag_lora.predict.draws import draw_probs

METHODS: dict[str, type[Method]] = {}


def register(cls):
    METHODS[cls.key] = cls
    return cls


@dataclass
class Batches:
    """The rows one evaluation scores: features, their collator, and how to batch them."""
    features: list
    collator: object
    batch_size: int
    accelerator: object = None


class Method:
    key: ClassVar[str]
    checkpoint: ClassVar[str] = "base_model"   # the folder each member is evaluated from
    members: ClassVar[str] = "one"             # one run, or "several" (ensemble-like)
    sampled: ClassVar[bool] = False            # evaluation.num_samples draws per member

    def __init__(self, evaluation: EvaluationConfig):
        self.evaluation = evaluation

    def label(self) -> str:
        return self.key

    def settings(self) -> dict:
        """What changes the predictive distribution (the report keeps rows with different settings apart)."""
        return {"num_samples": self.evaluation.num_samples if self.sampled else 1}

    def check(self, runs: list[RunConfig], paths: list) -> None:
        """One-line errors before any model loads."""
        for path in paths:
            if not (path / self.checkpoint).is_dir():
                raise ConfigError(f"{path} has no {self.checkpoint}/, which evaluation.eval_method={self.key} needs")
        if self.members == "several":
            check_members(runs, self.key)

    def draws(self, run, member: int, data: Batches) -> np.ndarray:
        raise NotImplementedError


@register
class MAP(Method):
    """The lowest-validation-loss adapter, dropout off: one draw."""
    key = "base"

    def label(self) -> str:
        return "map"

    def draws(self, run, member, data):
        run.model.load_adapter(run.directory / "base_model")
        return draw_probs(run.model, data.features, data.collator, data.batch_size, "base",
                          sort_by_length=self.evaluation.sort_by_length, accelerator=data.accelerator)


@register
class Dropout(MAP):
    """MC dropout: the MAP adapter with dropout on, S passes."""
    key = "dropout"
    sampled = True

    def label(self) -> str:
        return "dropout"

    def draws(self, run, member, data):
        run.model.load_adapter(run.directory / "base_model")
        return draw_probs(run.model, data.features, data.collator, data.batch_size, "dropout",
                          num_samples=self.evaluation.num_samples, seed=self.evaluation.seed, sort_by_length=self.evaluation.sort_by_length,
                          accelerator=data.accelerator)


@register
class Swag(Method):
    """SWAG: S samples from the run's posterior written into the model (scale 0: SWA, the posterior mean)."""
    key = "swag"
    checkpoint = "swag_model"
    sampled = True

    def label(self) -> str:
        return "swa" if self.evaluation.swag_sample_scale == 0 else "swag"

    def settings(self) -> dict:
        return {"num_samples": self.evaluation.num_samples, "swag_sample_scale": self.evaluation.swag_sample_scale,
                "swag_cov_mat": self.evaluation.swag_cov_mat}

    def check(self, runs, paths):
        super().check(runs, paths)
        for run, path in zip(runs, paths):
            if not isinstance(run.method, SwagConfig):
                raise ConfigError(f"{path} was trained with method={run.method.method_name}; "
                                  f"evaluation.eval_method={self.key} needs a SWAG run")
            if self.evaluation.swag_cov_mat and not SwagPosterior.read_metadata(path / "swag_model").get("keep_deviations", True):
                raise ConfigError(f"the SWAG posterior of {path} is diagonal (trained with method.swag_cov_mat=false): it "
                                  f"has no low-rank term; evaluate it with evaluation.swag_cov_mat=false (SWAG_COV_MAT=false)")

    def draws(self, run, member, data):
        run.model.load_adapter(run.directory / "swag_model")
        post = SwagPosterior.load(run.directory / "swag_model", device=next(run.model.parameters()).device)
        k = None if run.config.method.swag_k_held else post.max_rank   # the original: K = swag_max_num_models
        return draw_probs(run.model, data.features, data.collator, data.batch_size, "swag", posterior=post,
                          named=run.named, num_samples=self.evaluation.num_samples, scale=self.evaluation.swag_sample_scale,
                          cov=self.evaluation.swag_cov_mat, k=k, seed=self.evaluation.seed + 1000 * member,
                          sort_by_length=self.evaluation.sort_by_length, accelerator=data.accelerator)


@register
class Ensemble(MAP):
    """Deep ensemble: the MAP adapters of several runs, one draw each."""
    key = "ensemble"
    members = "several"

    def label(self) -> str:
        return "ensemble"


@register
class MultiSwag(Swag):
    """MultiSWAG: S samples from each of several runs' posteriors (scale 0: MultiSWA)."""
    key = "multiswag"
    members = "several"

    def label(self) -> str:
        return "multiswa" if self.evaluation.swag_sample_scale == 0 else "multiswag"

    def check(self, runs, paths):
        super().check(runs, paths)
        mods = {r.method.modules_to_swag for r in runs}
        if len(mods) > 1:
            raise ConfigError(f"multiswag members disagree on method.modules_to_swag: {sorted(mods)}")


@register
class Temperature(MAP):
    """MAP with a temperature fitted on validation rows (the same as base with evaluation.temperature_scaling)."""
    key = "temperature"

    def label(self) -> str:
        return "temperature"


def check_members(runs: list[RunConfig], method: str) -> None:
    """Ensemble / MultiSWAG members must agree on model, task and label space."""
    def key(r):
        return {"model": r.model.model_name, "family": r.model.family, "task": r.experiment.task,
                "subtask": r.experiment.subtask, "lora_r": r.experiment.lora_r,
                "lora_target_modules": tuple(r.model.target_modules)}
    first = key(runs[0])
    for i, r in enumerate(runs[1:], 1):
        for name, value in key(r).items():
            if value != first[name]:
                raise ConfigError(f"{method} members disagree on {name}: {first[name]!r} (member 0) vs {value!r} (member {i})")


def make_method(evaluation: EvaluationConfig) -> Method:
    if evaluation.eval_method not in METHODS:
        raise ConfigError(f"unknown evaluation.eval_method {evaluation.eval_method!r}; allowed: {', '.join(METHODS)}")
    return METHODS[evaluation.eval_method](evaluation)
