"""SwagPosterior against independent numpy computations and torch.optim.swa_utils."""
import json
import math

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from swag_lora.posteriors.swag import SwagPosterior


def snapshots(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"a.lora_A": torch.randn(3, 4, generator=g), "b.bias": torch.randn(5, generator=g)} for _ in range(n)]


def flat(snap):
    return np.concatenate([snap["a.lora_A"].numpy().ravel(), snap["b.bias"].numpy().ravel()]).astype(np.float64)


@pytest.mark.parametrize("n,k", [(1, 3), (3, 3), (7, 3), (5, 10)])
def test_moments_and_deviations_match_numpy(n, k):
    snaps = snapshots(n)
    post = SwagPosterior.from_named_tensors(snaps[0], max_rank=k)
    for s in snaps:
        post.collect(s)
    X = np.stack([flat(s) for s in snaps])
    mean = X.mean(0)
    var = np.maximum((X ** 2).mean(0) - mean ** 2, 1e-30)
    # deviation i = theta_i - (mean of the first i+1 snapshots), keep the last k, oldest first
    devs = np.stack([X[i] - X[: i + 1].mean(0) for i in range(n)])[-k:]
    got_mean = np.concatenate([t.numpy().ravel() for t in post.mean().values()])
    got_var = np.concatenate([t.numpy().ravel() for t in post.variance().values()])
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_var, var, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(post.deviations().numpy(), devs, rtol=1e-4, atol=1e-5)
    assert post.rank == min(n, k) and post.num_snapshots == n
    assert post.mean()["a.lora_A"].shape == (3, 4)


def test_ring_buffer_drops_oldest_column():
    snaps = snapshots(5)
    post = SwagPosterior.from_named_tensors(snaps[0], max_rank=2)
    for s in snaps:
        post.collect(s)
    X = np.stack([flat(s) for s in snaps])
    expected = np.stack([X[3] - X[:4].mean(0), X[4] - X.mean(0)])
    np.testing.assert_allclose(post.deviations().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_swa_mean_equals_averaged_model():
    """The same iterates through torch.optim.swa_utils.AveragedModel give the same mean."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    swa = AveragedModel(model)
    post = SwagPosterior.from_named_tensors(dict(model.named_parameters()), max_rank=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(6):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        swa.update_parameters(model)
        post.collect(dict(model.named_parameters()))
    ref = dict(swa.module.named_parameters())
    for name, mu in post.mean().items():
        torch.testing.assert_close(mu, ref[name].detach(), rtol=1e-5, atol=1e-6)


def test_scale_zero_returns_mean():
    snaps = snapshots(4)
    post = SwagPosterior.from_named_tensors(snaps[0], max_rank=3)
    for s in snaps:
        post.collect(s)
    draw = post.sample(scale=0.0, generator=torch.Generator().manual_seed(1))
    for name, mu in post.mean().items():
        torch.testing.assert_close(draw[name], mu)


@pytest.mark.parametrize("cov", [True, False])
def test_sample_covariance_is_diag_plus_low_rank(cov):
    """Empirical covariance of many draws equals scale*(diag(var) + D^T D/(K-1)) (or the diagonal only)."""
    g = torch.Generator().manual_seed(0)
    snaps = [{"w": torch.randn(6, generator=g) * torch.arange(1, 7)} for _ in range(6)]
    post = SwagPosterior.from_named_tensors(snaps[0], max_rank=4)
    for s in snaps:
        post.collect(s)
    scale = 0.5
    gen = torch.Generator().manual_seed(123)
    draws = np.stack([post.sample(scale=scale, cov=cov, generator=gen)["w"].numpy() for _ in range(40000)]).astype(np.float64)
    X = np.stack([s["w"].numpy() for s in snaps]).astype(np.float64)
    mean = X.mean(0)
    var = np.maximum((X ** 2).mean(0) - mean ** 2, 1e-30)
    D = np.stack([X[i] - X[: i + 1].mean(0) for i in range(6)])[-4:]
    K = D.shape[0]
    expected = scale * (np.diag(var) + (D.T @ D / (K - 1) if cov else 0))
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.05 * np.sqrt(np.diag(expected)).max())
    emp = np.cov(draws, rowvar=False)
    np.testing.assert_allclose(emp, expected, atol=0.04 * np.abs(expected).max())


def test_low_rank_term_divides_by_columns_held_not_max():
    """With 3 columns held of a maximum 20, the low-rank factor is 1/sqrt(3-1)."""
    snaps = [{"w": torch.tensor([float(i), 2.0 * i * i])} for i in range(3)]
    post = SwagPosterior.from_named_tensors(snaps[0], max_rank=20)
    for s in snaps:
        post.collect(s)
    g1 = torch.Generator().manual_seed(5)
    draw = post.sample(scale=1.0, cov=True, generator=g1)["w"]
    g2 = torch.Generator().manual_seed(5)
    z1 = torch.randn(2, generator=g2)
    z2 = torch.randn(3, generator=g2)
    var = torch.stack(list(post.variance().values())).reshape(-1)
    expected = post.mean()["w"] + var.sqrt() * z1 + post.deviations().T @ z2 / math.sqrt(2)
    torch.testing.assert_close(draw, expected)


def test_low_rank_term_divides_by_max_rank_minus_one_as_the_original():
    """The original divides by sqrt(max_num_models - 1) however many columns are held, and uses one column."""
    snaps = [{"w": torch.tensor([float(i), 2.0 * i * i])} for i in range(3)]
    post = SwagPosterior.from_named_tensors(snaps[0], max_rank=20)
    for s in snaps:
        post.collect(s)
    draw = post.sample(scale=1.0, cov=True, generator=torch.Generator().manual_seed(5), k=20)["w"]
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(2, generator=g), torch.randn(3, generator=g)
    var = post.variance()["w"]
    torch.testing.assert_close(draw, post.mean()["w"] + var.sqrt() * z1 + post.deviations().T @ z2 / math.sqrt(19))
    single = SwagPosterior.from_named_tensors(snaps[0], max_rank=5)
    single.collect(snaps[2])
    a = single.sample(scale=1.0, cov=True, generator=torch.Generator().manual_seed(1), k=5)["w"]
    b = single.sample(scale=1.0, cov=False, generator=torch.Generator().manual_seed(1))["w"]
    assert single.rank == 1 and torch.allclose(a, b)   # the one deviation of a single snapshot is 0: same draw
    with_held = single.sample(scale=1.0, cov=True, generator=torch.Generator().manual_seed(1))["w"]
    torch.testing.assert_close(with_held, b)          # k = columns held = 1: no low-rank term


def test_diagonal_posterior_keeps_the_moments_and_no_columns():
    snaps = snapshots(6)
    full = SwagPosterior.from_named_tensors(snaps[0], max_rank=3)
    diag = SwagPosterior.from_named_tensors(snaps[0], max_rank=3, keep_deviations=False)
    for s in snaps:
        full.collect(s)
        diag.collect(s)
    for n in full.shapes:
        torch.testing.assert_close(diag.mean()[n], full.mean()[n])
        torch.testing.assert_close(diag.variance()[n], full.variance()[n])
    assert diag.rank == 0 and diag.deviations().shape[0] == 0 and diag.nbytes() < full.nbytes()
    a = diag.sample(scale=0.5, cov=False, generator=torch.Generator().manual_seed(2))
    b = full.sample(scale=0.5, cov=False, generator=torch.Generator().manual_seed(2))
    for n in a:
        torch.testing.assert_close(a[n], b[n])
    with pytest.raises(ValueError, match="diagonal"):
        diag.sample(scale=0.5, cov=True)


def test_state_round_trip_and_write(tmp_path):
    snaps = snapshots(5)
    post = SwagPosterior.from_named_tensors(snaps[0], max_rank=3)
    for s in snaps:
        post.collect(s)
    post.save(tmp_path)
    back = SwagPosterior.load(tmp_path)
    assert back.num_snapshots == 5 and back.rank == 3
    torch.testing.assert_close(back.deviations(), post.deviations())
    a = post.sample(scale=0.5, generator=torch.Generator().manual_seed(9))
    b = back.sample(scale=0.5, generator=torch.Generator().manual_seed(9))
    for n in a:
        torch.testing.assert_close(a[n], b[n])
    # collecting after a reload continues the ring buffer exactly as before
    extra = snapshots(1, seed=7)[0]
    post.collect(extra)
    back.collect(extra)
    torch.testing.assert_close(back.deviations(), post.deviations())
    model = {n: torch.zeros_like(t, dtype=torch.float16) for n, t in snaps[0].items()}
    SwagPosterior.write_(model, a)
    torch.testing.assert_close(model["b.bias"], a["b.bias"].half())


def test_shape_mismatch_is_an_error():
    post = SwagPosterior({"w": (3,)}, max_rank=2)
    with pytest.raises(ValueError, match="shape"):
        post.collect({"w": torch.zeros(4)})
    with pytest.raises(KeyError, match="missing.*'w'"):
        post.collect({"v": torch.zeros(3)})
    assert post.num_snapshots == 0, "a refused snapshot must leave the posterior as it was"
    with pytest.raises(RuntimeError, match="no snapshots"):
        post.sample()
    # a snapshot in another dtype is cast on the way in (bf16 weights, fp32 posterior)
    post.collect({"w": torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)})
    torch.testing.assert_close(post.mean()["w"], torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("scale,cov", [(0.5, True), (0.5, False), (0.0, True)])
def test_sample_in_place_equals_sample_then_write(scale, cov):
    """sample_ (reused buffer, one batched copy) gives the same draws as sample + write_, call after call."""
    snaps = snapshots(5)
    post = SwagPosterior.from_named_tensors(snaps[0], max_rank=3)
    for s in snaps:
        post.collect(s)
    by_hand = {n: torch.zeros_like(t) for n, t in snaps[0].items()}
    in_place = {n: torch.zeros_like(t, dtype=torch.float64) for n, t in snaps[0].items()}
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    previous = None
    for _ in range(3):
        SwagPosterior.write_(by_hand, post.sample(scale=scale, cov=cov, generator=g1))
        post.sample_(in_place, scale, cov=cov, generator=g2)
        for n in by_hand:
            torch.testing.assert_close(in_place[n], by_hand[n].double())
        if scale and previous is not None:
            assert not torch.equal(previous, in_place["a.lora_A"]), "the buffer must be redrawn on every call"
        previous = in_place["a.lora_A"].clone()
    with pytest.raises(ValueError, match="shape"):
        post.sample_({**in_place, "a.lora_A": torch.zeros(1, 1)}, generator=g2)


def test_variance_of_weights_that_move_by_1e_5_keeps_its_precision():
    """Weights near 1 that move by ~1e-5 between snapshots: the fp32 second moment E[x^2] - mu^2 cancels to noise
    (a median error of tens of percent), the running sum of squared deviations does not."""
    rng = np.random.default_rng(0)
    X = (1.0 + 1e-5 * rng.standard_normal((30, 5000))).astype(np.float32)
    post = SwagPosterior({"w": (5000,)}, max_rank=5)
    for x in X:
        post.collect({"w": torch.from_numpy(x)})
    exact = X.astype(np.float64).var(0)                      # numpy, float64, on the fp32 values the posterior saw
    got = post.variance()["w"].double().numpy()
    assert np.median(np.abs(got / exact - 1)) < 5e-3        # 0.1% measured; the old way: 100%
    Xt = torch.from_numpy(X)                                  # what the old fp32 second moment gave
    old = (Xt.square().mean(0) - Xt.mean(0).square()).clamp_min(1e-30).double().numpy()
    assert np.median(np.abs(old / exact - 1)) > 0.3


def test_a_format_1_posterior_loads_with_its_variance(tmp_path):
    from safetensors.torch import save_file
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.standard_normal((6, 8)).astype(np.float32))
    post = SwagPosterior({"w": (8,)}, max_rank=3)
    for x in X:
        post.collect({"w": x})
    tensors, meta = post.state_dict()
    v1 = {"mean": tensors["mean"], "sq_mean": X.square().mean(0), "deviations": tensors["deviations"]}
    save_file(v1, str(tmp_path / "swag_posterior.safetensors"))
    (tmp_path / "swag_posterior.json").write_text(json.dumps({**meta, "format_version": 1}))
    old = SwagPosterior.load(tmp_path)
    torch.testing.assert_close(old.variance()["w"], post.variance()["w"], rtol=1e-4, atol=1e-6)


def test_every_posterior_shares_sample_n_generator_save_and_load(tmp_path):
    """SwagPosterior, IvonPosterior and LoraAPosterior: sample(n, generator) gives n draws, the same under the same
    seed, and again after save/load."""
    from swag_lora.posteriors.ivon import IvonPosterior
    from swag_lora.posteriors.lora_gaussian import LoraAPosterior
    swag = SwagPosterior({"w": (4,)}, max_rank=3)
    for x in torch.randn(5, 4, generator=torch.Generator().manual_seed(0)):
        swag.collect({"w": x})
    ivon = IvonPosterior({"w": (4,)}, torch.zeros(4), torch.full((4,), 0.5), ess=10.0, weight_decay=0.1)
    lora = LoraAPosterior({"w": torch.zeros(2, 2)}, {"w": torch.ones(2, 2)})
    for post, save, load in ((swag, lambda f: swag.save(f), SwagPosterior.load),
                             (ivon, lambda f: ivon.save(f), IvonPosterior.load),
                             (lora, lambda f: lora.save(f, "p"), lambda f: LoraAPosterior.load(f, "p"))):
        folder = tmp_path / type(post).__name__
        save(folder)
        back = load(folder)
        a, b = post.sample(3, torch.Generator().manual_seed(4)), back.sample(3, torch.Generator().manual_seed(4))
        assert len(a) == 3 and not torch.equal(a[0]["w"], a[1]["w"])
        for x, y in zip(a, b):
            torch.testing.assert_close(x["w"], y["w"])
    with pytest.raises(TypeError, match="give the scale by name"):
        swag.sample(0.5)
