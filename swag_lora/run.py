"""Entry points behind the Hydra scripts: `train(cfg)` and `evaluate(cfg)`.

Evaluation reads only a run directory (its config.yaml, base_model/, swag_model/), so a run can be
evaluated anywhere, later.  Methods:
  base       the best-validation MAP adapter, dropout off
  dropout    the MAP adapter with dropout on, S passes
  swag       S samples from the SWAG posterior written into the model (scale 0 -> SWA, one pass)
  ensemble   the MAP adapters of several runs (one draw each)
  multiswag  S SWAG samples from each run's posterior
  temperature  the MAP adapter with a temperature fitted on the validation split
The Bayesian model average is the mean of the draws' probabilities; the prediction is its argmax.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from swag_lora.config import ConfigError, find_run_dir, go_offline, validate_eval, validate_train


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def main_train(cfg: DictConfig) -> int:
    """`launch_exp_hydra.py`: validate, train, then (optionally) the evaluation table."""
    try:
        validate_train(cfg)
    except ConfigError as e:
        return _fail(e)
    from swag_lora.checkpoint import CheckpointError
    from swag_lora.train import _Stop, train
    _Stop.install()     # from here on SIGTERM/SIGUSR1 end the run cleanly (deferred to a checkpoint while training)
    try:
        rd = train(cfg)
    except (ConfigError, CheckpointError) as e:
        return _fail(e)
    if cfg.experiment.evaluate_after_training and int(os.environ.get("RANK", "0")) == 0:
        # one process evaluates (after a multi-GPU run the others are done); free the training model first
        import gc

        import torch
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        from swag_lora.report import print_summary
        results = evaluate_default_table(cfg, rd)
        if results:
            print_summary(results, rd / "eval")
    return 0


FROM_RUN = ("task", "subtask", "ood_task", "ood_subtask", "offline", "data_path", "model_path", "max_eval_samples",
            "eval_batch_size", "ood_batch_size")


def main_evaluate(cfg: DictConfig) -> int:
    """`python -m swag_lora.evaluate`: validate, then one evaluation (ID and/or OOD)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    try:
        given = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    except ValueError:   # not under @hydra.main
        given = set()
    with open_dict(cfg):   # experiment keys not given on the command line come from the evaluated run's config
        for key in FROM_RUN:
            if f"experiment.{key}" not in given:
                cfg.experiment[key] = None
    try:
        validate_eval(cfg)
        results = evaluate(cfg)
    except ConfigError as e:
        return _fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        from swag_lora.report import print_summary
        print_summary(results, None)
    return 0


# ---------------------------------------------------------------- loading a run
@dataclass
class LoadedRun:
    run_dir: Path
    cfg: DictConfig
    tokenizer: object
    model: object
    named: dict = field(default_factory=dict)


def load_run(run_dir: Path, device=None, offline: bool | None = None, model_path: str | None = None) -> LoadedRun:
    """Rebuild the run's model (base + LoRA + head) from its config.yaml; no adapter loaded yet.
    `offline` / `model_path` override the run's own settings (a run evaluated on another machine)."""
    from swag_lora.data import get_task
    from swag_lora.model import load_model, swag_tensors
    cfg = OmegaConf.load(run_dir / "config.yaml")
    exp = cfg.experiment
    tok, model = load_model(cfg.model, exp, get_task(exp.task), exp.offline if offline is None else offline,
                            model_path or exp.model_path)
    if device is None:   # where Accelerate would put it: honours ACCELERATE_USE_CPU, picks CUDA/MPS/XPU/NPU
        from accelerate import PartialState
        device = PartialState().device
    if cfg.model.get("quantization", "none") == "none":   # bitsandbytes places quantized weights itself
        model.to(device)
    named = swag_tensors(model, cfg.method.modules_to_swag) if cfg.method.method_name == "swag" else {}
    return LoadedRun(run_dir, cfg, tok, model, named)


def _member_key(cfg: DictConfig) -> tuple:
    return (cfg.model.model_name, cfg.model.family, cfg.experiment.task, cfg.experiment.subtask or "",
            int(cfg.experiment.lora_r), tuple(cfg.model.lora_target_modules))


def check_members(cfgs: list[DictConfig], method: str) -> None:
    """Ensemble / MultiSWAG members must agree on model, task and label space."""
    keys = [_member_key(c) for c in cfgs]
    for i, k in enumerate(keys[1:], 1):
        if k != keys[0]:
            names = ("model", "family", "task", "subtask", "lora_r", "lora_target_modules")
            field_ = next(n for n, a, b in zip(names, keys[0], k) if a != b)
            raise ConfigError(f"{method} members disagree on {field_}: {keys[0][names.index(field_)]!r} (member 0) "
                              f"vs {k[names.index(field_)]!r} (member {i})")
    if method == "multiswag":
        for i, c in enumerate(cfgs):
            if c.method.method_name != "swag":
                raise ConfigError(f"multiswag member {i} was trained with method={c.method.method_name}, not swag")
        mods = {c.method.modules_to_swag for c in cfgs}
        if len(mods) > 1:
            raise ConfigError(f"multiswag members disagree on method.modules_to_swag: {sorted(mods)}")


# ---------------------------------------------------------------- evaluation
def _encode_split(run: LoadedRun, task_name: str, subtask: str, split: str, exp: DictConfig, seed: int,
                  rows: list[dict] | None = None, source: str = ""):
    """Features + collator of one split (or of given `rows`), checked against what the model can score."""
    from swag_lora.data import get_task, load_splits
    from swag_lora.data.encode import Collator, encode
    task = get_task(task_name)
    train_task = get_task(run.cfg.experiment.task)
    kind = run.model.kind
    if kind == "seq_cls" and (task.kind != "cls" or task.num_choices != train_task.num_choices):
        raise ConfigError(f"task {task_name!r} ({task.num_choices} labels) cannot be scored by a classifier trained on "
                          f"{train_task.name!r} ({train_task.num_choices} labels)")
    if kind == "multiple_choice" and task.kind != "mc":
        raise ConfigError(f"task {task_name!r} is classification; the model was trained for multiple choice on {train_task.name!r}")
    train_exp = run.cfg.experiment   # data settings of the run (old runs: what they were trained with)
    if rows is None:
        splits = load_splits(task_name, subtask, offline=exp.offline, data_path=exp.data_path, seed=seed,
                             val_fraction=float(exp.val_fraction), roles=(split,),
                             all_items=bool(train_exp.get("arc_all_items", True)))
        rows, source = splits[split], splits.source["splits"][split]
    if int(exp.get("max_eval_samples", 0) or 0) > 0:
        rows = rows[: int(exp.max_eval_samples)]
    feats = encode(rows, run.tokenizer, kind, task, run.cfg.model.max_length, train_exp.get("prompt_style", "lines"))
    width = run.model.num_choices if kind != "multiple_choice" else max(task.num_choices, 1)
    collator = Collator(run.tokenizer.pad_token_id, kind, width, run.tokenizer.padding_side)
    return feats, collator, {"task": task_name, "subtask": subtask, "split": split, "num_choices": task.num_choices,
                             "split_source": source, "num_examples": len(feats)}


def _draws_for_member(run: LoadedRun, method: str, feats, collator, ev: DictConfig, batch_size: int, member: int,
                      accelerator=None):
    """S x N x C probabilities of one run under `method` (loads the adapter it needs)."""
    from swag_lora.predict import draw_probs
    from swag_lora.swag import SwagPosterior
    rd = run.run_dir
    if method in ("swag", "multiswag"):
        if not (rd / "swag_model").is_dir():
            raise ConfigError(f"{rd} has no swag_model/ (trained with method={run.cfg.method.method_name})")
        run.model.load_adapter(rd / "swag_model")
        post = SwagPosterior.load(rd / "swag_model", device=next(run.model.parameters()).device)
        # K in the low-rank term: the original divides by swag_max_num_models - 1; runs from before the key: columns held
        k = None if run.cfg.method.get("swag_k_held", True) else post.max_rank
        return draw_probs(run.model, feats, collator, batch_size, "swag", posterior=post, named=run.named,
                          num_samples=int(ev.num_samples), scale=float(ev.swag_sample_scale), cov=bool(ev.swag_cov_mat),
                          k=k, seed=int(ev.seed) + 1000 * member, sort_by_length=bool(ev.sort_by_length),
                          accelerator=accelerator)
    run.model.load_adapter(rd / "base_model")
    draw = "dropout" if method == "dropout" else "base"
    return draw_probs(run.model, feats, collator, batch_size, draw, num_samples=int(ev.num_samples),
                      seed=int(ev.seed), sort_by_length=bool(ev.sort_by_length), accelerator=accelerator)


def evaluate(cfg: DictConfig, runs: list[LoadedRun] | None = None, distributed: bool = True) -> list[dict]:
    """Evaluate one method on the ID split and/or the OOD split; write JSON + npz + PNG per split.
    Under `accelerate launch` (and `distributed`) every process scores a share of the batches."""
    from swag_lora import metrics as M
    from swag_lora.predict import apply_temperature, fit_temperature
    from swag_lora.report import write_evaluation
    ev, exp = cfg.evaluation, cfg.experiment
    method = ev.eval_method
    multi = method in ("ensemble", "multiswag")
    paths = [find_run_dir(p) for p in (ev.eval_model_paths if multi else [ev.eval_model_path])]
    cfgs = [OmegaConf.load(p / "config.yaml") for p in paths]
    if exp.get("offline") or (exp.get("offline") is None and cfgs[0].experiment.offline):
        go_offline()
    if multi:
        check_members(cfgs, method)
    accelerator = None
    if distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:   # under `accelerate launch`: each scores a share
        from accelerate import Accelerator
        accelerator = Accelerator()
    main_process = accelerator is None or accelerator.is_main_process
    if ev.get("swag_sample_scale") is None:   # the run's own method.swag_sample_scale (member 0's for MultiSWAG)
        ev = OmegaConf.merge(ev, {"swag_sample_scale": float(cfgs[0].method.get("swag_sample_scale", 0.5))})
    if runs is None:
        first = load_run(paths[0], device=accelerator.device if accelerator else None, offline=exp.get("offline"),
                         model_path=exp.get("model_path"))
        runs = [first] + [LoadedRun(p, c, first.tokenizer, first.model, first.named) for p, c in zip(paths[1:], cfgs[1:])]
    train_exp = runs[0].cfg.experiment
    task = exp.task if exp.get("task") is not None else train_exp.task
    subtask = (exp.get("subtask") or "") if exp.get("task") is not None else (train_exp.subtask or "")
    ood_task = exp.ood_task if exp.get("ood_task") is not None else train_exp.get("ood_task") or ""
    ood_subtask = (exp.get("ood_subtask") or "") if exp.get("ood_task") is not None else train_exp.get("ood_subtask") or ""
    data_exp = OmegaConf.merge(train_exp, {k: exp[k] for k in ("offline", "data_path", "max_eval_samples")
                                           if exp.get(k) is not None})
    targets = []
    if not ev.only_ood:
        targets.append(("id", task, subtask, ev.split))
    if ood_task:
        targets.append(("ood", ood_task, ood_subtask, "test"))
    batch = {"id": int(exp.get("eval_batch_size") or train_exp.eval_batch_size),
             "ood": int(exp.get("ood_batch_size") or train_exp.ood_batch_size)}
    draw_method = {"ensemble": "base", "temperature": "base"}.get(method, method)

    temperature, temperature_source = None, None
    if method == "temperature" or ev.temperature_scaling:
        rows, temperature_source = None, None
        if len(runs) > 1:   # rows no member trained on
            from swag_lora.data.loading import held_out_validation
            rows, temperature_source = held_out_validation(
                task, subtask, [(int(r.cfg.experiment.seed), float(r.cfg.experiment.val_fraction)) for r in runs],
                offline=bool(data_exp.offline), data_path=data_exp.data_path,
                all_items=bool(train_exp.get("arc_all_items", True)))
            if not rows:
                raise ConfigError(f"temperature scaling of a {method}: no validation row of {task} is held out by every "
                                  f"member ({temperature_source}); evaluate without temperature scaling")
        vf, vc, vinfo = _encode_split(runs[0], task, subtask, "validation", data_exp, int(train_exp.seed), rows,
                                      temperature_source or "")
        temperature_source = vinfo["split_source"]
        vlabels = np.array([f["label"] for f in vf])
        vprobs = np.concatenate([_draws_for_member(r, draw_method, vf, vc, ev, batch["id"], i, accelerator)
                                 for i, r in enumerate(runs)])[..., : vinfo["num_choices"]]
        temperature = fit_temperature(vprobs, vlabels)

    results, id_members = [], None
    for dist, t, st, split in targets:
        feats, collator, info = _encode_split(runs[0], t, st, split, data_exp, int(train_exp.seed))
        labels = np.array([f["label"] for f in feats])
        members = np.concatenate([_draws_for_member(r, draw_method, feats, collator, ev, batch[dist], i, accelerator)
                                  for i, r in enumerate(runs)])
        members = members[..., : info.pop("num_choices")]   # the causal head's unused letters (probability 0)
        if temperature is not None:
            members = apply_temperature(members, temperature)
        from swag_lora.data import get_task
        metrics = M.classification_metrics(members, labels, with_mcc=get_task(t).report_mcc)
        if ev.ece_bins != M.DEFAULT_ECE_BINS:
            metrics[f"ece_{int(ev.ece_bins)}"] = M.expected_calibration_error(members.mean(0), labels, int(ev.ece_bins))
        if dist == "id":
            id_members = members
        elif id_members is not None:
            metrics.update(M.ood_detection_metrics(id_members, members))
        record = {
            "method": method, "label": method_label(method, ev),
            "settings": {"num_samples": int(ev.num_samples) if method in ("dropout", "swag", "multiswag") else 1,
                         "swag_sample_scale": float(ev.swag_sample_scale) if method in ("swag", "multiswag") else None,
                         "swag_cov_mat": bool(ev.swag_cov_mat) if method in ("swag", "multiswag") else None,
                         "temperature": temperature, "temperature_scaling": temperature is not None,
                         "temperature_source": temperature_source, "seed": int(ev.seed), "num_members": len(runs),
                         "num_draws": int(members.shape[0])},
            "distribution": dist, **info, "num_classes": int(members.shape[2]),
            "model": runs[0].cfg.model.name, "train_task": train_exp.task, "train_subtask": train_exp.subtask or "",
            "run_dirs": [str(r.run_dir) for r in runs],
            "checkpoints": [str(r.run_dir / ("swag_model" if method in ("swag", "multiswag") else "base_model")) for r in runs],
            "train_seeds": [int(r.cfg.experiment.seed) for r in runs],
            "metrics": metrics,
        }
        out_dir = Path(ev.output_dir) if ev.get("output_dir") else runs[0].run_dir / "eval"
        record["settings"]["num_processes"] = accelerator.num_processes if accelerator else 1
        if main_process:
            write_evaluation(record, members.mean(0), labels, out_dir, ece_bins=int(ev.ece_bins))
        results.append(record)
    return results


def method_label(method: str, ev: DictConfig) -> str:
    """A short name for tables: SWA is SWAG at scale 0, MultiSWA likewise; "+ts" marks temperature scaling."""
    label = method if method != "base" else "map"
    if method in ("swag", "multiswag") and float(ev.swag_sample_scale) == 0:
        label = "swa" if method == "swag" else "multiswa"
    if ev.get("temperature_scaling") and method != "temperature":
        label += "+ts"
    return label


def evaluate_default_table(cfg: DictConfig, rd: Path) -> list[dict]:
    """After training: MAP, MC dropout, (SWA, SWAG) on the ID test split and the OOD split, one model load."""
    exp = cfg.experiment
    ev = OmegaConf.create(OmegaConf.to_container(cfg.evaluation, resolve=True))
    ev.eval_model_path = str(rd)
    run = load_run(rd)
    methods = [("base", {}), ("dropout", {})]
    if (rd / "swag_model").is_dir():
        methods += [("swag", {"swag_sample_scale": 0.0, "num_samples": 1}), ("swag", {})]
    results = []
    for method, over in methods:
        sub = OmegaConf.merge(cfg, {"evaluation": {**OmegaConf.to_container(ev), "eval_method": method, **over}})
        sub.experiment = OmegaConf.merge(exp, {"task": exp.task, "subtask": exp.subtask})
        results += evaluate(sub, runs=[run], distributed=False)   # rank 0 alone: the other ranks have finished
    return results
