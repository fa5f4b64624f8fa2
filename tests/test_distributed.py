"""Real 2-process DDP on CPU (gloo): the posterior equals the single-process one with the same global
batch, logged losses are means (not sums) over processes, and both ranks use one run directory."""
import csv
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY, subprocess_env
from safetensors.torch import load_file

pytestmark = pytest.mark.slow   # trains or launches processes

ARGS = [*TINY, "method=swag", "model=tiny_llama", "experiment.lora_dropout=0", "experiment.eval_batch_size=12", "experiment.num_epochs=3", "method.swag_start=1",
        "method.swag_c_steps=2", "method.swag_max_num_models=4", "experiment.evaluate_after_training=false"]


def _env():
    # CPU processes on any machine: on a GPU host, torch's gloo barrier would otherwise pick cuda:<local rank>
    e = subprocess_env(ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def test_two_process_ddp_equals_single_process(tmp_path):
    single = subprocess.run([sys.executable, "launch_exp_hydra.py", *ARGS, f"experiment.save_folder={tmp_path / 'one'}"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
                          "launch_exp_hydra.py", *ARGS, f"experiment.save_folder={tmp_path / 'two'}",
                          "experiment.evaluate_after_training=true", "evaluation.num_samples=2"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stdout
    assert ddp.stdout.count("| swag | id: demo") == 1        # the closing table: rank 0 alone, no deadlock
    dirs = [p.parent for p in (tmp_path / "two").rglob("config.yaml")]
    assert len(dirs) == 1, dirs                      # every rank wrote to the same run directory
    one = next(p.parent for p in (tmp_path / "one").rglob("config.yaml"))
    assert dirs[0].relative_to(tmp_path / "two") == one.relative_to(tmp_path / "one")
    a = load_file(str(one / "swag_model" / "swag_posterior.safetensors"))
    b = load_file(str(dirs[0] / "swag_model" / "swag_posterior.safetensors"))
    assert a["mean"].numel() > 1000
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    la = list(csv.DictReader(open(one / "training_log.csv")))
    lb = list(csv.DictReader(open(dirs[0] / "training_log.csv")))
    for ra, rb in zip(la, lb, strict=True):
        assert float(rb["train_loss"]) == pytest.approx(float(ra["train_loss"]), rel=1e-4)   # a mean, not a sum
        assert float(rb["val_accuracy"]) == pytest.approx(float(ra["val_accuracy"]))
        assert float(rb["val_nll"]) == pytest.approx(float(ra["val_nll"]), rel=1e-4)         # every row once


def test_two_process_evaluation_scores_every_row_once(tmp_path):
    """`accelerate launch -m swag_lora.evaluate` with 2 processes: uneven shards (37 rows in batches of 8),
    gathered by index, give the single-process probabilities."""
    import json

    import numpy as np
    p = subprocess.run([sys.executable, "launch_exp_hydra.py", *ARGS, f"experiment.save_folder={tmp_path / 'run'}"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rd = next((tmp_path / "run").rglob("config.yaml")).parent
    common = ["evaluation.eval_method=swag", f"evaluation.eval_model_path={rd}", "evaluation.num_samples=3",
              "experiment.max_eval_samples=37", "experiment.eval_batch_size=8", "experiment.ood_task="]
    one = subprocess.run([sys.executable, "-m", "swag_lora.evaluate", *common, f"evaluation.output_dir={tmp_path / 'one'}"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534",
                          "-m", "swag_lora.evaluate", *common, f"evaluation.output_dir={tmp_path / 'two'}"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    name = "swag_s3_scale1_id_demo_test"
    a, b = np.load(tmp_path / "one" / f"{name}.npz"), np.load(tmp_path / "two" / f"{name}.npz")
    assert a["probs"].shape == (37, 4)
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    rec = json.loads((tmp_path / "two" / f"{name}.json").read_text())
    assert rec["settings"]["num_processes"] == 2 and rec["num_examples"] == 37


def test_a_process_without_a_validation_batch_does_not_hang(tmp_path):
    """5 validation rows in batches of 64 under 2 processes: one process has no batch of its own (it runs a padding
    batch, so DDP's collectives in the forward pass match); the run finishes and validates like one process."""
    args = [*ARGS, "experiment.max_eval_samples=5", "experiment.eval_batch_size=64", "experiment.num_epochs=2"]
    single = subprocess.run([sys.executable, "launch_exp_hydra.py", *args, f"experiment.save_folder={tmp_path / 'one'}"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", "29535", "launch_exp_hydra.py", *args,
                          f"experiment.save_folder={tmp_path / 'two'}"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    la = list(csv.DictReader(open(next((tmp_path / "one").rglob("training_log.csv")))))
    lb = list(csv.DictReader(open(next((tmp_path / "two").rglob("training_log.csv")))))
    for ra, rb in zip(la, lb, strict=True):
        assert float(rb["val_loss"]) == pytest.approx(float(ra["val_loss"]), rel=1e-4)
        assert float(rb["val_accuracy"]) == pytest.approx(float(ra["val_accuracy"]))


def test_two_process_sigkill_and_resume_with_dropout_equals_uninterrupted(tmp_path):
    """Each process saves and restores its own random state: with LoRA dropout the two processes' streams differ
    (their batches have different lengths), so restoring rank 0's state everywhere would change the result."""
    args = [a for a in ARGS if not a.startswith("experiment.lora_dropout")] + ["experiment.lora_dropout=0.3",
                                                                               "experiment.num_epochs=4"]

    def launch(save, env=None):
        return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", "29536", "launch_exp_hydra.py", *args,
                               f"experiment.save_folder={save}"], cwd=REPO, env={**_env(), **(env or {})},
                              capture_output=True, text=True, timeout=600)
    ref = launch(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = launch(tmp_path / "kill", {"SWAG_LORA_TEST_KILL_AFTER_EPOCH": "2"})
    assert killed.returncode != 0
    resumed = launch(tmp_path / "kill")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint: epoch 3" in resumed.stdout
    a = next((tmp_path / "ref").rglob("run_info.json")).parent
    b = next((tmp_path / "kill").rglob("run_info.json")).parent
    for f in ("checkpoint/swag_posterior.safetensors", "checkpoint/trainable.safetensors"):   # the last epoch's state
        pa, pb = load_file(str(a / f)), load_file(str(b / f))
        for k in pa:
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6)


def _fsdp2(save, *extra, env=None, port=29537):
    """The production loop on 2 CPU processes with parameters sharded by torch's FSDP2 (tests/helpers/fsdp2_train.py)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                           "tests/helpers/fsdp2_train.py", *ARGS, "method.force_save=1", f"experiment.save_folder={save}", *extra],
                          cwd=REPO, env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=600)


def test_fsdp2_two_processes_equal_one_process_and_resume(tmp_path):
    """FSDP2 shards every parameter (DTensors, uneven rows for the 5-row letter head): collection gathers them, SWA
    validation writes the mean into the shards, the adapters and checkpoints gather, and a resume scatters back."""
    single = subprocess.run([sys.executable, "launch_exp_hydra.py", *ARGS, "method.force_save=1",
                             f"experiment.save_folder={tmp_path / 'one'}"], cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    fsdp = _fsdp2(tmp_path / "fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    one = next((tmp_path / "one").rglob("run_info.json")).parent
    two = next((tmp_path / "fsdp").rglob("run_info.json")).parent
    for f in ("swag_model/swag_posterior.safetensors", "swag_model/adapter_model.safetensors",
              "base_model/adapter_model.safetensors", "base_model/letter_head.safetensors",
              "checkpoint/trainable.safetensors", "checkpoint/optimizer.safetensors"):
        a, b = load_file(str(one / f)), load_file(str(two / f))
        assert a.keys() == b.keys(), f
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    la = list(csv.DictReader(open(one / "training_log.csv")))
    lb = list(csv.DictReader(open(two / "training_log.csv")))
    for ra, rb in zip(la, lb, strict=True):
        for key in ("val_loss", "swa_val_loss"):       # SWA validation used the mean written into the shards
            assert (ra[key] == rb[key] == "") or float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-4), key
    killed = _fsdp2(tmp_path / "resumed", env={"SWAG_LORA_TEST_KILL_AFTER_EPOCH": "2"}, port=29538)
    assert killed.returncode != 0
    resumed = _fsdp2(tmp_path / "resumed", port=29539)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint: epoch 3" in resumed.stdout
    three = next((tmp_path / "resumed").rglob("run_info.json")).parent
    for f in ("swag_model/swag_posterior.safetensors", "checkpoint/trainable.safetensors"):
        a, b = load_file(str(two / f)), load_file(str(three / f))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_untested_backends_are_refused_in_one_line():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from swag_lora.config import ConfigError
    from swag_lora.distributed import refuse_untested_backends
    with pytest.raises(ConfigError, match=r"^DeepSpeed \(ZeRO-2/3\) is untested"):
        refuse_untested_backends(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1)))
    with pytest.raises(ConfigError, match=r"^FSDP1 is untested"):
        refuse_untested_backends(fsdp)
    fsdp.state.fsdp_plugin.fsdp_version = 2
    refuse_untested_backends(fsdp)
    refuse_untested_backends(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU))


def test_blob_on_two_processes_trains_and_resumes_exactly(tmp_path):
    """BLoB under DDP: rho is a parameter of the wrapped model (its NLL gradient all-reduced), the KL step is the same
    closed form on every process, each process's flipout stream is its own and is checkpointed; a SIGKILL and a
    relaunch end with the same posterior as an uninterrupted run."""
    args = [*TINY, "method=blob", "model=tiny_llama", "experiment.eval_batch_size=12", "experiment.num_epochs=3",
            "experiment.evaluate_after_training=false", "experiment.learning_rate=1e-2"]

    def launch(save, env=None):
        return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", "29538", "launch_exp_hydra.py", *args, f"experiment.save_folder={save}"],
                              cwd=REPO, env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=600)
    ref = launch(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert launch(tmp_path / "kill", {"SWAG_LORA_TEST_KILL_AFTER_EPOCH": "2"}).returncode != 0
    resumed = launch(tmp_path / "kill")
    assert resumed.returncode == 0 and "resumed from checkpoint: epoch 3" in resumed.stdout, resumed.stderr[-3000:]
    a, b = (next((tmp_path / d).rglob("run_info.json")).parent for d in ("ref", "kill"))
    pa, pb = (load_file(str(d / "blob_model" / "blob_posterior.safetensors")) for d in (a, b))
    assert pa.keys() == pb.keys() and all(torch.isfinite(v).all() for v in pa.values())
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6)
