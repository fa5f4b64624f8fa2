"""Pre-emption: a run killed (SIGKILL) or signalled (SIGUSR1) and resumed with the same command ends with
the same posterior and adapter as an uninterrupted run; corrupt checkpoints fall back or fail clearly."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY, subprocess_env
from safetensors.torch import load_file

pytestmark = pytest.mark.slow   # trains or launches processes

ARGS = [*TINY, "method=swag", "model=tiny_roberta", "experiment.num_epochs=4", "method.swag_start=1", "method.swag_max_num_models=3",
        "experiment.evaluate_after_training=false"]


def launch(save, *extra, env=None):
    e = subprocess_env(**(env or {}))
    return subprocess.run([sys.executable, "launch_exp_hydra.py", *ARGS, f"experiment.save_folder={save}", *extra],
                          cwd=REPO, env=e, capture_output=True, text=True, timeout=300)


def run_dir(save):
    dirs = [p.parent for p in save.rglob("config.yaml") if p.parent.name != ".hydra"]
    assert len(dirs) == 1, dirs
    return dirs[0]


def assert_same_result(a, b):
    pa, pb = load_file(str(a / "swag_model" / "swag_posterior.safetensors")), load_file(str(b / "swag_model" / "swag_posterior.safetensors"))
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6)
    assert json.loads((a / "swag_model" / "swag_posterior.json").read_text()) == json.loads((b / "swag_model" / "swag_posterior.json").read_text())
    wa, wb = load_file(str(a / "checkpoint" / "trainable.safetensors")), load_file(str(b / "checkpoint" / "trainable.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    ia, ib = json.loads((a / "run_info.json").read_text()), json.loads((b / "run_info.json").read_text())
    for key in ("base_model_epoch", "reloaded_from_epoch", "swag_saved_epoch", "num_snapshots", "global_step"):
        assert ia[key] == ib[key], key
    la = (a / "training_log.csv").read_text().splitlines()
    lb = (b / "training_log.csv").read_text().splitlines()
    assert [r.split(",")[:8] for r in la] == [r.split(",")[:8] for r in lb]   # same losses and metrics per epoch


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    save = tmp_path_factory.mktemp("ref")
    p = launch(save)
    assert p.returncode == 0, p.stderr[-2000:]
    return run_dir(save)


def test_sigkill_after_a_snapshot_then_resume_equals_uninterrupted(reference, tmp_path):
    p = launch(tmp_path, env={"SWAG_LORA_TEST_KILL_AFTER_EPOCH": "3"})
    assert p.returncode == -9, p.stderr[-2000:]
    rd = run_dir(tmp_path)
    state = json.loads((rd / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 3 and state["has_posterior"]
    assert not (rd / "run_info.json").exists()
    p = launch(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed from checkpoint: epoch 4" in p.stdout
    assert_same_result(reference, rd)


def test_signal_mid_epoch_checkpoints_exits_99_and_resumes_exactly(reference, tmp_path):
    # 48 rows / batch 8 = 6 steps per epoch: step 15 is in the middle of epoch 3
    p = launch(tmp_path, env={"SWAG_LORA_TEST_SIGNAL_AT_STEP": "15"})
    assert p.returncode == 99, p.stderr[-2000:]
    rd = run_dir(tmp_path)
    state = json.loads((rd / "checkpoint" / "state.json").read_text())
    assert (state["epoch"], state["batches_done"], state["global_step"]) == (2, 3, 15)
    p = launch(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed from checkpoint: epoch 3, batch 3, step 15" in p.stdout
    assert_same_result(reference, rd)


def test_signal_while_the_last_epoch_is_validated_exits_99_and_the_requeued_job_finishes(reference, tmp_path):
    p = launch(tmp_path, env={"SWAG_LORA_TEST_SIGNAL_IN_VALIDATION": "4"})
    assert p.returncode == 99, p.stderr[-2000:]
    assert "checkpoint written after epoch 4" in p.stdout
    rd = run_dir(tmp_path)
    assert json.loads((rd / "checkpoint" / "state.json").read_text())["epoch"] == 4
    assert not (rd / "run_info.json").exists()
    p = launch(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert_same_result(reference, rd)


def test_step_collection_before_a_mid_epoch_checkpoint_still_counts_for_that_epochs_save(tmp_path):
    # 6 steps per epoch, collection every 4 steps after epoch 2: steps 16, 20, 24; step 16 is the only one of
    # epoch 3 (the first SWA loss, so a new minimum), and a run stopped at step 17 must remember it when epoch 3
    # decides whether to save its posterior
    steps = ("method.swag_start=2", "method.swag_c_steps=4")
    p = launch(tmp_path / "ref", *steps)
    assert p.returncode == 0, p.stderr[-2000:]
    p = launch(tmp_path / "cut", *steps, env={"SWAG_LORA_TEST_SIGNAL_AT_STEP": "17"})
    assert p.returncode == 99, p.stderr[-2000:]
    assert json.loads((run_dir(tmp_path / "cut") / "checkpoint" / "state.json").read_text())["swag"]["collected_this_epoch"]
    p = launch(tmp_path / "cut", *steps)
    assert p.returncode == 0, p.stderr[-2000:]
    assert_same_result(run_dir(tmp_path / "ref"), run_dir(tmp_path / "cut"))


def test_corrupt_checkpoint_falls_back_to_previous_then_fails_clearly(reference, tmp_path):
    p = launch(tmp_path, env={"SWAG_LORA_TEST_KILL_AFTER_EPOCH": "3"})
    rd = run_dir(tmp_path)
    with open(rd / "checkpoint" / "trainable.safetensors", "r+b") as f:   # truncate: a torn write
        f.truncate(10)
    p = launch(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "is unreadable" in p.stdout and "trying the previous checkpoint" in p.stdout
    assert "resumed from checkpoint: epoch 3" in p.stdout      # the previous good one (end of epoch 2) was used
    assert_same_result(reference, rd)

    other = tmp_path / "both"
    launch(other, env={"SWAG_LORA_TEST_KILL_AFTER_EPOCH": "3"})
    rd = run_dir(other)
    for folder in ("checkpoint", "checkpoint.prev"):
        (rd / folder / "state.json").write_text("{not json")
    p = launch(other)
    assert p.returncode != 0
    assert "no usable checkpoint" in p.stderr


def test_resume_must_without_checkpoint_and_changed_config(tmp_path):
    p = launch(tmp_path, "experiment.resume=must")
    assert p.returncode == 2 and "experiment.resume=must but" in p.stderr
    launch(tmp_path / "x", env={"SWAG_LORA_TEST_KILL_AFTER_EPOCH": "2"})
    p = launch(tmp_path / "x", "experiment.learning_rate=0.01")      # another setting: another run directory
    assert p.returncode == 0 and len(list((tmp_path / "x").rglob("config.yaml"))) == 2
    rd = next(d.parent for d in (tmp_path / "x").rglob("config.yaml") if "lr0.002" in str(d))
    cfg = (rd / "config.yaml").read_text()
    (rd / "config.yaml").write_text(cfg.replace("learning_rate: 0.002", "learning_rate: 0.005"))   # an edited record
    p = launch(tmp_path / "x")
    assert p.returncode == 2 and "cannot resume: experiment.learning_rate=0.002 differs from the checkpointed run's 0.005" in p.stderr


def test_sigterm_during_the_closing_evaluation_ends_the_process_promptly(tmp_path):
    """Outside the epochs a stop signal ends the run at once (status 128 + 15), leaving no half-written file."""
    import signal
    import time
    e = subprocess_env()
    args = [a for a in ARGS if not a.startswith("experiment.evaluate_after_training")]
    proc = subprocess.Popen([sys.executable, "launch_exp_hydra.py", *args, f"experiment.save_folder={tmp_path}",
                             "evaluation.num_samples=400"], cwd=REPO, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:                     # training is done when "finished" is printed
        seen.append(line)
        if "[swag-lora] finished:" in line:
            break
    assert proc.poll() is None, f"the run ended before its closing evaluation (exit {proc.wait()}):\n{''.join(seen)}"
    time.sleep(1.0)                              # inside the closing evaluation (400 draws take tens of seconds)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    rest = proc.stdout.read()
    assert rc == 128 + signal.SIGTERM and time.time() - t0 < 15, f"exit {rc}:\n{''.join(seen)}{rest}"
    rd = run_dir(tmp_path)
    assert (rd / "run_info.json").is_file()
    assert not [p for p in rd.rglob("*") if p.name.endswith(".tmp")]
    for f in (rd / "eval").glob("*.json") if (rd / "eval").exists() else []:
        json.loads(f.read_text())                # whatever was written is whole
