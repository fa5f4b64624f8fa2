"""A protocol's kept records (experiments/run.py, `keep:`): restored on a fresh checkout, evaluated again when their
settings change, and guarded by the fingerprints of the trainings they read."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, TINY, load_runner, runner, subprocess_env


@pytest.mark.slow
def test_kept_evaluations_survive_a_wiped_output_and_a_retraining_must_reproduce_its_weights(tmp_path):
    out, keep = tmp_path / "scratch", tmp_path / "kept"
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({
        "out": str(out), "keep": str(keep), "seeds": [0, 1],
        "common": ["model=tiny_llama", *TINY, "experiment.num_epochs=1", "experiment.learning_rate=0.01"],
        "runs": {"swag": ["method=swag", "method.swag_start=0", "method.force_save=1"]},
        "eval_common": ["evaluation.num_samples=2", "experiment.max_eval_samples=16"],
        "evaluations": [{"name": "map", "run": "swag", "method": "base"},
                        {"name": "ensemble", "runs": "swag", "method": "ensemble"}]}))
    p = runner(protocol)
    assert p.returncode == 0, p.stderr[-2000:]
    kept = {f.relative_to(keep / "records").as_posix() for f in (keep / "records").rglob("*") if f.is_file()}
    assert {k.rsplit("/", 1)[0] for k in kept} == {"map/seed0", "map/seed1", "ensemble/seed0"}
    assert {k.rsplit(".", 1)[1] for k in kept} == {"json", "npz"}        # no figures: the report redraws them
    trainings = json.loads((keep / "trainings.json").read_text())
    assert set(trainings) == {"train_swag_seed0", "train_swag_seed1"}     # of the weights: the seeds' differ
    assert trainings["train_swag_seed0"] != trainings["train_swag_seed1"]
    assert set(json.loads((keep / "timings.json").read_text())) == {f.stem for f in (out / "done").glob("*.done")}
    report = (keep / "report.csv").read_text()

    shutil.rmtree(out)                      # a fresh checkout: nothing is trained or evaluated again
    p = runner(protocol)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [line for line in p.stdout.splitlines() if line.startswith("[run]")] == ["[run] report"]
    assert "[keep] 3 finished evaluations restored" in p.stdout
    assert (keep / "report.csv").read_text() == report

    shutil.rmtree(out)                      # one kept evaluation lost: only its training runs again, to the same weights
    map1 = json.loads(next((keep / "records" / "map" / "seed1").glob("*.json")).read_text())["metrics"]
    shutil.rmtree(keep / "records" / "map" / "seed1")
    p = runner(protocol)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [line for line in p.stdout.splitlines() if line.startswith("[run]")] == [
        "[run] train_swag_seed1", "[run] eval_map_seed1", "[run] report"]
    assert json.loads(next((keep / "records" / "map" / "seed1").glob("*.json")).read_text())["metrics"] == map1
    assert json.loads((keep / "trainings.json").read_text()) == trainings

    runner_module = load_runner()           # the summary's norm, computed independently with numpy
    from safetensors.numpy import load_file
    run1 = runner_module.run_dir(out, "swag", 1)
    for name, tensors in trainings["train_swag_seed1"]["summary"].items():
        arrays = load_file(run1 / name)
        assert set(tensors) == set(arrays)
        for k, (norm, _) in tensors.items():
            assert norm == pytest.approx(np.linalg.norm(arrays[k].astype(np.float64)), rel=1e-12)
    assert runner_module.summary_distance(trainings["train_swag_seed0"]["summary"],
                                          trainings["train_swag_seed1"]["summary"]) > 0.1     # another seed: far apart
    other_data = tmp_path / "other_data"    # the same seed on 40 of the 48 rows: LoRA's B (learned from 0) differs
    t = subprocess.run([sys.executable, "launch_exp_hydra.py", "model=tiny_llama", *TINY, "experiment.num_epochs=1",
                        "experiment.learning_rate=0.01", "method=swag", "method.swag_start=0", "method.force_save=1",
                        "experiment.max_train_samples=40", "experiment.seed=1", f"experiment.save_folder={other_data}",
                        "experiment.eval_upon_save=false"],
                       cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert t.returncode == 0, t.stderr[-2000:]
    other = runner_module.weights_summary(next(p.parent for p in other_data.rglob("run_info.json")))
    assert runner_module.summary_distance(other, trainings["train_swag_seed1"]["summary"]) > 0.1

    def retrain_seed1(kept_entry):
        shutil.rmtree(out)
        shutil.rmtree(keep / "records" / "map" / "seed1", ignore_errors=True)
        (keep / "trainings.json").write_text(json.dumps({**trainings, "train_swag_seed1": kept_entry}))
        return runner(protocol)

    kept1 = trainings["train_swag_seed1"]   # the same weights to rounding (another CPU's kernels): accepted, said
    near = {f: {k: [x * (1 + 1e-5) for x in v] for k, v in t.items()} for f, t in kept1["summary"].items()}
    p = retrain_seed1({"sha256": "0" * 64, "summary": near})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "[fingerprint] train_swag_seed1: not bit-equal to the kept training, equal to rounding" in p.stdout
    assert json.loads((keep / "trainings.json").read_text())["train_swag_seed1"]["summary"] == near

    p = retrain_seed1({"sha256": "0" * 64, "summary": trainings["train_swag_seed0"]["summary"]})
    assert p.returncode != 0                # other weights, read by the kept ensemble: the runner stops
    assert p.stderr.strip().splitlines()[-1].startswith("error: train_swag_seed1 trained again gave other weights")
    assert "largest relative difference" in p.stderr and "(ensemble_seed0)" in p.stderr
    assert not (keep / "records" / "map" / "seed1").exists()
    p = retrain_seed1("0" * 64)             # a kept sha256 alone (before summaries): only bit-equal weights pass
    assert p.returncode != 0 and "predates weights summaries" in p.stderr

    settings = json.loads((keep / "evaluations.json").read_text())     # the kept ensemble made stale (other settings):
    settings["eval_ensemble_seed0"]["overrides"] = ["experiment.max_eval_samples=8"]   # no standing evaluation reads
    (keep / "evaluations.json").write_text(json.dumps(settings))       # seed 1: its fingerprint and the stale are replaced
    p = retrain_seed1("0" * 64)
    assert p.returncode == 0, p.stderr[-2000:]
    assert ("[fingerprint] train_swag_seed1: other weights than the kept training's, which no standing evaluation reads "
            "(each is evaluated again): its fingerprint is replaced, the stale kept records of ensemble_seed0 removed") in p.stdout
    assert "[run] eval_ensemble_seed0" in p.stdout
    assert json.loads((keep / "trainings.json").read_text())["train_swag_seed1"] == trainings["train_swag_seed1"]
    assert json.loads((keep / "evaluations.json").read_text())["eval_ensemble_seed0"] == settings["eval_ensemble_seed0"] | {
        "overrides": ["evaluation.num_samples=2", "experiment.max_eval_samples=16"]}


@pytest.mark.slow
def test_the_tuning_seeds_run_is_its_chosen_tuning_training_copied_and_equal_to_training_it_again(tmp_path):
    runner_module = load_runner()
    out = tmp_path / "out"
    common = ["model=tiny_llama", *TINY, "experiment.num_epochs=1"]
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({
        "out": str(out), "seeds": [0, 1], "common": common,
        "runs": {"swag": ["method=swag", "method.swag_start=0", "method.force_save=1"]},
        "tune": {"swag": {"seed": 0, "grid": {"experiment.learning_rate": [0.01, 0.0001]}}},
        "eval_common": ["evaluation.num_samples=2", "experiment.max_eval_samples=16"],
        "evaluations": [{"name": "map", "run": "swag", "method": "base"}]}))
    p = runner(protocol)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [line for line in p.stdout.splitlines() if line.startswith("[run]")] == [
        "[run] tune_swag_0_seed0", "[run] tune_swag_1_seed0", "[run] train_swag_seed1", "[run] eval_map_seed0",
        "[run] eval_map_seed1", "[run] report"]
    tuned = json.loads((out / "tuned.json").read_text())["swag"]
    chosen = tuned["chosen"]
    assert str(chosen) == min(tuned["best_validation_loss"], key=tuned["best_validation_loss"].get)
    i = [0.01, 0.0001].index(chosen)
    assert f"[copy] train_swag_seed0: the tuning training tune_swag_{i}_seed0" in p.stdout
    assert json.loads((out / "timings.json").read_text())["train_swag_seed0"]["copied_from"] == f"tune_swag_{i}_seed0"
    copied = runner_module.run_dir(out, "swag", 0)
    tuning = next(p.parent for p in (out / "runs" / "swag_tune" / str(i)).rglob("run_info.json"))
    assert runner_module.fingerprint(copied) == runner_module.fingerprint(tuning)
    again = tmp_path / "again"               # training the seed afresh at the chosen value gives the copied weights
    t = subprocess.run([sys.executable, "launch_exp_hydra.py", *common, "method=swag", "method.swag_start=0",
                        "method.force_save=1", f"experiment.learning_rate={chosen}", "experiment.seed=0",
                        f"experiment.save_folder={again}", "experiment.eval_upon_save=false"], cwd=REPO,
                       env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert t.returncode == 0, t.stderr[-2000:]
    fresh = next(p.parent for p in again.rglob("run_info.json"))
    assert fresh.relative_to(again) == copied.relative_to(out / "runs" / "swag")
    assert runner_module.fingerprint(fresh) == runner_module.fingerprint(copied)


@pytest.mark.slow
def test_an_evaluation_whose_settings_changed_is_evaluated_again_not_restored(tmp_path):
    out, keep = tmp_path / "scratch", tmp_path / "kept"
    protocol = tmp_path / "protocol.yaml"
    spec = {"out": str(out), "keep": str(keep), "seeds": [0],
            "common": ["model=tiny_llama", *TINY, "experiment.num_epochs=1", "experiment.learning_rate=0.01"],
            "runs": {"swag": ["method=swag", "method.swag_start=0", "method.force_save=1"]},
            "eval_common": ["experiment.max_eval_samples=16"],
            "evaluations": [{"name": "map", "run": "swag", "method": "base"}]}
    protocol.write_text(yaml.safe_dump(spec))
    assert runner(protocol).returncode == 0

    def rows():
        return json.loads(next((keep / "records" / "map" / "seed0").glob("*id*.json")).read_text())["num_examples"]
    assert rows() == 16
    first_time = json.loads((keep / "timings.json").read_text())["eval_map_seed0"]
    settings = json.loads((keep / "evaluations.json").read_text())["eval_map_seed0"]
    assert settings == {"method": "base", "run": "swag", "members": [0], "overrides": ["experiment.max_eval_samples=16"]}

    spec["eval_common"] = ["experiment.max_eval_samples=8"]        # the protocol changed: the kept record is stale
    protocol.write_text(yaml.safe_dump(spec))
    runner_module = load_runner()     # a second runner of the protocol (say run=ivon) cannot bring the stale one back
    stale = {"eval_map_seed0": {**settings, "overrides": spec["eval_common"]}}
    assert runner_module.restore(tmp_path / "other", keep, stale) == 0 and not (tmp_path / "other" / "done").exists()
    assert runner_module.restore(tmp_path / "other", keep, {"eval_map_seed0": settings}) == 1
    for wiped in (False, True):                                     # in the same scratch folder, and on a fresh checkout
        if wiped:
            shutil.rmtree(out)
            spec["eval_common"] = ["experiment.max_eval_samples=12"]
            protocol.write_text(yaml.safe_dump(spec))
        p = runner(protocol)
        assert p.returncode == 0, p.stderr[-2000:]      # in the scratch folder: found stale; kept: never restored
        assert ("[settings] eval_map_seed0: made with other settings" in p.stdout) != wiped
        assert ("[keep] 1 finished evaluations restored" in p.stdout) is False
        assert "[run] eval_map_seed0" in p.stdout
        assert rows() == (12 if wiped else 8)
        assert json.loads((keep / "evaluations.json").read_text())["eval_map_seed0"]["overrides"] == spec["eval_common"]
        kept_time = json.loads((keep / "timings.json").read_text())["eval_map_seed0"]   # the new evaluation's time
        assert kept_time == json.loads((out / "timings.json").read_text())["eval_map_seed0"] != first_time
        first_time = kept_time

    shutil.rmtree(out)                                              # unchanged: restored, nothing evaluated again
    p = runner(protocol)
    assert [line for line in p.stdout.splitlines() if line.startswith("[run]")] == ["[run] report"]

    (keep / "evaluations.json").unlink()                            # kept before settings were recorded: adopted, said
    shutil.rmtree(out)
    p = runner(protocol)
    assert [line for line in p.stdout.splitlines() if line.startswith("[run]")] == ["[run] report"]
    assert "[settings] eval_map_seed0: finished before its settings were recorded" in p.stdout
    assert json.loads((keep / "evaluations.json").read_text())["eval_map_seed0"]["overrides"] == spec["eval_common"]


@pytest.mark.slow
def test_a_training_on_other_cpu_kernels_is_equal_to_rounding_and_another_seed_is_not(tmp_path):
    """SAME_WEIGHTS_RTOL's calibration, measured: the same training with torch's generic CPU kernels
    (ATEN_CPU_CAPABILITY=default) instead of this CPU's vector ones gives other bits but a weights summary within
    1e-4 of its tensors' norms (measured here: 9e-6 on this run, 4e-6 on MiniLM); another seed is far outside."""
    import torch
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this CPU has no vector kernels to compare the generic ones with")
    runner_module = load_runner()
    args = ["model=tiny_llama", *TINY, "experiment.num_epochs=4", "experiment.learning_rate=0.01", "method=swag",
            "method.swag_start=2", "method.force_save=1", "experiment.eval_upon_save=false"]
    runs = {}
    for name, seed, env in (("vector", 0, {}), ("generic", 0, {"ATEN_CPU_CAPABILITY": "default"}), ("seed1", 1, {})):
        t = subprocess.run([sys.executable, "launch_exp_hydra.py", *args, f"experiment.seed={seed}",
                            f"experiment.save_folder={tmp_path / name}"], cwd=REPO, env=subprocess_env(**env),
                           capture_output=True, text=True, timeout=900)
        assert t.returncode == 0, t.stderr[-2000:]
        runs[name] = next(p.parent for p in (tmp_path / name).rglob("run_info.json"))
    assert runner_module.fingerprint(runs["vector"]) != runner_module.fingerprint(runs["generic"])
    summary = {name: runner_module.weights_summary(run) for name, run in runs.items()}
    assert runner_module.summary_distance(summary["vector"], summary["generic"]) < runner_module.SAME_WEIGHTS_RTOL / 10
    assert runner_module.summary_distance(summary["vector"], summary["seed1"]) > 100 * runner_module.SAME_WEIGHTS_RTOL
