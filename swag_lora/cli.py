"""What the two entrypoints do around training and evaluation: the one-line errors (exit 2) and the closing table.
Modules that load torch are imported inside the entrypoints, after the configuration is checked, so that a bad
value is refused in a fraction of a second.

    launch_exp_hydra.py          -> main_train(cfg)      (conf/config.yaml)
    python -m swag_lora.evaluate -> main_evaluate(cfg)   (conf/eval.yaml)
"""
from __future__ import annotations

import dataclasses
import difflib
import gc
import os
import sys

from omegaconf import DictConfig

from swag_lora.config import (ALIASES, CONF, METHOD_CONFIGS, DataOverrides, EvaluationConfig, ExperimentConfig, ModelConfig,
                              parse_eval, parse_run)
from swag_lora.errors import UserError


def fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def declared_keys(config_name: str) -> dict[str, set[str]]:
    """The keys each group declares: training (config) or evaluation (eval)."""
    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    if config_name == "eval":
        return {"evaluation": names(EvaluationConfig), "experiment": names(DataOverrides)}
    return {"experiment": names(ExperimentConfig), "model": names(ModelConfig), "evaluation": names(EvaluationConfig),
            "method": set().union(*(names(c) for c in METHOD_CONFIGS.values()))}


def check_keys(argv: list[str], config_name: str) -> None:
    """A typo in a key (`method.swag_strat=3`) gets one line with the closest declared keys, not Hydra's advice to
    add a `+`.  `+key=value` (an explicit addition) is left to Hydra."""
    declared = declared_keys(config_name)
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if not sep or key.startswith(("+", "~", "hydra")) or "." not in key:
            continue
        group, name = key.split(".", 2)[:2]
        if group in declared and name not in declared[group]:
            close = difflib.get_close_matches(name, sorted(declared[group]), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(f'{group}.{c}' for c in close)}?" if close else \
                f"allowed: {', '.join(sorted(declared[group]))}"
            print(f"error: unknown key {group}.{name}; {hint} (docs/configuration.md lists every key)", file=sys.stderr)
            raise SystemExit(2)


def check_group_overrides(argv: list[str]) -> None:
    """Before Hydra composes: an unknown `model=` / `method=` gets one line (Hydra's message is many), and so does
    a key given under both of its names with different values."""
    given = dict(a.lstrip("+~").split("=", 1) for a in argv if "=" in a)
    for group, theirs, ours in ALIASES:
        a, b = f"{group}.{ours}", f"{group}.{theirs}"
        if a in given and b in given and given[a] != given[b]:
            print(f"error: {a}={given[a]} and {b}={given[b]} name the same setting; give one of them", file=sys.stderr)
            raise SystemExit(2)
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if sep and key in ("model", "method"):
            allowed = sorted(p.stem for p in (CONF / key).glob("*.yaml"))
            if value not in allowed:
                print(f"error: unknown {key} {value!r}; allowed: {', '.join(allowed)}", file=sys.stderr)
                raise SystemExit(2)


def main_train(cfg: DictConfig) -> int:
    """Check, train, then (optionally) print the evaluation table."""
    from swag_lora.train.checks import validate_train
    from swag_lora.train.signals import Stop
    try:
        run = parse_run(cfg)
        validate_train(run)
    except UserError as e:
        return fail(e)
    from swag_lora.train.loop import train
    Stop.install()     # from here on SIGTERM/SIGUSR1 end the run cleanly (deferred to a checkpoint while training)
    quiet_libraries()
    try:
        directory = train(run)
    except UserError as e:
        return fail(e)
    if run.experiment.evaluate_after_training and int(os.environ.get("RANK", "0")) == 0:
        import torch   # one process evaluates (after a multi-GPU run the others are done); free the training model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        from swag_lora.predict.evaluation import default_table
        from swag_lora.report import print_summary
        print_summary(default_table(run, directory), directory / "eval")
    return 0


def main_evaluate(cfg: DictConfig) -> int:
    """Check, then one evaluation (in distribution and/or OOD)."""
    from swag_lora.predict.evaluation import evaluate, resolve_plan
    try:
        plan = resolve_plan(parse_eval(cfg))
        quiet_libraries()
        results = evaluate(plan)
    except UserError as e:
        return fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        from swag_lora.report import print_summary
        print_summary(results, None)
    return 0


def quiet_libraries() -> None:
    """A run prints its progress, its directory and its table: not the libraries' load reports for heads that are
    new by design, their progress bars for loading weights, or their deprecation notices.  Real warnings stay."""
    import warnings

    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def hydra_entry(config_name: str, main) -> None:
    """`@hydra.main` with our one-line check of group overrides first."""
    import hydra
    check_group_overrides(sys.argv[1:])
    check_keys(sys.argv[1:], config_name)

    @hydra.main(config_path=str(CONF), config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        rc = main(cfg)
        if rc:
            sys.exit(rc)
    _main()


def train_entry() -> None:
    """`swag-lora-train` (= python launch_exp_hydra.py)."""
    hydra_entry("config", main_train)


def evaluate_entry() -> None:
    """`swag-lora-evaluate` (= python -m swag_lora.evaluate; the evaluate/*.bash scripts call that)."""
    hydra_entry("eval", main_evaluate)


__all__ = ["evaluate_entry", "main_evaluate", "main_train", "train_entry"]
