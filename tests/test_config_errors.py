"""Every bad input gives one clear line naming the value and what is allowed, before any model loads."""
import subprocess
import sys
import time

import pytest
from conftest import REPO, compose

from swag_lora.config import ConfigError, parse_run
from swag_lora.train.checks import validate_train


def check(*overrides):
    validate_train(parse_run(compose(*overrides)))

CASES = [
    (["experiment.task=obqa2"], "unknown experiment.task 'obqa2'; allowed: arc-c"),
    (["experiment.task=mmlu", "experiment.subtask=anatomyy"], "unknown experiment.subtask 'anatomyy' for task 'mmlu'"),
    (["experiment.task=mmlu"], "experiment.subtask is required for task 'mmlu'"),
    (["method.swag_anneal_strategy=cosh"], "unknown method.swag_anneal_strategy 'cosh'; allowed: linear, cos, cosine, constant, cosine_hard_restarts"),
    (["method.modules_to_swag=lora"], "unknown method.modules_to_swag 'lora'; allowed: grad_only, lora_only, head, all"),
    (["method.swag_start=6", "experiment.num_epochs=6"], "method.swag_start=6 must be in [0, experiment.num_epochs=6)"),
    (["method.swag_save_base_model=false"], "method.swag_start_with_lowest_loss=true reloads base_model/"),
    (["experiment.batch_size=16", "experiment.gradient_accumulation_steps=3"], "experiment.batch_size=16 is the batch per optimizer step and must be a multiple of experiment.gradient_accumulation_steps=3"),
    (["experiment.scheduler=cosine_hard_restarts"], "experiment.num_lr_cycles=0.5 must be an integer for experiment.scheduler=cosine_hard_restarts"),
    (["experiment.train_biases=some"], "unknown experiment.train_biases 'some'; allowed: none, all, lora_only"),
    (["experiment.prompt_style=chat"], "unknown experiment.prompt_style 'chat'; allowed: original, lines"),
    (["experiment.val_split_size=1.5"], "experiment.val_split_size=1.5 must be in (0, 1)"),
    (["experiment.max_grad_norm=-1"], "experiment.max_grad_norm=-1 must be >= 0"),
    (["method.swag_max_num_models=0", "method.swag_cov_mat=false"], "method.swag_max_num_models=0 must be a positive integer"),
    (["method.swag_max_num_models=1"], "method.swag_max_num_models=1 must be >= 2 with method.swag_cov_mat=true"),
    (["experiment.learning_rate=0"], "experiment.learning_rate=0 must be a positive number"),
    (["experiment.learning_rate=-1e-4"], "experiment.learning_rate=-0.0001 must be a positive number"),
    (["experiment.num_epochs=two"], "experiment.num_epochs='two' must be an integer"),
    (["+experiment.epochs=3"], "unknown key experiment.epochs; allowed: "),
    (["experiment.batch_size=0"], "experiment.batch_size=0 must be a positive integer"),
    (["experiment.num_epochs=-2"], "experiment.num_epochs=-2 must be a positive integer"),
    (["experiment.task=obqa", "experiment.ood_task=obqa"], "experiment.ood_task='obqa' with ood_subtask='' is the in-distribution task"),
    (["experiment.task=demo", "experiment.ood_task=demo", "experiment.ood_subtask="], "is the in-distribution task itself"),
    (["experiment.ood_task=mmlu", "experiment.ood_subtask=chem"], "unknown experiment.ood_subtask 'chem' for task 'mmlu'"),
    (["experiment.lr_scheduler=step"], "unknown experiment.scheduler 'step'"),
    (["experiment.scheduler=step"], "unknown experiment.scheduler 'step'"),
    (["experiment.task=stsb"], "experiment.task='stsb' is a regression task"),
    (["model=tiny_llama", "model.quantization=4bit"], "model.quantization=4bit quantizes weights loaded from a folder or the hub"),
    (["experiment.mixed_precision=fp8"], "unknown experiment.mixed_precision 'fp8'; allowed: None, no, fp16, bf16"),
    (["experiment.resume=sometimes"], "unknown experiment.resume 'sometimes'; allowed: auto, never, must"),
]


@pytest.mark.parametrize("overrides,message", CASES)
def test_bad_value_is_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        check(*overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_offline_needs_model_and_data_folders(tmp_path):
    with pytest.raises(ConfigError, match=r"model folder .*Llama-2-7b-hf does not exist"):
        check("model=llama_7b_hf", "experiment.task=obqa", "experiment.ood_task=", "experiment.offline=true",
              f"experiment.model_path={tmp_path}")
    (tmp_path / "meta-llama" / "Llama-2-7b-hf").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"Llama-2-7b-hf has no config.json"):
        check("model=llama_7b_hf", "experiment.task=obqa", "experiment.ood_task=", "experiment.offline=true",
              f"experiment.model_path={tmp_path}")
    (tmp_path / "meta-llama" / "Llama-2-7b-hf" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match=r"data folder .*obqa does not exist"):
        check("model=llama_7b_hf", "experiment.task=obqa", "experiment.ood_task=", "experiment.offline=true",
              f"experiment.model_path={tmp_path}", f"experiment.data_path={tmp_path}")
    (tmp_path / "obqa").mkdir()
    check("model=llama_7b_hf", "experiment.task=obqa", "experiment.ood_task=", "experiment.offline=true",
          f"experiment.model_path={tmp_path}", f"experiment.data_path={tmp_path}")


def test_the_verbatim_command_composes_and_validates():
    cfg = compose("model=llama_7b_hf", "method=swag", "experiment.task=obqa", "method.force_save=5", "method.swag_start=8",
                  "method.swag_anneal_epochs=5", "method.swag_learning_rate=1e-4", "experiment.learning_rate=6e-4",
                  "experiment.num_epochs=18", "experiment.batch_size=16")
    run = parse_run(cfg)
    validate_train(run)
    assert run.model.model_name == "meta-llama/Llama-2-7b-hf" and run.method.force_save == 5


@pytest.mark.parametrize("args,message", [
    (["model=llama_7b"], "error: unknown model 'llama_7b'; allowed: distilbert, gemma3_270m, llama_3_1_8b, llama_7b_hf"),
    (["method=swa"], "error: unknown method 'swa'; allowed: blob, ivon, map, swag, swag_demo"),
    (["method.swag_start=9", "experiment.num_epochs=3"], "error: method.swag_start=9 must be in [0, experiment.num_epochs=3)"),
    (["experiment.scheduler=cosine", "experiment.lr_scheduler=linear"],
     "error: experiment.lr_scheduler=linear and experiment.scheduler=cosine name the same setting; give one of them"),
])
def test_command_line_prints_one_line_and_exits_2(args, message):
    t0 = time.time()
    p = subprocess.run([sys.executable, "launch_exp_hydra.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip() and "Warning" not in line and "warn" not in line]
    assert len(lines) == 1 and lines[0].startswith(message), p.stderr
    assert "Traceback" not in p.stderr
    assert time.time() - t0 < 60


@pytest.mark.parametrize("args,message", [
    (["evaluation.eval_model_path=/nonexistent/run"], "error: evaluation model path '/nonexistent/run' is not a swag-lora run directory"),
    (["evaluation.eval_method=ensemble", "evaluation.eval_model_paths=[/a]"], "error: evaluation.eval_method=ensemble needs at least 2 runs"),
    (["evaluation.eval_method=bogus"], "error: unknown evaluation.eval_method 'bogus'; allowed: base, dropout, swag, ensemble, multiswag, temperature, laplace, ivon, blob, multiblob, tfb"),
])
def test_evaluation_command_line_errors(args, message):
    p = subprocess.run([sys.executable, "-m", "swag_lora.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip() and "warn" not in line.lower()]
    assert len(lines) == 1 and lines[0].startswith(message), p.stderr
