"""Evaluation methods, one class each, picked by `evaluation.eval_method` (the key) from `METHODS`.

A method turns a set of runs (one, or an ensemble's members) into weight draws and their probabilities on a set
of batches: `draws(run, member, data)` returns S x N x C for one member; the evaluation concatenates the members'
draws and averages them (the Bayesian model average).  Adding a method is one class here (with `@register`),
plus any new keys: declared in `EvaluationConfig` (swag_lora/config/schema.py), valued in conf/evaluation/default.yaml.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from swag_lora.config import ConfigError, EvaluationConfig, RunConfig, SwagConfig
from swag_lora.config.schema import NO_LOGLIK_HEAD
from swag_lora.io import atomic_write
from swag_lora.posteriors.ivon import IvonPosterior
from swag_lora import metrics as M
from swag_lora.posteriors.laplace import LoraLaplace
from swag_lora.posteriors.lora_gaussian import LoraAPosterior
from swag_lora.posteriors.tfb import search_scale, tfb_posterior
from swag_lora.posteriors.swag import SwagPosterior
from swag_lora.predict.draws import (AsIs, dropout_passes, gather_rows, prepare_batches, score, swag_samples,
                                     written)

METHODS: dict[str, type[Method]] = {}


def register(cls):
    METHODS[cls.key] = cls
    return cls


@dataclass
class Batches:
    """The rows one evaluation scores: features, their collator, and how to batch them; `training(run, batch_size=None)`
    gives a run's training rows as a loader (for methods fitted post hoc, e.g. Laplace)."""
    features: list
    collator: object
    batch_size: int
    accelerator: object = None
    training: Callable | None = None
    validation: Callable | None = None      # validation(run) -> Batches of the run's own validation rows


class Method:
    key: ClassVar[str]
    checkpoint: ClassVar[str] = "base_model"   # the folder each member is evaluated from
    members: ClassVar[str] = "one"             # one run, or "several" (ensemble-like)
    sampled: ClassVar[bool] = False            # evaluation.num_samples draws per member
    order: ClassVar[int] = 50                  # where the report lists it (MAP first, ensembles last)
    table: ClassVar[dict[str, dict]] = {}      # its names in evaluation.table_methods (the closing table) -> overrides

    def __init__(self, evaluation: EvaluationConfig):
        self.evaluation = evaluation
        self.fitted: dict[str, list] = {}       # values fitted per member (e.g. Laplace's prior precision)

    def note(self, **values) -> None:
        """Record values fitted while drawing (one per member); the evaluation's settings report them."""
        for k, v in values.items():
            self.fitted.setdefault(k, []).append(v)

    def fitted_settings(self) -> dict:
        """The fitted values, as the record's settings: a number's mean over members, else the first member's."""
        out = {}
        for k, vs in self.fitted.items():
            out[k] = float(np.mean(vs)) if all(isinstance(v, (int, float)) for v in vs) else vs[0]
        return out

    def label(self) -> str:
        return self.key

    def settings(self) -> dict:
        """What changes the predictive distribution (the report keeps rows with different settings apart)."""
        return {"num_samples": self.evaluation.num_samples if self.sampled else 1}

    def name_parts(self) -> list[str]:
        """What the evaluation's file name says after the label: the draws per member (and the method's own)."""
        samples = self.settings()["num_samples"]
        return [f"s{samples}"] if samples > 1 else []

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
    table = {"map": {}}
    order = 0

    def label(self) -> str:      # the report's name: base is "map"; the subclasses go by their key
        return "map" if self.key == "base" else self.key

    def draws(self, run, member, data):
        run.model.load_adapter(run.directory / "base_model")
        return score(run.model, data.features, data.collator, data.batch_size, [AsIs()],
                     sort_by_length=self.evaluation.sort_by_length, accelerator=data.accelerator)


@register
class Dropout(MAP):
    """MC dropout: the MAP adapter with dropout on, S passes."""
    key = "dropout"
    table = {"dropout": {}}
    order = 2
    sampled = True

    def draws(self, run, member, data):
        run.model.load_adapter(run.directory / "base_model")
        e = self.evaluation
        return score(run.model, data.features, data.collator, data.batch_size,
                     dropout_passes(run.model, e.num_samples, e.seed, e.dropout_scope), sort_by_length=e.sort_by_length,
                     accelerator=data.accelerator)

    def settings(self) -> dict:
        return {**super().settings(), "dropout_scope": self.evaluation.dropout_scope}


@register
class Swag(Method):
    """SWAG: S samples from the run's posterior written into the model (scale 0: SWA, the posterior mean)."""
    key = "swag"
    table = {"swag": {}, "swa": {"swag_sample_scale": 0.0, "num_samples": 1}}
    order = 3
    checkpoint = "swag_model"
    sampled = True

    head = False       # a last-layer posterior (modules_to_swag=head): labelled ll-swag / ll-swa

    def label(self) -> str:
        return ("ll-" if self.head else "") + ("swa" if self.evaluation.swag_sample_scale == 0 else "swag")

    def settings(self) -> dict:
        e = self.evaluation
        return {"num_samples": 1 if e.swag_sample_scale == 0 else e.num_samples, "swag_sample_scale": e.swag_sample_scale,
                "swag_cov_mat": e.swag_cov_mat}

    def name_parts(self) -> list[str]:
        e = self.evaluation
        parts = super().name_parts()
        return parts + [f"scale{e.swag_sample_scale:g}" + ("" if e.swag_cov_mat else "_diag")] if parts else parts

    def check(self, runs, paths):
        super().check(runs, paths)
        self.head = all(isinstance(r.method, SwagConfig) and r.method.modules_to_swag == "head" for r in runs)
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
        e = self.evaluation
        draws = swag_samples(post, run.named, e.num_samples, e.swag_sample_scale, e.swag_cov_mat, k, e.seed + 1000 * member)
        return score(run.model, data.features, data.collator, data.batch_size, draws, restore=run.named,
                     sort_by_length=e.sort_by_length, accelerator=data.accelerator)


@register
class Ensemble(MAP):
    """Deep ensemble: the MAP adapters of several runs, one draw each."""
    key = "ensemble"
    table = {}
    order = 20
    members = "several"


@register
class MultiSwag(Swag):
    """MultiSWAG: S samples from each of several runs' posteriors (scale 0: MultiSWA)."""
    key = "multiswag"
    table = {}
    order = 21
    members = "several"

    def label(self) -> str:
        return ("ll-" if self.head else "") + ("multiswa" if self.evaluation.swag_sample_scale == 0 else "multiswag")

    def check(self, runs, paths):
        super().check(runs, paths)
        mods = {r.method.modules_to_swag for r in runs}
        if len(mods) > 1:
            raise ConfigError(f"multiswag members disagree on method.modules_to_swag: {sorted(mods)}")


@register
class Temperature(MAP):
    """MAP with a temperature fitted on validation rows (the same as base with evaluation.temperature_scaling)."""
    key = "temperature"
    table = {"temperature": {}}
    order = 1


@register
class Laplace(Method):
    """Laplace-LoRA at the MAP adapter, post hoc: over LoRA + head (`laplace_subset=all`) or the head alone
    (`head`: last-layer Laplace, its samples and Jacobians on features of one backbone pass); KFAC or diagonal GGN,
    the prior precision by marginal likelihood (laplace-torch); fitted once per run, kept in laplace_model/."""
    key = "laplace"
    table = {"laplace": {"laplace_subset": "all"}, "ll-laplace": {"laplace_subset": "head"}}
    order = 10
    sampled = True

    def label(self) -> str:     # the prior chosen on validation rows is another predictive: another label
        e = self.evaluation
        return ("laplace" if e.laplace_subset == "all" else "ll-laplace") + ("-val" if e.laplace_prior == "val_nll" else "")

    def settings(self) -> dict:
        e = self.evaluation
        return {"num_samples": 1 if e.laplace_predictive == "glm_probit" else e.num_samples,
                "laplace_subset": e.laplace_subset, "laplace_hessian": e.laplace_hessian,
                "laplace_predictive": e.laplace_predictive,
                **({"laplace_batch_size": e.laplace_batch_size} if e.laplace_batch_size else {}),   # set: it changes the fit
                **({"laplace_prior": e.laplace_prior} if e.laplace_prior != "marglik" else {})}

    def name_parts(self) -> list[str]:
        return super().name_parts() + [f"{self.evaluation.laplace_hessian}_{self.evaluation.laplace_predictive}"]

    def check(self, runs, paths):
        super().check(runs, paths)
        if self.evaluation.laplace_subset == "head":
            for run, path in zip(runs, paths):
                if run.experiment.choice_scoring != "letter" and run.model.family == "causal":
                    raise ConfigError(f"evaluation.laplace_subset=head on {path}, trained with experiment.choice_scoring="
                                      f"{run.experiment.choice_scoring}: {NO_LOGLIK_HEAD}")

    def posterior(self, run, data: Batches) -> tuple[LoraLaplace, dict]:
        """The run's fitted Laplace (fitted and saved on first use; refitted if base_model/ or the fit's batch size
        changed)."""
        e, model = self.evaluation, run.model
        model.load_adapter(run.directory / "base_model")
        named = model.trainable_state() if e.laplace_subset == "all" else model.head_tensors()
        folder, name = run.directory / "laplace_model", f"{e.laplace_subset}_{e.laplace_hessian}"
        loader = data.training(run, e.laplace_batch_size)
        # which MAP adapter the factors belong to, and the fit's batch size (KFAC adds its factors batch by batch)
        adapter = hashlib.sha1((run.directory / "base_model" / "adapter_model.safetensors").read_bytes()).hexdigest()
        adapter += f" batch_size={loader.batch_size}"
        if e.laplace_prior == "val_nll":        # the same factors; the prior chosen on validation rows, kept apart
            name += "_valnll"
            adapter += f" grid={list(e.laplace_prior_grid)}"
        meta = folder / f"{name}.json"
        if meta.is_file() and (folder / f"{name}.adapter").is_file() and (folder / f"{name}.adapter").read_text() == adapter:
            post = LoraLaplace.load(folder, name, model, named)
            self.note(prior_precision=post.prior_precision, prior_source=json.loads(meta.read_text()).get("prior_source"))
            return post, named
        post = LoraLaplace(model, named, e.laplace_hessian)
        post.fit(loader)
        source = "marglik"
        if e.laplace_prior == "val_nll":
            val = data.validation(run)
            choice = post.select_prior(self.moments(model, post, named, val), list(e.laplace_prior_grid))
            source = f"val_nll ({len(choice['grid'])} values, {choice['rows']} validation rows)"
        post.prior_source = source
        if data.accelerator is None or data.accelerator.is_main_process:
            post.save(folder, name)
            with atomic_write(folder / f"{name}.adapter") as tmp:
                tmp.write_text(adapter)
        self.note(prior_precision=post.prior_precision, prior_source=source)
        return post, named

    def moments(self, model, post: LoraLaplace, named: dict, data: Batches):
        """(logits, Jacobians, labels) per batch of `data`: of the head on cached features for the last-layer subset, of
        the whole model (laplace-torch's backend) otherwise."""
        import torch
        e, acc = self.evaluation, data.accelerator
        device = acc.device if acc else next(model.parameters()).device
        labels = torch.tensor([f["label"] for f in data.features])
        model.eval()
        for index, batch in prepare_batches(data.features, data.collator, data.batch_size, acc, e.sort_by_length, device):
            if e.laplace_subset == "head":
                f_mu, J = self.head_jacobians(model, named, batch)
            else:
                f_mu, J = post.jacobians(batch, rows=e.laplace_jacobian_rows)
            yield f_mu, J, labels[torch.as_tensor(index, dtype=torch.long)].to(f_mu.device)

    @staticmethod
    def head_jacobians(model, named: dict, batch: dict):
        """(logits, Jacobians) of the head on the features of one backbone pass."""
        import torch
        from torch.func import functional_call, jacrev
        with torch.no_grad():
            features = model.head_inputs(batch)
            f_mu = model.logits_from_head(features, batch)
        module = model.head_module()
        inside = {id(p): n for n, p in module.named_parameters()}       # names relative to the head
        params = {inside[id(t)]: t.detach() for t in named.values()}

        def head_logits(p):
            out = functional_call(module, p, features).float()
            out = out.reshape(batch["choice_mask"].shape[0], -1)
            return out.masked_fill(~batch["choice_mask"], torch.finfo(out.dtype).min)
        jac = jacrev(head_logits)(params)
        return f_mu, torch.cat([jac[inside[id(t)]].reshape(*f_mu.shape, -1) for t in named.values()], -1)

    def draws(self, run, member, data):
        import torch
        e = self.evaluation
        post, named = self.posterior(run, data)
        generator = torch.Generator().manual_seed(e.seed + 1000 * member)
        if e.laplace_predictive == "nn_mc":
            return score(run.model, data.features, data.collator, data.batch_size,
                         written(named, post.sample(e.num_samples, generator)), restore=named,
                         sort_by_length=e.sort_by_length, accelerator=data.accelerator)
        return self.linearised(run.model, post, named, data, generator)

    def linearised(self, model, post: LoraLaplace, named: dict, data: Batches, generator) -> np.ndarray:
        """GLM predictive per batch: logits and their Jacobians w.r.t. the covered tensors (of the head on cached
        features for the last-layer subset; of the whole model otherwise, by laplace-torch)."""
        e, acc = self.evaluation, data.accelerator
        device = acc.device if acc else next(model.parameters()).device
        prepared = prepare_batches(data.features, data.collator, data.batch_size, acc, e.sort_by_length, device)
        samples = 1 if e.laplace_predictive == "glm_probit" else e.num_samples
        out, indices, head = [[] for _ in range(samples)], [], e.laplace_subset == "head"
        model.eval()
        for index, batch in prepared:
            if head:
                f_mu, J = self.head_jacobians(model, named, batch)
                probs = post.glm(f_mu, J, e.laplace_predictive, samples, generator)
            else:
                probs = post.predictive(batch, e.laplace_predictive, samples, generator, rows=e.laplace_jacobian_rows)
            for s in range(samples):
                out[s].append(probs[s].detach().cpu().numpy().astype(np.float64))
            indices.append(index)
        return np.stack([gather_rows(indices, o, len(data.features), data.collator.num_choices, acc) for o in out])


@register
class Ivon(Method):
    """IVON: S samples from the variational posterior its optimizer ended with (ivon_model/), written into the model."""
    key = "ivon"
    table = {"ivon": {}}
    order = 12
    checkpoint = "ivon_model"
    sampled = True

    def draws(self, run, member, data):
        import torch
        run.model.load_adapter(run.directory / "ivon_model")
        post = IvonPosterior.load(run.directory / "ivon_model", device=next(run.model.parameters()).device)
        generator = torch.Generator(device=next(run.model.parameters()).device).manual_seed(self.evaluation.seed + 1000 * member)
        samples = post.sample(self.evaluation.num_samples, generator)
        named = {n: t for n, t in run.model.trainable_state().items() if n in post.shapes}
        return score(run.model, data.features, data.collator, data.batch_size, written(named, samples), restore=named,
                     sort_by_length=self.evaluation.sort_by_length, accelerator=data.accelerator)


@register
class Blob(Method):
    """BLoB: S weight samples of LoRA's A matrices from the variational posterior a BLoB run ended with (blob_model/),
    written into the model; `evaluation.blob_mean`: its mean alone (BLoB-Mean), one draw."""
    key = "blob"
    table = {"blob": {}}
    order = 13
    checkpoint = "blob_model"
    sampled = True

    def label(self) -> str:
        return ("multiblob" if self.members == "several" else "blob") + ("-mean" if self.evaluation.blob_mean else "")

    def settings(self) -> dict:
        e = self.evaluation
        return {"num_samples": 1 if e.blob_mean else e.num_samples, "blob_mean": e.blob_mean}

    def draws(self, run, member, data):
        import torch
        e = self.evaluation
        run.model.load_adapter(run.directory / "blob_model")
        if e.blob_mean:
            return score(run.model, data.features, data.collator, data.batch_size, [AsIs()],
                         sort_by_length=e.sort_by_length, accelerator=data.accelerator)
        post = LoraAPosterior.load(run.directory / "blob_model", "blob_posterior")
        return self.sampled_draws(run, post, data, torch.Generator().manual_seed(e.seed + 1000 * member))

    def sampled_draws(self, run, post: LoraAPosterior, data: Batches, generator, scale: float = 1.0) -> np.ndarray:
        """S samples of the A matrices (at `scale`), each written into the model for one pass."""
        named = {n: t for n, t in run.model.trainable_state().items() if n in post.means}
        if set(named) != set(post.means):
            raise ConfigError(f"{run.directory}: the posterior covers LoRA tensors this model does not have")
        return score(run.model, data.features, data.collator, data.batch_size,
                     written(named, post.sample(self.evaluation.num_samples, generator, scale=scale)), restore=named,
                     sort_by_length=self.evaluation.sort_by_length, accelerator=data.accelerator)


@register
class MultiBlob(Blob):
    """An ensemble of BLoB runs: S samples from each run's posterior."""
    key = "multiblob"
    table = {}
    order = 22
    members = "several"


@register
class Tfb(Blob):
    """TFB, post hoc on any run's MAP adapter (base_model/): the low-rank Gaussian of posteriors/tfb.py at the largest
    scale whose validation NLL (or accuracy) stays within evaluation.tfb_tolerance of the MAP's; the scale is searched
    once per run and kept in tfb_model/."""
    key = "tfb"
    table = {"tfb": {}}
    order = 14
    checkpoint = "base_model"

    def label(self) -> str:
        return "tfb"

    def settings(self) -> dict:
        e = self.evaluation
        return {"num_samples": e.num_samples, "tfb_metric": e.tfb_metric, "tfb_tolerance": e.tfb_tolerance}

    def posterior(self, run, data: Batches) -> tuple[LoraAPosterior, float]:
        """(the unit-scale posterior, the scale): read from tfb_model/ when it was searched for this adapter and these
        settings, else searched on the run's validation rows and saved."""
        import torch
        e = self.evaluation
        run.model.load_adapter(run.directory / "base_model")
        folder, name = run.directory / "tfb_model", f"{e.tfb_metric}_tol{e.tfb_tolerance:g}"
        stamp = {"adapter": hashlib.sha1((run.directory / "base_model" / "adapter_model.safetensors").read_bytes()).hexdigest(),
                 "metric": e.tfb_metric, "tolerance": e.tfb_tolerance, "upper": e.tfb_upper, "steps": e.tfb_search_steps,
                 "samples": e.num_samples, "seed": e.seed}
        if (folder / f"{name}.json").is_file():
            post = LoraAPosterior.load(folder, name)
            if post.meta.get("stamp") == stamp:
                return post, float(post.meta["sigma"])
        post = tfb_posterior(run.model, run.model.trainable_state())
        val = data.validation(run)
        labels = np.array([f["label"] for f in val.features])

        main = data.accelerator is None or data.accelerator.is_main_process

        def metric(scale: float) -> float:      # one line per step: the search is S validation passes per scale
            probs = self.sampled_draws(run, post, val, torch.Generator().manual_seed(e.seed), scale).mean(0)
            value = M.nll(probs, labels) if e.tfb_metric == "nll" else M.accuracy(probs, labels)
            if main:
                print(f"[swag-lora] tfb search: scale {scale:.6g}, validation {e.tfb_metric} {value:.6g}", flush=True)
            return value
        base = metric(0.0)
        if e.tfb_metric == "nll":
            feasible = lambda v: v <= base * (1 + e.tfb_tolerance)  # noqa: E731
        else:
            feasible = lambda v: v >= base - e.tfb_tolerance  # noqa: E731
        sigma, trace = search_scale(metric, feasible, e.tfb_upper, e.tfb_search_steps)
        post.meta.update(sigma=sigma, map_metric=base, trace=trace, validation_rows=len(labels), stamp=stamp)
        if main:
            post.save(folder, name)
        return post, sigma

    def draws(self, run, member, data):
        import torch
        post, sigma = self.posterior(run, data)
        self.note(tfb_sigma=sigma)
        run.model.load_adapter(run.directory / "base_model")
        return self.sampled_draws(run, post, data, torch.Generator().manual_seed(self.evaluation.seed + 1000 * member), sigma)


def check_members(runs: list[RunConfig], method: str) -> None:
    """Ensemble / MultiSWAG members share one loaded model and one encoding of the data, so they must agree on
    the model, its LoRA shape, the task and how its rows are encoded."""
    def key(r):
        m, e = r.model, r.experiment
        return {"model": m.model_name, "family": m.family, "quantization": m.quantization, "task": e.task,
                "subtask": e.subtask, "lora_r": e.lora_r, "lora_alpha": e.lora_alpha, "train_biases": e.train_biases,
                "lora_target_modules": tuple(m.target_modules), "modules_to_save": tuple(m.modules_to_save),
                "max_length": m.max_length, "prompt_style": e.prompt_style, "arc_all_items": e.arc_all_items}
    first = key(runs[0])
    for i, r in enumerate(runs[1:], 1):
        for name, value in key(r).items():
            if value != first[name]:
                raise ConfigError(f"{method} members disagree on {name}: {first[name]!r} (member 0) vs {value!r} (member {i})")


TABLE_METHODS = {name: (cls.key, overrides, cls.checkpoint)    # evaluation.table_methods entry -> (key, overrides, folder)
                 for cls in METHODS.values() for name, overrides in cls.table.items()}


def make_method(evaluation: EvaluationConfig) -> Method:
    if evaluation.eval_method not in METHODS:
        raise ConfigError(f"unknown evaluation.eval_method {evaluation.eval_method!r}; allowed: {', '.join(METHODS)}")
    return METHODS[evaluation.eval_method](evaluation)
