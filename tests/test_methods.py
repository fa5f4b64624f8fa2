"""The Bayesian-LoRA methods beside SWAG: last-layer SWAG (one backbone pass per batch), Laplace-LoRA (laplace-torch;
last-layer Laplace by closed form and against laplace-torch's own Jacobians) and IVON (its posterior is its Hessian
estimate), each end to end through the evaluation scripts."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, compose, kill_and_resume, run_config, subprocess_env

from swag_lora.config import parse_eval
from swag_lora.data import get_task, load_splits
from swag_lora.data.encode import Collator, choice_width, encode
from swag_lora.posteriors.ivon import IvonPosterior, make_ivon
from swag_lora.posteriors.laplace import LoraLaplace
from swag_lora.posteriors.swag import SwagPosterior
from swag_lora.predict.draws import predict_probs, score, swag_samples
from swag_lora.predict.evaluation import evaluate, load_run, resolve_plan


def train(tmp_path, *overrides):
    from swag_lora.train.loop import train as train_run
    return train_run(run_config(*TINY, f"experiment.save_folder={tmp_path}", "experiment.eval_upon_save=false", *overrides))


def rows_of(run, n=24, split="test"):
    task = get_task("demo")
    feats = encode(load_splits("demo", roles=(split,))[split][:n], run.tokenizer, run.model.arch, task, 64)
    return feats, Collator(run.tokenizer.pad_token_id, run.model.arch, choice_width(run.model.arch, task),
                           run.tokenizer.padding_side)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_roberta", "tiny_llama"])
def test_last_layer_swag_bma_equals_the_s_pass_bma_with_the_same_draws(tmp_path, model):
    rd = train(tmp_path, f"model={model}", "method=swag", "experiment.num_epochs=3", "method.swag_start=1",
               "method.modules_to_swag=head", "method.swag_c_steps=2", "method.swag_max_num_models=4")
    run = load_run(rd, device="cpu")
    post = SwagPosterior.load(rd / "swag_model")
    assert set(post.shapes) == set(run.model.head_tensors()) == set(run.named)      # the head alone
    run.model.load_adapter(rd / "swag_model")
    feats, coll = rows_of(run)
    fast = score(run.model, feats, coll, 8, swag_samples(post, run.named, 5, 1.0, seed=4), restore=run.named)
    g = torch.Generator().manual_seed(4)
    slow = []
    for _ in range(5):          # the same draws, each through the whole network
        SwagPosterior.write_(run.named, post.sample(scale=1.0, generator=g))
        run.model.eval()
        slow.append(predict_probs(run.model, feats, coll, 8))
    np.testing.assert_allclose(fast, np.stack(slow), atol=1e-5)
    assert np.abs(fast[0] - fast[1]).max() > 1e-4


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("llama"), "model=tiny_llama", "method=swag", "experiment.num_epochs=2",
                 "method.swag_start=1", "method.swag_max_num_models=2", "experiment.learning_rate=1e-2")


def training_loader(run, n=48):
    feats, coll = rows_of(run, n, "train")
    return torch.utils.data.DataLoader(feats, batch_size=16, collate_fn=coll)


@pytest.mark.slow
def test_last_layer_laplace_diag_is_the_closed_form_ggn(llama_run):
    pytest.importorskip("laplace", reason="laplace-torch is not installed (pip install --no-deps -r requirements-laplace.txt)")
    """A linear letter head: the GGN diagonal of weight (c, j) is sum_n phi_nj^2 p_nc (1 - p_nc)."""
    run = load_run(llama_run, device="cpu")
    run.model.load_adapter(llama_run / "base_model")
    post = LoraLaplace(run.model, run.model.head_tensors(), "diag")
    loader = training_loader(run)
    post.fit(loader, optimize_prior=False)     # the GGN alone
    expected = torch.zeros_like(post.la.H)
    run.model.eval()
    for batch in loader:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        (phi,) = run.model.head_inputs(batch)
        p = torch.softmax(run.model.logits_from_head((phi,), batch), -1)
        expected += ((p * (1 - p)).T @ phi.square()).reshape(-1)
    torch.testing.assert_close(post.la.H, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("hessian", ["kron", "diag"])
def test_last_layer_glm_on_features_equals_laplace_torch_on_the_whole_model(llama_run, hessian):
    pytest.importorskip("laplace", reason="laplace-torch is not installed (pip install --no-deps -r requirements-laplace.txt)")
    """The head-only predictive takes Jacobians of the head on cached features; laplace-torch takes them through
    the whole model: the same probit predictive."""
    from swag_lora.predict.methods import Batches, Laplace
    run = load_run(llama_run, device="cpu")
    run.model.load_adapter(llama_run / "base_model")
    named = run.model.head_tensors()
    post = LoraLaplace(run.model, named, hessian)
    post.fit(training_loader(run))
    feats, coll = rows_of(run, 12)
    ev = parse_eval(compose(f"evaluation.eval_model_path={llama_run}", "evaluation.eval_method=laplace",
                            "evaluation.laplace_subset=head", "evaluation.laplace_predictive=glm_probit",
                            f"evaluation.laplace_hessian={hessian}", config_name="eval")).evaluation
    ours = Laplace(ev).linearised(run.model, post, named, Batches(feats, coll, 12), None)[0]
    batch = coll(feats)
    batch.pop("labels")
    reference = post.predictive(batch, "glm_probit", 1, rows=12)[0].detach().numpy()     # one laplace-torch call
    assert ours.shape == reference.shape == (12, 5)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    chunked = post.predictive(batch, "glm_probit", 1, rows=5)[0].detach().numpy()       # 5 + 5 + 2 rows
    np.testing.assert_allclose(chunked, reference, atol=1e-6)


@pytest.mark.slow
def test_laplace_factors_are_saved_once_and_reused(llama_run, monkeypatch):
    pytest.importorskip("laplace", reason="laplace-torch is not installed (pip install --no-deps -r requirements-laplace.txt)")
    def evaluate_laplace():
        plan = resolve_plan(parse_eval(compose(f"evaluation.eval_model_path={llama_run}", "evaluation.eval_method=laplace",
                                               "evaluation.num_samples=3", "experiment.max_eval_samples=12",
                                               "experiment.ood_task=", f"evaluation.output_dir={llama_run / 'lap'}",
                                               config_name="eval")))
        return evaluate(plan, distributed=False)[0]
    first = evaluate_laplace()
    assert (llama_run / "laplace_model" / "all_kron.safetensors").is_file()
    monkeypatch.setattr(LoraLaplace, "fit", lambda *a: pytest.fail("refitted although laplace_model/ holds the factors"))
    again = evaluate_laplace()
    assert again["metrics"]["nll"] == pytest.approx(first["metrics"]["nll"], rel=1e-6)
    assert first["label"] == "laplace" and first["settings"]["laplace_hessian"] == "kron"


@pytest.mark.slow
def test_laplace_fit_batch_size_refits_and_jacobian_rows_keep_the_numbers(llama_run, monkeypatch):
    pytest.importorskip("laplace", reason="laplace-torch is not installed (pip install --no-deps -r requirements-laplace.txt)")
    """The diagonal GGN is a plain sum over rows, so the fit's batch size leaves it unchanged (KFAC's would not: it
    adds factors batch by batch); the Jacobians' rows only bound the memory.  A changed batch size refits."""
    fits = []
    fit = LoraLaplace.fit
    monkeypatch.setattr(LoraLaplace, "fit", lambda self, loader, *a: (fits.append(loader.batch_size), fit(self, loader, *a))[1])

    def evaluate_laplace(*extra, out="lap_bs"):     # another fit's settings: another output folder (never replaced)
        plan = resolve_plan(parse_eval(compose(f"evaluation.eval_model_path={llama_run}", "evaluation.eval_method=laplace",
                                               "evaluation.laplace_hessian=diag", "experiment.max_eval_samples=12",
                                               "experiment.ood_task=", f"evaluation.output_dir={llama_run / out}",
                                               *extra, config_name="eval")))
        return evaluate(plan, distributed=False)[0]
    default = evaluate_laplace(out="lap_default")
    small = evaluate_laplace("evaluation.laplace_batch_size=5", "evaluation.laplace_jacobian_rows=1")
    again = evaluate_laplace("evaluation.laplace_batch_size=5")
    run_batch = load_run(llama_run, device="cpu").config.experiment.eval_batch_size
    assert fits == [run_batch, 5] and run_batch != 5                 # the third evaluation reused the second's fit
    assert (llama_run / "laplace_model" / "all_diag.adapter").read_text().endswith(" batch_size=5")
    assert small["settings"]["laplace_batch_size"] == 5 and "laplace_batch_size" not in default["settings"]
    for name in ("nll", "ece", "accuracy", "brier"):
        assert small["metrics"][name] == pytest.approx(default["metrics"][name], rel=1e-5, abs=1e-7)
        assert again["metrics"][name] == pytest.approx(small["metrics"][name], rel=1e-6, abs=1e-8)


def load_file_(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def ivon_first_step(clip_radius, rescale_lr, grad_scale=1.0):
    """The first update of IVON on a fixed least-squares problem (seeded), and its Hessian after the step."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(6))
    opt = make_ivon([w], lr=0.1, ess=1e4, hess_init=0.3, beta1=0.9, beta2=0.99, weight_decay=0.02,
                    clip_radius=clip_radius, rescale_lr=rescale_lr)
    x, y = torch.randn(32, 6), torch.randn(32) * grad_scale
    with opt.sampled_params(train=True):
        opt.zero_grad()
        ((x @ w - y) ** 2).mean().backward()
    opt.step()
    return w.detach().clone(), opt.param_groups[0]["hess"].clone()


def test_ivon_clip_radius_and_rescale_lr_act_as_documented():
    """With no clipping, rescale_lr multiplies the first step by (h0 + delta) exactly (the same sample, the same
    Hessian update); clip_radius bounds every element of the step by lr * radius."""
    plain, h = ivon_first_step(None, False)
    rescaled, h2 = ivon_first_step(None, True)
    torch.testing.assert_close(h, h2)
    torch.testing.assert_close(rescaled, plain * (0.3 + 0.02))
    clipped, _ = ivon_first_step(1e-3, False, grad_scale=100.0)
    unclipped, _ = ivon_first_step(None, False, grad_scale=100.0)
    assert unclipped.abs().max() > 0.1 * 1e-3 * 10 and clipped.abs().max() <= 0.1 * 1e-3 + 1e-9
    torch.testing.assert_close(clipped.abs(), torch.full_like(clipped, 0.1 * 1e-3))       # every element saturated


def test_method_ivon_defaults_are_ivon_loras_recipe():
    run = run_config(*TINY, "method=ivon")
    m = run.method
    assert (m.ivon_learning_rate, m.ivon_ess, m.ivon_hess_init, m.ivon_clip_radius, m.ivon_rescale_lr, m.ivon_weight_decay,
            m.ivon_beta2, m.ivon_train_samples, m.ivon_warmup_length) == (0.03, 1e6, 1e-3, 1e-3, False, 0.0, 0.99999, 1, 0.0)
    from swag_lora.train.methods import training_method

    def lr_schedule(run, n):
        return training_method(run).schedule(n)
    sched = lr_schedule(run, 10)        # a linear decay from the first step (no warm-up), as ivon-lora's
    assert sched(0) == pytest.approx(0.03) and sched(run.experiment.num_epochs * 10) == pytest.approx(0.0)


def test_ivon_posterior_is_its_hessian_estimate():
    """The posterior read off a trained IVON is N(params, 1 / (ess (hess + weight_decay))); samples follow it."""
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(3, 4) * 0.1), torch.nn.Parameter(torch.zeros(3))
    opt = make_ivon([w, b], lr=0.05, ess=200, hess_init=0.5, beta1=0.9, beta2=0.99, weight_decay=1e-3)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    for _ in range(20):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(x @ w.T + b, y).backward()
        opt.step()
    post = IvonPosterior.from_optimizer(opt, {"w": w, "b": b})
    hess = opt.param_groups[0]["hess"]
    assert not torch.allclose(hess, torch.full_like(hess, 0.5))            # the estimate moved off its start
    torch.testing.assert_close(post.variance(), 1 / (200 * (hess + 1e-3)))
    torch.testing.assert_close(post.mean()["w"], w.detach())
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([torch.cat([s["w"].flatten(), s["b"]]) for s in post.sample(20000, g)])
    np.testing.assert_allclose(draws.var(0).numpy(), post.variance().numpy(), rtol=0.06)


@pytest.mark.slow
def test_ivon_trains_saves_its_posterior_and_resumes_exactly(tmp_path):
    args = [*TINY, "model=tiny_llama", "method=ivon", "experiment.num_epochs=3", "method.ivon_ess=null",
            "experiment.eval_upon_save=false", "experiment.lora_dropout=0"]
    a, b = kill_and_resume(tmp_path, args)
    info = json.loads((a / "run_info.json").read_text())
    meta = json.loads((a / "ivon_model" / "ivon_posterior.json").read_text())
    assert meta["ess"] == 48 and info["base_model_epoch"] is not None                 # ess = the training rows
    h = load_file_(a / "ivon_model" / "ivon_posterior.safetensors")["hess"] / 1e-3        # hess_init: ivon-lora's 1e-3
    assert info["hess_over_init_median"] == pytest.approx(float(h.median()), rel=1e-3)
    for f in ("ivon_model/ivon_posterior.safetensors", "checkpoint/optimizer.safetensors", "checkpoint/trainable.safetensors"):
        from safetensors.torch import load_file
        x, y = load_file(str(a / f)), load_file(str(b / f))
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_every_method_through_the_evaluation_scripts_and_the_closing_table(tmp_path, llama_run):
    pytest.importorskip("laplace", reason="laplace-torch is not installed (pip install --no-deps -r requirements-laplace.txt)")
    ivon = train(tmp_path / "ivon", "model=tiny_llama", "method=ivon", "experiment.num_epochs=2", "experiment.learning_rate=0.03")
    out = tmp_path / "eval"
    env = subprocess_env(NUM_SAMPLES="2", OOD_TASK="demo", OOD_SUBTASK="shifted")
    env.pop("SLURM_JOB_ID", None)
    for script, extra in [("evaluate_laplace.bash", {"MODEL_PATH": str(llama_run), "LAPLACE_BATCH_SIZE": "4", "LAPLACE_JACOBIAN_ROWS": "1"}),
                          ("evaluate_laplace.bash", {"MODEL_PATH": str(llama_run), "LAPLACE_SUBSET": "head",
                                                     "LAPLACE_PREDICTIVE": "glm_probit", "TEMPERATURE_SCALING": "true"}),
                          ("evaluate_ivon.bash", {"MODEL_PATH": str(ivon)})]:
        p = subprocess.run(["bash", f"evaluate/{script}", f"evaluation.output_dir={out}", "experiment.max_eval_samples=24"],
                           cwd=REPO, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
    records = [json.loads(f.read_text()) for f in out.glob("*.json")]
    labels = {(r["label"], r["distribution"]) for r in records}
    assert {("laplace", "id"), ("laplace", "ood"), ("ll-laplace+ts", "id"), ("ivon", "ood")} <= labels
    assert all(np.isfinite(r["metrics"]["nll"]) for r in records) and len({f.stem for f in out.glob("*.png") if not f.stem.endswith("_selective")}) == len(records)
    assert {f.stem for f in out.glob("*_selective.png")} == {f.stem + "_selective" for f in out.glob("*.json")}
    from swag_lora.predict.evaluation import default_table
    run = run_config(*TINY, "model=tiny_llama", "method=ivon", "evaluation.table_methods=[map,ivon,ll-laplace]",
                     "evaluation.num_samples=2", "experiment.max_eval_samples=16")
    table = default_table(run, ivon)
    assert [r["label"] for r in table if r["distribution"] == "id"] == ["map", "ivon", "ll-laplace"]
    assert os.path.isdir(ivon / "laplace_model")


TINY_DISTILBERT = ("model=distilbert", "model.model_name=tiny-distilbert",
                   "+model.tiny={arch: distilbert, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, init_seed: 0}")


@pytest.mark.slow
def test_distilbert_last_layer_posteriors_cover_the_classifier_not_pre_classifier(tmp_path):
    """peft wraps DistilBERT's pre_classifier (dim -> dim) and classifier (dim -> labels): the head is the classifier."""
    rd = train(tmp_path, *TINY_DISTILBERT, "method=swag", "experiment.num_epochs=2", "method.swag_start=1",
               "method.modules_to_swag=head", "method.swag_c_steps=2", "method.swag_max_num_models=3")
    run = load_run(rd, device="cpu")
    head = run.model.head_module()
    assert head.out_features == 4                           # the demo's four labels
    assert all(".classifier." in n and "pre_classifier" not in n for n in run.model.head_tensors())
    assert set(SwagPosterior.load(rd / "swag_model").shapes) == set(run.model.head_tensors())
    for method, extra in (("swag", []), ("laplace", ["evaluation.laplace_subset=head"])):
        (record,) = evaluate(resolve_plan(parse_eval(compose(
            f"evaluation.eval_method={method}", f"evaluation.eval_model_path={rd}", "evaluation.num_samples=3",
            "experiment.max_eval_samples=24", "experiment.ood_task=", f"evaluation.output_dir={tmp_path / method}", *extra,
            config_name="eval"))))
        assert record["label"] in ("ll-swag", "ll-laplace") and 0 <= record["metrics"]["accuracy"] <= 1


def test_mc_dropout_switches_the_dropout_modules_only_unless_whole_model_is_asked():
    """scope=modules (the original's): nn.Dropout modules sample, attention dropout (applied by the attention module's
    own training flag) does not; scope=whole_model: model.train(), attention dropout too."""
    from swag_lora.model import load_model
    from swag_lora.predict.draws import dropout_on
    run = run_config(*TINY, "model=tiny_roberta")
    tok, model = load_model(run.model, run.experiment, get_task("demo"))
    attention = [m for n, m in model.named_modules() if n.endswith("attention.self")]
    for m in model.modules():                 # only the attention's dropout is left, at p = 0.5
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for a in attention:
        a.dropout.p = 0.5
    feats, coll = rows_of(type("R", (), {"tokenizer": tok, "model": model})(), n=8)
    batch = coll(feats)
    batch.pop("labels")
    model.eval()

    def two_passes(scope):
        with dropout_on(model, scope), torch.no_grad():
            assert all(m.training for m in model.modules() if type(m) is torch.nn.Dropout)
            assert all(a.training == (scope == "whole_model") for a in attention)
            return model(**batch), model(**batch)
    a, b = two_passes("modules")
    torch.testing.assert_close(a, b)                              # attention dropout stayed off
    a, b = two_passes("whole_model")
    assert (a - b).abs().max() > 1e-5                             # it samples (the tiny model's logits are ~1e-2)
    assert not any(m.training for m in model.modules())           # restored


def test_a_tiny_models_seed_draws_its_lora_initialisation_and_not_its_base_weights():
    """The tiny base model is drawn from its own stream (init_seed); LoRA's A matrices from the run's seed after it.
    Before, init_seed reseeded the global stream, so every seed of a tiny run started from the same LoRA weights."""
    from accelerate.utils import set_seed

    from swag_lora.model import load_model
    run = run_config(*TINY, "model=tiny_llama")
    weights = []
    for seed in (0, 1, 0):
        set_seed(seed)
        _, model = load_model(run.model, run.experiment, get_task("demo"))
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    lora_a = [n for n in weights[0] if "lora_A" in n]
    base = [n for n in weights[0] if "lora_" not in n and "head" not in n]
    assert lora_a and base
    assert all(not torch.equal(weights[0][n], weights[1][n]) for n in lora_a)
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in base)
    assert all(torch.equal(weights[0][n], weights[2][n]) for n in weights[0])
