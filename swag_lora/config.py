"""Typed configuration, declared once.

Hydra composes `conf/` (YAML: the values); `parse_run` / `parse_eval` convert the composed config into the
dataclasses below (the declarations: type, allowed values, help) and check it.  Every bad value raises
`ConfigError` with one line naming it and what is allowed; the entrypoints print it and exit 2, before any
model loads.  The README's configuration table is generated from these dataclasses (`python -m swag_lora.config`)
and a test keeps the two, and the YAML files, in step.

Keys the original (fortuinlab/swag-lora) spells differently exist under both names; config.yaml interpolates
ours from the original's, so either can be set (`alias` in the metadata).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from swag_lora.data.tasks import TASK_NAMES, check_subtask, get_task
from swag_lora.errors import ConfigError
from swag_lora.sources import check_offline


def opt(help: str, *, choices: tuple | None = None, check: str | None = None, alias: str | None = None,
        optional: bool = False, default: Any = dataclasses.MISSING):
    """A config field: `help` (README), `choices` (allowed values), `check` (positive, positive_int, fraction,
    nonneg, nonneg_int), `alias` (the other name of the same setting: the original's or this project's; both
    are accepted and kept equal), `optional` (may be absent: None)."""
    meta = {"help": help, "choices": choices, "check": check, "alias": alias, "optional": optional}
    if optional and default is dataclasses.MISSING:
        default = None
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------- the declarations
MODEL_FAMILIES = ("causal", "encoder")
DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATION = ("none", "4bit", "8bit")
SCHEDULERS = ("constant", "linear", "cosine", "cosine_hard_restarts")
ANNEAL_STRATEGIES = ("linear", "cos", "cosine", "constant", "cosine_hard_restarts")
MODULES_TO_SWAG = ("grad_only", "lora_only", "head", "all")
PROMPT_STYLES = ("original", "lines")
CHOICE_SCORINGS = ("letter", "loglik", "loglik_norm")


@dataclass
class ModelConfig:
    name: str = opt("the model config's name (conf/model/<name>.yaml)")
    model_name: str = opt("hub id (or a local folder); any model of the family works, e.g. meta-llama/Llama-3.2-1B")
    family: str = opt("causal LM (letter head) or encoder (sequence classification / multiple choice)", choices=MODEL_FAMILIES)
    dtype: str = opt("base weights dtype (the paper's models: float32, as the original loaded them)", choices=DTYPES)
    target_modules: list = opt("LoRA target modules", alias="lora_target_modules")
    lora_target_modules: list = opt("this project's name of target_modules")
    modules_to_save: list = opt("modules trained in full beside LoRA (peft modules_to_save); a causal LM's letter "
                                "head is always trained", alias="head_modules")
    head_modules: list = opt("this project's name of modules_to_save")
    max_length: int = opt("prompt tokens kept (from the end for causal LMs)", check="positive_int")
    trust_remote_code: bool = opt("run the model repository's own code (off unless asked)")
    quantization: str = opt("bitsandbytes 4- or 8-bit base weights (CPU and CUDA)", choices=QUANTIZATION)
    gradient_checkpointing: bool = opt("recompute activations in the backward pass")
    package: str | None = opt("load the weights shipped by this installed package (the demo's MiniLM)", optional=True)
    tiny: dict | None = opt("build a tiny model from a config instead of loading weights (tests)", optional=True)
    attn_implementation: str | None = opt("transformers attn_implementation (e.g. sdpa)", optional=True)
    model_type: str | None = opt("the family the weights must be (config.json model_type, checked before training or "
                                 "evaluating from a folder); null: not checked", optional=True)


@dataclass
class ExperimentConfig:
    task: str = opt("training task (README, Tasks)", choices=TASK_NAMES)
    subtask: str = opt("MMLU subject or group, WinoGrande size, MNLI matched/mismatched, demo shifted")
    ood_task: str = opt("task evaluated out of distribution after training; auto = the demo's shifted split for the "
                        "demo task, none otherwise; empty = none")
    ood_subtask: str = opt("subtask of ood_task")
    ood_batch_size: int = opt("batch size of the OOD evaluation", check="positive_int")
    num_epochs: int = opt("epochs", check="positive_int")
    batch_size: int = opt("global batch per optimizer step: split across processes and, with gradient accumulation, "
                          "into batch_size / gradient_accumulation_steps loader batches", check="positive_int")
    eval_batch_size: int = opt("batch size of validation and evaluation", check="positive_int")
    learning_rate: float = opt("AdamW learning rate", check="positive")
    weight_decay: float = opt("AdamW weight decay", check="nonneg")
    gradient_accumulation_steps: int = opt("loader batches per optimizer step", check="positive_int")
    warmup_length: float = opt("fraction of all loader batches spent warming up", check="fraction0")
    scheduler: str = opt("transformers' schedule with warm-up, before swag_start", choices=SCHEDULERS, alias="lr_scheduler")
    lr_scheduler: str = opt("this project's name of scheduler", choices=SCHEDULERS)
    num_lr_cycles: float = opt("cosine: 0.5 is one half-cosine to 0; cosine_hard_restarts: an integer", check="positive")
    max_grad_norm: float = opt("> 0 clips gradients (opt-in; the original clips nothing)", check="nonneg")
    mixed_precision: str | None = opt("no, fp16, bf16; null = what accelerate launch says", choices=(None, "no", "fp16", "bf16"))
    lora_r: int = opt("LoRA rank", check="positive_int")
    lora_alpha: float = opt("LoRA alpha", check="positive")
    lora_dropout: float = opt("LoRA dropout", check="fraction0")
    train_biases: str = opt("peft's LoRA bias setting", choices=("none", "all", "lora_only"))
    seed: int = opt("seed (initialisation, data order, carving validation)")
    val_split_size: float = opt("fraction of train carved as validation where the test split has no labels (the same "
                                "rows as the original's train_test_split(test_size, seed))", check="fraction", alias="val_fraction")
    val_fraction: float = opt("this project's name of val_split_size", check="fraction")
    test_split_size: float = opt("> 0: train, validation and test are all carved from the task's labelled evaluation split "
                                 "(this fraction becomes test, the same rows for every seed; val_split_size of the rest "
                                 "validation): for a task whose training split is not at hand, e.g. QNLI offline (GLUE's "
                                 "dev.tsv only); 0 = the task's own splits", check="fraction0")
    prompt_style: str = opt("causal LMs on multiple choice: the original's one-line prompt, or lines", choices=PROMPT_STYLES)
    choice_scoring: str = opt("causal LMs: the original's letter head (letter), or each choice scored by the summed "
                              "(loglik) or per-token mean (loglik_norm) log-likelihood of its tokens after the prompt, as "
                              "a softmax over the choices (lm-eval's acc / acc_norm; LoRA alone is trained); encoders: "
                              "letter", choices=CHOICE_SCORINGS)
    arc_all_items: bool = opt("keep ARC's 3- and 5-choice questions (opt-in; the original keeps the 4-choice ones)")
    max_train_samples: int = opt("truncate the training split (0 = all; smoke tests)", check="nonneg_int")
    max_eval_samples: int = opt("truncate validation and evaluation splits (0 = all)", check="nonneg_int")
    overwrite: bool = opt("replace a finished run of the same settings (else refused)")
    resume: str = opt("resume from the run's checkpoint", choices=("auto", "never", "must"))
    offline: bool = opt("read <model_path>/<model_name> and <data_path>/<task>[_<subtask>]; no network")
    data_path: str = opt("offline datasets (download_datasets4cluster.py)")
    model_path: str = opt("offline models (download_models4cluster.py)")
    save_folder: str = opt("root of the run directories")
    save_path: str = opt("set by the run to its directory (the original's key; recorded in config.yaml)")
    exp_name: str = opt("run name (a readable name from the key settings when empty)")
    wandb_mode: str = opt("Weights & Biases; offline needs no login (wandb sync later)", choices=("online", "offline", "disabled"))
    wandb_project: str = opt("W&B project")
    wandb_path: str = opt("W&B directory")
    wandb_group: str = opt("W&B group")
    log_every_steps: int = opt("log the step loss every N optimizer steps (0 = never)", check="nonneg_int")
    checkpoint_every_steps: int = opt("extra checkpoints inside an epoch (0 = at epoch ends only)", check="nonneg_int")
    eval_upon_save: bool = opt("after training, evaluate evaluation.table_methods (ID and OOD) and print the table",
                               alias="evaluate_after_training")
    evaluate_after_training: bool = opt("this project's name of eval_upon_save")


@dataclass
class MethodConfig:
    method_name: str = opt("swag (the original's), swag_demo (the default: tuned for the 6-epoch demo), map, ivon, blob")


@dataclass
class MapConfig(MethodConfig):
    """Plain LoRA fine-tuning: the lowest-validation-loss adapter, no posterior."""


@dataclass
class SwagConfig(MethodConfig):
    """SWAG overrides the LoRA (+ head) weights: the original's conf/method/swag.yaml, then this project's opt-ins."""
    swag_start: int = opt("epochs of ordinary training; collection at the end of epochs swag_start + 1, ...", check="nonneg_int")
    force_save: int = opt("save the SWAG model at 0-based epoch swag_start + force_save unless a new minimum of the SWA "
                          "validation loss came then (training goes on)")
    modules_to_swag: str = opt("tensors in the posterior: LoRA + head, LoRA only, the head only (last-layer SWAG; "
                               "its samples reuse one backbone pass), all", choices=MODULES_TO_SWAG)
    swag_scheduler: str = opt("accepted for the original's configs, which read it only for the run name; unused")
    swag_learning_rate: float = opt("the rate SWALR anneals to", check="positive")
    swag_anneal_epochs: int = opt("epochs of SWALR's anneal", check="nonneg_int")
    swag_max_num_models: int = opt("K: deviation columns kept (oldest dropped); the low-rank term divides by K - 1",
                                   check="positive_int")
    swag_cov_mat: bool = opt("keep the low-rank covariance; false = diagonal SWAG (no columns stored)")
    swag_c_epochs: int = opt("collect every N epochs", check="positive_int")
    swag_sample_scale: float = opt("the run's default evaluation scale (evaluation.swag_sample_scale=null reads it)",
                                   check="nonneg")
    swag_anneal_strategy: str = opt("SWALR's linear or cos (= cosine); opt-in: constant, cosine_hard_restarts",
                                    choices=ANNEAL_STRATEGIES)
    swag_start_with_lowest_loss: bool = opt("reload the lowest-validation-loss adapter when collection starts")
    swag_save_base_model: bool = opt("keep base_model/ (the lowest-validation-loss adapter)")
    swag_c_steps: int = opt("> 0: collect every N optimizer steps after swag_start epochs (opt-in)", check="nonneg_int")
    stop_at_force_save: bool = opt("stop training after the force_save epoch (opt-in)")
    swag_k_held: bool = opt("divide the low-rank term by (columns held - 1), not swag_max_num_models - 1 (opt-in)")
    swag_device: str = opt("posterior buffers beside the weights or on the CPU", choices=("same", "cpu"))


@dataclass
class IvonConfig(MethodConfig):
    """IVON (variational learning; ivon-opt): the trained tensors (LoRA; an encoder's or letter head's too) trained by
    IVON instead of AdamW, whose state is a diagonal Gaussian posterior (saved in ivon_model/ at the lowest validation
    loss of its mean).  The defaults are team-approx-bayes/ivon-lora's recipe for ARC / OBQA: lr 0.03 with a linear
    decay and no warm-up, ess 1e6, hess_init 1e-3, clip_radius 1e-3, rescale_lr false, weight decay 0, beta2 0.99999,
    one training sample per step."""
    ivon_learning_rate: float | None = opt("IVON's learning rate (ivon-lora: 0.03, decayed linearly to 0); null: "
                                           "experiment.learning_rate", check="positive")
    ivon_ess: float | None = opt("effective sample size: the posterior's precision is ess (h + delta) (ivon-lora: 1e6 "
                                 "on ARC / OBQA, 1e7-1e8 on WinoGrande / BoolQ); null: the number of training rows",
                                 check="positive")
    ivon_hess_init: float = opt("initial Hessian estimate h0 (ivon-lora: 1e-3 on ARC / OBQA, 3e-4 elsewhere)", check="positive")
    ivon_beta1: float = opt("momentum of the gradient", check="fraction0")
    ivon_beta2: float = opt("momentum of the Hessian estimate", check="fraction")
    ivon_weight_decay: float = opt("weight decay (the prior precision delta; ivon-lora: 0)", check="nonneg")
    ivon_train_samples: int = opt("weight samples (forward + backward passes) per optimizer step", check="positive_int")
    ivon_clip_radius: float | None = opt("clip each element of the (Hessian-preconditioned) update to +-radius (ivon-lora: "
                                         "1e-3); null: no clipping", check="positive")
    ivon_rescale_lr: bool = opt("rescale the learning rate by (h0 + delta), ivon-opt's default; ivon-lora: false")
    ivon_warmup_length: float = opt("warm-up fraction of IVON's schedule, in place of experiment.warmup_length (ivon-lora: "
                                    "0, a linear decay from the first step)", check="fraction0")

    def learning_rate(self, exp: ExperimentConfig) -> float:
        """IVON's learning rate: ivon_learning_rate, or experiment.learning_rate where it is null."""
        return self.ivon_learning_rate or exp.learning_rate


@dataclass
class BlobConfig(MethodConfig):
    """BLoB (Bayesian LoRA by backpropagation; posteriors/blob.py): a variational Gaussian over LoRA's A matrices (B a
    point estimate), trained with flipout noise and a KL to N(0, prior_std^2); its posterior is saved in blob_model/ at
    the end of training.  The defaults are Wang-ML-Lab/bayesian-peft's (scripts/blob): eps 0.05 (initial std 0.05^2),
    beta 0.2, KL learning rate 0.01 with the exponential KL reweighting, one training sample."""
    blob_init_std: float = opt("sigma starts uniform in [s0 / 2, s0] (sigma = rho^2; BLoB's eps = 0.05: s0 = 0.0025)",
                               check="positive")
    blob_prior_std: float = opt("the prior N(0, beta^2) on A (BLoB: beta = 0.2)", check="positive")
    blob_kl_lr: float = opt("learning rate of the SGD step on the KL (and on sigma's parameters; BLoB: 0.01 for LLaMA, "
                            "0.002 for RoBERTa), scaled by the run's learning-rate schedule", check="positive")
    blob_kl_reweighting: bool = opt("the KL weight 2^i / (2^(M+1) - 1) within each cycle of M steps (BLoB's "
                                    "--bayes-klreweighting); false: 1 / M")
    blob_kl_cycle_steps: int | None = opt("M, optimizer steps per KL cycle; null: one epoch", check="positive_int")
    blob_train_samples: int = opt("noised forward passes per training batch (their logits averaged)", check="positive_int")


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {"swag": SwagConfig, "map": MapConfig, "ivon": IvonConfig,
                                                 "blob": BlobConfig}


@dataclass
class EvaluationConfig:
    eval_method: str = opt("the evaluation method (README, Methods)")
    eval_model_path: str = opt("a run directory (or its base_model/ or swag_model/ folder)")
    eval_model_paths: list = opt("ensemble / MultiSWAG members (run directories)")
    num_samples: int = opt("dropout passes or posterior samples per member", check="positive_int")
    dropout_scope: str = opt("MC dropout: only the nn.Dropout modules sample (modules: LoRA's and the encoder's hidden "
                             "dropout; the original's set_dropout_training), or model.train() (whole_model: attention "
                             "dropout too)", choices=("modules", "whole_model"))
    swag_sample_scale: float | None = opt("SWAG scale s (0 = SWA); null = the run's method.swag_sample_scale", check="nonneg")
    swag_cov_mat: bool = opt("use the SWAG low-rank term")
    only_ood: bool = opt("evaluate the OOD task only")
    seed: int = opt("seed of the draws")
    temperature_scaling: bool = opt("fit a temperature on validation rows and apply it on top of the method")
    ece_bins: int = opt("extra ECE bin count in the JSON (ece is always 15 bins)", check="positive_int")
    split: str = opt("the in-distribution split", choices=("test", "validation"))
    sort_by_length: bool = opt("length-sorted batches (less padding)")
    output_dir: str = opt("where the JSON/npz/PNG go (default: <run dir>/eval)")
    overwrite: bool = opt("replace an existing record of another evaluation (other settings, rows, data, seed or runs) "
                          "under the same name; false: refused before any model loads")
    laplace_subset: str = opt("Laplace-LoRA over LoRA + head (all) or the head alone (last-layer Laplace)",
                              choices=("all", "head"))
    laplace_hessian: str = opt("Kronecker-factored (KFAC) or diagonal GGN", choices=("kron", "diag"))
    laplace_predictive: str = opt("linearised (probit, or num_samples logit samples) or num_samples weight samples",
                                  choices=("glm_probit", "glm_mc", "nn_mc"))
    laplace_batch_size: int | None = opt("rows per batch of the Laplace fit over the training rows; null = the run's "
                                         "experiment.eval_batch_size (KFAC adds its factors batch by batch, so the fit "
                                         "depends on it; memory grows with it)", check="positive_int")
    laplace_prior: str = opt("how Laplace's prior precision delta is chosen: the marginal likelihood (laplace-torch), or "
                             "the lowest validation NLL (probit GLM predictive, the run's own validation rows) over "
                             "laplace_prior_grid (Laplace-LoRA offers both); the chosen delta and its source are recorded",
                             choices=("marglik", "val_nll"))
    laplace_prior_grid: list = opt("the prior precisions laplace_prior=val_nll tries")
    laplace_jacobian_rows: int = opt("rows per Jacobian call of the whole-model GLM predictive (laplace-torch); memory "
                                     "grows with it, and on a 135M causal LM one row at a time was also the fastest",
                                     check="positive_int")
    blob_mean: bool = opt("eval_method=blob: the posterior mean alone, one draw (BLoB-Mean), instead of num_samples samples")
    tfb_metric: str = opt("eval_method=tfb: the validation metric whose degradation bounds the scale (TFB: either)",
                          choices=("nll", "accuracy"))
    tfb_tolerance: float = opt("eval_method=tfb: the largest scale with NLL <= MAP's x (1 + tolerance) (metric nll), or "
                               "accuracy >= MAP's - tolerance (metric accuracy)", check="positive")
    tfb_upper: float = opt("eval_method=tfb: the bisection's first upper bound of the scale (doubled while feasible)",
                           check="positive")
    tfb_search_steps: int = opt("eval_method=tfb: bisection halvings after the bracket is found (TFB: 5)", check="positive_int")
    table_methods: list = opt("the closing table after training: any of map, dropout, swa, swag, laplace, ll-laplace, "
                              "ivon, blob, tfb, temperature (those the run has the files for)")


TABLE_METHODS = {   # evaluation.table_methods entries: (eval_method, overrides, the folder the run needs)
    "map": ("base", {}, "base_model"), "temperature": ("temperature", {}, "base_model"),
    "dropout": ("dropout", {}, "base_model"), "swa": ("swag", {"swag_sample_scale": 0.0, "num_samples": 1}, "swag_model"),
    "swag": ("swag", {}, "swag_model"), "laplace": ("laplace", {"laplace_subset": "all"}, "base_model"),
    "ll-laplace": ("laplace", {"laplace_subset": "head"}, "base_model"), "ivon": ("ivon", {}, "ivon_model"),
    "blob": ("blob", {}, "blob_model"), "tfb": ("tfb", {}, "base_model"),
}



@dataclass
class DataOverrides:
    """conf/eval.yaml's `experiment` keys: what an evaluation changes of the evaluated run's data (null = the run's)."""
    task: str | None = opt("in-distribution task (null: the run's own)", optional=True)
    subtask: str | None = opt("its subtask", optional=True)
    ood_task: str | None = opt("OOD task (null: the run's own; empty: none)", optional=True)
    ood_subtask: str | None = opt("its subtask", optional=True)
    ood_tasks: list | None = opt("several OOD tasks in one evaluation, each `task` or `task/subtask`, instead of "
                                 "ood_task (the in-distribution rows are scored once; each split's numbers are "
                                 "those of its own evaluation)", optional=True)
    ood_batch_size: int | None = opt("OOD batch size", check="positive_int", optional=True)
    ood_split: str = opt("the rows of each OOD task: its test split, or all its labelled rows (official test, "
                         "validation, then train: a model trained on another task saw none of them)",
                         choices=("test", "all"), default="test")
    eval_batch_size: int | None = opt("in-distribution batch size", check="positive_int", optional=True)
    offline: bool | None = opt("read the offline layout (no network)", optional=True)
    data_path: str | None = opt("offline datasets", optional=True)
    model_path: str | None = opt("offline models", optional=True)
    max_eval_samples: int | None = opt("truncate the evaluated splits (0 = all)", check="nonneg_int", optional=True)
    batch_size: int | None = opt("accepted for the original's evaluation scripts; unused", optional=True)


@dataclass
class EvalConfig:
    evaluation: EvaluationConfig
    experiment: DataOverrides


def parse_eval(cfg: DictConfig) -> EvalConfig:
    """The composed evaluation config (conf/eval.yaml) -> typed, checked `EvalConfig`."""
    data = _container(cfg)
    evaluation = EvalConfig(evaluation=_build(EvaluationConfig, data.get("evaluation", {}), "evaluation"),
                    experiment=_build(DataOverrides, data.get("experiment", {}), "experiment"))
    validate_eval(evaluation)
    return evaluation


def evaluation_config(overrides: list[str] | None = None) -> EvaluationConfig:
    """The evaluation settings of conf/eval.yaml with `overrides` (no run needed: for library use and benchmarks)."""
    return _build(EvaluationConfig, _container(compose("eval", overrides))["evaluation"], "evaluation")


def validate_eval(cfg: EvalConfig) -> None:
    from swag_lora.predict.methods import METHODS
    evaluation, overrides = cfg.evaluation, cfg.experiment
    if evaluation.eval_method not in METHODS:
        _fail(f"unknown evaluation.eval_method {evaluation.eval_method!r}; allowed: {', '.join(METHODS)}")
    if METHODS[evaluation.eval_method].members == "several":
        if len(evaluation.eval_model_paths) < 2:
            _fail(f"evaluation.eval_method={evaluation.eval_method} needs at least 2 runs in evaluation.eval_model_paths "
                  f"(got {len(evaluation.eval_model_paths)})")
        paths = list(evaluation.eval_model_paths)
    else:
        if not evaluation.eval_model_path:
            _fail("evaluation.eval_model_path is empty; allowed: a run directory (holding config.yaml)")
        paths = [evaluation.eval_model_path]
    for p in paths:
        if find_run_dir(p) is None:
            _fail(f"evaluation model path {p!r} is not a swag-lora run directory (no config.yaml in it or above it)")
    if overrides.task:
        check_task(overrides, "task", "subtask")
    if overrides.ood_task:
        check_task(overrides, "ood_task", "ood_subtask")
    if overrides.ood_tasks is not None:
        if overrides.ood_task is not None:
            _fail(f"experiment.ood_tasks={list(overrides.ood_tasks)} and experiment.ood_task={overrides.ood_task!r} "
                  f"both given; allowed: one of them")
        for task, subtask in ood_task_list(overrides):   # named as the list entry, not as experiment.ood_task
            entry = f"{task}/{subtask}" if subtask else task
            check_task(DataOverrides(ood_task=task, ood_subtask=subtask), "ood_task", "ood_subtask",
                       names=("task", "subtask"), prefix=f"experiment.ood_tasks entry {entry!r}: ")
    if evaluation.only_ood and (overrides.ood_task == "" or overrides.ood_tasks == []):
        _fail("evaluation.only_ood=true but experiment.ood_task is empty")


def ood_task_list(overrides: DataOverrides) -> list[tuple[str, str]]:
    """`experiment.ood_tasks` entries (`task` or `task/subtask`) as (task, subtask) pairs."""
    pairs = []
    for entry in overrides.ood_tasks:
        if not isinstance(entry, str) or entry.count("/") > 1 or not entry.split("/")[0]:
            _fail(f"experiment.ood_tasks entry {entry!r}; allowed: a task name or task/subtask, e.g. mmlu/chemistry")
        task, _, subtask = entry.partition("/")
        pairs.append((task, subtask))
    return pairs


@dataclass
class RunConfig:
    model: ModelConfig
    experiment: ExperimentConfig
    method: MethodConfig
    evaluation: EvaluationConfig
    raw: DictConfig = field(repr=False, compare=False)   # the composed config, as written to config.yaml

    @property
    def swag(self) -> SwagConfig | None:
        return self.method if isinstance(self.method, SwagConfig) else None

    @property
    def ivon(self) -> IvonConfig | None:
        return self.method if isinstance(self.method, IvonConfig) else None


# ---------------------------------------------------------------- conversion and checks
def _fail(msg: str) -> typing.NoReturn:
    raise ConfigError(msg)


CHECKS = {
    "positive": (lambda v: v > 0, "must be a positive number"),
    "positive_int": (lambda v: v > 0, "must be a positive integer"),
    "nonneg": (lambda v: v >= 0, "must be >= 0"),
    "nonneg_int": (lambda v: v >= 0, "must be >= 0"),
    "fraction": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "fraction0": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}


def _convert(value: Any, typ: Any, key: str) -> Any:
    """Coerce a composed value to the declared type (ints stay ints, '1e-4' becomes a float, ...)."""
    if value is None:
        return None
    origin = typing.get_origin(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        _fail(f"{key}={value!r} must be true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            _fail(f"{key}={value!r} must be an integer")
        try:
            f = float(value)
        except ValueError:
            _fail(f"{key}={value!r} must be an integer")
        if f != int(f):
            _fail(f"{key}={value!r} must be an integer")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            _fail(f"{key}={value!r} must be a number")
    if typ is str:
        return "" if value == "" else str(value)
    if typ is list:
        return list(value) if isinstance(value, (list, tuple)) else _fail(f"{key}={value!r} must be a list")
    if typ is dict:
        return dict(value) if isinstance(value, dict) else _fail(f"{key}={value!r} must be a mapping")
    return value


def _build(cls, data: dict, group: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        _fail(f"unknown key {group}.{unknown[0]}; allowed: {', '.join(sorted(names))}")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{group}.{f.name}"
        if f.name not in data:
            if f.metadata.get("optional"):
                continue
            _fail(f"missing key {key}")
        v = _convert(data[f.name], hints[f.name], key)
        choices, check = f.metadata.get("choices"), f.metadata.get("check")
        if choices is not None and v not in choices:
            _fail(f"unknown {key} {v!r}; allowed: {', '.join(map(str, choices))}")
        if check and v is not None and not CHECKS[check][0](v):
            _fail(f"{key}={data[f.name]!r} {CHECKS[check][1]}")
        values[f.name] = v
    return cls(**values)


def _container(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # noqa: BLE001 -- an unresolvable interpolation
        _fail(f"the configuration does not resolve: {str(e).splitlines()[0]}")


# (group, the original's key, this project's key): config.yaml interpolates ours from the original's
ALIASES = (("experiment", "scheduler", "lr_scheduler"), ("experiment", "val_split_size", "val_fraction"),
           ("experiment", "eval_upon_save", "evaluate_after_training"), ("model", "target_modules", "lora_target_modules"),
           ("model", "modules_to_save", "head_modules"))


def sync_aliases(cfg: DictConfig) -> None:
    """Where this project's spelling was set (it no longer interpolates the original's), copy it to the original's
    key, so both read the same and config.yaml records one value.  (Setting both differently is refused earlier,
    on the command line, by `cli.check_group_overrides`.)"""
    from omegaconf import open_dict
    for group, theirs, ours in ALIASES:
        node = cfg.get(group)
        if node is None or ours not in node:
            continue
        raw = OmegaConf.to_container(node, resolve=False).get(ours)
        if not (isinstance(raw, str) and raw.startswith("${")):
            with open_dict(node):
                node[theirs] = node[ours]
                node[ours] = f"${{{group}.{theirs}}}"


def parse_run(cfg: DictConfig) -> RunConfig:
    """The composed training config -> typed, checked `RunConfig` (resolves `auto` values)."""
    sync_aliases(cfg)
    data = _container(cfg)
    method = data.get("method", {})
    name = method.get("method_name")
    if name not in METHOD_CONFIGS:
        _fail(f"unknown method {name!r}; allowed: {', '.join(METHOD_CONFIGS)}")
    run = RunConfig(model=_build(ModelConfig, data.get("model", {}), "model"),
                    experiment=_build(ExperimentConfig, data.get("experiment", {}), "experiment"),
                    method=_build(METHOD_CONFIGS[name], method, "method"),
                    evaluation=_build(EvaluationConfig, data.get("evaluation", {}), "evaluation"), raw=cfg)
    resolve_auto(run.experiment)
    return run


def resolve_auto(exp: ExperimentConfig) -> None:
    """`experiment.ood_task=auto`: the demo task's shifted split for the demo task, no OOD task otherwise."""
    if exp.ood_task == "auto":
        demo = exp.task == "demo" and exp.subtask == ""
        exp.ood_task, exp.ood_subtask = ("demo", "shifted") if demo else ("", "")


# ---------------------------------------------------------------- checks across fields
NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_outputs(exp) -> None:
    """experiment.exp_name is a name, not a path (overwrite=true deletes the run directory); save_folder can be
    written."""
    if exp.exp_name and (not NAME_OK.fullmatch(exp.exp_name) or exp.exp_name in (".", "..")):
        _fail(f"experiment.exp_name={exp.exp_name!r} must be a name (letters, digits, . _ + = -), not a path; the run "
              f"directory is <save_folder>/<task>/<model>/<method>/<exp_name>_seed<N>_<fingerprint>")
    folder = Path(exp.save_folder)
    if folder.exists() and not folder.is_dir():
        _fail(f"experiment.save_folder={exp.save_folder!r} is a file; allowed: a folder")
    probe = folder if folder.exists() else next((p for p in folder.resolve().parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK):
        _fail(f"experiment.save_folder={exp.save_folder!r} cannot be written ({probe} is read-only); allowed: a "
              f"writable folder")


def go_offline() -> None:
    """experiment.offline=true: nothing may touch the network (the libraries read these at call time)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"


def check_task(exp, task_key: str, subtask_key: str, names: tuple[str, str] | None = None, prefix: str = "") -> None:
    """`exp.<task_key>` / `exp.<subtask_key>` name a known classification task; errors name them as
    `experiment.<key>`, or as `names` after `prefix` (e.g. an entry of a list key)."""
    task_name, subtask = getattr(exp, task_key), getattr(exp, subtask_key) or ""
    task_label, subtask_label = names or (f"experiment.{task_key}", f"experiment.{subtask_key}")
    if task_name not in TASK_NAMES:
        _fail(f"{prefix}unknown {task_label} {task_name!r}; allowed: {', '.join(TASK_NAMES)}")
    task = get_task(task_name)
    try:
        check_subtask(task, subtask, subtask_label)
    except ValueError as e:
        _fail(f"{prefix}{e}")
    if task.regression:
        _fail(f"{prefix}{task_label}={task.name!r} is a regression task (similarity scores 0-5); swag-lora's "
              f"training and metrics are for classification; allowed: any other task")


def check_model(m: ModelConfig) -> None:
    import importlib.util
    if m.quantization != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            _fail(f"model.quantization={m.quantization} needs bitsandbytes: pip install -r requirements-dev.txt "
                  f"(bitsandbytes==0.50.2; runs on the CPU and on CUDA)")
        if m.tiny:
            _fail(f"model.quantization={m.quantization} quantizes weights loaded from a folder or the hub; "
                  f"model {m.name!r} is built from a config (save it with save_pretrained and set model.model_name)")
    if m.package and importlib.util.find_spec(m.package) is None:
        _fail(f"model {m.name!r} loads from the package {m.package!r}, which is not installed: pip install -r requirements.txt")


NO_LOGLIK_HEAD = ("choice log-likelihoods go through the LM's own output layer (frozen, tied to the embeddings), so "
                  "there is no trained head for a last-layer posterior; allowed: posteriors over LoRA "
                  "(method.modules_to_swag=grad_only, evaluation.laplace_subset=all)")


def validate_train(run: RunConfig) -> None:
    """Checks across fields for a training run (the per-field ones ran in `parse_run`)."""
    exp, m = run.experiment, run.method
    check_model(run.model)
    check_task(exp, "task", "subtask")
    if exp.ood_task:
        check_task(exp, "ood_task", "ood_subtask")
        if exp.ood_task == exp.task and exp.ood_subtask == exp.subtask:
            _fail(f"experiment.ood_task={exp.ood_task!r} with ood_subtask={exp.ood_subtask!r} is the in-distribution task "
                  f"itself; choose another task or subtask")
    if exp.choice_scoring != "letter":
        if run.model.family != "causal":
            _fail(f"experiment.choice_scoring={exp.choice_scoring} scores a causal LM's choice tokens; model "
                  f"{run.model.name!r} is an encoder; allowed: letter")
        if isinstance(m, SwagConfig) and m.modules_to_swag == "head":
            _fail(f"method.modules_to_swag=head with experiment.choice_scoring={exp.choice_scoring}: {NO_LOGLIK_HEAD}")
        if "ll-laplace" in run.evaluation.table_methods:
            _fail(f"evaluation.table_methods entry 'll-laplace' with experiment.choice_scoring={exp.choice_scoring}: "
                  f"{NO_LOGLIK_HEAD}")
    if exp.scheduler == "cosine_hard_restarts" and not float(exp.num_lr_cycles).is_integer():
        _fail(f"experiment.num_lr_cycles={exp.num_lr_cycles} must be an integer for experiment.scheduler=cosine_hard_restarts")
    if exp.batch_size % exp.gradient_accumulation_steps:
        _fail(f"experiment.batch_size={exp.batch_size} is the batch per optimizer step and must be a multiple of "
              f"experiment.gradient_accumulation_steps={exp.gradient_accumulation_steps} (loader batch = their quotient)")
    if isinstance(m, SwagConfig):
        if m.swag_start >= exp.num_epochs:
            _fail(f"method.swag_start={m.swag_start} must be in [0, experiment.num_epochs={exp.num_epochs}) "
                  f"so that at least one epoch collects")
        if m.swag_cov_mat and m.swag_max_num_models < 2:
            _fail(f"method.swag_max_num_models={m.swag_max_num_models} must be >= 2 with method.swag_cov_mat=true "
                  f"(the low-rank covariance needs two deviation columns); or set swag_cov_mat=false")
        if m.swag_start_with_lowest_loss and not m.swag_save_base_model:
            _fail("method.swag_start_with_lowest_loss=true reloads base_model/, which method.swag_save_base_model=false "
                  "does not keep; set one of them the other way")
    unknown = [name for name in run.evaluation.table_methods if name not in TABLE_METHODS]
    if unknown:
        _fail(f"unknown evaluation.table_methods entry {unknown[0]!r}; allowed: {', '.join(TABLE_METHODS)}")
    if isinstance(m, BlobConfig):
        if exp.gradient_accumulation_steps > 1:
            _fail(f"method=blob with experiment.gradient_accumulation_steps={exp.gradient_accumulation_steps}: its KL step "
                  f"follows each optimizer step of one batch; allowed: 1 (use a larger batch_size)")
        if exp.max_grad_norm > 0:
            _fail(f"method=blob with experiment.max_grad_norm={exp.max_grad_norm}: BLoB clips nothing; allowed: 0")
    if isinstance(m, IvonConfig):
        if exp.gradient_accumulation_steps > 1:
            _fail(f"method=ivon with experiment.gradient_accumulation_steps={exp.gradient_accumulation_steps}: IVON takes "
                  f"its Hessian estimate from each step's own weight sample; allowed: 1 (use a larger batch_size)")
        if exp.max_grad_norm > 0:
            _fail(f"method=ivon with experiment.max_grad_norm={exp.max_grad_norm}: IVON reads the gradients before "
                  f"clipping could act; allowed: 0")
        if exp.mixed_precision == "fp16":
            _fail("method=ivon with experiment.mixed_precision=fp16 (a loss scaler) is untested; allowed: no, bf16")
    check_offline(run, [(exp.task, exp.subtask), (exp.ood_task, exp.ood_subtask)])
    check_outputs(exp)


# ---------------------------------------------------------------- run directories
# keys that never change what is trained: paths, logging, resume policy, the closing evaluation
NOT_TRAINING = ("experiment.resume", "experiment.overwrite", "experiment.wandb_mode", "experiment.wandb_path",
                "experiment.wandb_group", "experiment.wandb_project", "experiment.log_every_steps",
                "experiment.checkpoint_every_steps", "experiment.data_path", "experiment.model_path", "experiment.offline",
                "experiment.save_folder", "experiment.save_path", "experiment.exp_name", "experiment.eval_upon_save",
                "experiment.evaluate_after_training", "experiment.ood_task", "experiment.ood_subtask",
                "experiment.ood_batch_size", "evaluation", "hydra")


def training_settings(cfg: DictConfig | dict) -> dict:
    """Every setting that can change what a run trains, flattened to `group.key` -> value."""
    data = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)

    def flat(c, prefix=""):
        out = {}
        for k, v in c.items():
            key = f"{prefix}{k}"
            if key in NOT_TRAINING:
                continue
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out
    return flat(data)


def default_exp_name(run: RunConfig) -> str:
    exp, m = run.experiment, run.method
    name = f"lr{exp.learning_rate:g}_bs{exp.batch_size}_ep{exp.num_epochs}_r{exp.lora_r}"
    if isinstance(m, SwagConfig):
        name += (f"_swag{m.swag_start}-{m.swag_learning_rate:g}-{m.swag_anneal_strategy}-k{m.swag_max_num_models}"
                 + (f"-c{m.swag_c_steps}st" if m.swag_c_steps else "") + ("-head" if m.modules_to_swag == "head" else ""))
    if isinstance(m, IvonConfig):
        name += (f"_ivon-lr{m.learning_rate(exp):g}-h{m.ivon_hess_init:g}"
                 + (f"-ess{m.ivon_ess:g}" if m.ivon_ess else ""))
    if isinstance(m, BlobConfig):
        name += f"_blob-s{m.blob_init_std:g}-p{m.blob_prior_std:g}-kl{m.blob_kl_lr:g}"
    return name


def task_dir_name(task: str, subtask: str) -> str:
    """`<task>` or `<task>_<subtask>`: the folder of a task in run directories and in the offline data layout."""
    return f"{task}_{subtask}" if subtask else task


def run_dir(run: RunConfig) -> Path:
    """`<save_folder>/<task>[_<subtask>]/<model>/<method>/<exp_name>_seed<seed>_<fingerprint>/` -- the same on every
    rank.  The fingerprint hashes every training setting but the seed, so two runs that differ in any of them
    never share a directory (and `overwrite` can only replace the same run), while seeds differ only in `seed<N>`."""
    exp = run.experiment
    settings = {k: v for k, v in training_settings(run.raw).items() if k != "experiment.seed"}
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"{exp.exp_name or default_exp_name(run)}_seed{exp.seed}_{fingerprint}"
    return (Path(exp.save_folder) / task_dir_name(exp.task, exp.subtask) / run.model.name / run.method.method_name
            / name)


def find_run_dir(path: str | os.PathLike) -> Path | None:
    """The run directory at or above `path` (the folder holding config.yaml)."""
    p = Path(path).resolve()
    for cand in (p, p.parent):
        if (cand / "config.yaml").is_file():
            return cand
    return None


def compose(config_name: str = "config", overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/<config_name>.yaml (inside a running Hydra app too)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=overrides or [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


def load_run_config(run_directory: Path) -> RunConfig:
    """A run's config.yaml -> RunConfig.  Keys added to experiment / method / evaluation since the run was trained
    take today's defaults for its method; the model block is the run's own."""
    saved = OmegaConf.load(Path(run_directory) / "config.yaml")
    base = compose("config", [f"method={saved.method.method_name}"])
    OmegaConf.set_struct(base, False)
    base.model = {}
    return parse_run(OmegaConf.merge(base, saved))


# ---------------------------------------------------------------- documentation
CONF = Path(__file__).resolve().parent / "conf"


def markdown_table() -> str:
    """docs/configuration.md's table, generated from the dataclasses above and the composed defaults (experiment and
    evaluation keys: the default config; method keys: method=swag, then each other method's own keys under its
    method=<name>; model keys: per model)."""
    default = OmegaConf.to_container(compose("config"), resolve=False)
    swag = OmegaConf.to_container(compose("config", ["method=swag"]), resolve=False)
    own = {name: ([f for f in dataclasses.fields(cls) if f.name not in {g.name for g in dataclasses.fields(MethodConfig)}],
                  OmegaConf.to_container(compose("config", [f"method={name}"]), resolve=False)["method"])
           for name, cls in METHOD_CONFIGS.items() if name not in ("swag", "map")}

    def fmt(v):
        return "`null`" if v is None else '`""`' if v == "" else f"`{json.dumps(v) if isinstance(v, (list, dict)) else v}`"
    checks = {"positive": "> 0", "positive_int": "integer > 0", "nonneg": ">= 0", "nonneg_int": "integer >= 0",
              "fraction": "(0, 1)", "fraction0": "[0, 1)"}
    rows = ["| key | meaning | allowed | default |", "|---|---|---|---|"]
    for group, cls, values in (("experiment", ExperimentConfig, default["experiment"]), ("method", SwagConfig, swag["method"]),
                               *(("method", fields, values) for fields, values in own.values()),
                               ("model", ModelConfig, None), ("evaluation", EvaluationConfig, default["evaluation"])):
        for f in cls if isinstance(cls, list) else dataclasses.fields(cls):
            meta = f.metadata
            if meta.get("help", "").startswith("this project's name of"):
                continue
            key = f"`{group}.{f.name}`" + (f" (= `{group}.{meta['alias']}`)" if meta.get("alias") else "")
            allowed = ", ".join(f"`{c}`" for c in meta["choices"]) if meta.get("choices") else checks.get(meta.get("check"), "")
            rows.append(f"| {key} | {meta['help']} | {allowed} | {'per model' if values is None else fmt(values.get(f.name))} |")
    demo = {k: v for k, v in default["method"].items() if swag["method"].get(k) != v}
    rows += ["", "`method=swag_demo` (the default) differs from `method=swag` in: "
             + ", ".join(f"`{k}={v}`" for k, v in demo.items() if k != "method_name") + "."]
    return "\n".join(rows)


def write_docs(path: str | os.PathLike) -> None:
    """Replace the generated table between the config-table markers of `path` (docs/configuration.md)."""
    import re
    path = Path(path)
    text = path.read_text()
    head, rest = re.split(r"(?<=-->\n)", text.split("<!-- config-table", 1)[1], maxsplit=1)
    tail = rest.split("<!-- /config-table -->", 1)[1]
    path.write_text(text.split("<!-- config-table", 1)[0] + "<!-- config-table" + head + markdown_table().strip()
                    + "\n<!-- /config-table -->" + tail)


if __name__ == "__main__":      # python -m swag_lora.config [--write docs/configuration.md]
    if sys.argv[1:2] == ["--write"]:
        write_docs(sys.argv[2] if len(sys.argv) > 2 else CONF.parents[1] / "docs" / "configuration.md")
    else:
        print(markdown_table())
    sys.exit(0)
