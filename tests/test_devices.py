"""bf16 training and the posterior on every device this machine has.

On the CPU (CI) the bf16 run checks the half-precision path end to end; on a machine with a GPU the same
tests run on CUDA, and the CUDA-only ones check that the posterior there equals the one on the CPU."""
import numpy as np
import pytest
import torch
from test_train_e2e import train_run

from swag_lora.posteriors.swag import SwagPosterior

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (these run when a GPU is lent)")


@pytest.mark.slow
def test_bf16_training_keeps_swag_tensors_fp32_and_evaluates(tmp_path):
    """model.dtype=bfloat16 + bf16 autocast: the base weights are bf16, LoRA and head stay fp32 (the posterior
    averages fp32 values), the saved SWAG adapter is the posterior mean, and the BMA is a proper distribution
    that is reproducible by seed."""
    from swag_lora.data import get_task, load_splits
    from swag_lora.data.encode import Collator, encode
    from swag_lora.predict.draws import score, swag_samples
    from swag_lora.predict.evaluation import load_run
    rd, cfg = train_run(tmp_path, "model=tiny_llama", "model.dtype=bfloat16", "experiment.mixed_precision=bf16",
                        "experiment.num_epochs=3", "method.swag_start=1", "method.swag_max_num_models=3",
                        "method.force_save=1")   # the posterior of epoch 3 is kept (new minimum or forced)
    run = load_run(rd)   # on the GPU when there is one
    dtypes = {p.dtype for n, p in run.model.named_parameters() if "lora_" not in n and "head" not in n}
    assert dtypes == {torch.bfloat16}
    assert {t.dtype for t in run.named.values()} == {torch.float32}
    post = SwagPosterior.load(rd / "swag_model", device=next(run.model.parameters()).device)
    assert post.num_snapshots == 2
    run.model.load_adapter(rd / "swag_model")
    for name, mu in post.mean().items():
        torch.testing.assert_close(run.named[name].detach(), mu)
    feats = encode(load_splits("demo", roles=("test",)).test[:24], run.tokenizer, run.model.arch, get_task("demo"), 64)
    coll = Collator(run.tokenizer.pad_token_id, run.model.arch, run.model.num_choices, run.tokenizer.padding_side)
    a = score(run.model, feats, coll, 8, swag_samples(post, run.named, 3, 0.5, seed=3), restore=run.named)
    b = score(run.model, feats, coll, 8, swag_samples(post, run.named, 3, 0.5, seed=3), restore=run.named)
    assert a.shape == (3, 24, run.model.num_choices) and np.isfinite(a).all()
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 0, "two samples gave identical predictions"


@needs_cuda
def test_posterior_on_cuda_equals_cpu(tmp_path):
    g = torch.Generator().manual_seed(0)
    snaps = [{"a": torch.randn(3, 4, generator=g), "b": torch.randn(7, generator=g)} for _ in range(6)]
    cpu = SwagPosterior.from_named_tensors(snaps[0], max_rank=4)
    gpu = SwagPosterior.from_named_tensors({n: t.cuda() for n, t in snaps[0].items()}, max_rank=4)
    assert gpu._mean.is_cuda
    for s in snaps:
        cpu.collect(s)
        gpu.collect({n: t.cuda() for n, t in s.items()})
    torch.testing.assert_close(gpu.deviations().cpu(), cpu.deviations())
    for (n, m_cpu), m_gpu in zip(cpu.mean().items(), gpu.mean().values()):
        torch.testing.assert_close(m_gpu.cpu(), m_cpu)
    for v_cpu, v_gpu in zip(cpu.variance().values(), gpu.variance().values()):
        torch.testing.assert_close(v_gpu.cpu(), v_cpu)
    # samples on the GPU: reproducible by seed, written in place into CUDA tensors, saved and reloaded on the CPU
    draw1 = gpu.sample(scale=0.5, generator=torch.Generator(device="cuda").manual_seed(4))
    draw2 = gpu.sample(scale=0.5, generator=torch.Generator(device="cuda").manual_seed(4))
    target = {n: torch.zeros_like(t, device="cuda", dtype=torch.bfloat16) for n, t in snaps[0].items()}
    SwagPosterior.write_(target, draw1)
    for n in draw1:
        torch.testing.assert_close(draw1[n], draw2[n])
        torch.testing.assert_close(target[n], draw1[n].bfloat16())
    gpu.save(tmp_path)
    back = SwagPosterior.load(tmp_path)
    torch.testing.assert_close(back.deviations(), cpu.deviations())


@needs_cuda
def test_cuda_sample_covariance_is_diag_plus_low_rank():
    """The empirical covariance of GPU draws equals 0.5 * (diag(var) + D^T D / (K-1)) computed in numpy."""
    g = torch.Generator().manual_seed(0)
    snaps = [{"w": torch.randn(6, generator=g) * torch.arange(1, 7)} for _ in range(6)]
    post = SwagPosterior({"w": (6,)}, max_rank=4, device="cuda")
    for s in snaps:
        post.collect({"w": s["w"].cuda()})
    gen = torch.Generator(device="cuda").manual_seed(1)
    draws = torch.stack([post.sample(scale=0.5, generator=gen)["w"] for _ in range(40000)]).double().cpu().numpy()
    X = np.stack([s["w"].numpy() for s in snaps]).astype(np.float64)
    mean = X.mean(0)
    var = (X ** 2).mean(0) - mean ** 2
    D = np.stack([X[i] - X[: i + 1].mean(0) for i in range(6)])[-4:]
    expected = 0.5 * (np.diag(var) + D.T @ D / 3)
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.05 * np.sqrt(np.diag(expected)).max())
    np.testing.assert_allclose(np.cov(draws, rowvar=False), expected, atol=0.04 * np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_base_weights_train_swag_and_evaluate_on_the_cpu(tmp_path, quantization):
    """bitsandbytes 0.50 runs nf4 (Linear4bit) and int8 (Linear8bitLt) layers forward and backward on the CPU:
    LoRA is trained over the quantized base, SWAG collects the (fp32) LoRA + head tensors, and evaluation samples."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (requirements-dev.txt pins 0.50.2)")
    import bitsandbytes as bnb
    from conftest import compose, run_config

    from swag_lora.config import parse_eval
    from swag_lora.model import load_base_model, tiny_tokenizer
    from swag_lora.predict.evaluation import evaluate, load_run, resolve_plan
    cfg = run_config("model=tiny_llama", "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128")
    tok = tiny_tokenizer("causal")         # a local copy of a tiny Llama (4-bit blocks are 64 wide)
    load_base_model(cfg.model, "", "causal", 1, len(tok)).save_pretrained(tmp_path / "tiny-llama")
    tok.save_pretrained(tmp_path / "tiny-llama")
    rd, cfg = train_run(tmp_path, "model=tiny_llama", "model.tiny=null", f"model.model_name={tmp_path / 'tiny-llama'}",
                        f"model.quantization={quantization}", "experiment.num_epochs=3", "method.swag_start=1",
                        "method.force_save=1", "method.swag_max_num_models=3")
    run = load_run(rd, device="cpu")
    layer = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}[quantization]
    assert sum(isinstance(m, layer) for m in run.model.modules()) >= 4
    post = SwagPosterior.load(rd / "swag_model")
    assert post.num_snapshots == 2 and all("lora_" in n or n == "head.weight" for n in post.shapes)
    assert {t.dtype for t in run.named.values()} == {torch.float32}
    plan = resolve_plan(parse_eval(compose("evaluation.eval_method=swag", f"evaluation.eval_model_path={rd}",
                                           "evaluation.num_samples=3", "evaluation.swag_sample_scale=1.0",
                                           "experiment.max_eval_samples=24", "experiment.ood_task=", config_name="eval")))
    (res,) = evaluate(plan, runs=[run], distributed=False)
    assert np.isfinite(res["metrics"]["nll"]) and res["settings"]["num_draws"] == 3
    assert res["metrics"]["mutual_information"] > 0          # the samples differ
