"""Run one evidence protocol end to end: python experiments/run.py experiments/<protocol>/protocol.yaml [seed=N] [run=NAME]

Trains every (training run x seed), evaluates every (evaluation x seed) in distribution and on every OOD task (one
evaluation: the in-distribution rows are scored once), and ends with
`python -m swag_lora.report` over the protocol's evaluations.  It resumes where it stopped: a training run that
finished (run_info.json) and an evaluation that finished (its marker in <out>/done/) are skipped, and a killed
training run resumes from its checkpoint (experiment.resume=auto).  Every step is a subprocess with one thread,
logged to <out>/logs/; evaluations write to <out>/eval/<name>/seed<seed>/ (an evaluation of several runs, with 3 or
more seeds: one per leave-one-out member set, <out>/eval/<name>/without<seed>/); CPU seconds per step go to
<out>/timings.json.  `seed=N` runs one seed (its trainings and single-run evaluations); `run=NAME` runs one training
run and the evaluations that read it, so that a partial protocol already has results.  Several runners of one
protocol share its work (one per core: start the same command again): each step is claimed by a lock in <out>/locks/
(flock: a local disk, or a file system that honours it), and a runner leaves the steps another holds, and the
evaluations that read them, for later, and waits for them at the end.

With `keep:` (a folder meant to be committed, e.g. docs/results/<protocol>) every finished evaluation's records
(JSON + npz) are copied to <keep>/records/<name>/<tag>/, with timings.json, tuned.json, a fingerprint of every
training (trainings.json) and the report; on a fresh checkout (a wiped scratch folder, another node) those
evaluations are restored and skipped, and a training that only they read is not repeated.  A training that is
repeated (for an evaluation not kept yet) must reproduce its fingerprint -- bit for bit, or to rounding by its weights
summary (another CPU's kernels) -- or the runner stops where a kept evaluation reads it: that evaluation would be
paired with another model.  Each evaluation's settings (method, runs, member seeds, overrides) are recorded beside
its records (evaluations.json): one finished or kept with other settings than the protocol's now is evaluated again,
never reused or restored.

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
                                                 # (the tuning seed's run is the chosen value's tuning training, copied)
    keep: docs/results/<protocol>                # optional: finished results kept (committed) and restored from
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_timings(out: Path) -> dict:
    return json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}


def step(out: Path, key: str, command: list[str], wait: bool = True, then: Callable[[], None] | None = None) -> bool:
    """Run `command` unless its marker says it finished; record its CPU and wall time in <out>/timings.json.  The step
    is claimed first (a lock in <out>/locks/), so that several runners of one protocol never run it twice: where another
    holds it, wait for it (`wait`) or return False at once (the caller comes back to it).  `then` (keeping the step's
    records) runs once, by the runner that ran the step, under its lock and before its marker.  True: it finished."""
    marker = out / "done" / f"{key}.done"
    if marker.exists():
        return True
    (out / "locks").mkdir(parents=True, exist_ok=True)
    with open(out / "locks" / f"{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            print(f"[busy] {key}: another runner is on it; left for later", flush=True)
            return False
        if marker.exists():                     # the other runner finished it while this one waited
            return True
        (out / "logs").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        cpu0, t0 = cpu_seconds(), time.time()
        print(f"[run] {key}", flush=True)
        with open(out / "logs" / f"{key}.log", "w") as log:
            rc = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"error: step {key} failed (exit {rc}); see {out / 'logs' / (key + '.log')}")
        merge_json_entry(out / "timings.json", key, {"cpu_seconds": round(cpu_seconds() - cpu0, 1),
                                                     "wall_seconds": round(time.time() - t0, 1)})
        if then:
            then()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
    return True


def run_dir(out: Path, name: str, seed: int) -> Path:
    found = [p.parent for p in (out / "runs" / name).rglob("run_info.json") if f"_seed{seed}_" in p.parent.name]
    if len(found) != 1:
        raise SystemExit(f"error: expected one finished run {name} seed {seed} under {out / 'runs' / name}, found {found}")
    return found[0]


PROTOCOL_KEYS = {"out": str, "seeds": list, "common": list, "runs": dict, "evaluations": list, "ood": list, "eval_common": list,
                 "tune": dict, "keep": str}


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
    done = json.loads((out / "tuned.json").read_text()).get(name) if (out / "tuned.json").exists() else None
    if done and done["key"] == key and done["seed"] == seed and set(done["best_validation_loss"]) == set(map(str, values)):
        return [f"{key}={done['chosen']}"]          # tuned before (here, or kept and restored): not trained again
    losses = {}
    for i, value in enumerate(values):
        save = out / "runs" / f"{name}_tune" / f"{i}"
        step(out, f"tune_{name}_{i}_seed{seed}", [python, "launch_exp_hydra.py", *(protocol.get("common") or []),
                                                   *(protocol["runs"][name] or []), f"{key}={value}", f"experiment.seed={seed}",
                                                   f"experiment.save_folder={save}", "experiment.eval_upon_save=false"])
        info = json.loads(next(save.rglob("run_info.json")).read_text())
        losses[str(value)] = info["base_model_val_loss"]
    best = min(values, key=lambda v: losses[str(v)])
    merge_json_entry(out / "tuned.json", name, {"key": key, "chosen": best, "seed": seed, "best_validation_loss": losses})
    print(f"[tune] {name}: {key}={best} (best validation loss per value: {losses})", flush=True)
    return [f"{key}={best}"]


def tuned_run(out: Path, protocol: dict, name: str, seed: int) -> tuple[str, Path, Path] | None:
    """The tuning seed's finished training at the chosen value, which is run `name`'s training of that seed (the same
    overrides; a run directory does not depend on save_folder): (its step key, its save_folder runs/<name>_tune/<i>/,
    its run directory), or None."""
    spec = (protocol.get("tune") or {}).get(name)
    done = json.loads((out / "tuned.json").read_text()).get(name) if (out / "tuned.json").exists() else None
    if not spec or not done or seed != spec.get("seed", protocol["seeds"][0]):
        return None
    (key, values), = spec["grid"].items()
    if done["key"] != key or done["chosen"] not in values:
        return None
    i = values.index(done["chosen"])
    root = out / "runs" / f"{name}_tune" / str(i)
    found = [p.parent for p in root.rglob("run_info.json")]
    return (f"tune_{name}_{i}_seed{seed}", root, found[0]) if len(found) == 1 else None


def copy_tuned_run(out: Path, name: str, key: str, source: tuple[str, Path, Path]) -> None:
    """Training `key` is the tuning training `source`: copied (whole, then renamed), its marker and a zero-cost timing
    written, instead of training the same model twice."""
    tune_key, root, src = source
    dest = out / "runs" / name / src.relative_to(root)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    merge_json_entry(out / "timings.json", key, {"cpu_seconds": 0.0, "wall_seconds": 0.0, "copied_from": tune_key})
    (out / "done").mkdir(parents=True, exist_ok=True)
    (out / "done" / f"{key}.done").write_text("")
    print(f"[copy] {key}: the tuning training {tune_key} ({src})", flush=True)


def merge_json(src: Path, dest: Path) -> None:
    """Add the entries of JSON object `src` that `dest` lacks (dest's own entries win), replacing dest at once."""
    if not src.exists():
        return
    added = json.loads(src.read_text())
    with json_file(dest) as entries:
        entries.update({k: v for k, v in added.items() if k not in entries})


def restore(out: Path, keep: Path, expected: dict[str, dict]) -> int:
    """Copy the kept evaluations (<keep>/records/<name>/<tag>/) into <out>/eval/ and mark them done, with the settings
    they were made with (<keep>/evaluations.json); merge the kept timings and tuned values.  One whose recorded settings
    differ from the protocol's (`expected`, by key) is not restored: it is evaluated again (so that a second runner of
    the protocol cannot bring back what the first one found stale).  Returns how many evaluations were restored."""
    restored = 0
    kept_settings = json.loads((keep / "evaluations.json").read_text()) if (keep / "evaluations.json").exists() else {}
    for kept in sorted((keep / "records").glob("*/*")):
        name, tag = kept.parent.name, kept.name
        key = f"eval_{name}_{tag}"
        marker = out / "done" / f"{key}.done"
        if not kept.is_dir() or marker.exists() or not any(kept.glob("*.json")):
            continue
        if key in kept_settings and key in expected and kept_settings[key] != expected[key]:
            continue
        dest = out / "eval" / name / tag
        dest.mkdir(parents=True, exist_ok=True)
        for f in kept.iterdir():
            shutil.copy2(f, dest / f.name)
        if key in kept_settings:
            merge_json_entry(out / "evaluations.json", key, kept_settings[key])
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
        restored += 1
    for name in ("timings.json", "tuned.json"):
        merge_json(keep / name, out / name)
    return restored


def keep_evaluation(out: Path, keep: Path, name: str, tag: str, settings: dict) -> None:
    """A finished evaluation's records (JSON + npz; its figures are redrawn by the report) into <keep>/records/, whole
    or not at all (copied beside, then renamed), with the settings it was made with, its CPU time (replacing that of
    records made with other settings) and the timings and tuned values so far."""
    merge_json_entry(keep / "evaluations.json", f"eval_{name}_{tag}", settings)   # first: restore() checks records by it
    dest = keep / "records" / name / tag
    tmp = dest.parent / f".{tag}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in (out / "eval" / name / tag).iterdir():
        if f.suffix in (".json", ".npz"):
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    key = f"eval_{name}_{tag}"                        # evaluated again (its settings changed): its new time counts
    if key in (timings := read_timings(out)):
        merge_json_entry(keep / "timings.json", key, timings[key])
    for file in ("timings.json", "tuned.json"):
        merge_json(out / file, keep / file)


def eval_settings(protocol: dict, ev: dict, members: list[int]) -> dict:
    """What an evaluation's records depend on besides the weights (those are fingerprinted, trainings.json): its
    method, the run and member seeds it reads, and every override it is given.  It is recorded beside the records
    (evaluations.json); a finished or kept evaluation whose settings differ from the protocol's is evaluated again."""
    oods = [f"{task}/{subtask}" if subtask else task for task, subtask in protocol.get("ood") or []]
    return {"method": ev["method"], "run": ev.get("run", ev.get("runs")), "members": members,
            "overrides": [*(protocol.get("eval_common") or []), *ev.get("overrides", []),
                          *([f"experiment.ood_tasks=[{','.join(oods)}]"] if oods else [])]}


def settle(out: Path, keep: Path | None, name: str, tag: str, settings: dict) -> None:
    """A finished evaluation made with other settings than `settings` is unmarked (and its records removed) so that it
    runs again; one finished before settings were recorded is taken as made with these (here and in <keep>)."""
    key = f"eval_{name}_{tag}"
    recorded = json.loads((out / "evaluations.json").read_text()).get(key) if (out / "evaluations.json").exists() else None
    if not (out / "done" / f"{key}.done").exists() or recorded == settings:
        return
    if recorded is None:
        print(f"[settings] {key}: finished before its settings were recorded; taken as this protocol's", flush=True)
        merge_json_entry(out / "evaluations.json", key, settings)
        if keep and (keep / "records" / name / tag).is_dir():
            merge_json_entry(keep / "evaluations.json", key, settings)
        return
    changed = sorted({*map(str, recorded["overrides"])} ^ {*map(str, settings["overrides"])}) or \
        [k for k in settings if recorded.get(k) != settings[k]]
    print(f"[settings] {key}: made with other settings ({', '.join(changed)}): evaluated again", flush=True)
    (out / "done" / f"{key}.done").unlink()
    shutil.rmtree(out / "eval" / name / tag, ignore_errors=True)


TRAINED = ("base_model", "swag_model", "ivon_model", "blob_model")   # what training writes (not checkpoints, nor the
# caches evaluations add to a run: laplace_model/, tfb_model/)


def trained_files(run: Path) -> list[Path]:
    files = sorted(f for d in TRAINED for f in (run / d).glob("*.safetensors"))
    if not files:
        raise SystemExit(f"error: {run} holds no trained weights (no *.safetensors in {', '.join(TRAINED)})")
    return files


def fingerprint(run: Path) -> str:
    """sha256 over a finished run's trained weights (the *.safetensors of its TRAINED folders, by path)."""
    h = hashlib.sha256()
    for f in trained_files(run):
        h.update(f.relative_to(run).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def weights_summary(run: Path) -> dict[str, dict[str, list[float]]]:
    """Per trained file (by path) and tensor: its L2 norm and its projection on a fixed standard-normal direction
    (float64).  Per tensor, because a file's norm is dominated by tensors that training barely moves (LoRA's A at its
    random initialisation) while others are wholly learned (B, from zero).  A training repeated with other kernels
    (another CPU, library version) is the same model up to rounding: measured between torch's generic and AVX2 CPU
    kernels, every number within 9e-6 of its tensor's norm (a tiny Llama, 4 epochs with SWAG) and 4e-6 (MiniLM on
    QNLI); another seed or data set moves the learned tensors' numbers by about their norm."""
    from safetensors.torch import load_file
    import torch
    summary = {}
    for f in trained_files(run):
        tensors = load_file(f)
        g = torch.Generator().manual_seed(0)
        summary[f.relative_to(run).as_posix()] = {
            k: [v.norm().item(), float(v @ torch.randn(v.numel(), generator=g, dtype=torch.float64))]
            for k, v in ((k, tensors[k].detach().reshape(-1).double()) for k in sorted(tensors)
                         if tensors[k].is_floating_point())}
    return summary


SAME_WEIGHTS_RTOL = 1e-3   # the largest difference, relative to its tensor's norm, still read as rounding
#                            (100x the measured drift between kernels; another seed: > 0.1)


def summary_distance(a: dict, b: dict) -> float:
    """The largest difference between two weights summaries, relative to its tensor's norm (inf where their files or
    tensors differ)."""
    if set(a) != set(b) or any(set(a[f]) != set(b[f]) for f in a):
        return float("inf")
    return max((abs(x - y) / max(a[f][k][0], b[f][k][0], 1e-30) for f in a for k in a[f]
                for x, y in zip(a[f][k], b[f][k])), default=0.0)


def check_training(out: Path, keep: Path, key: str, run: Path, reads: list[tuple[str, str]], in_use: list[str]) -> None:
    """Record a training's fingerprint (sha256 and weights summary) in <keep>/trainings.json, or, where a kept one
    differs, decide.  Bit-equal: nothing to do.  Equal to rounding (the summaries within SAME_WEIGHTS_RTOL: another CPU's
    kernels): said, and the kept fingerprint stays.  Otherwise, if an evaluation that stands (`in_use`: kept or
    finished, with the protocol's settings) read the earlier training, stop: pairing new evaluations with it would be
    silently wrong; if none does, the new fingerprint replaces the old one, the kept records of every evaluation that
    reads this training (`reads`, (name, tag); all stale) are removed, and that is said."""
    path = keep / "trainings.json"
    entry = (json.loads(path.read_text()) if path.exists() else {}).get(key)
    kept = {"sha256": entry} if isinstance(entry, str) else entry        # before summaries were kept: the sha256 alone
    now = {"sha256": fingerprint(run), "summary": weights_summary(run)}
    if kept is None:
        if in_use:
            print(f"[fingerprint] {key}: no kept fingerprint, yet kept evaluations read this training "
                  f"({', '.join(in_use)}); recorded now, they are taken as its", flush=True)
        merge_json_entry(path, key, now)
        return
    if kept["sha256"] == now["sha256"]:
        if "summary" not in kept:
            merge_json_entry(path, key, {**kept, **now})
        return
    distance = summary_distance(now["summary"], kept["summary"]) if "summary" in kept else float("inf")
    if distance <= SAME_WEIGHTS_RTOL:
        print(f"[fingerprint] {key}: not bit-equal to the kept training, equal to rounding (largest relative "
              f"difference {distance:.1e} <= {SAME_WEIGHTS_RTOL:g}): its kept evaluations stand", flush=True)
        return
    if not in_use:
        dropped = [f"{name}_{tag}" for name, tag in reads if (keep / "records" / name / tag).is_dir()]
        print(f"[fingerprint] {key}: other weights than the kept training's, which no standing evaluation reads (each "
              f"is evaluated again): its fingerprint is replaced" + (f", the stale kept records of {', '.join(dropped)} "
                                                                      f"removed" if dropped else ""), flush=True)
        with json_file(keep / "evaluations.json") as settings:
            for name, tag in reads:
                settings.pop(f"eval_{name}_{tag}", None)
                shutil.rmtree(keep / "records" / name / tag, ignore_errors=True)
        merge_json_entry(path, key, now)
        return
    how = f"largest relative difference {distance:.1e} > {SAME_WEIGHTS_RTOL:g}" if "summary" in kept else \
        "the kept fingerprint predates weights summaries, so only bit-equal weights are accepted"
    raise SystemExit(f"error: {key} trained again gave other weights (sha256 {now['sha256'][:12]}, kept "
                     f"{kept['sha256'][:12]}; {how}): the evaluations kept in {keep / 'records'} for it "
                     f"({', '.join(in_use)}) came from the earlier training; allowed: remove them (and its entry in "
                     f"{path}) to evaluate this training afresh")


@contextlib.contextmanager
def json_file(path: Path) -> Iterator[dict]:
    """A JSON object file, read, changed by the caller and replaced at once, under an exclusive lock: two runners of
    one protocol (run=swag and run=ivon side by side) share timings.json, trainings.json and evaluations.json, and a
    read-change-replace of one must not drop the other's entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = json.loads(path.read_text()) if path.exists() else {}
        yield entries
        tmp = path.parent / f".{path.name}.{os.getpid()}"
        tmp.write_text(re.sub(r"\[\s+([-+\d.eE,\s]+?)\s+\]",      # a list of numbers on one line
                              lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                              json.dumps(entries, indent=1)))
        os.replace(tmp, path)


def merge_json_entry(path: Path, key: str, value) -> None:
    with json_file(path) as entries:
        entries[key] = value


def member_sets(seeds: list[int]) -> list[tuple[str, list[int]]]:
    """The member sets of an evaluation of several runs: with 3 or more seeds the leave-one-out sets (n - 1 members
    each, keyed by the seed left out), whose spread the report turns into a jackknife interval; with fewer, one set."""
    if len(seeds) >= 3:
        return [(f"without{s}", [t for t in seeds if t != s]) for s in seeds]
    return [(f"seed{seeds[0]}", list(seeds))]


def evaluation_sets(protocol: dict, ev: dict) -> list[tuple[str, list[int]]]:
    """Every (tag, member seeds) of evaluation `ev` in the whole protocol: one per seed for a single run, the member
    sets for several."""
    return [(f"seed{s}", [s]) for s in protocol["seeds"]] if "run" in ev else member_sets(protocol["seeds"])


def main(argv: list[str]) -> int:
    protocol = load_protocol(argv)
    out = REPO / protocol["out"]
    keep = REPO / protocol["keep"] if protocol.get("keep") else None
    seeds = protocol["seeds"]
    only = dict(a.split("=", 1) if "=" in a else (a, None) for a in argv[1:])   # optional filters: seed=0, run=swag
    allowed = f"allowed: seed=<one of {seeds}>, run=<one of {list(protocol['runs'])}>"
    if set(only) - {"seed", "run"} or ("run" in only and only["run"] not in protocol["runs"]) \
            or ("seed" in only and only["seed"] not in map(str, seeds)):
        raise SystemExit(f"error: bad filter {' '.join(argv[1:])}; {allowed}")
    seeds = [s for s in seeds if str(s) == only.get("seed", str(s))]
    out.mkdir(parents=True, exist_ok=True)
    expected = {f"eval_{ev['name']}_{tag}": eval_settings(protocol, ev, members) for ev in protocol["evaluations"]
                for tag, members in evaluation_sets(protocol, ev)}
    if keep and (restored := restore(out, keep, expected)):
        print(f"[keep] {restored} finished evaluations restored from {keep / 'records'}", flush=True)
    python = sys.executable
    # the evaluation steps (evaluation x member set), and the (run, seed) trainings that the unfinished ones read
    plan = []
    for ev in protocol["evaluations"]:
        source = ev.get("run", ev.get("runs"))
        if only.get("run", source) != source:
            continue
        sets = [] if "runs" in ev and "seed" in only else [   # several members: every member set, once every seed trained
            (tag, members) for tag, members in evaluation_sets(protocol, ev) if "runs" in ev or members[0] in seeds]
        plan += [(ev, source, tag, members) for tag, members in sets]
    for ev, _, tag, members in plan:
        settle(out, keep, ev["name"], tag, eval_settings(protocol, ev, members))
    read = {(source, s) for _, source, _, members in plan for s in members}
    needed = {(source, s) for ev, source, tag, members in plan for s in members
              if not (out / "done" / f"eval_{ev['name']}_{tag}.done").exists()}
    def train(name: str, seed: int, tuned: list[str], wait: bool) -> bool:
        key = f"train_{name}_seed{seed}"
        source = None if (out / "done" / f"{key}.done").exists() else tuned_run(out, protocol, name, seed)
        if source:
            copy_tuned_run(out, name, key, source)
        elif not step(out, key, [python, "launch_exp_hydra.py", *(protocol.get("common") or []),
                                 *(protocol["runs"][name] or []), *tuned, f"experiment.seed={seed}",
                                 f"experiment.save_folder={out / 'runs' / name}", "experiment.eval_upon_save=false"],
                      wait):
            return False
        if keep:
            reads = [(ev["name"], tag) for ev in protocol["evaluations"] if ev.get("run", ev.get("runs")) == name
                     for tag, members in evaluation_sets(protocol, ev) if seed in members]
            recorded = json.loads((out / "evaluations.json").read_text()) if (out / "evaluations.json").exists() else {}
            in_use = [f"{n}_{t}" for n, t in reads if (out / "done" / f"eval_{n}_{t}.done").exists()
                      and recorded.get(f"eval_{n}_{t}", expected[f"eval_{n}_{t}"]) == expected[f"eval_{n}_{t}"]]
            check_training(out, keep, key, run_dir(out, name, seed), reads, in_use)
        return True

    def evaluate(ev: dict, source: str, tag: str, members: list[int], wait: bool) -> bool:
        """One evaluation per (evaluation, member set): the in-distribution rows once, every OOD task against them."""
        key = f"eval_{ev['name']}_{tag}"
        if not wait and not all((out / "done" / f"train_{source}_seed{s}.done").exists() for s in members):
            return False                                   # a training it reads is another runner's, still running
        paths = [str(run_dir(out, source, s)) for s in members]
        where = [f"evaluation.eval_model_paths=[{','.join(chr(34) + p + chr(34) for p in paths)}]"] if "runs" in ev \
            else [f"evaluation.eval_model_path={paths[0]}"]
        settings = eval_settings(protocol, ev, members)

        def record() -> None:                              # by the runner that evaluated it, once
            merge_json_entry(out / "evaluations.json", key, settings)
            if keep:
                keep_evaluation(out, keep, ev["name"], tag, settings)
        return step(out, key, [python, "-m", "swag_lora.evaluate", f"evaluation.eval_method={ev['method']}", *where,
                               *settings["overrides"], f"evaluation.output_dir={out / 'eval' / ev['name'] / tag}"],
                    wait, then=record)

    # a step that another runner of this protocol holds is left for later, and waited for at the end
    later_trainings, later_evaluations = [], []
    for name in protocol["runs"]:
        if only.get("run", name) != name:
            continue
        todo = [s for s in seeds if (name, s) in needed or (name, s) not in read
                or (out / "done" / f"train_{name}_seed{s}.done").exists()]
        if not todo:
            continue
        tuned = tuned_overrides(out, protocol, name, python)
        later_trainings += [(name, seed, tuned) for seed in todo if not train(name, seed, tuned, wait=False)]
    for item in plan:
        if not (out / "done" / f"eval_{item[0]['name']}_{item[2]}.done").exists() and not evaluate(*item, wait=False):
            later_evaluations.append(item)
    for name, seed, tuned in later_trainings:
        train(name, seed, tuned, wait=True)
    for item in later_evaluations:
        evaluate(*item, wait=True)
    report = (keep or out) / "report"
    (out / "done" / "report.done").unlink(missing_ok=True)      # the report always reflects every evaluation so far
    step(out, "report", [python, "-m", "swag_lora.report", str(out / "eval"), "--out", str(report),
                         "--metrics", *REPORT_METRICS])
    print_gates(report.with_suffix(".csv"))
    timings = read_timings(out)
    if keep:
        merge_json(out / "timings.json", keep / "timings.json")
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
