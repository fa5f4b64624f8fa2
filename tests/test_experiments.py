"""The evidence-protocol runner (experiments/run.py): filters, steps shared by runners, skipping what finished, the
closing report."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, TINY, load_runner, runner, subprocess_env


def test_a_bad_filter_is_refused_in_one_line_before_anything_runs(tmp_path):
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "seeds": [0, 1], "runs": {"swag": []},
                                        "evaluations": []}))
    for bad in ["seed=2", "run=map", "seeds=0", "swag"]:
        p = runner(protocol, bad)
        assert p.returncode != 0 and p.stderr.strip().splitlines() == [
            f"error: bad filter {bad}; allowed: seed=<one of [0, 1]>, run=<one of ['swag']>"]
    assert not (tmp_path / "out").exists()


def test_a_finished_step_is_kept_once_by_the_runner_that_ran_it_not_again_by_one_that_waited(tmp_path):
    import threading
    run = load_runner()
    marker, kept, results = tmp_path / "done" / "eval_x_seed0.done", [], []

    def keep(name):                        # the records are kept before the marker says the step finished
        kept.append((name, marker.exists()))

    def runner_of_the_step(name):          # two runners (flock: one open file each, as two processes would)
        results.append(run.step(tmp_path, "eval_x_seed0", [sys.executable, "-c", "import time; time.sleep(1)"],
                                wait=True, then=lambda: keep(name)))
    threads = [threading.Thread(target=runner_of_the_step, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True] and len(kept) == 1 and kept[0][1] is False and marker.exists()
    assert run.step(tmp_path, "eval_x_seed0", [sys.executable, "-c", "raise SystemExit(1)"], then=lambda: keep("c"))
    assert len(kept) == 1                  # finished before: neither run nor kept again


@pytest.mark.slow
def test_a_partial_protocol_runs_one_run_then_the_rest_skipping_what_finished(tmp_path):
    out = tmp_path / "out"
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({
        "out": str(out), "seeds": [0, 1],
        "common": ["model=tiny_llama", *TINY, "experiment.num_epochs=2", "experiment.learning_rate=0.01"],
        "runs": {"swag": ["method=swag", "method.swag_start=1", "method.force_save=1"], "ivon": ["method=ivon"]},
        "ood": [["demo", "shifted"]],
        "eval_common": ["evaluation.num_samples=2", "experiment.max_eval_samples=16"],
        "evaluations": [{"name": "map", "run": "swag", "method": "base"},
                        {"name": "ivon", "run": "ivon", "method": "ivon"},
                        {"name": "ensemble", "runs": "swag", "method": "ensemble"}]}))
    p = runner(protocol, "run=swag", "seed=0")
    assert p.returncode == 0, p.stderr[-2000:]
    done = {f.stem for f in (out / "done").glob("*.done")}
    assert done == {"train_swag_seed0", "eval_map_seed0", "report"}     # no ensemble from one seed
    p = runner(protocol, "run=swag")
    assert p.returncode == 0, p.stderr[-2000:]
    assert [line for line in p.stdout.splitlines() if line.startswith("[run]")] == [
        "[run] train_swag_seed1", "[run] eval_map_seed1", "[run] eval_ensemble_seed0",
        "[run] report"]
    p = runner(protocol)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [line for line in p.stdout.splitlines() if line.startswith("[run]")] == [
        "[run] train_ivon_seed0", "[run] train_ivon_seed1", "[run] eval_ivon_seed0",
        "[run] eval_ivon_seed1", "[run] report"]
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {f.stem for f in (out / "done").glob("*.done")} and len(timings) == 10
    records = [json.loads(f.read_text()) for f in (out / "eval").rglob("*.json")]
    assert len(records) == 10 and sorted({(r["label"], r["distribution"]) for r in records}) == sorted(
        {(m, d) for m in ["map", "ivon", "ensemble"] for d in ["id", "ood"]})
    from swag_lora.report import aggregate
    rows = {(r["method"], r["distribution"]): r for r in aggregate(records)}
    maps = {(r["train_seeds"][0], r["distribution"]): r["metrics"]["nll"] for r in records if r["label"] == "map"}
    for d in ["id", "ood"]:     # another run pairs with the MAP of its seed; an ensemble with its members' mean MAP
        ivon = {r["train_seeds"][0]: r["metrics"]["nll"] for r in records if r["label"] == "ivon" and r["distribution"] == d}
        assert (rows["ivon", d]["d_nll"].mean, rows["ivon", d]["d_nll"].se) == pytest.approx(
            (np.mean([ivon[s] - maps[s, d] for s in (0, 1)]), np.std([ivon[s] - maps[s, d] for s in (0, 1)], ddof=1) / np.sqrt(2)))
        assert rows["ensemble", d]["d_nll"].mean == pytest.approx(rows["ensemble", d]["nll"][0] - (maps[0, d] + maps[1, d]) / 2)
    import csv
    counts = {(r["method"], r["distribution"]): int(r["n"]) for r in csv.DictReader(open(out / "report.csv"))}
    assert all(counts[m, d] == n for m, n in [("map", 2), ("ivon", 2), ("ensemble", 1)] for d in ("id", "ood"))
    table = (out / "report.md").read_text()     # the tiny model is at chance: the gate shows MAP alone, and says why
    for r in csv.DictReader(open(out / "report.csv")):
        if r["method"] == "map":
            assert (r["above_chance"] == "True") == ("NOT above chance" not in table.split(f"**{r['distribution'].upper()}: ")[1].split("\n")[0])
    assert ("| ivon |" in table) == all(r["above_chance"] == "True" for r in csv.DictReader(open(out / "report.csv")) if r["method"] == "map")
    assert "[gate]" in p.stdout


@pytest.mark.slow
def test_two_runners_of_one_protocol_share_its_steps_and_run_none_twice(tmp_path):
    out, keep = tmp_path / "scratch", tmp_path / "kept"
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({
        "out": str(out), "keep": str(keep), "seeds": [0, 1, 2],
        "common": ["model=tiny_llama", *TINY, "experiment.num_epochs=1", "experiment.learning_rate=0.01"],
        "runs": {"swag": ["method=swag", "method.swag_start=0", "method.force_save=1"]},
        "eval_common": ["evaluation.num_samples=2", "experiment.max_eval_samples=16"],
        "evaluations": [{"name": "map", "run": "swag", "method": "base"},
                        {"name": "ensemble", "runs": "swag", "method": "ensemble"}]}))
    procs = [subprocess.Popen([sys.executable, "experiments/run.py", str(protocol)], cwd=REPO, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    ran = [line[len("[run] "):] for o, _ in outputs for line in o.splitlines()
           if line.startswith("[run] ") and line != "[run] report"]
    steps = {f"train_swag_seed{s}" for s in range(3)} | {f"eval_map_seed{s}" for s in range(3)} | {
        f"eval_ensemble_without{s}" for s in range(3)}
    assert sorted(ran) == sorted(steps)                                   # every step once, in one runner or the other
    assert all(any(line.startswith("[run] ") for line in o.splitlines()) for o, _ in outputs)   # both worked
    assert {f.stem for f in (out / "done").glob("*.done")} == steps | {"report"}
    assert set(json.loads((keep / "timings.json").read_text())) >= steps
    assert set(json.loads((keep / "trainings.json").read_text())) == {f"train_swag_seed{s}" for s in range(3)}
    assert set(json.loads((keep / "evaluations.json").read_text())) == {s for s in steps if s.startswith("eval_")}
    records = {f.parent.relative_to(keep / "records").as_posix() for f in (keep / "records").rglob("*.json")}
    assert records == {f"map/seed{s}" for s in range(3)} | {f"ensemble/without{s}" for s in range(3)}
