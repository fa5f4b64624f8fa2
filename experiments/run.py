"""Run one evidence protocol end to end: python experiments/run.py experiments/<protocol>/protocol.yaml [seed=N] [run=NAME]

Trains every (training run x seed), evaluates every (evaluation x seed) in distribution and on every OOD task (one
evaluation: the in-distribution rows are scored once), and ends with
`python -m swag_lora.report` over the protocol's evaluations.  It resumes where it stopped: a training run that
finished (run_info.json) and an evaluation that finished (its marker in <out>/done/) are skipped, and a killed
training run resumes from its checkpoint (experiment.resume=auto).  Every step is a subprocess with one thread,
logged to <out>/logs/; evaluations write to <out>/eval/<name>/seed<seed>/ (an evaluation of several runs, with 3 or
more seeds: one per leave-one-out member set, <out>/eval/<name>/without<seed>/); CPU seconds per step go to
<out>/timings.json.  `seed=N` runs one seed (its trainings and single-run evaluations); `run=NAME` runs one training
run and the evaluations that read it, so that a partial protocol already has results.

protocol.yaml:
    out: results/experiments/<protocol>          # where runs, evaluations and the report go
    seeds: [0, 1, 2]
    common: [overrides for every training run]   # e.g. model=minilm experiment.task=rte
    runs: {name: [overrides]}                    # one training run per name and seed
    evaluations:                                 # each with every seed, on the ID task and each OOD task
      - {name: map, run: swag, method: base, overrides: []}
      - {name: ensemble, runs: map, method: ensemble}          # members: with >= 3 seeds, each leave-one-out set
    ood: [[task, subtask], ...]
    eval_common: [overrides for every evaluation]
    tune: {name: {seed: 0, grid: {key: [values]}}}           # optional: one key of a run chosen by validation loss
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_timings(out: Path) -> dict:
    return json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}


def step(out: Path, key: str, command: list[str]) -> None:
    """Run `command` unless its marker says it finished; record its CPU and wall time (read, updated and replaced at
    once, so that two runners of one protocol, e.g. run=swag and run=ivon side by side, keep each other's)."""
    marker = out / "done" / f"{key}.done"
    if marker.exists():
        return
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cpu0, t0 = cpu_seconds(), time.time()
    print(f"[run] {key}", flush=True)
    with open(out / "logs" / f"{key}.log", "w") as log:
        rc = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"error: step {key} failed (exit {rc}); see {out / 'logs' / (key + '.log')}")
    seconds = {"cpu_seconds": round(cpu_seconds() - cpu0, 1), "wall_seconds": round(time.time() - t0, 1)}
    tmp = out / f".timings.{os.getpid()}.json"
    tmp.write_text(json.dumps({**read_timings(out), key: seconds}, indent=1))
    os.replace(tmp, out / "timings.json")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")


def run_dir(out: Path, name: str, seed: int) -> Path:
    found = [p.parent for p in (out / "runs" / name).rglob("run_info.json") if f"_seed{seed}_" in p.parent.name]
    if len(found) != 1:
        raise SystemExit(f"error: expected one finished run {name} seed {seed} under {out / 'runs' / name}, found {found}")
    return found[0]


PROTOCOL_KEYS = {"out": str, "seeds": list, "common": list, "runs": dict, "evaluations": list, "ood": list, "eval_common": list,
                 "tune": dict}


def load_protocol(argv: list[str]) -> dict:
    """protocol.yaml, checked: each problem is one line naming the key, before anything runs."""
    if not argv:
        raise SystemExit("error: no protocol given; usage: python experiments/run.py experiments/<protocol>/protocol.yaml "
                         "[seed=N] [run=NAME]")
    path = Path(argv[0])
    if not path.is_file():
        raise SystemExit(f"error: protocol file {path} does not exist")
    try:
        protocol = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SystemExit(f"error: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(protocol, dict):
        raise SystemExit(f"error: {path} must be a mapping with keys {', '.join(PROTOCOL_KEYS)}")
    for key in ("out", "seeds", "runs", "evaluations"):
        if key not in protocol:
            raise SystemExit(f"error: {path} has no {key!r}; required: out, seeds, runs, evaluations")
    for key, value in protocol.items():
        if key not in PROTOCOL_KEYS:
            raise SystemExit(f"error: {path}: unknown key {key!r}; allowed: {', '.join(PROTOCOL_KEYS)}")
        if not isinstance(value, PROTOCOL_KEYS[key]) and not (value is None and key != "out"):
            raise SystemExit(f"error: {path}: {key} must be a {PROTOCOL_KEYS[key].__name__}")
    for i, ev in enumerate(protocol["evaluations"]):
        if not isinstance(ev, dict) or "name" not in ev or "method" not in ev or ("run" in ev) == ("runs" in ev):
            raise SystemExit(f"error: {path}: evaluations entry {i} must have name, method and one of run / runs")
        source = ev.get("run", ev.get("runs"))
        if source not in protocol["runs"]:
            raise SystemExit(f"error: {path}: evaluation {ev['name']!r} reads run {source!r}, which the protocol does not "
                             f"train; allowed: {', '.join(protocol['runs'])}")
    for name, spec in (protocol.get("tune") or {}).items():
        if name not in protocol["runs"] or not isinstance(spec, dict) or not isinstance(spec.get("grid"), dict) \
                or len(spec["grid"]) != 1 or not isinstance(next(iter(spec["grid"].values())), list):
            raise SystemExit(f"error: {path}: tune entry {name!r} must name a run and give grid: {{key: [values]}} "
                             f"(one key); runs: {', '.join(protocol['runs'])}")
    return protocol


def tuned_overrides(out: Path, protocol: dict, name: str, python: str) -> list[str]:
    """Validation-only tuning of one key of run `name` (protocol `tune:`): one training of the tuning seed per grid value
    (runs/<name>_tune/), the value with the lowest best validation loss (run_info.json) is kept, recorded in
    <out>/tuned.json, and used by every seed's run."""
    spec = (protocol.get("tune") or {}).get(name)
    if not spec:
        return []
    (key, values), = spec["grid"].items()
    seed = spec.get("seed", protocol["seeds"][0])
    losses = {}
    for i, value in enumerate(values):
        save = out / "runs" / f"{name}_tune" / f"{i}"
        step(out, f"tune_{name}_{i}_seed{seed}", [python, "launch_exp_hydra.py", *(protocol.get("common") or []),
                                                   *(protocol["runs"][name] or []), f"{key}={value}", f"experiment.seed={seed}",
                                                   f"experiment.save_folder={save}", "experiment.eval_upon_save=false"])
        info = json.loads(next(save.rglob("run_info.json")).read_text())
        losses[str(value)] = info["base_model_val_loss"]
    best = min(values, key=lambda v: losses[str(v)])
    record = {**(json.loads((out / "tuned.json").read_text()) if (out / "tuned.json").exists() else {}),
              name: {"key": key, "chosen": best, "seed": seed, "best_validation_loss": losses}}
    tmp = out / f".tuned.{os.getpid()}.json"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / "tuned.json")
    print(f"[tune] {name}: {key}={best} (best validation loss per value: {losses})", flush=True)
    return [f"{key}={best}"]


def member_sets(seeds: list[int]) -> list[tuple[str, list[int]]]:
    """The member sets of an evaluation of several runs: with 3 or more seeds the leave-one-out sets (n - 1 members
    each, keyed by the seed left out), whose spread the report turns into a jackknife interval; with fewer, one set."""
    if len(seeds) >= 3:
        return [(f"without{s}", [t for t in seeds if t != s]) for s in seeds]
    return [(f"seed{seeds[0]}", list(seeds))]


def main(argv: list[str]) -> int:
    protocol = load_protocol(argv)
    out = REPO / protocol["out"]
    seeds = protocol["seeds"]
    only = dict(a.split("=", 1) if "=" in a else (a, None) for a in argv[1:])   # optional filters: seed=0, run=swag
    allowed = f"allowed: seed=<one of {seeds}>, run=<one of {list(protocol['runs'])}>"
    if set(only) - {"seed", "run"} or ("run" in only and only["run"] not in protocol["runs"]) \
            or ("seed" in only and only["seed"] not in map(str, seeds)):
        raise SystemExit(f"error: bad filter {' '.join(argv[1:])}; {allowed}")
    seeds = [s for s in seeds if str(s) == only.get("seed", str(s))]
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    for name, overrides in protocol["runs"].items():
        if only.get("run", name) != name:
            continue
        tuned = tuned_overrides(out, protocol, name, python)
        for seed in seeds:
            step(out, f"train_{name}_seed{seed}", [python, "launch_exp_hydra.py", *(protocol.get("common") or []),
                                                   *(overrides or []), *tuned, f"experiment.seed={seed}",
                                                   f"experiment.save_folder={out / 'runs' / name}",
                                                   "experiment.eval_upon_save=false"])
    # one evaluation per (evaluation, seed) scores the in-distribution rows once and every OOD task against them
    oods = [f"{task}/{subtask}" if subtask else task for task, subtask in protocol.get("ood") or []]
    ood = [f"experiment.ood_tasks=[{','.join(oods)}]"] if oods else []
    for ev in protocol["evaluations"]:
        source = ev.get("run", ev.get("runs"))
        if only.get("run", source) != source:
            continue
        if "runs" in ev:         # several members: every member set, once every seed has trained
            todo = [] if "seed" in only else member_sets(protocol["seeds"])
            where = {tag: [f"evaluation.eval_model_paths=[{','.join(chr(34) + str(run_dir(out, source, s)) + chr(34) for s in members)}]"]
                     for tag, members in todo}
        else:
            todo = [(f"seed{seed}", [seed]) for seed in seeds]
            where = {tag: [f"evaluation.eval_model_path={run_dir(out, source, members[0])}"] for tag, members in todo}
        for tag, _ in todo:
            step(out, f"eval_{ev['name']}_{tag}",
                 [python, "-m", "swag_lora.evaluate", f"evaluation.eval_method={ev['method']}", *where[tag],
                  *(protocol.get("eval_common") or []), *ev.get("overrides", []), *ood,
                  f"evaluation.output_dir={out / 'eval' / ev['name'] / tag}"])
    (out / "done" / "report.done").unlink(missing_ok=True)      # the report always reflects every evaluation so far
    step(out, "report", [python, "-m", "swag_lora.report", str(out / "eval"), "--out", str(out / "report"),
                         "--metrics", *REPORT_METRICS])
    print_gates(out / "report.csv")
    timings = read_timings(out)
    total = sum(v["cpu_seconds"] for v in timings.values())
    print(f"[done] {out}: {len(timings)} steps, {total / 3600:.2f} CPU hours")
    return 0


REPORT_METRICS = ("accuracy", "nll", "ece", "ece_10", "ece_20", "brier", "auroc_entropy")


def print_gates(csv_path: Path) -> None:
    """Per evaluated split, whether MAP is above chance there (the report shows no comparison where it is not)."""
    import csv
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row["method"] != "map" or not row["chance"]:
                continue
            verdict = "above" if row["above_chance"] == "True" else "NOT above (no method comparison shown)"
            print(f"[gate] {row['distribution']}/{row['task']} ({row['rows']} rows): MAP {float(row['map_accuracy']):.4f} "
                  f"{verdict} chance {float(row['chance']):.4f}, binomial 95% bound {float(row['chance_bound']):.4f}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
