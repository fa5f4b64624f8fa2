"""`method=swag` and the original's keys train what fortuinlab/swag-lora trained: its effective config values,
its reload at swag_start, its MAP and SWAG save rules, and its learning rate at every optimizer step.
The original's rules are re-stated here from its train.py, independently of swag_lora/train/collector.py."""
import csv
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, TINY, run_config
from safetensors.torch import load_file
from test_schedule import original_lrs

from swag_lora.posteriors.swag import SwagPosterior

SEED_COMMAND = ["model=llama_7b_hf", "method=swag", "experiment.task=obqa", "method.force_save=5", "method.swag_start=8",
                "method.swag_anneal_epochs=5", "method.swag_learning_rate=1e-4", "experiment.learning_rate=6e-4",
                "experiment.num_epochs=18", "experiment.batch_size=16"]

# The original's conf/config.yaml, conf/method/swag.yaml and conf/model/llama_7b_hf.yaml, with the seed command's
# overrides applied; the base model loaded in float32 and no gradient clipping (its train.py has none).
ORIGINAL = {
    "experiment": {"seed": 10, "val_split_size": 0.2, "gradient_accumulation_steps": 1, "task": "obqa", "subtask": "",
                   "ood_task": "", "ood_subtask": "", "ood_batch_size": 16, "learning_rate": 6e-4, "batch_size": 16,
                   "num_epochs": 18, "wandb_group": "default", "weight_decay": 0, "scheduler": "linear",
                   "warmup_length": 0.06, "num_lr_cycles": 0.5, "eval_upon_save": True, "lora_r": 8, "lora_alpha": 16,
                   "lora_dropout": 0.1, "train_biases": "none", "save_folder": "./results", "overwrite": False},
    "method": {"method_name": "swag", "swag_start": 8, "force_save": 5, "modules_to_swag": "grad_only",
               "swag_scheduler": "linear", "swag_learning_rate": 1e-4, "swag_anneal_epochs": 5, "swag_max_num_models": 5,
               "swag_cov_mat": True, "swag_c_epochs": 1, "swag_sample_scale": 1.0, "swag_anneal_strategy": "linear",
               "swag_start_with_lowest_loss": True, "swag_save_base_model": True},
    "model": {"model_name": "meta-llama/Llama-2-7b-hf", "modules_to_save": ["classifier"], "dtype": "float32"},
}
# this project's renamed keys mean the same as the original's
SAME = {("experiment", "lr_scheduler"): ("experiment", "scheduler"), ("experiment", "val_fraction"): ("experiment", "val_split_size"),
        ("experiment", "evaluate_after_training"): ("experiment", "eval_upon_save"),
        ("model", "lora_target_modules"): ("model", "target_modules"), ("model", "head_modules"): ("model", "modules_to_save")}


def test_seed_command_cfg_job_shows_the_original_values():
    p = subprocess.run([sys.executable, "launch_exp_hydra.py", *SEED_COMMAND, "--cfg", "job", "--resolve"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cfg = yaml.safe_load(p.stdout)
    assert cfg["experiment"]["ood_task"] == "auto"      # auto = the demo's shifted split for the demo, else none
    cfg["experiment"]["ood_task"] = ""
    for group, values in ORIGINAL.items():
        for key, want in values.items():
            assert cfg[group][key] == want, f"{group}.{key}: {cfg[group][key]!r} != the original's {want!r}"
    assert sorted(cfg["model"]["target_modules"]) == ["q_proj", "v_proj"]
    assert cfg["experiment"]["max_grad_norm"] == 0                      # no clipping
    assert cfg["method"]["swag_c_steps"] == 0 and not cfg["method"]["stop_at_force_save"]   # opt-ins off
    assert not cfg["method"]["swag_k_held"] and not cfg["experiment"]["arc_all_items"]
    assert cfg["experiment"]["prompt_style"] == "original"
    for (g, ours), (g2, theirs) in SAME.items():
        assert cfg[g][ours] == cfg[g2][theirs]


def test_each_original_key_composes_and_changes_what_it_names(tmp_path):
    from swag_lora.model import load_model
    from swag_lora.train.methods import training_method

    def lr_schedule(run, n):
        return training_method(run).schedule(n)
    base = ("model=tiny_llama", "method=swag", "method.swag_start=1", "experiment.num_epochs=3")
    lin = lr_schedule(run_config(*base), 10)
    cos = lr_schedule(run_config(*base, "experiment.scheduler=cosine"), 10)
    assert cos.scheduler == "cosine" and cos(5) != lin(5)
    assert lr_schedule(run_config(*base, "experiment.lr_scheduler=cosine"), 10) == cos
    cfg = run_config(*base, "experiment.val_split_size=0.3", "experiment.eval_upon_save=false", "method.swag_scheduler=cos")
    assert cfg.experiment.val_fraction == 0.3 and cfg.experiment.evaluate_after_training is False
    ours = run_config(*base, "experiment.val_fraction=0.3", "experiment.evaluate_after_training=false")
    assert ours.experiment.val_split_size == 0.3 and ours.experiment.eval_upon_save is False   # either name works
    # LoRA targets, biases, modules_to_save: what is trained
    from swag_lora.data import get_task

    def trained(*overrides, model="tiny_roberta"):
        c = run_config(f"model={model}", *overrides)
        _, m = load_model(c.model, c.experiment, get_task("demo"))
        return [n for n, p in m.named_parameters() if p.requires_grad]
    default = trained()
    assert any("query" in n for n in default) and any("value" in n for n in default)
    assert not any("value" in n for n in trained("model.target_modules=[query]"))
    assert any("classifier" in n for n in default) and not any("word_embeddings" in n for n in default)
    assert any("word_embeddings" in n for n in trained("model.modules_to_save=[classifier,word_embeddings]"))
    assert any("word_embeddings" in n for n in trained("model.head_modules=[classifier,word_embeddings]"))
    assert not any(n.endswith(".bias") and "lora" not in n and "classifier" not in n for n in default)
    with_bias = [n for n in trained("experiment.train_biases=all") if n.endswith(".bias") and "classifier" not in n]
    assert with_bias, "train_biases=all trains the biases"
    # model=distilbert: the original's DistilBERT targets, on a tiny DistilBERT built from a config
    d = trained("+model.tiny={arch: distilbert, hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 4, init_seed: 0}",
                "model.model_name=tiny-distilbert", model="distilbert")
    assert any("q_lin.lora_A" in n for n in d) and any("v_lin.lora_A" in n for n in d) and any("classifier" in n for n in d)


# ---------------------------------------------------------------- a tiny run, checked against the original's rules
def run(tmp_path, *overrides):
    from swag_lora.train.loop import train
    cfg = run_config(*TINY, "method=swag", f"experiment.save_folder={tmp_path}", "experiment.eval_upon_save=false",
                     *overrides)
    rd = train(cfg)
    rows = list(csv.DictReader(open(rd / "training_log.csv")))
    return rd, cfg, rows, json.loads((rd / "run_info.json").read_text())


def original_rules(rows, swag_start, force_save, c_epochs=1, reload=True):
    """The original's train.py, re-stated on the per-epoch log (epochs 1-based)."""
    base_epoch, best = None, math.inf
    reloaded = None
    for r in rows:
        e = int(r["epoch"])
        if e == swag_start + 1 and reload:
            reloaded = base_epoch            # base_model/ holds the lowest loss of epochs 1..swag_start
        if float(r["val_loss"]) < best:
            best, base_epoch = float(r["val_loss"]), e
    saved, best_swa, collected = None, math.inf, 0
    snapshots_at = {}
    for r in rows:
        e0 = int(r["epoch"]) - 1
        swa = math.inf
        if e0 >= swag_start and (e0 - swag_start) % c_epochs == 0:
            collected += 1
            swa = float(r["swa_val_loss"])
        snapshots_at[e0 + 1] = collected
        if swa < best_swa:
            best_swa, saved = swa, e0 + 1
        elif e0 == swag_start + force_save:
            saved = e0 + 1
    return {"base_model_epoch": base_epoch, "reloaded_from_epoch": reloaded, "swag_saved_epoch": saved}, snapshots_at


# lr 1e-2 on 48 rows: validation loss falls, then rises (the rules then pick epochs other than the last)
RULES_RUN = ("model=tiny_llama", "experiment.num_epochs=7", "method.swag_start=3", "method.force_save=1",
             "method.swag_max_num_models=3", "experiment.learning_rate=1e-2", "method.swag_learning_rate=5e-3",
             "method.swag_anneal_epochs=1")


@pytest.mark.slow
def test_run_info_follows_the_original_rules(tmp_path):
    rd, cfg, rows, info = run(tmp_path, *RULES_RUN)
    want, snapshots_at = original_rules(rows, swag_start=3, force_save=1)
    assert {k: info[k] for k in want} == want
    assert rows[0]["swa_val_loss"] == "" and all(r["swa_val_loss"] for r in rows[3:])
    # the SWAG model on disk is the posterior as it was at swag_saved_epoch
    meta = json.loads((rd / "swag_model" / "swag_posterior.json").read_text())
    assert meta["num_snapshots"] == snapshots_at[info["swag_saved_epoch"]]
    assert info["epochs_trained"] == 7 and len(rows) == 7          # force_save does not stop training
    assert yaml.safe_load((rd / "config.yaml").read_text())["experiment"]["save_path"] == str(rd)


@pytest.mark.slow
def test_reload_at_swag_start_loads_the_lowest_loss_adapter(tmp_path):
    """With SWAG's learning rate ~0 the first snapshot is the reloaded adapter itself."""
    over = ("model=tiny_llama", "experiment.num_epochs=4", "method.swag_start=3", "method.swag_max_num_models=2",
            "experiment.learning_rate=1e-2", "method.swag_anneal_strategy=constant", "method.swag_learning_rate=1e-12")
    rd, cfg, rows, info = run(tmp_path / "reload", *over)
    assert info["reloaded_from_epoch"] is not None and info["reloaded_from_epoch"] < 3, "the setting must reload an earlier epoch"
    from swag_lora.predict.evaluation import load_run
    post = SwagPosterior.load(rd / "swag_model")
    loaded = load_run(rd, device="cpu")
    loaded.model.load_adapter(rd / "base_model")
    last_iterate = load_file(str(rd / "checkpoint.prev" / "trainable.safetensors"))   # end of epoch 3, before the reload
    moved = 0
    for name, mu in post.mean().items():
        torch.testing.assert_close(mu, loaded.named[name].detach(), atol=1e-6, rtol=0)
        moved += not torch.allclose(mu, last_iterate[name], atol=1e-4)
    assert moved, "the reloaded adapter differs from the last iterate"
    rd2, _, _, info2 = run(tmp_path / "noreload", *over, "method.swag_start_with_lowest_loss=false")
    assert info2["reloaded_from_epoch"] is None
    post2 = SwagPosterior.load(rd2 / "swag_model")
    last2 = load_file(str(rd2 / "checkpoint.prev" / "trainable.safetensors"))
    for name, mu in post2.mean().items():
        torch.testing.assert_close(mu, last2[name], atol=1e-6, rtol=0)


def optimizer_step_lrs(monkeypatch) -> list:
    """The learning rate of every real optimizer step (Accelerate calls AdamW.step only at the end of a window)."""
    seen = []
    step = torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return seen


@pytest.mark.slow
def test_gradient_accumulation_batch_is_per_optimizer_step_and_lr_matches(tmp_path, monkeypatch):
    seen = optimizer_step_lrs(monkeypatch)
    rd, cfg, rows, info = run(tmp_path, "model=tiny_roberta", "experiment.num_epochs=4", "method.swag_start=2",
                              "experiment.batch_size=8", "experiment.gradient_accumulation_steps=2",
                              "method.swag_anneal_strategy=cos", "method.swag_anneal_epochs=1", "method.swag_max_num_models=2",
                              "experiment.learning_rate=1e-3", "method.swag_learning_rate=1e-4")
    batches = math.ceil(48 / 4)      # loader batch = batch_size // gradient_accumulation_steps
    ref = original_lrs(lr=1e-3, batches=batches, epochs=4, swag_start=2, anneal_epochs=1, swag_lr=1e-4, strategy="cos",
                       accum=2)
    assert info["global_step"] == len(ref) == 4 * math.ceil(batches / 2)
    assert seen == pytest.approx(ref, rel=1e-9, abs=1e-18)


@pytest.mark.slow
def test_the_papers_command_on_a_tiny_llama_trains_the_original_procedure(tmp_path, shared_data, monkeypatch):
    """The seed command verbatim, with a tiny Llama in place of Llama-2-7B and 32 OBQA training rows: 18 epochs of
    2 batches, the original's learning rate at every step, and its reload / MAP / SWAG-save rules."""
    from swag_lora.data.raw import raw_datasetdict
    raw_datasetdict("obqa", shared_data / "obqa").save_to_disk(str(tmp_path / "data" / "obqa"))
    seen = optimizer_step_lrs(monkeypatch)
    command = [o for o in SEED_COMMAND if not o.startswith("model=")]
    rd, cfg, rows, info = run(tmp_path, *command, "model=tiny_llama", "experiment.offline=true",
                              f"experiment.data_path={tmp_path / 'data'}", "experiment.max_train_samples=32",
                              "experiment.max_eval_samples=48")
    assert len(rows) == 18 and info["global_step"] == 36
    assert seen == pytest.approx(original_lrs(lr=6e-4, batches=2, epochs=18, swag_start=8, anneal_epochs=5, swag_lr=1e-4,
                                              strategy="linear"), rel=1e-9, abs=1e-18)
    want, snapshots_at = original_rules(rows, swag_start=8, force_save=5)
    assert {k: info[k] for k in want} == want
    assert json.loads((rd / "swag_model" / "swag_posterior.json").read_text())["num_snapshots"] == snapshots_at[info["swag_saved_epoch"]]
