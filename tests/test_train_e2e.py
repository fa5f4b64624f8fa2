"""End-to-end training runs on tiny models: the run directory is the contract with evaluation."""
import csv
import json
import re

import pytest
import torch
from conftest import TINY, compose, run_config

from swag_lora.posteriors.swag import SwagPosterior

pytestmark = pytest.mark.slow   # trains or launches processes


def train_run(tmp_path, *overrides):
    from swag_lora.train.loop import train
    if not any(o.startswith("method=") for o in overrides):
        overrides = ("method=swag", *overrides)
    run = run_config(*TINY, f"experiment.save_folder={tmp_path}", "experiment.eval_upon_save=false", *overrides)
    return train(run), run


@pytest.mark.parametrize("model,task", [("tiny_llama", "demo"), ("tiny_roberta", "demo")])
def test_run_directory_contents(tmp_path, model, task):
    rd, cfg = train_run(tmp_path, f"model={model}", "experiment.num_epochs=3", "method.swag_start=1",
                        "method.swag_max_num_models=3", "method.force_save=1")   # saved at epoch 3 (new minimum or forced)
    assert rd == tmp_path / task / model / "swag" / rd.name and re.fullmatch(r".*_seed10_[0-9a-f]{8}", rd.name)
    for f in ("config.yaml", "training_log.csv", "run_info.json", "base_model/adapter_model.safetensors",
              "base_model/adapter_config.json", "swag_model/adapter_model.safetensors",
              "swag_model/swag_posterior.safetensors", "swag_model/swag_posterior.json"):
        assert (rd / f).is_file(), f
    rows = list(csv.DictReader(open(rd / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert rows[0]["swa_val_accuracy"] == "" and rows[2]["num_snapshots"] == "2"
    meta = json.loads((rd / "swag_model" / "swag_posterior.json").read_text())
    assert meta["num_snapshots"] == 2 and meta["rank"] == 2
    # only the SWAG'd tensors are stored, never the base model
    post = SwagPosterior.load(rd / "swag_model")
    assert all("lora_" in n or "head" in n or "classifier" in n for n in post.shapes)
    assert post.num_params < 20_000
    # the adapter in swag_model/ is the posterior mean
    from swag_lora.predict.evaluation import load_run
    run = load_run(rd, device="cpu")
    run.model.load_adapter(rd / "swag_model")
    for name, mu in post.mean().items():
        torch.testing.assert_close(run.named[name].detach(), mu)


def test_base_model_loads_with_peft(tmp_path):
    from peft import PeftModel

    from swag_lora.model import load_base_model, load_tokenizer
    rd, cfg = train_run(tmp_path, "model=tiny_llama", "experiment.num_epochs=2", "method.swag_start=1",
                        "method.swag_max_num_models=2")
    tok = load_tokenizer(cfg.model, "")
    base = load_base_model(cfg.model, "", "causal", 1, len(tok))
    peft_model = PeftModel.from_pretrained(base, str(rd / "base_model"))
    names = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert names, "LoRA weights were loaded"
    assert (rd / "base_model" / "letter_head.safetensors").is_file()


def test_encoder_multiple_choice_on_real_obqa(tmp_path, shared_data):
    from swag_lora.data.raw import raw_datasetdict
    raw_datasetdict("obqa", shared_data / "obqa").save_to_disk(str(tmp_path / "data" / "obqa"))
    rd, cfg = train_run(tmp_path, "model=tiny_roberta", "experiment.task=obqa", "experiment.offline=true",
                        f"experiment.data_path={tmp_path / 'data'}", "experiment.num_epochs=2", "method.swag_start=1",
                        "method.swag_max_num_models=2", "method.swag_c_steps=2", "method.modules_to_swag=lora_only")
    info = json.loads((rd / "run_info.json").read_text())
    assert info["num_snapshots"] == 3          # 6 steps/epoch from step 6: collections at steps 8, 10, 12
    assert info["data"]["sizes"] == {"train": 4957, "validation": 500}
    post = SwagPosterior.load(rd / "swag_model")
    assert all("lora_" in n for n in post.shapes)


def test_stop_at_force_save_opt_in_stops_after_the_force_save_epoch(tmp_path):
    rd, cfg = train_run(tmp_path, "model=tiny_roberta", "experiment.num_epochs=6", "method.swag_start=1",
                        "method.force_save=2", "method.swag_max_num_models=2", "method.swag_anneal_strategy=constant",
                        "method.swag_learning_rate=3e-4", "method.stop_at_force_save=true")
    rows = list(csv.DictReader(open(rd / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]    # 0-based epoch swag_start + force_save = 3 is the last
    assert float(rows[-1]["lr"]) == pytest.approx(3e-4)
    assert json.loads((rd / "run_info.json").read_text())["swag_saved_epoch"] == 4


def test_overwrite_false_refuses_finished_run(tmp_path):
    from swag_lora.config import ConfigError
    train_run(tmp_path, "model=tiny_roberta", "experiment.num_epochs=2", "method.swag_start=1", "method.swag_max_num_models=2")
    with pytest.raises(ConfigError, match="holds a finished run; set experiment.overwrite=true"):
        train_run(tmp_path, "model=tiny_roberta", "experiment.num_epochs=2", "method.swag_start=1", "method.swag_max_num_models=2")
    train_run(tmp_path, "model=tiny_roberta", "experiment.num_epochs=2", "method.swag_start=1", "method.swag_max_num_models=2",
              "experiment.overwrite=true")


def test_seeds_and_settings_never_share_a_run_directory(tmp_path):
    """experiment.exp_name given, overwrite=true as sweep scripts pass it: seed 1 must not replace seed 0's run,
    and a run with another learning rate must not replace either; the report still groups the seeds."""
    common = ("model=tiny_roberta", "method=map", "experiment.num_epochs=1", "experiment.exp_name=sweep",
              "experiment.overwrite=true")
    a, _ = train_run(tmp_path, *common, "experiment.seed=0")
    b, _ = train_run(tmp_path, *common, "experiment.seed=1")
    c, _ = train_run(tmp_path, *common, "experiment.seed=0", "experiment.learning_rate=1e-3")
    assert len({a, b, c}) == 3 and all((d / "run_info.json").is_file() for d in (a, b, c))
    assert a.name.startswith("sweep_seed0_") and b.name.startswith("sweep_seed1_")
    assert a.name.split("_")[-1] == b.name.split("_")[-1] != c.name.split("_")[-1]   # seeds share the fingerprint
    from swag_lora.report.tables import _seedless
    assert _seedless(str(a)) == _seedless(str(b)) != _seedless(str(c))
    again, _ = train_run(tmp_path, *common, "experiment.seed=0")       # the same run: replaced in place
    assert again == a


def test_diagonal_swag_stores_no_deviations_and_refuses_low_rank_evaluation(tmp_path):
    from swag_lora.config import ConfigError, parse_eval
    from swag_lora.predict.evaluation import resolve_plan
    common = ("model=tiny_roberta", "experiment.num_epochs=3", "method.swag_start=1", "method.force_save=1",
              "method.swag_max_num_models=3")
    full, _ = train_run(tmp_path / "full", *common)
    diag, _ = train_run(tmp_path / "diag", *common, "method.swag_cov_mat=false")
    meta = json.loads((diag / "swag_model" / "swag_posterior.json").read_text())
    assert meta["keep_deviations"] is False and meta["rank"] == 0 and meta["num_snapshots"] == 2
    size = lambda rd: (rd / "swag_model" / "swag_posterior.safetensors").stat().st_size  # noqa: E731
    assert size(diag) < size(full) - 2 * 4 * meta["num_params"] + 1024     # no K x P deviation block
    with pytest.raises(ConfigError, match=r"is diagonal \(trained with method.swag_cov_mat=false\)"):
        resolve_plan(parse_eval(compose("evaluation.eval_method=swag", f"evaluation.eval_model_path={diag}",
                                        config_name="eval")))
    resolve_plan(parse_eval(compose("evaluation.eval_method=swag", f"evaluation.eval_model_path={diag}",
                                    "evaluation.swag_cov_mat=false", config_name="eval")))


def test_map_method_has_no_posterior(tmp_path):
    rd, _ = train_run(tmp_path, "model=tiny_roberta", "method=map", "experiment.num_epochs=2")
    assert (rd / "base_model").is_dir() and not (rd / "swag_model").exists()
    assert rd.parent.name == "map"


def test_collection_interval_longer_than_the_swag_phase_is_refused(tmp_path):
    from swag_lora.config import ConfigError
    with pytest.raises(ConfigError, match=r"method.swag_c_steps=50 exceeds the 6 optimizer steps after method.swag_start"):
        train_run(tmp_path, "model=tiny_roberta", "experiment.num_epochs=2", "method.swag_start=1", "method.swag_c_steps=50")
