"""Evaluation: BMA averaging, SWA = posterior mean, member checks, temperature scaling, the bash
scripts end to end on a tiny model, and the report across seeds."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, compose, run_config

from swag_lora import metrics as M
from swag_lora.predict.draws import predict_probs, score, swag_samples
from swag_lora.predict.temperature import apply_temperature, fit_temperature
from swag_lora.posteriors.swag import SwagPosterior

RUN_ARGS = ("method=swag", "model=tiny_roberta", "experiment.num_epochs=3", "method.swag_start=1", "method.swag_c_steps=2",
            "method.swag_max_num_models=4")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny SWAG runs that differ only in their seed."""
    from swag_lora.train.loop import train
    root = tmp_path_factory.mktemp("runs")
    return [train(run_config(*TINY, *RUN_ARGS, f"experiment.save_folder={root}", "experiment.eval_upon_save=false",
                             f"experiment.seed={seed}")) for seed in (0, 1)]


def _loaded(rd):
    from swag_lora.data import get_task, load_splits
    from swag_lora.data.encode import Collator, encode
    from swag_lora.predict.evaluation import load_run
    run = load_run(rd, device="cpu")
    rows = load_splits("demo", roles=("test",)).test[:40]
    feats = encode(rows, run.tokenizer, run.model.arch, get_task("demo"), 64)
    return run, feats, Collator(run.tokenizer.pad_token_id, run.model.arch, 4, run.tokenizer.padding_side)


@pytest.mark.slow
def test_swag_bma_is_mean_of_sample_probabilities_and_restores_weights(runs):
    run, feats, coll = _loaded(runs[0])
    run.model.load_adapter(runs[0] / "swag_model")
    post = SwagPosterior.load(runs[0] / "swag_model")
    before = {n: t.detach().clone() for n, t in run.named.items()}
    members = score(run.model, feats, coll, 16, swag_samples(post, run.named, 3, 0.5, seed=7), restore=run.named)
    # the same three samples by hand, in order, from the same generator
    g = torch.Generator().manual_seed(7)
    manual = []
    for _ in range(3):
        SwagPosterior.write_(run.named, post.sample(scale=0.5, generator=g))
        run.model.eval()
        manual.append(predict_probs(run.model, feats, coll, 5, sort_by_length=False))
    SwagPosterior.write_(run.named, before)
    np.testing.assert_allclose(members, np.stack(manual), atol=1e-5)
    assert not np.allclose(members[0], members[1])
    for n, t in run.named.items():
        torch.testing.assert_close(t, before[n])
    probs = members.mean(0)
    labels = np.array([f["label"] for f in feats])
    assert M.classification_metrics(members, labels)["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))


@pytest.mark.slow
def test_swa_scale_zero_equals_posterior_mean_predictions(runs):
    run, feats, coll = _loaded(runs[0])
    post = SwagPosterior.load(runs[0] / "swag_model")
    run.model.load_adapter(runs[0] / "base_model")     # start from other weights on purpose
    swa = score(run.model, feats, coll, 16, swag_samples(post, run.named, 5, 0.0), restore=run.named)
    assert swa.shape[0] == 1
    SwagPosterior.write_(run.named, post.mean())
    run.model.eval()
    np.testing.assert_allclose(swa[0], predict_probs(run.model, feats, coll, 16), atol=1e-6)


@pytest.mark.slow
def test_length_sorted_batches_score_every_row_once(runs):
    run, feats, coll = _loaded(runs[0])
    run.model.eval()
    a = predict_probs(run.model, feats, coll, 7, sort_by_length=True)
    b = predict_probs(run.model, feats, coll, 40, sort_by_length=False)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_temperature_fit_matches_grid_search():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 3)) * 4
    labels = np.array([rng.choice(3, p=np.exp(row / 4) / np.exp(row / 4).sum()) for row in logits])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = fit_temperature(probs, labels)
    grid = np.linspace(0.5, 8, 1501)
    nlls = [M.nll(apply_temperature(probs[None], g)[0], labels) for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nlls))], abs=0.01)
    assert 3 < t < 5


def test_temperature_keeps_absent_choices_at_zero():
    """A 4-choice question read through the 5-letter head has p = 0 for E (masked). Tempering must leave it at 0,
    in the fit and when applied: a large T (a model near chance) once gave E 4% (log of a clipped 0, divided by T)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 300, 5)) * 0.3
    logits[..., 4] = -np.inf                                        # E absent in every row
    draws = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 4, size=300)                           # noise: the fit wants a flat predictive (large T)
    t = fit_temperature(draws, labels)
    tempered = apply_temperature(draws, t)
    assert t > 3 and np.all(tempered[..., 4] == 0) and np.allclose(tempered.sum(-1), 1)
    grid = np.exp(np.linspace(0, np.log(1e4), 400))             # the same T as the 4-choice problem without E
    four = [M.nll(apply_temperature(draws[..., :4], g).mean(0), labels) for g in grid]
    five = [M.nll(apply_temperature(draws, g).mean(0), labels) for g in grid]
    np.testing.assert_allclose(five, four, rtol=1e-9)
    assert fit_temperature(draws, labels) == pytest.approx(fit_temperature(draws[..., :4], labels), rel=1e-4)


def test_multi_draw_temperature_minimises_the_nll_of_the_average_as_applied():
    """10 draws that disagree: the T fitted on log(mean p) (the old fit) is not the T that minimises the validation
    NLL of mean_s softmax(log p_s / T), which is how the temperature is applied; the fit finds the latter."""
    rng = np.random.default_rng(3)
    n, c, s = 500, 4, 10
    centre = rng.normal(size=(n, c)) * 3
    labels = np.array([rng.choice(c, p=np.exp(z / 3) / np.exp(z / 3).sum()) for z in centre])
    logits = centre[None] + rng.normal(size=(s, n, c)) * 2.5
    draws = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    grid = np.exp(np.linspace(np.log(0.3), np.log(10), 2001))
    applied = [M.nll(apply_temperature(draws, g).mean(0), labels) for g in grid]
    best = grid[int(np.argmin(applied))]
    t = fit_temperature(draws, labels)
    assert t == pytest.approx(best, rel=0.01)
    old = fit_temperature(draws.mean(0), labels)       # the temperature of the averaged distribution
    assert abs(old - best) / best > 0.2
    assert M.nll(apply_temperature(draws, t).mean(0), labels) < M.nll(apply_temperature(draws, old).mean(0), labels)


def test_ensemble_temperature_rows_are_held_out_by_every_member(shared_data, tmp_path):
    from swag_lora.data.loading import carved_rows, held_out_validation
    from swag_lora.data.raw import raw_datasetdict
    raw_datasetdict("cqa", shared_data / "cqa").save_to_disk(str(tmp_path / "cqa"))
    rows, source = held_out_validation("cqa", "", [(0, 0.2), (1, 0.2)], offline=True, data_path=str(tmp_path))
    v0, v1 = set(carved_rows(9741, 0, 0.2)), set(carved_rows(9741, 1, 0.2))
    assert len(rows) == len(v0 & v1) and 300 < len(rows) < 500 and "held out by every member" in source
    from swag_lora.data import load_splits
    train0 = {e["text"] for e in load_splits("cqa", offline=True, data_path=str(tmp_path), seed=0, val_fraction=0.2).train}
    train1 = {e["text"] for e in load_splits("cqa", offline=True, data_path=str(tmp_path), seed=1, val_fraction=0.2).train}
    texts = {e["text"] for e in rows}
    assert not texts & train0 and not texts & train1       # no member trained on them (questions are unique here)
    none, _ = held_out_validation("cqa", "", [(0, 1e-4), (1, 1e-4)], offline=True, data_path=str(tmp_path))
    assert none == []
    raw_datasetdict("obqa", shared_data / "obqa").save_to_disk(str(tmp_path / "obqa"))
    rows, source = held_out_validation("obqa", "", [(0, 0.2), (1, 0.2)], offline=True, data_path=str(tmp_path))
    assert len(rows) == 500 and source == "validation (official)"


def test_comparison_figure_has_one_row_of_panels_per_evaluated_split(monkeypatch, tmp_path):
    from swag_lora.report import figures as report
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig))
    nan = float("nan")
    rows = [{"distribution": d, "task": t, "method": m, "nll": (1.0, 0.1, 3), "auroc_entropy": (nan if d == "id" else 0.6, nan, 1)}
            for d, t in [("id", "obqa"), ("ood", "arc-c"), ("ood", "mmlu/physics")] for m in ["map", "swag", "ensemble"]]
    report.comparison_figure(rows, ("nll", "auroc_entropy"), tmp_path / "x.png")
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["nll (ID obqa)", "auroc_entropy (ID obqa): not defined", "nll (OOD arc-c)",
                                               "auroc_entropy (OOD arc-c)", "nll (OOD mmlu/physics)",
                                               "auroc_entropy (OOD mmlu/physics)"]
    assert [t.get_text() for t in axes[2].get_xticklabels()] == ["map", "swag", "ensemble"]    # methods only, 3 bars
    assert len(axes[2].patches) == 3


def test_report_keeps_every_setting_that_changes_the_predictive_apart():
    from swag_lora.report import aggregate
    def rec(label, method, scale, ts, seed=0):
        return {"distribution": "id", "task": "demo", "subtask": "", "split": "test", "model": "m", "label": label,
                "method": method, "name": f"{label.replace('+ts', '')}_x", "run_dirs": [f"r/seed{seed}"],
                "train_seeds": [seed], "metrics": {"nll": 1.0 + ts},
                "settings": {"num_samples": 1, "swag_sample_scale": scale, "swag_cov_mat": True,
                             "temperature": 1.3 if ts else None, "temperature_scaling": ts, "seed": 0,
                             "num_members": 1, "num_draws": 1}}
    rows = aggregate([rec("swa", "swag", 0.0, False), rec("swa+ts", "swag", 0.0, True),
                      rec("multiswa", "multiswag", 0.0, False), rec("multiswa+ts", "multiswag", 0.0, True),
                      rec("swa", "swag", 0.0, False, seed=1)])
    assert sorted((r["method"], r["n"]) for r in rows) == [("multiswa", 1), ("multiswa+ts", 1), ("swa", 2), ("swa+ts", 1)]
    carved = []     # T fitted on each seed's own carved rows: one setting, seeds grouped; the official split is another
    for seed, source in [(0, "carved 0.2 of train (seed 0)"), (1, "carved 0.2 of train (seed 1)"), (2, "validation (official)")]:
        carved.append(rec("swa+ts", "swag", 0.0, True, seed=seed))
        carved[-1]["settings"]["temperature_source"] = source
    assert sorted(r["n"] for r in aggregate(carved)) == [1, 2]
    from swag_lora.config import evaluation_config
    from swag_lora.predict.methods import make_method
    for method, label in (("swag", "swa"), ("multiswag", "multiswa")):
        assert make_method(evaluation_config([f"evaluation.eval_method={method}", "evaluation.swag_sample_scale=0.0",
                                              "evaluation.temperature_scaling=true"])).label() == label


@pytest.mark.slow
def test_members_must_agree(runs, tmp_path):
    import copy

    from swag_lora.config import ConfigError, MapConfig, load_run_config
    from swag_lora.predict.methods import check_members, make_method
    a = load_run_config(runs[0])
    b = copy.deepcopy(a)
    b.experiment.task = "sst2"
    with pytest.raises(ConfigError, match="ensemble members disagree on task: 'demo' \\(member 0\\) vs 'sst2' \\(member 1\\)"):
        check_members([a, b], "ensemble")
    for section, name, value in [("experiment", "lora_alpha", 99.0), ("experiment", "prompt_style", "lines"),
                                 ("model", "max_length", 7), ("model", "modules_to_save", ["other"])]:
        d = copy.deepcopy(a)
        setattr(getattr(d, section), name, value)
        with pytest.raises(ConfigError, match=f"multiswag members disagree on {name}:"):
            check_members([a, d], "multiswag")
    c = copy.deepcopy(a)
    c.method = MapConfig(method_name="map")
    with pytest.raises(ConfigError, match="was trained with method=map; evaluation.eval_method=multiswag needs a SWAG run"):
        make_method(a.evaluation.__class__(**{**a.evaluation.__dict__, "eval_method": "multiswag", "swag_sample_scale": 1.0})
                    ).check([a, c], [runs[0], runs[1]])


@pytest.mark.slow
def test_temperature_is_fitted_on_the_in_distribution_task_even_when_only_ood_is_scored(runs, tmp_path):
    from swag_lora.config import ConfigError, parse_eval
    from swag_lora.predict.evaluation import evaluate, resolve_plan
    def plan(*extra, run=runs[0]):
        return resolve_plan(parse_eval(compose(f"evaluation.eval_model_path={run}", "evaluation.eval_method=swag",
                                               "evaluation.num_samples=1", "evaluation.swag_sample_scale=0.0",
                                               "evaluation.temperature_scaling=true", "experiment.max_eval_samples=40",
                                               f"evaluation.output_dir={tmp_path}", *extra, config_name="eval")))
    both = evaluate(plan("experiment.ood_task=demo", "experiment.ood_subtask=shifted"), distributed=False)
    only = plan("experiment.ood_task=demo", "experiment.ood_subtask=shifted", "evaluation.only_ood=true")
    assert [t[0] for t in only.targets] == ["ood"] and only.id_task == ("demo", "")
    ood_only = evaluate(only, distributed=False)
    assert len(ood_only) == 1 and ood_only[0]["distribution"] == "ood"
    assert ood_only[0]["settings"]["temperature"] == pytest.approx(both[0]["settings"]["temperature"])
    assert ood_only[0]["metrics"]["nll"] == pytest.approx(both[1]["metrics"]["nll"])
    import shutil
    no_ood = shutil.copytree(runs[0], tmp_path / "no_ood")     # a run trained without an OOD task
    cfg = (no_ood / "config.yaml").read_text()
    (no_ood / "config.yaml").write_text(cfg.replace("ood_task: auto", "ood_task: ''"))
    with pytest.raises(ConfigError, match="only_ood=true but neither the evaluation nor the run names an OOD task"):
        plan("evaluation.only_ood=true", run=no_ood)


@pytest.mark.slow
def test_ood_tasks_as_a_list_give_the_numbers_of_the_single_task_evaluation_and_bad_entries_are_refused(runs, tmp_path):
    from swag_lora.config import ConfigError, parse_eval
    from swag_lora.predict.evaluation import evaluate, resolve_plan
    def run(out, *extra):
        return evaluate(resolve_plan(parse_eval(compose(
            f"evaluation.eval_model_path={runs[0]}", "evaluation.eval_method=swag", "evaluation.num_samples=2",
            "experiment.max_eval_samples=40", f"evaluation.output_dir={tmp_path / out}", *extra, config_name="eval"))),
            distributed=False)
    alone = run("alone", "experiment.ood_task=demo", "experiment.ood_subtask=shifted")
    listed = run("listed", "experiment.ood_tasks=[demo/shifted]")
    assert [(r["distribution"], r["task"], r["subtask"]) for r in listed] == [("id", "demo", ""), ("ood", "demo", "shifted")]
    assert listed[0]["metrics"] == alone[0]["metrics"] and listed[1]["metrics"] == alone[1]["metrics"]
    assert len(list((tmp_path / "listed").glob("*.json"))) == 2
    for bad, match in [("experiment.ood_tasks=[mmlu/chemistry/x]", "experiment.ood_tasks entry 'mmlu/chemistry/x'; allowed"),
                       ("experiment.ood_tasks=[nope]", "experiment.ood_tasks entry 'nope': unknown task 'nope'; allowed: "),
                       ("experiment.ood_tasks=[demo/other]", "experiment.ood_tasks entry 'demo/other': unknown subtask 'other'"),
                       ("experiment.ood_tasks=[demo/shifted,demo]", "OOD task demo is the in-distribution task itself"),
                       ("experiment.ood_task=demo", "both given; allowed: one of them")]:
        extra = [bad] + (["experiment.ood_tasks=[demo]"] if "ood_task=" in bad else [])
        with pytest.raises(ConfigError, match=match):
            resolve_plan(parse_eval(compose(f"evaluation.eval_model_path={runs[0]}", *extra, config_name="eval")))


def _script(name, env, *args):
    e = {**os.environ, **env, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    e.pop("SLURM_JOB_ID", None)
    return subprocess.run(["bash", f"evaluate/{name}", *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_bash_scripts_end_to_end_and_report(runs, tmp_path):
    out = tmp_path / "eval"
    common = {"NUM_SAMPLES": "2", "OOD_TASK": "demo", "OOD_SUBTASK": "shifted"}
    extra = [f"evaluation.output_dir={out}", "experiment.max_eval_samples=40"]
    for name, env in [("evaluate_base.bash", {"MODEL_PATH": str(runs[0])}),
                      ("evaluate_dropout.bash", {"MODEL_PATH": str(runs[0])}),
                      ("evaluate_swag.bash", {"MODEL_PATH": str(runs[0])}),
                      ("evaluate_swag.bash", {"MODEL_PATH": str(runs[0]), "NUM_SAMPLES": "1", "SWAG_SAMPLE_SCALE": "0.0"}),
                      ("evaluate_swag.bash", {"MODEL_PATH": str(runs[0]), "NUM_SAMPLES": "1", "SWAG_SAMPLE_SCALE": "0.0",
                                              "TEMPERATURE_SCALING": "true"}),
                      ("evaluate_ensemble.bash", {"PATHS": f"{runs[0]} {runs[1]}"}),
                      ("evaluate_multiswag.bash", {"PATHS": f"{runs[0]} {runs[1]}"})]:
        p = _script(name, {**common, **env}, *extra)
        assert p.returncode == 0, p.stderr[-2000:]
    names = sorted(f.name for f in out.glob("*.json"))
    assert "swa_id_demo_test.json" in names and "multiswag_s2_scale1_m2_ood_demo_shifted_test.json" in names
    ts = json.loads((out / "swa_ts_id_demo_test.json").read_text())
    assert ts["label"] == "swa+ts" and ts["settings"]["temperature"] > 0 and ts["settings"]["temperature_scaling"]
    from swag_lora.report import aggregate, load_records
    labels = sorted(r["method"] for r in aggregate(load_records(sorted(out.glob("*.json")))) if r["distribution"] == "id")
    assert len(load_records([out])) == len(load_records(sorted(out.glob("*.json")))) == 14    # an eval folder as a path
    assert labels.count("swa") == 1 and labels.count("swa+ts") == 1
    rec = json.loads((out / "ensemble_m2_ood_demo_shifted_test.json").read_text())
    assert rec["settings"]["num_draws"] == 2 and rec["num_examples"] == 40
    assert rec["metrics"]["mutual_information"] > 0        # an ensemble's MI is not 0
    for key in ("accuracy", "nll", "brier", "ece", "ece_10", "ece_20", "entropy", "mutual_information", "disagreement",
                "auroc_max_prob", "aupr_in_entropy", "aupr_out_mutual_information"):
        assert key in rec["metrics"], key
    npz = np.load(out / "ensemble_m2_ood_demo_shifted_test.npz")
    assert npz["probs"].shape == (40, 4) and npz["labels"].shape == (40,)
    assert M.accuracy(npz["probs"].astype(float), npz["labels"]) == pytest.approx(rec["metrics"]["accuracy"])
    assert (out / "ensemble_m2_ood_demo_shifted_test.png").stat().st_size > 1000
    # missing MODEL_PATH: a clear one-line error
    p = _script("evaluate_swag.bash", {})
    assert p.returncode == 2 and "set MODEL_PATH" in p.stderr


@pytest.mark.slow
def test_report_groups_seeds_with_paired_differences(runs, tmp_path):
    from swag_lora.report import build_report
    from swag_lora.predict.evaluation import evaluate, resolve_plan
    from swag_lora.config import parse_eval
    for rd in runs:
        for method, scale in (("base", 0.5), ("swag", 0.5)):
            evaluate(resolve_plan(parse_eval(compose(
                f"evaluation.eval_method={method}", f"evaluation.eval_model_path={rd}", "evaluation.num_samples=2",
                f"evaluation.swag_sample_scale={scale}", "experiment.max_eval_samples=40", "experiment.ood_task=",
                config_name="eval"))))
    md = build_report([str(r) for r in runs], str(tmp_path / "report"))
    import csv
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "report.csv")) if r["distribution"] == "id"}
    assert set(rows) == {"map", "swag"} and rows["swag"]["n"] == "2" and rows["swag"]["d_nll_kind"] == "paired t"
    # the paired difference equals the mean of per-seed differences
    recs = {}
    for rd in runs:
        for f in (rd / "eval").glob("*_id_demo_test.json"):
            r = json.loads(f.read_text())
            recs[(r["label"], r["train_seeds"][0])] = r["metrics"]["nll"]
    d = np.mean([recs[("swag", s)] - recs[("map", s)] for s in (0, 1)])
    assert float(rows["swag"]["d_nll"]) == pytest.approx(d)
    shown = "| swag |" in md                          # the comparison is shown only where MAP is above chance
    assert shown == (rows["map"]["above_chance"] == "True") and "ID: demo (test, 40 rows)" in md
    assert (tmp_path / "report.csv").is_file() and (tmp_path / "report.png").is_file()


@pytest.mark.slow
def test_rte_classifier_scores_mrpc_with_aligned_labels(shared_data, tmp_path):
    from swag_lora.config import parse_eval
    from swag_lora.data.raw import raw_datasetdict
    from swag_lora.predict.evaluation import evaluate, resolve_plan
    from swag_lora.train.loop import train
    for task in ("rte", "mrpc"):
        raw_datasetdict(task, shared_data / task).save_to_disk(str(tmp_path / "data" / task))
    rd = train(run_config(*TINY, "model=tiny_roberta", "method=map", "experiment.task=rte", "experiment.num_epochs=1",
                          "experiment.offline=true", f"experiment.data_path={tmp_path / 'data'}",
                          f"experiment.save_folder={tmp_path}", "experiment.eval_upon_save=false"))
    plan = resolve_plan(parse_eval(compose("evaluation.eval_method=base", f"evaluation.eval_model_path={rd}",
                                           "experiment.ood_task=mrpc", "experiment.max_eval_samples=40",
                                           f"evaluation.output_dir={tmp_path / 'eval'}", config_name="eval")))
    ood = next(r for r in evaluate(plan, distributed=False) if r["distribution"] == "ood")
    raw = [r["label"] for r in raw_datasetdict("mrpc", shared_data / "mrpc")["validation"]][:40]
    npz = np.load(tmp_path / "eval" / f"{ood['name']}.npz")
    np.testing.assert_array_equal(npz["labels"], 1 - np.array(raw))    # MRPC's equivalent (1) is RTE's entailment (0)
    assert "labels as the classifier's: [1, 0]" in ood["split_source"]


@pytest.mark.slow
def test_temperature_scaling_on_the_scored_validation_split_is_refused(runs):
    from swag_lora.config import ConfigError, parse_eval
    from swag_lora.predict.evaluation import resolve_plan
    for method, extra in (("base", ["evaluation.temperature_scaling=true"]), ("temperature", [])):
        with pytest.raises(ConfigError, match="fit the temperature on the rows it scores"):
            resolve_plan(parse_eval(compose(f"evaluation.eval_method={method}", f"evaluation.eval_model_path={runs[0]}",
                                            "evaluation.split=validation", *extra, config_name="eval")))
    resolve_plan(parse_eval(compose("evaluation.eval_method=base", f"evaluation.eval_model_path={runs[0]}",
                                    "evaluation.split=validation", config_name="eval")))      # without TS: fine


def test_file_names_come_from_the_methods_and_keep_the_public_names():
    """The names users' scripts read: the method supplies its label and name parts; the report knows no method."""
    from swag_lora.config import evaluation_config
    from swag_lora.predict.methods import make_method
    from swag_lora.report.records import record_name

    def name(*overrides, members=1, ts=False, dist="id"):
        m = make_method(evaluation_config(list(overrides)))
        return record_name(m.label(), m.name_parts(), members, ts, dist, "demo", "shifted" if dist == "ood" else "", "test")
    assert name("evaluation.eval_method=base") == "map_id_demo_test"
    assert name("evaluation.eval_method=dropout", "evaluation.num_samples=10") == "dropout_s10_id_demo_test"
    assert name("evaluation.eval_method=swag", "evaluation.swag_sample_scale=0.5", "evaluation.num_samples=10",
                dist="ood") == "swag_s10_scale0.5_ood_demo_shifted_test"
    assert name("evaluation.eval_method=swag", "evaluation.swag_sample_scale=0.0") == "swa_id_demo_test"
    assert name("evaluation.eval_method=swag", "evaluation.swag_sample_scale=1.0", "evaluation.swag_cov_mat=false",
                "evaluation.num_samples=5", ts=True) == "swag_s5_scale1_diag_ts_id_demo_test"
    assert name("evaluation.eval_method=laplace") == "laplace_kron_glm_probit_id_demo_test"
    assert name("evaluation.eval_method=multiswag", "evaluation.swag_sample_scale=0.5", "evaluation.num_samples=10",
                members=3) == "multiswag_s10_scale0.5_m3_id_demo_test"
    assert name("evaluation.eval_method=blob", "evaluation.blob_mean=true") == "blob-mean_id_demo_test"
