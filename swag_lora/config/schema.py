"""The declarations: one dataclass per config group, each field with its type, help, allowed values and checks (`opt`),
and the dataclass of each training method (`METHOD_CONFIGS`).  Nothing here parses or loads anything."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from swag_lora.data.tasks import TASK_NAMES
from swag_lora.errors import ConfigError


def opt(help: str, *, choices: tuple | None = None, check: str | None = None, alias: str | None = None,
        optional: bool = False, default: Any = dataclasses.MISSING):
    """A config field: `help` (docs/configuration.md), `choices` (allowed values), `check` (positive, positive_int, fraction,
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
NO_LOGLIK_HEAD = ("choice log-likelihoods go through the LM's own output layer (frozen, tied to the embeddings), so "
                  "there is no trained head for a last-layer posterior; allowed: posteriors over LoRA "
                  "(method.modules_to_swag=grad_only, evaluation.laplace_subset=all)")


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
    task: str = opt("training task (docs/tasks.md)", choices=TASK_NAMES)
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


def _fail(msg: str):
    raise ConfigError(msg)


@dataclass
class MethodConfig:
    method_name: str = opt("swag (the original's), swag_demo (the default: tuned for the 6-epoch demo), map, ivon, blob")

    def check(self, exp: ExperimentConfig) -> None:
        """This method's combinations with the experiment that cannot run, each refused in one line."""

    def name_suffix(self, exp: ExperimentConfig) -> str:
        """What the readable run name adds for this method (the fingerprint holds every setting anyway)."""
        return ""


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

    def check(self, exp):
        if self.modules_to_swag == "head" and exp.choice_scoring != "letter":
            _fail(f"method.modules_to_swag=head with experiment.choice_scoring={exp.choice_scoring}: {NO_LOGLIK_HEAD}")
        if self.swag_start >= exp.num_epochs:
            _fail(f"method.swag_start={self.swag_start} must be in [0, experiment.num_epochs={exp.num_epochs}) "
                  f"so that at least one epoch collects")
        if self.swag_cov_mat and self.swag_max_num_models < 2:
            _fail(f"method.swag_max_num_models={self.swag_max_num_models} must be >= 2 with method.swag_cov_mat=true "
                  f"(the low-rank covariance needs two deviation columns); or set swag_cov_mat=false")
        if self.swag_start_with_lowest_loss and not self.swag_save_base_model:
            _fail("method.swag_start_with_lowest_loss=true reloads base_model/, which method.swag_save_base_model=false "
                  "does not keep; set one of them the other way")

    def name_suffix(self, exp):
        return (f"_swag{self.swag_start}-{self.swag_learning_rate:g}-{self.swag_anneal_strategy}-k{self.swag_max_num_models}"
                + (f"-c{self.swag_c_steps}st" if self.swag_c_steps else "") + ("-head" if self.modules_to_swag == "head" else ""))


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

    def check(self, exp):
        if exp.gradient_accumulation_steps > 1:
            _fail(f"method=ivon with experiment.gradient_accumulation_steps={exp.gradient_accumulation_steps}: IVON takes "
                  f"its Hessian estimate from each step's own weight sample; allowed: 1 (use a larger batch_size)")
        if exp.max_grad_norm > 0:
            _fail(f"method=ivon with experiment.max_grad_norm={exp.max_grad_norm}: IVON reads the gradients before "
                  f"clipping could act; allowed: 0")
        if exp.mixed_precision == "fp16":
            _fail("method=ivon with experiment.mixed_precision=fp16 (a loss scaler) is untested; allowed: no, bf16")

    def name_suffix(self, exp):
        return f"_ivon-lr{self.learning_rate(exp):g}-h{self.ivon_hess_init:g}" + (f"-ess{self.ivon_ess:g}" if self.ivon_ess else "")


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

    def check(self, exp):
        if exp.gradient_accumulation_steps > 1:
            _fail(f"method=blob with experiment.gradient_accumulation_steps={exp.gradient_accumulation_steps}: its KL step "
                  f"follows each optimizer step of one batch; allowed: 1 (use a larger batch_size)")
        if exp.max_grad_norm > 0:
            _fail(f"method=blob with experiment.max_grad_norm={exp.max_grad_norm}: BLoB clips nothing; allowed: 0")

    def name_suffix(self, exp):
        return f"_blob-s{self.blob_init_std:g}-p{self.blob_prior_std:g}-kl{self.blob_kl_lr:g}"


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {"swag": SwagConfig, "map": MapConfig, "ivon": IvonConfig,
                                                 "blob": BlobConfig}


@dataclass
class EvaluationConfig:
    eval_method: str = opt("the evaluation method (docs/methods.md)")
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


