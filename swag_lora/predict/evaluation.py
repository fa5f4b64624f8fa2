"""One evaluation: `resolve_plan` reads the evaluation's own config (conf/eval.yaml) and the evaluated runs'
config.yaml into a `Plan`; `evaluate` loads the model once, scores the in-distribution and OOD splits with the
method's draws, averages them (the Bayesian model average; optionally temperature-scaled) and writes one JSON +
npz + PNG per split.  Evaluation reads only run directories, so a run can be evaluated anywhere, later."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from swag_lora import metrics
from swag_lora.config import (ConfigError, DataOverrides, EvalConfig, EvaluationConfig, RunConfig, check_task,
                              find_run_dir, load_run_config, ood_task_list)
from swag_lora.data import DataSource, get_task
from swag_lora.data.tasks import label_alignment
from swag_lora.data.encode import Encoding, labels_of
from swag_lora.model import load_model, swag_tensors
from swag_lora.predict.methods import METHODS, TABLE_METHODS, Batches, Method, make_method
from swag_lora.predict.temperature import apply_temperature, fit_temperature
from swag_lora.errors import CorruptFile
from swag_lora.sources import check_model_folder, go_offline, model_source
from swag_lora.report import write_evaluation
from swag_lora.report.records import record_name
from swag_lora.report.stats import majority_rate


@dataclass
class LoadedRun:
    """A run directory with its model built (base + LoRA + head; adapters are loaded by the method)."""
    directory: Path
    config: RunConfig
    tokenizer: object
    model: object
    named: dict = field(default_factory=dict)   # the tensors a posterior covers


def load_run(directory: Path, device=None, offline: bool | None = None, model_path: str | None = None,
             config: RunConfig | None = None) -> LoadedRun:
    """Rebuild the run's model from its config.yaml (or its `config`, already read).  `offline` / `model_path`
    override the run's own settings (a run evaluated on another machine)."""
    config = config or load_run_config(directory)
    exp = config.experiment
    tokenizer, model = load_model(config.model, exp, get_task(exp.task), exp.offline if offline is None else offline,
                                  model_path or exp.model_path)
    if device is None:   # where Accelerate would put it: honours ACCELERATE_USE_CPU, picks CUDA/MPS/XPU/NPU
        from accelerate import PartialState
        device = PartialState().device
    if config.model.quantization == "none":   # bitsandbytes places quantized weights itself
        model.to(device)
    named = swag_tensors(model, config.swag.modules_to_swag) if config.swag else {}
    return LoadedRun(Path(directory), config, tokenizer, model, named)


@dataclass
class Plan:
    """What one evaluation does, resolved from its config and the runs' configs."""
    method: Method
    paths: list[Path]
    configs: list[RunConfig]
    targets: list[tuple[str, str, str, str]]    # (distribution, task, subtask, split)
    id_task: tuple[str, str]                    # (task, subtask) in distribution: where a temperature is fitted
    batch_size: dict[str, int]                  # per distribution
    offline: bool
    data_path: str
    model_path: str | None
    max_eval_samples: int
    temperature_scaling: bool
    output_dir: Path
    ece_bins: int
    overwrite: bool = False
    ood_split: str = "test"

    def identity(self) -> dict:
        """Every setting that changes this evaluation's numbers: kept in each record as `evaluation_key`, so that an
        evaluation never silently replaces a different one under the same file name."""
        m = self.method
        return {"method": m.key, "settings": m.settings(), "seed": m.evaluation.seed,
                "temperature_scaling": self.temperature_scaling, "max_eval_samples": self.max_eval_samples,
                "offline": self.offline, "data_path": str(Path(self.data_path).resolve()) if self.offline else None,
                "ood_split": self.ood_split, "runs": [str(p) for p in self.paths]}

    def record_names(self) -> list[str]:
        """The file names (without suffix) the evaluation writes, one per target split."""
        label = self.method.label()
        return [record_name(label, self.method.name_parts(), len(self.paths), self.temperature_scaling
                            and self.method.key != "temperature", dist, task, subtask, split)
                for dist, task, subtask, split in self.targets]

    def check_outputs(self) -> None:
        """Before any model loads: the output folder can be written, and no existing record there is of another
        evaluation (other settings, rows, data, seed or runs) unless evaluation.overwrite=true."""
        out = self.output_dir
        if out.exists() and not out.is_dir():
            raise ConfigError(f"evaluation output {out} is a file; allowed: a folder (evaluation.output_dir)")
        probe = out if out.exists() else next(p for p in out.parents if p.exists())
        if not os.access(probe, os.W_OK):
            raise ConfigError(f"evaluation output {out} cannot be written ({probe} is read-only); allowed: a writable "
                              f"evaluation.output_dir")
        if self.overwrite:
            return
        key = json.loads(json.dumps(self.identity(), default=str))
        for name in self.record_names():
            path = out / f"{name}.json"
            if not path.is_file():
                continue
            try:
                old = json.loads(path.read_text()).get("evaluation_key")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                old = None
            if old != key:
                diff = next((f"{k}: {old.get(k)!r} there, {key[k]!r} now" for k in key if old and old.get(k) != key[k]),
                            "it was written without an evaluation key (an earlier version)")
                raise ConfigError(f"{path} holds another evaluation ({diff}); allowed: evaluation.overwrite=true, or "
                                  f"another evaluation.output_dir")


def validate_eval(cfg: EvalConfig) -> None:
    """The evaluation's checks that need the method registry (the per-field ones ran in parse_eval)."""
    evaluation, overrides = cfg.evaluation, cfg.experiment
    if evaluation.eval_method not in METHODS:
        fail(f"unknown evaluation.eval_method {evaluation.eval_method!r}; allowed: {', '.join(METHODS)}")
    if METHODS[evaluation.eval_method].members == "several":
        if len(evaluation.eval_model_paths) < 2:
            fail(f"evaluation.eval_method={evaluation.eval_method} needs at least 2 runs in evaluation.eval_model_paths "
                  f"(got {len(evaluation.eval_model_paths)})")
        paths = list(evaluation.eval_model_paths)
    else:
        if not evaluation.eval_model_path:
            fail("evaluation.eval_model_path is empty; allowed: a run directory (holding config.yaml)")
        paths = [evaluation.eval_model_path]
    for p in paths:
        if find_run_dir(p) is None:
            fail(f"evaluation model path {p!r} is not a swag-lora run directory (no config.yaml in it or above it)")
    if overrides.task:
        check_task(overrides, "task", "subtask")
    if overrides.ood_task:
        check_task(overrides, "ood_task", "ood_subtask")
    if overrides.ood_tasks is not None:
        if overrides.ood_task is not None:
            fail(f"experiment.ood_tasks={list(overrides.ood_tasks)} and experiment.ood_task={overrides.ood_task!r} "
                  f"both given; allowed: one of them")
        for task, subtask in ood_task_list(overrides):   # named as the list entry, not as experiment.ood_task
            entry = f"{task}/{subtask}" if subtask else task
            check_task(DataOverrides(ood_task=task, ood_subtask=subtask), "ood_task", "ood_subtask",
                       names=("task", "subtask"), prefix=f"experiment.ood_tasks entry {entry!r}: ")
    if evaluation.only_ood and (overrides.ood_task == "" or overrides.ood_tasks == []):
        fail("evaluation.only_ood=true but experiment.ood_task is empty")


def fail(msg: str):
    raise ConfigError(msg)


def resolve_plan(cfg: EvalConfig) -> Plan:
    """The evaluation's settings where given, the (first) run's otherwise; every check that needs the method registry
    or the runs' own configs (each run's config.yaml is read here, once)."""
    validate_eval(cfg)
    evaluation, overrides = cfg.evaluation, cfg.experiment
    many = METHODS[evaluation.eval_method].members == "several"
    paths = [find_run_dir(p) for p in (evaluation.eval_model_paths if many else [evaluation.eval_model_path])]
    if len(set(paths)) != len(paths):
        twice = next(p for p in paths if paths.count(p) > 1)
        raise ConfigError(f"evaluation.eval_model_paths names {twice} twice: an ensemble of one run is not an ensemble; "
                          f"allowed: distinct run directories")
    configs = [load_run_config(p) for p in paths]
    exp = configs[0].experiment
    if evaluation.swag_sample_scale is None:       # the run's method.swag_sample_scale (member 0's for MultiSWAG)
        evaluation = replace(evaluation, swag_sample_scale=configs[0].swag.swag_sample_scale if configs[0].swag else 0.5)
    method = make_method(evaluation)
    method.check(configs, paths)
    offline = overrides.offline if overrides.offline is not None else exp.offline
    if not configs[0].model.tiny:           # the weights the evaluation will load are of the run's family
        src = Path(model_source(configs[0].model, offline, overrides.model_path or exp.model_path))
        if src.is_dir():
            check_model_folder(configs[0].model, src)
        elif offline:
            raise ConfigError(f"the model folder {src} does not exist (experiment.model_path); write it with "
                              f"download_models4cluster.py, or set experiment.model_path")
    task, subtask = (overrides.task, overrides.subtask or "") if overrides.task is not None else (exp.task, exp.subtask)
    if overrides.ood_tasks is not None:
        oods = ood_task_list(overrides)
    else:
        ood, ood_sub = (overrides.ood_task, overrides.ood_subtask or "") if overrides.ood_task is not None else (exp.ood_task, exp.ood_subtask)
        oods = [(ood, ood_sub)] if ood else []
    for t, st in oods:
        if (t, st or "") == (task, subtask or ""):
            raise ConfigError(f"OOD task {t}{'/' + st if st else ''} is the in-distribution task itself; allowed: another "
                              f"task or subtask (experiment.ood_task / ood_tasks)")
    if evaluation.only_ood and not oods:
        raise ConfigError("evaluation.only_ood=true but neither the evaluation nor the run names an OOD task; "
                          "set experiment.ood_task")
    temperature = evaluation.temperature_scaling or evaluation.eval_method == "temperature"
    if temperature and evaluation.split == "validation" and not evaluation.only_ood:
        raise ConfigError("temperature scaling with evaluation.split=validation would fit the temperature on the rows it "
                          "scores; allowed: evaluation.split=test, or evaluation.temperature_scaling=false")
    targets = ([] if evaluation.only_ood else [("id", task, subtask, evaluation.split)]) + [("ood", t, st, overrides.ood_split) for t, st in oods]
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return Plan(method=method, paths=paths, configs=configs, targets=targets, id_task=(task, subtask),
                batch_size={"id": pick(overrides.eval_batch_size, exp.eval_batch_size), "ood": pick(overrides.ood_batch_size, exp.ood_batch_size)},
                offline=pick(overrides.offline, exp.offline), data_path=pick(overrides.data_path, exp.data_path),
                model_path=overrides.model_path, max_eval_samples=pick(overrides.max_eval_samples, exp.max_eval_samples),
                temperature_scaling=temperature,
                output_dir=Path(evaluation.output_dir) if evaluation.output_dir else paths[0] / "eval", ece_bins=evaluation.ece_bins,
                overwrite=evaluation.overwrite, ood_split=overrides.ood_split)


def evaluate(plan: Plan, runs: list[LoadedRun] | None = None, distributed: bool = True) -> list[dict]:
    """Score every target split; under `accelerate launch` (and `distributed`) each process scores a share."""
    plan.check_outputs()
    if plan.offline:
        go_offline()
    accelerator = None
    if distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator
        accelerator = Accelerator()
    if runs is None:        # one model, every member's adapter loaded into it in turn
        first = load_run(plan.paths[0], device=accelerator.device if accelerator else None, offline=plan.offline,
                         model_path=plan.model_path, config=plan.configs[0])
        runs = [first] + [replace(first, directory=p, config=c) for p, c in zip(plan.paths[1:], plan.configs[1:])]
    method = plan.method

    def bma_draws(task: str, subtask: str, split: str, dist: str, rows=None, source=""):
        data, info = batches(plan, runs[0], task, subtask, split, dist, accelerator, rows, source)
        draws = np.concatenate([method.draws(run, i, data) for i, run in enumerate(runs)])
        bad = int((~np.isfinite(draws)).any(axis=(0, 2)).sum())
        if bad:
            raise CorruptFile(f"{method.label()} gave non-finite probabilities on {bad} of {draws.shape[1]} rows of {task} "
                              f"{split} ({', '.join(str(r.directory / method.checkpoint) for r in runs)}): the adapter or "
                              f"posterior is corrupt or the run diverged")
        return draws[..., : info["num_choices"]], labels_of(data.features), info

    temperature, temperature_source = None, None
    if plan.temperature_scaling:
        rows, source = validation_rows(plan, runs)
        vdraws, vlabels, vinfo = bma_draws(*plan.id_task, "validation", "id", rows, source)
        temperature, temperature_source = fit_temperature(vdraws, vlabels), vinfo["split_source"]

    results, id_draws = [], None
    for (dist, task, subtask, split), name in zip(plan.targets, plan.record_names()):
        draws, labels, info = bma_draws(task, subtask, split, dist)
        if temperature is not None:
            draws = apply_temperature(draws, temperature)
        scores = metrics.classification_metrics(draws, labels, with_mcc=get_task(task).report_mcc)
        if plan.ece_bins != metrics.DEFAULT_ECE_BINS:
            scores[f"ece_{plan.ece_bins}"] = metrics.expected_calibration_error(draws.mean(0), labels, plan.ece_bins)
        if dist == "id":
            id_draws = draws
        elif id_draws is not None:
            scores.update(metrics.ood_detection_metrics(id_draws, draws))
        record = {
            "method": method.key, "label": method.label() + ("+ts" if temperature is not None and method.key != "temperature" else ""),
            "settings": {**method.settings(), **method.fitted_settings(), "temperature": temperature, "temperature_scaling": temperature is not None,
                         "temperature_source": temperature_source, "seed": method.evaluation.seed, "num_members": len(runs),
                         "num_draws": int(draws.shape[0]), "num_processes": accelerator.num_processes if accelerator else 1},
            "distribution": dist, **{k: v for k, v in info.items() if k != "num_choices"}, "num_classes": int(draws.shape[2]),
            "model": runs[0].config.model.name, "train_task": runs[0].config.experiment.task,
            "train_subtask": runs[0].config.experiment.subtask, "run_dirs": [str(r.directory) for r in runs],
            "checkpoints": [str(r.directory / method.checkpoint) for r in runs],
            "train_seeds": [r.config.experiment.seed for r in runs], "metrics": scores,
            "chance_accuracy": majority_rate(labels), "order": method.order, "run_settings": run_settings(runs[0]),
            "evaluation_key": json.loads(json.dumps(plan.identity(), default=str)), "name": name,
            "fitted": sorted(method.fitted_settings()) + (["temperature"] if temperature is not None else []),
        }
        if accelerator is None or accelerator.is_main_process:
            write_evaluation(record, draws.mean(0), labels, plan.output_dir, ece_bins=plan.ece_bins)
        results.append(record)
    return results


def run_settings(run: LoadedRun) -> dict:
    """The training settings a table names beside an evaluation (member 0's for several members)."""
    exp, info = run.config.experiment, {}
    if (run.directory / "run_info.json").is_file():
        info = json.loads((run.directory / "run_info.json").read_text())
    return {"method": run.config.method.method_name, "num_epochs": exp.num_epochs, "learning_rate": exp.learning_rate,
            "batch_size": exp.batch_size, "lora_r": exp.lora_r, "train_rows": info.get("train_rows"),
            "epochs_trained": info.get("epochs_trained")}


def batches(plan: Plan, run: LoadedRun, task_name: str, subtask: str, split: str, dist: str, accelerator=None,
            rows: list[dict] | None = None, source: str = "") -> tuple[Batches, dict]:
    """The rows of one split (or given `rows`), encoded as the run was trained, checked against what it can score."""
    task, train_task, arch = get_task(task_name), get_task(run.config.experiment.task), run.model.arch
    alignment = label_alignment(train_task, task) if arch == "seq_cls" else None
    if arch == "seq_cls" and (task.format != "cls" or alignment is None):
        raise ConfigError(f"task {task_name!r} ({task.num_choices} labels) cannot be scored by a classifier trained on "
                          f"{train_task.name!r} ({train_task.num_choices} labels): no correspondence of their classes")
    if arch == "multiple_choice" and task.format != "mc":
        raise ConfigError(f"task {task_name!r} is classification; the model was trained for multiple choice on {train_task.name!r}")
    exp = run.config.experiment
    if rows is None:
        splits = DataSource.of(exp, plan.offline, plan.data_path).splits(task_name, subtask, roles=(split,))
        rows, source = splits[split], splits.source["splits"][split]
    rows = rows[: plan.max_eval_samples or None]
    encoding = Encoding.of_model(run.tokenizer, run.model, run.config.model.max_length, exp.prompt_style)
    feats = encoding.features(rows, task)
    if alignment is not None and alignment != list(range(task.num_choices)):   # e.g. MRPC's equivalent = RTE's entailment
        feats = [{**f, "label": alignment[f["label"]]} for f in feats]
        source += f" (labels as the classifier's: {alignment})"
    collator = encoding.collator(task)
    info = {"task": task_name, "subtask": subtask, "split": split, "num_choices": task.num_choices,
            "split_source": source, "num_examples": len(feats)}
    return Batches(feats, collator, plan.batch_size[dist], accelerator,
                   training=lambda r, batch_size=None: training_loader(plan, r, batch_size),
                   validation=lambda r: batches(plan, r, r.config.experiment.task, r.config.experiment.subtask,
                                                "validation", "id", accelerator)[0]), info


def training_loader(plan: Plan, run: LoadedRun, batch_size: int | None = None):
    """The run's own training rows (as it trained on them: carving, max_train_samples), in batches of `batch_size`
    (default: the run's eval batch size)."""
    exp = run.config.experiment
    task = get_task(exp.task)
    rows = DataSource.of(exp, plan.offline, plan.data_path).splits(exp.task, exp.subtask, roles=("train",)).train
    encoding = Encoding.of_model(run.tokenizer, run.model, run.config.model.max_length, exp.prompt_style)
    return encoding.loader(encoding.features(rows[: exp.max_train_samples or None], task), task,
                           batch_size or exp.eval_batch_size)


def validation_rows(plan: Plan, runs: list[LoadedRun]) -> tuple[list[dict] | None, str]:
    """Rows to fit a temperature on: the run's own validation split (None: load it), or, for several members, rows
    that no member trained on (the official validation split, or the rows every member's carving held out)."""
    if len(runs) == 1:
        return None, ""
    exp = runs[0].config.experiment
    task, subtask = plan.id_task
    rows, source = DataSource.of(exp, plan.offline, plan.data_path).held_out_validation(
        task, subtask, [(r.config.experiment.seed, r.config.experiment.val_fraction) for r in runs])
    if not rows:
        raise ConfigError(f"temperature scaling of a {plan.method.key}: no validation row of {task} is held out by every "
                          f"member ({source}); evaluate without temperature scaling")
    return rows, source


def default_table(run: RunConfig, directory: Path) -> list[dict]:
    """After training: `evaluation.table_methods` (those the run has the files for) on the ID test split and the OOD
    split, one model load, with the run's evaluation settings (validate_train has checked the names)."""
    loaded = load_run(directory)
    results = []
    for name in run.evaluation.table_methods:
        key, overrides, needs = TABLE_METHODS[name]
        if not (directory / needs).is_dir():
            continue
        evaluation = replace(run.evaluation, eval_method=key, eval_model_path=str(directory), **overrides)
        plan = resolve_plan(EvalConfig(evaluation=evaluation, experiment=DataOverrides(task=run.experiment.task,
                                                                                      subtask=run.experiment.subtask)))
        results += evaluate(plan, runs=[loaded], distributed=False)   # rank 0 alone: the others have finished
    return results


__all__ = ["EvalConfig", "EvaluationConfig", "LoadedRun", "Plan", "default_table", "evaluate", "load_run", "resolve_plan"]
