"""BLoB and TFB against independent computations: the KL (torch.distributions), the flipout estimator (direct sampling),
the KL weight schedule (its closed form), the saved posterior's samples, TFB's scale constraint on a model whose
validation NLL is computed exactly, and both end to end through the evaluation scripts."""
import json
import math
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, kill_and_resume, run_config, subprocess_env

from swag_lora.posteriors.blob import BlobVariational, flipout_noise, gaussian_kl, kl_weight
from swag_lora.posteriors.lora_gaussian import LoraAPosterior
from swag_lora.posteriors.tfb import search_scale


def test_blob_kl_is_torch_distributions_kl():
    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(4, 7, generator=g), torch.rand(4, 7, generator=g) * 0.3 + 0.01
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 0.2)).sum()
    torch.testing.assert_close(gaussian_kl(mu, sigma, 0.2), ref)


def test_blob_kl_step_is_sgd_on_the_weighted_kl_by_autograd():
    """The closed-form KL gradients of kl_step equal autograd's: A -= lr w dKL/dA, rho -= lr (dNLL/drho + w dKL/drho)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    model = torch.nn.Module()
    model.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(5, 2, bias=False)})
    model.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(2, 3, bias=False)})
    model.base = layer
    blob = BlobVariational(model, init_std=0.01, prior_std=0.2)
    a, rho = model.lora_A["default"].weight, blob.rho[0]
    nll_grad = torch.randn_like(rho)
    a0, rho0 = a.detach().clone(), rho.detach().clone()
    # autograd reference
    a_ref, rho_ref = a0.clone().requires_grad_(), rho0.clone().requires_grad_()
    gaussian_kl(a_ref, rho_ref ** 2, 0.2).backward()
    lr, w = 0.05, 0.3
    rho.grad = nll_grad.clone()
    blob.kl_step(lr, w)
    torch.testing.assert_close(a.detach(), a0 - lr * w * a_ref.grad)
    torch.testing.assert_close(rho.detach(), rho0 - lr * (nll_grad + w * rho_ref.grad))
    assert rho.grad is None


def test_flipout_noise_has_the_mean_and_variance_of_direct_weight_samples():
    """For a fixed input, B (A_s - A) x over A_s ~ N(A, sigma^2) and flipout's noise share mean 0 and variance
    sum_k B_jk^2 sum_i sigma_ki^2 x_i^2 (closed form), checked by sampling both."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, generator=g).double()
    sigma = (torch.rand(3, 6, generator=g) * 0.5 + 0.1).double()
    B = torch.randn(4, 3, generator=g).double()
    # 400 calls (one E each, as in a forward pass) of 100 rows (signs per row)
    flip = torch.cat([flipout_noise(x.expand(100, 6).contiguous(), sigma, B, generator=g) for _ in range(400)])
    direct = torch.stack([B @ ((sigma * torch.randn(3, 6, generator=g, dtype=torch.float64)) @ x[0]) for _ in range(4000)])
    exact = (B ** 2) @ ((sigma ** 2) @ (x[0] ** 2))
    np.testing.assert_allclose(flip.mean(0).numpy(), 0, atol=4 * math.sqrt(exact.max().item() / 400))
    np.testing.assert_allclose(flip.var(0).numpy(), exact.numpy(), rtol=0.05)
    np.testing.assert_allclose(direct.var(0).numpy(), exact.numpy(), rtol=0.1)


def test_blob_kl_weight_is_the_exponential_schedule_and_sums_to_one_per_cycle():
    M = 7
    weights = [kl_weight(g, M) for g in range(1, M + 1)]
    assert weights == pytest.approx([2 ** i / (2 ** (M + 1) - 1) for i in range(1, M + 1)])
    assert sum(weights) == pytest.approx(1 - 1 / (2 ** (M + 1) - 1))
    assert kl_weight(M + 1, M) == pytest.approx(weights[0])          # the next cycle starts again
    assert kl_weight(3, M, reweighting=False) == pytest.approx(1 / M)
    assert kl_weight(500, 1000) > 0 and math.isfinite(kl_weight(1000, 1000))   # no overflow at long cycles


def test_saved_posterior_reproduces_its_samples_under_a_seed(tmp_path):
    g = torch.Generator().manual_seed(2)
    post = LoraAPosterior({"a": torch.randn(2, 5, generator=g), "b": torch.randn(3, 4, generator=g)},
                          {"a": torch.rand(2, 5, generator=g), "b": torch.rand(3, 4, generator=g)},
                          {"b": torch.linalg.qr(torch.randn(3, 3, generator=g))[0]}, meta={"method": "test"})
    post.save(tmp_path, "p")
    back = LoraAPosterior.load(tmp_path, "p")
    for x, y in zip(post.sample(3, torch.Generator().manual_seed(7)), back.sample(3, torch.Generator().manual_seed(7))):
        for k in x:
            torch.testing.assert_close(x[k], y[k])
    draws = torch.stack([s["b"] for s in back.sample(20000, torch.Generator().manual_seed(3))])
    cov = np.cov((draws - post.means["b"])[:, :, 0].numpy(), rowvar=False)    # column 0: R diag(S[:, 0]^2) R^T
    R, S = post.rotations["b"], post.stds["b"][:, 0]
    np.testing.assert_allclose(cov, (R @ torch.diag(S ** 2) @ R.T).numpy(), atol=0.02)
    (tmp_path / "p.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="p.safetensors is not a usable LoRA-A posterior"):
        LoraAPosterior.load(tmp_path, "p")


def test_tfb_scale_meets_the_constraint_and_the_next_scale_up_does_not():
    """A metric known exactly (NLL of a 2-class logit whose scale shrinks with s, so NLL grows in s): the search's s is
    feasible, s (1 + 1e-2) is not, and s is the closed-form boundary within the bisection's resolution."""
    def nll(s):
        return math.log1p(math.exp(-2.0 / (1.0 + 30 * s * s)))
    base = nll(0.0)
    tol = 0.05
    boundary = math.sqrt((2.0 / -math.log(math.expm1(base * (1 + tol))) - 1) / 30)      # nll(boundary) = base (1 + tol)
    s, trace = search_scale(nll, lambda v: v <= base * (1 + tol), upper=0.01, steps=30)
    assert nll(s) <= base * (1 + tol) and nll(s * (1 + 1e-2)) > base * (1 + tol)
    assert s == pytest.approx(boundary, rel=1e-6)
    assert all(good == (value <= base * (1 + tol)) for _, value, good in trace)


def test_tfb_posterior_noise_is_isotropic_in_the_column_space_of_b():
    """B (A_s - A) = s U Z: its covariance over samples is s^2 U U^T per column (TFB's low-rank isotropic Gaussian)."""
    from swag_lora.posteriors.tfb import tfb_posterior
    g = torch.Generator().manual_seed(4)
    model = torch.nn.Module()
    model.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(5, 3, bias=False)})
    model.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(3, 6, bias=False)})
    with torch.no_grad():
        model.lora_B["default"].weight.copy_(torch.randn(6, 3, generator=g))
    named = dict(model.named_parameters())
    post = tfb_posterior(model, named)
    B = model.lora_B["default"].weight.detach()
    U = torch.linalg.svd(B, full_matrices=False)[0]
    s = 0.3
    noise = torch.stack([(B @ (d["lora_A.default.weight"] - post.means["lora_A.default.weight"]))[:, 0]
                         for d in post.sample(20000, torch.Generator().manual_seed(5), scale=s)])
    np.testing.assert_allclose(np.cov(noise.numpy(), rowvar=False), (s ** 2 * U @ U.T).numpy(), atol=0.01)


# ---------------------------------------------------------------- end to end
BLOB_ARGS = ("model=tiny_roberta", "method=blob", "experiment.num_epochs=2", "experiment.learning_rate=1e-2")


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory):
    from swag_lora.train.loop import train
    return train(run_config(*TINY, *BLOB_ARGS, f"experiment.save_folder={tmp_path_factory.mktemp('blob')}",
                            "experiment.eval_upon_save=false"))


@pytest.mark.slow
def test_blob_trains_its_posterior_and_resumes_exactly(blob_run, tmp_path):
    info = json.loads((blob_run / "run_info.json").read_text())
    post = LoraAPosterior.load(blob_run / "blob_model", "blob_posterior")
    assert post.meta["method"] == "blob" and info["blob_sigma_median"] > 0
    assert all(n.endswith("lora_A.default.weight") for n in post.means)
    args = [*TINY, *BLOB_ARGS, "experiment.eval_upon_save=false", "experiment.num_epochs=3"]
    a, b = kill_and_resume(tmp_path, args)
    from safetensors.torch import load_file
    x, y = load_file(str(a / "blob_model" / "blob_posterior.safetensors")), load_file(str(b / "blob_model" / "blob_posterior.safetensors"))
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_blob_and_tfb_end_to_end_through_the_evaluation_scripts(blob_run, tmp_path):
    env = subprocess_env(MODEL_PATH=str(blob_run), NUM_SAMPLES="3", OOD_TASK="demo", OOD_SUBTASK="shifted")
    for script, extra in (("evaluate_blob.bash", {}), ("evaluate_blob.bash", {"BLOB_MEAN": "true"}),
                          ("evaluate_tfb.bash", {"TFB_TOLERANCE": "0.05"})):
        out = tmp_path / script.split(".")[0] / extra.get("BLOB_MEAN", "s")
        p = subprocess.run(["bash", f"evaluate/{script}", "experiment.max_eval_samples=24", f"evaluation.output_dir={out}"],
                           cwd=REPO, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        records = {json.loads(f.read_text())["distribution"]: json.loads(f.read_text()) for f in out.glob("*.json")}
        assert set(records) == {"id", "ood"}
        r = records["id"]
        assert r["label"] == {"evaluate_blob.bash": "blob-mean" if extra else "blob", "evaluate_tfb.bash": "tfb"}[script]
        assert r["settings"]["num_draws"] == (1 if extra.get("BLOB_MEAN") else 3)
        assert 0 <= records["ood"]["metrics"]["auroc_entropy"] <= 1
        if script == "evaluate_tfb.bash":
            sigma = r["settings"]["tfb_sigma"]
            saved = json.loads((blob_run / "tfb_model" / "nll_tol0.05.json").read_text())
            assert sigma == saved["sigma"] > 0 and r["settings"]["tfb_tolerance"] == 0.05
            assert saved["trace"][-1][1] <= saved["map_metric"] * 1.05 or any(not t[2] for t in saved["trace"])
            lines = [line.split() for line in p.stdout.splitlines() if line.startswith("[swag-lora] tfb search:")]
            printed = [x for w in lines for x in (float(w[4].rstrip(",")), float(w[7]))]    # progress, as saved
            assert printed == pytest.approx([0.0, saved["map_metric"]] + [x for s, v, _ in saved["trace"] for x in (s, v)],
                                            rel=1e-5)
