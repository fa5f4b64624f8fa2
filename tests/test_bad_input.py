"""Bad input, corrupt files, clashes and interruptions: each gets one line naming the value or file and what is
allowed (no traceback), before the expensive work, and nothing a user ran is lost or silently replaced."""
import fcntl
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, TINY, compose, run_config, subprocess_env

from swag_lora.config import parse_eval
from swag_lora.errors import ConfigError, CorruptFile, DataError

RUN = (*TINY, "method=swag", "model=tiny_roberta", "experiment.num_epochs=2", "method.swag_start=1",
       "method.swag_c_steps=2", "method.swag_max_num_models=3", "experiment.eval_upon_save=false")


def one_line(p, fragment, rc=2):
    """The process failed with `rc` and printed one error line holding `fragment`, and no traceback."""
    lines = [line for line in p.stderr.splitlines() if line.strip() and "warn" not in line.lower()]
    assert p.returncode == rc, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and len([ln for ln in lines if ln.startswith("error:")]) == 1, p.stderr[-2000:]
    assert fragment in next(ln for ln in lines if ln.startswith("error:")), p.stderr[-2000:]


def cli(*args, module="launch_exp_hydra.py", env=None, timeout=300):
    cmd = [sys.executable, module, *args] if module.endswith(".py") else [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(**(env or {})), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from swag_lora.train.loop import train
    return train(run_config(*RUN, f"experiment.save_folder={tmp_path_factory.mktemp('bad')}"))


def plan(*args):
    from swag_lora.predict.evaluation import resolve_plan
    return resolve_plan(parse_eval(compose(*args, config_name="eval")))


# ---------------------------------------------------------------- an evaluation never replaces another
@pytest.mark.slow
def test_a_second_evaluation_with_other_settings_is_refused_unless_overwrite(run, tmp_path):
    from swag_lora.predict.evaluation import evaluate
    common = ("evaluation.eval_method=base", f"evaluation.eval_model_path={run}", f"evaluation.output_dir={tmp_path}",
              "experiment.ood_task=")
    (first,) = evaluate(plan(*common, "experiment.max_eval_samples=24"))
    before = (tmp_path / f"{first['name']}.json").read_text()
    evaluate(plan(*common, "experiment.max_eval_samples=24"))            # the same evaluation again: allowed
    with pytest.raises(ConfigError, match=r"holds another evaluation \(max_eval_samples: 24 there, 16 now\)"):
        plan(*common, "experiment.max_eval_samples=16").check_outputs()
    assert (tmp_path / f"{first['name']}.json").read_text() == before     # nothing written
    with pytest.raises(ConfigError, match="seed"):
        plan(*common, "experiment.max_eval_samples=24", "evaluation.seed=3").check_outputs()
    (again,) = evaluate(plan(*common, "experiment.max_eval_samples=16", "evaluation.overwrite=true"))
    assert again["num_examples"] == 16


# ---------------------------------------------------------------- non-finite values
@pytest.mark.slow
def test_a_nan_posterior_or_adapter_is_refused_at_load_naming_the_file(run, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from swag_lora.posteriors.swag import SwagPosterior
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    f = bad / "swag_model" / "swag_posterior.safetensors"
    t = load_file(str(f))
    save_file({k: torch.full_like(v, float("nan")) for k, v in t.items()}, str(f))
    with pytest.raises(CorruptFile, match=r"swag_posterior.safetensors holds non-finite values"):
        SwagPosterior.load(bad / "swag_model")
    p = cli("evaluation.eval_method=swag", f"evaluation.eval_model_path={bad}", "experiment.max_eval_samples=8",
            "experiment.ood_task=", module="swag_lora.evaluate")
    one_line(p, "non-finite values")
    assert not list((bad / "eval").glob("swag*.json"))
    a = bad / "base_model" / "adapter_model.safetensors"
    save_file({k: torch.full_like(v, float("inf")) for k, v in load_file(str(a)).items()}, str(a))
    p = cli("evaluation.eval_method=base", f"evaluation.eval_model_path={bad}", "experiment.ood_task=", module="swag_lora.evaluate")
    one_line(p, "holds non-finite values")


def test_sampling_at_a_nan_scale_is_refused():
    from swag_lora.posteriors.swag import SwagPosterior
    post = SwagPosterior({"w": (3,)}, max_rank=2)
    post.collect({"w": torch.zeros(3)})
    post.collect({"w": torch.ones(3)})
    with pytest.raises(ValueError, match="finite number"):
        post.sample(scale=float("nan"))


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_step_and_is_not_marked_finished(tmp_path):
    p = cli(*RUN, "experiment.learning_rate=1e30", f"experiment.save_folder={tmp_path}")     # NaN by the 3rd step
    one_line(p, "the training loss is")
    assert "optimizer step" in p.stderr and "last good checkpoint is kept" in p.stderr
    assert not list(tmp_path.rglob("run_info.json")) and list(tmp_path.rglob("config.yaml"))


def test_records_are_valid_json_with_undefined_metrics_as_null(tmp_path):
    from swag_lora.report.records import write_evaluation
    rec = {"method": "base", "label": "map", "distribution": "id", "task": "demo", "subtask": "", "split": "test",
           "name": "map_id_demo_test",
           "settings": {"num_samples": 1, "num_draws": 1, "num_members": 1, "temperature": None},
           "metrics": {"nll": 0.3, "auroc_entropy": float("nan")}}
    path = write_evaluation(rec, np.full((4, 2), 0.5), np.array([0, 1, 0, 1]), tmp_path)
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))["metrics"]["auroc_entropy"] is None


# ---------------------------------------------------------------- clashes
@pytest.mark.slow
def test_a_second_live_process_on_the_same_run_directory_is_refused(tmp_path):
    from swag_lora.config import run_dir
    rd = run_dir(run_config(*RUN, f"experiment.save_folder={tmp_path}"))
    rd.parent.mkdir(parents=True)
    holder = open(rd.parent / f".{rd.name}.lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)           # a live training of the same run
    p = cli(*RUN, f"experiment.save_folder={tmp_path}")
    one_line(p, "is in use by another live process")
    holder.close()                                                 # the holder ends (or crashes): nothing stays stuck
    p = cli(*RUN, f"experiment.save_folder={tmp_path}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(list(open(next(tmp_path.rglob("training_log.csv"))))) == 3      # header + 2 epochs, once


@pytest.mark.slow
def test_a_folder_of_another_family_under_the_model_name_is_refused(tmp_path):
    folder = tmp_path / "FacebookAI" / "roberta-base"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))      # MiniLM's family
    (tmp_path / "data").mkdir()
    p = cli("model=roberta-base", "experiment.offline=true", f"experiment.model_path={tmp_path}", "experiment.task=demo")
    one_line(p, "expects a roberta model, but")


def test_a_resume_with_other_data_or_weights_is_refused(tmp_path):
    from swag_lora.train.records import check_same_sources
    old = {"model": {"config_sha1": "a"}, "data": {"qnli": {"qnli": ["f1"]}}}
    with pytest.raises(ConfigError, match="cannot resume .*data source was"):
        check_same_sources(old, {**old, "data": {"qnli": {"qnli": ["f2"]}}}, tmp_path)
    with pytest.raises(ConfigError, match="model source was"):
        check_same_sources(old, {**old, "model": {"config_sha1": "b"}}, tmp_path)
    check_same_sources(old, json.loads(json.dumps(old)), tmp_path)


@pytest.mark.slow
def test_a_run_records_its_sources(run):
    sources = json.loads((run / "sources.json").read_text())
    assert sources["model"] == {"tiny": sources["model"]["tiny"]} and sources["data"] == {"demo": "generated"}


def test_an_exp_name_with_a_path_is_refused(tmp_path):
    for name in ("../../../escape", "a/b", ".."):
        with pytest.raises(ConfigError, match="must be a name"):
            run_config(*RUN, f"experiment.exp_name={name}", f"experiment.save_folder={tmp_path}")
    assert not (tmp_path.parent / "escape").exists()


@pytest.mark.slow
def test_a_save_folder_or_evaluation_output_that_is_a_file_is_refused_before_work(run, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run_config(*RUN, f"experiment.save_folder={f}")
    with pytest.raises(ConfigError, match="evaluation output .* is a file"):
        plan("evaluation.eval_method=base", f"evaluation.eval_model_path={run}", f"evaluation.output_dir={f}").check_outputs()


@pytest.mark.slow
def test_a_read_only_output_is_refused_before_work(run, tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(tmp_path)) else real(p, mode))
    with pytest.raises(ConfigError, match="cannot be written"):
        run_config(*RUN, f"experiment.save_folder={tmp_path / 'x'}")
    with pytest.raises(ConfigError, match="cannot be written"):
        plan("evaluation.eval_method=base", f"evaluation.eval_model_path={run}",
             f"evaluation.output_dir={tmp_path / 'y'}").check_outputs()


# ---------------------------------------------------------------- evaluation inputs
@pytest.mark.slow
def test_one_run_twice_is_not_an_ensemble(run):
    with pytest.raises(ConfigError, match="names .* twice"):
        plan("evaluation.eval_method=ensemble", f"evaluation.eval_model_paths=[{run},{run}]")


@pytest.mark.slow
def test_the_training_task_as_ood_task_is_refused_at_evaluation(run):
    with pytest.raises(ConfigError, match="is the in-distribution task itself"):
        plan("evaluation.eval_method=base", f"evaluation.eval_model_path={run}", "experiment.ood_task=demo")


@pytest.mark.slow
def test_download_from_a_missing_raw_folder_fails_in_one_line(tmp_path):
    p = cli("--tasks", "obqa", "--from_raw", str(tmp_path / "nope"), "--data_path", str(tmp_path / "out"),
            module="download_datasets4cluster.py")
    one_line(p, "does not exist")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_report_with_an_unknown_metric_or_a_malformed_json(run, tmp_path):
    from swag_lora.predict.evaluation import evaluate
    evaluate(plan("evaluation.eval_method=base", f"evaluation.eval_model_path={run}", "experiment.ood_task=",
                  "experiment.max_eval_samples=8", f"evaluation.output_dir={tmp_path / 'e'}"))
    p = cli(str(tmp_path / "e"), "--out", str(tmp_path / "r"), "--metrics", "bogus", module="swag_lora.report")
    one_line(p, "unknown --metrics entry 'bogus'; allowed:")
    (tmp_path / "e" / "broken.json").write_text('{"metrics": ')
    p = cli(str(tmp_path / "e"), "--out", str(tmp_path / "r"), module="swag_lora.report")
    one_line(p, "broken.json is not valid JSON")


@pytest.mark.slow
def test_a_max_length_too_short_for_every_prompt_is_refused():
    p = cli(*RUN, "model.max_length=3", "experiment.save_folder=/tmp/never-written")
    one_line(p, "model.max_length=3 truncates all 48 training prompts")
    assert not os.path.exists("/tmp/never-written")


# ---------------------------------------------------------------- bad offline data, named by file and row
def _saved(tmp_path, name, splits):
    from datasets import Dataset, DatasetDict
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(tmp_path / name))


OBQA_ROW = {"id": "1", "question_stem": "q", "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B"}


@pytest.mark.parametrize("case,fragment", [
    ("empty", "is not a readable `datasets` save_to_disk folder"),
    ("foreign", "is not a readable `datasets` save_to_disk folder"),
    ("missing_split", "has no split 'test'"),
    ("missing_column", "row 0: not a obqa row"),
    ("label_range", "row 1: label 7 is out of range"),
    ("truncated", "is not a readable `datasets` save_to_disk folder"),
])
def test_bad_offline_data_is_named_by_folder_and_row(tmp_path, case, fragment):
    from swag_lora.data import load_splits
    folder = tmp_path / "obqa"
    if case == "empty":
        folder.mkdir()
    elif case == "foreign":
        folder.mkdir()
        (folder / "train.csv").write_text("a,b\n1,2\n")
    else:
        rows = [OBQA_ROW, {**OBQA_ROW, "answerKey": "B"}]
        splits = {"train": rows, "validation": rows, "test": rows}
        if case == "missing_split":
            splits.pop("test")
        if case == "missing_column":
            splits["test"] = [{k: v for k, v in OBQA_ROW.items() if k != "question_stem"}] * 2
        if case == "label_range":
            from swag_lora.data import tasks
            orig = tasks.TASKS["obqa"].to_example
            bad = lambda row: {**orig(row), "label": 7 if row["id"] == "2" else orig(row)["label"]}  # noqa: E731
            object.__setattr__(tasks.TASKS["obqa"], "to_example", bad)
            splits["test"] = [OBQA_ROW, {**OBQA_ROW, "id": "2"}]
        _saved(tmp_path, "obqa", splits)
        if case == "truncated":
            arrow = next((folder / "test").glob("*.arrow"))
            arrow.write_bytes(arrow.read_bytes()[:40])
    try:
        with pytest.raises(DataError, match=fragment):
            load_splits("obqa", offline=True, data_path=str(tmp_path), roles=("test",))
    finally:
        if case == "label_range":
            object.__setattr__(tasks.TASKS["obqa"], "to_example", orig)


def test_a_malformed_raw_jsonl_line_is_named(tmp_path):
    from swag_lora.data.raw import raw_rows
    (tmp_path / "obqa").mkdir()
    for name in ("train", "dev", "test"):
        (tmp_path / "obqa" / f"{name}.jsonl").write_text('{"id": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"train.jsonl, line 2: not a JSON row"):
        raw_rows("obqa", tmp_path / "obqa")


@pytest.mark.slow
def test_bad_data_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "obqa").mkdir()
    p = cli("model=llama_7b_hf", "experiment.task=obqa", "experiment.ood_task=", "experiment.offline=true",
            f"experiment.data_path={tmp_path}", "experiment.model_path=/nonexistent", "model.model_type=null")
    one_line(p, "does not exist")          # the model folder is checked first, at once
    folder = tmp_path / "m" / "meta-llama" / "Llama-2-7b-hf"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    p = cli("model=llama_7b_hf", "experiment.task=obqa", "experiment.ood_task=", "experiment.offline=true",
            f"experiment.data_path={tmp_path}", f"experiment.model_path={tmp_path / 'm'}")
    one_line(p, "is not a readable `datasets` save_to_disk folder")


# ---------------------------------------------------------------- corrupt posteriors and adapters
@pytest.mark.parametrize("damage,fragment", [
    ("truncate", "SWAG posterior"), ("shape", "the metadata says"), ("json_type", "holds a list")])
@pytest.mark.slow
def test_a_corrupt_posterior_is_refused_naming_the_file(run, tmp_path, damage, fragment):
    import shutil

    from safetensors.torch import load_file, save_file

    from swag_lora.posteriors.swag import SwagPosterior
    folder = tmp_path / "swag_model"
    shutil.copytree(run / "swag_model", folder)
    f = folder / "swag_posterior.safetensors"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "shape":
        t = load_file(str(f))
        save_file({**t, "mean": t["mean"][:-1].contiguous()}, str(f))
    else:
        (folder / "swag_posterior.json").write_text("[1, 2, 3]")
    with pytest.raises(CorruptFile, match=fragment):
        SwagPosterior.load(folder)


@pytest.mark.slow
def test_a_truncated_adapter_is_refused_in_one_line(run, tmp_path):
    import shutil
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    a = bad / "base_model" / "adapter_model.safetensors"
    a.write_bytes(a.read_bytes()[:64])
    p = cli("evaluation.eval_method=base", f"evaluation.eval_model_path={bad}", "experiment.ood_task=", module="swag_lora.evaluate")
    one_line(p, "is unusable")


# ---------------------------------------------------------------- the command line and the library
@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_like_sigterm(tmp_path):
    p = cli(*RUN, "experiment.num_epochs=3", f"experiment.save_folder={tmp_path}",
            env={"SWAG_LORA_TEST_SIGNAL_AT_STEP": "3", "SWAG_LORA_TEST_SIGNAL": "SIGINT"})
    assert p.returncode == 99 and "KeyboardInterrupt" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "pre-emption signal: checkpoint written at epoch 1, batch 3" in p.stdout
    resumed = cli(*RUN, "experiment.num_epochs=3", f"experiment.save_folder={tmp_path}")
    assert resumed.returncode == 0 and "resumed from checkpoint: epoch 1, batch 3" in resumed.stdout
    assert signal.SIGINT in (signal.SIGINT,)


def test_target_modules_of_another_family_are_refused_in_one_line():
    from swag_lora.data import get_task
    from swag_lora.model import load_model
    cfg = run_config(*RUN, "model.target_modules=[q_proj,v_proj]")
    with pytest.raises(ConfigError, match=r"matches no module of .* allowed: its own linear layers' names, e.g."):
        load_model(cfg.model, cfg.experiment, get_task("demo"))


@pytest.mark.slow
def test_a_key_typo_names_the_closest_keys():
    one_line(cli("method.swag_strat=3"), "unknown key method.swag_strat; did you mean method.swag_start")
    one_line(cli("evaluation.num_sample=3", module="swag_lora.evaluate"), "did you mean evaluation.num_samples?")


@pytest.mark.parametrize("text,fragment", [
    (None, "no protocol given"), ("out: [", "is not valid YAML"), ("- 1\n- 2\n", "must be a mapping"),
    ("out: x\nseeds: [0]\n", "has no 'runs'"),
    ("out: x\nseeds: [0]\nruns: {swag: []}\nevaluations: [{name: m, run: map, method: base}]\n",
     "reads run 'map', which the protocol does not train"),
])
@pytest.mark.slow
def test_the_protocol_runner_refuses_a_bad_protocol_before_anything_runs(tmp_path, text, fragment):
    args = []
    if text is not None:
        (tmp_path / "p.yaml").write_text(text)
        args = [str(tmp_path / "p.yaml")]
    p = subprocess.run([sys.executable, "experiments/run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "Traceback" not in p.stderr and fragment in p.stderr, p.stderr
    assert not (REPO / "x").exists()


def test_swag_callback_refuses_what_it_cannot_collect():
    from swag_lora import SwagCallback
    with pytest.raises(ValueError, match="max_rank=0"):
        SwagCallback(max_rank=0)
    with pytest.raises(ValueError, match="unknown modules"):
        SwagCallback(modules="heads")
    cb = SwagCallback(modules="lora_only")
    with pytest.raises(ValueError, match="found no tensors"):
        cb.on_train_begin(None, None, None, model=torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="needs swag_lora's ChoiceModel"):
        SwagCallback(modules="head").on_train_begin(None, None, None, model=torch.nn.Linear(3, 2))


def test_files_respect_the_umask(tmp_path):
    from swag_lora.io import atomic_dir, atomic_write
    old = os.umask(0o002)
    try:
        with atomic_write(tmp_path / "f.json") as t:
            t.write_text("{}")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o775


def test_a_bin_only_folder_loads_with_one_line_saying_so(tmp_path, capsys):
    from transformers import BertConfig, BertForSequenceClassification

    from swag_lora.model import load_base_model
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=16, num_labels=4))
    bert.save_pretrained(str(tmp_path))             # a user's legacy folder: its weights as pytorch_model.bin only
    torch.save(bert.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    cfg = run_config(*TINY, "model=minilm", "model.package=null", f"model.model_name={tmp_path}").model
    model = load_base_model(cfg, str(tmp_path), "seq_cls", 4, 50)
    assert model.config.model_type == "bert"
    assert "has no .safetensors weights: loading its pytorch_model.bin with torch.load" in capsys.readouterr().out


def test_protocol_yaml_of_the_repository_is_valid():
    sys.path.insert(0, str(REPO / "experiments"))
    import run as runner
    for path in (REPO / "experiments").glob("*/protocol.yaml"):
        protocol = runner.load_protocol([str(path)])
        assert yaml.safe_load(path.read_text()) == protocol


@pytest.mark.parametrize("grid", ["[]", "[-1]", "[0.1,abc]"])
def test_a_bad_laplace_prior_grid_is_refused_before_the_fit(grid):
    with pytest.raises(ConfigError, match="laplace_prior_grid"):
        parse_eval(compose(f"evaluation.laplace_prior_grid={grid}", config_name="eval"))


def test_the_tables_script_names_a_missing_csv(tmp_path):
    p = subprocess.run([sys.executable, "experiments/tables.py", str(tmp_path / "missing.csv")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "missing.csv does not exist" in p.stderr and "Traceback" not in p.stderr
