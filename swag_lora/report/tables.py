"""Tables across runs and seeds:

    python -m swag_lora.report RUN_OR_EVAL_PATH [...] [--out report] [--metrics accuracy nll ece brier]

gathers every evaluation JSON under the given paths into `report.md`, `report.csv` and `report.png` (and pooled
reliability and selective-prediction figures).  Evaluations that differ only in their training seed are grouped:
each cell is mean ± standard error over seeds (n), and each method's difference from MAP is paired by seed, with its
95% t interval (stats.py says how, and how ensembles get theirs).  A split on which MAP is not above chance shows no
method comparison.  `condensed` prints the README / RESULTS.md tables from report.csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from swag_lora.io import atomic_write
from swag_lora.report.figures import comparison_figure, pooled_figures
from swag_lora.report.records import ReportError, load_records
from swag_lora.report.stats import Interval, chance_gate, jackknife_interval, majority_rate, mean_se, paired_interval

TABLE_METRICS = ("accuracy", "nll", "ece", "brier")
HIGHER_IS_BETTER = {"accuracy", "mcc"} | {m for m in ("auroc", "aupr_in", "aupr_out")}
IGNORED_SETTINGS = ("temperature", "seed", "prior_precision", "tfb_sigma")   # records written before `fitted` was kept


def _seedless(run_dir: str) -> str:
    return re.sub(r"seed ?\d+", "seed*", run_dir)


def split_key(r: dict) -> tuple:
    """The rows a record scored: distribution, task, subtask, split and how many rows."""
    return r["distribution"], r["task"], r["subtask"], r["split"], r.get("num_examples")


def family(r: dict) -> str:
    """The run family without its seed ("members" for an evaluation of several runs): the run directory below its
    save folder, <task>/<model>/<method>/<name>_seed*_<config digest>, which names the training wherever it was saved
    (kept records of one seed from one checkout, of another seed from another node)."""
    return " ".join(sorted({_seedless("/".join(Path(d).parts[-4:])) for d in r["run_dirs"]})) \
        if len(r["run_dirs"]) == 1 else "members"


def group_key(r: dict) -> tuple:
    ignored = {"seed", *r.get("fitted", IGNORED_SETTINGS)}       # values fitted per run (T, delta, sigma) are results
    settings = json.dumps({k: _seedless(str(v)) if k == "temperature_source" else v          # "carved ... (seed 1)"
                           for k, v in r["settings"].items() if k not in ignored}, sort_keys=True)
    return (*split_key(r), r["model"], r["label"], r.get("name", "").split("_")[0], settings, family(r))


def chance_of(r: dict) -> float | None:
    """The accuracy of always predicting the most frequent label on the record's rows (stored, or from its npz)."""
    if r.get("chance_accuracy") is not None:
        return float(r["chance_accuracy"])
    if Path(r.get("_npz", "")).is_file():
        return majority_rate(np.load(r["_npz"])["labels"])
    return None


def map_references(records: list[dict]) -> tuple[dict, dict]:
    """MAP records by (split, family, seeds) and by (split, seeds) over every family.  Two MAP evaluations of the same
    run on the same rows are ambiguous: refused, naming both files."""
    exact, by_seed = {}, defaultdict(list)
    for r in unique(records):
        if r["label"] != "map":
            continue
        key = (split_key(r), family(r), tuple(r["train_seeds"]))
        if key in exact and exact[key]["metrics"] == r["metrics"]:     # the same numbers (MAP has no draws): either
            continue
        if key in exact:
            raise ReportError(f"two MAP evaluations of one run on the same rows: {exact[key].get('_file')} and "
                              f"{r.get('_file')}; report one of them (pass their folders separately)")
        exact[key] = r
        by_seed[(split_key(r), tuple(r["train_seeds"]))].append(r)
    return exact, by_seed


def leave_one_out(rs: list[dict]) -> bool:
    """Whether the records are the n leave-one-out member sets of n seeds (the jackknife applies)."""
    seeds = {s for r in rs for s in r["train_seeds"]}
    sets = {frozenset(r["train_seeds"]) for r in rs}
    return len(rs) == len(seeds) >= 3 and len(sets) == len(rs) and all(len(s) == len(seeds) - 1 for s in sets)


def unique(records: list[dict]) -> list[dict]:
    """One record per evaluation: the same evaluation found twice (e.g. the closing table's copy in a run's eval/
    and a protocol's) would count as two seeds."""
    seen, out = set(), []
    for r in records:
        key = (r["label"], json.dumps(r["run_dirs"]), split_key(r), json.dumps(r["metrics"], sort_keys=True), group_key(r))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def aggregate(records: list[dict], metrics: tuple[str, ...] = TABLE_METRICS) -> list[dict]:
    """Rows of mean ± s.e. per (split, model, method, settings, run family), with the paired difference from MAP."""
    records = unique(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r)].append(r)
    for rs in groups.values():          # n counts training seeds: one evaluation per seed (or member set) in a group
        seeds = [tuple(r["train_seeds"]) for r in rs]
        twice = next((s for s in seeds if seeds.count(s) > 1), None)
        if twice is not None:
            files = [r.get("_file") for r in rs if tuple(r["train_seeds"]) == twice]
            raise ReportError(f"two {rs[0]['label']} evaluations of the same training seed(s) {list(twice)} with the same "
                              f"settings but other numbers ({files[0]}, {files[1]}), e.g. two evaluation seeds: they "
                              f"are not two seeds of training; report them apart")
    exact, by_seed = map_references(records)

    def reference(r, m):
        """MAP's value for the record's seeds: the same run's; else, where exactly one run family has a MAP for each
        seed, its (mean over the seeds)."""
        same = exact.get((split_key(r), family(r), tuple(r["train_seeds"])))
        if same is not None:
            return same["metrics"].get(m, np.nan)
        per_seed = [by_seed.get((split_key(r), (seed,)), []) for seed in r["train_seeds"]]
        if per_seed and all(len(found) == 1 for found in per_seed):
            return float(np.mean([found[0]["metrics"].get(m, np.nan) for found in per_seed]))
        return None

    gates = {}
    for key, rs in groups.items():
        if key[6] == "map":
            chance = [c for c in (chance_of(r) for r in rs) if c is not None]
            acc = mean_se([r["metrics"]["accuracy"] for r in rs])[0]
            if chance and key[4]:
                gates.setdefault(key[:5], chance_gate(acc, float(np.mean(chance)), key[4]))

    rows = []
    order = {r["label"]: r.get("order", 99) for r in records}
    for key, rs in sorted(groups.items(), key=lambda kv: (*[str(x) for x in kv[0][:4]], order.get(kv[0][6], 99),
                                                          kv[0][6], kv[0][9])):
        gate = gates.get(key[:5])
        row = {"distribution": key[0], "task": key[1] + (f"/{key[2]}" if key[2] else ""), "split": key[3],
               "rows": key[4], "model": key[5], "method": key[6], "n": len(rs), "settings": key[8], "runs": key[9],
               "settings_text": settings_text(rs), "gate": gate}
        members = key[9] == "members"
        for m in metrics:
            row[m] = mean_se([r["metrics"].get(m, np.nan) for r in rs])
            if key[6] == "map":
                continue
            refs = [(r, reference(r, m)) for r in rs]
            diffs = [r["metrics"].get(m, np.nan) - ref for r, ref in refs if ref is not None]
            if len(diffs) != len(rs) or all(math.isnan(d) for d in diffs):
                continue
            if members:
                row[f"d_{m}"] = jackknife_interval(diffs) if leave_one_out(rs) else Interval(
                    float(np.nanmean(diffs)), math.nan, math.nan, math.nan, math.nan, 1 if len(rs) == 1 else len(rs), "none")
            else:
                row[f"d_{m}"] = paired_interval(diffs)
        rows.append(row)
    return rows


def settings_text(rs: list[dict]) -> str:
    """The settings a table names, read from the records: S draws per member, SWAG scale, members, temperature T,
    Laplace's prior precision and how it was chosen, BLoB/TFB's scale, epochs and training rows."""
    s = rs[0]["settings"]
    parts = []
    draws = s.get("num_draws", 1) // max(s.get("num_members", 1), 1)
    if draws > 1:
        parts.append(f"S={draws}")
    if s.get("swag_sample_scale") is not None and rs[0]["method"] in ("swag", "multiswag"):
        parts.append(f"scale={s['swag_sample_scale']:g}")
    if s.get("num_members", 1) > 1:
        parts.append(f"members={s['num_members']}")
    for key, name in (("temperature", "T"), ("prior_precision", "δ"), ("tfb_sigma", "σ")):
        values = [r["settings"][key] for r in rs if r["settings"].get(key) is not None]
        if values:
            parts.append(f"{name}={np.mean(values):.3g}" + (f" ({min(values):.3g}-{max(values):.3g})" if len(values) > 1
                                                              and min(values) != max(values) else ""))
    if s.get("prior_source"):
        parts.append(f"δ by {s['prior_source']}")
    train = rs[0].get("run_settings", {})
    if train.get("num_epochs") is not None:
        parts.append(f"epochs={train['num_epochs']}")
    if train.get("train_rows") is not None:
        parts.append(f"train rows={train['train_rows']}")
    return ", ".join(parts)


def fmt_value(v: tuple) -> str:
    mean, se = v[0], v[1]
    if math.isnan(mean):
        return ""
    return f"{mean:.4f}" if math.isnan(se) else f"{mean:.4f} ± {se:.4f}"


def fmt_delta(d: Interval | None, bold: bool = True) -> str:
    """`+0.0123 [+0.0041, +0.0205]`, bold where the 95% interval excludes 0; a single value has no interval."""
    if d is None or math.isnan(d.mean):
        return ""
    if math.isnan(d.lo):
        return f"{d.mean:+.4f}"
    text = f"{d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"
    return f"**{text}**" if bold and d.excludes_zero else text


def split_title(r: dict) -> str:
    gate = r["gate"]
    head = f"{r['distribution'].upper()}: {r['task']} ({r['split']}, {r['rows']} rows)"
    return head + (f" -- {gate.message('MAP').split(': ', 1)[1]}" if gate else " -- chance level unknown (no labels recorded)")


def render(rows: list[dict], metrics: tuple[str, ...]) -> str:
    """One table per split; a split where MAP is not above chance shows its MAP row and says so, nothing else."""
    out = []
    for split in dict.fromkeys((r["distribution"], r["task"], r["split"], r["rows"]) for r in rows):
        rs = [r for r in rows if (r["distribution"], r["task"], r["split"], r["rows"]) == split]
        gate = rs[0]["gate"]
        out += ["", f"**{split_title(rs[0])}**", ""]
        if gate is not None and not gate.passed:
            rs = [r for r in rs if r["method"] == "map"]
        head = ["model", "method", "n"] + list(metrics) + [f"Δ{m} vs MAP [95% CI]" for m in metrics] + ["settings"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rs:
            cells = [r["model"], r["method"], str(r["n"])] + [fmt_value(r[m]) for m in metrics]
            cells += [fmt_delta(r.get(f"d_{m}")) for m in metrics] + [r["settings_text"]]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out).strip()


CSV_HEAD = ["distribution", "task", "split", "rows", "model", "method", "n", "settings", "settings_text", "runs",
            "map_accuracy", "chance", "chance_bound", "above_chance"]


def write_csv(rows: list[dict], metrics: tuple[str, ...], path: Path) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEAD + [x for m in metrics for x in (m, f"{m}_se", f"d_{m}", f"d_{m}_se", f"d_{m}_lo",
                                                                 f"d_{m}_hi", f"d_{m}_p", f"d_{m}_n", f"d_{m}_kind")])
            for r in rows:
                g = r["gate"]
                cells = [r["distribution"], r["task"], r["split"], r["rows"], r["model"], r["method"], r["n"], r["settings"],
                         r["settings_text"], r["runs"], *((g.accuracy, g.chance, g.bound, g.passed) if g else ("",) * 4)]
                for m in metrics:
                    d = r.get(f"d_{m}")
                    cells += [r[m][0], r[m][1]] + ([d.mean, d.se, d.lo, d.hi, d.p, d.n, d.kind] if d else [""] * 7)
                w.writerow(cells)


def check_metrics(records: list[dict], metrics: tuple[str, ...]) -> None:
    known = sorted({k for r in records for k in r["metrics"]})
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ReportError(f"unknown --metrics entry {unknown[0]!r}; allowed: {', '.join(known)}")


def build_report(paths: list[str], out: str, metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    records = load_records(paths)
    if not records:
        raise ReportError(f"no evaluation JSON found under {', '.join(map(str, paths))}")
    check_metrics(records, metrics)
    rows = aggregate(records, metrics)
    md = render(rows, metrics)
    out_p = Path(out)
    with atomic_write(out_p.with_suffix(".md")) as tmp:
        tmp.write_text(f"# swag-lora report\n\n{len(records)} evaluations. Cells are mean ± standard error over training "
                       f"seeds (n). Δ is the difference from MAP paired by training seed (the same run's MAP; for another "
                       f"run, such as IVON, the MAP of the same training seed; for an ensemble, the mean MAP of its "
                       f"members), with its 95% t interval (n - 1 degrees of freedom); **bold** where the interval "
                       f"excludes 0. Ensemble and MultiSWAG rows over leave-one-out member sets take the jackknife's "
                       f"standard error. A split where MAP is not above chance (the binomial 95% bound for its rows) "
                       f"shows no comparison.\n\n{md}\n")
    write_csv(rows, metrics, out_p.with_suffix(".csv"))
    comparison_figure(rows, metrics, out_p.with_suffix(".png"))
    pooled_figures(records, out_p)
    print(md)
    for r in rows:
        if r["method"] == "map" and r["gate"] is not None and not r["gate"].passed:
            where = f"{r['distribution']}/{r['task']}"
            print(f"[swag-lora] {r['gate'].message(where)}", file=sys.stderr)
    return md


# ---------------------------------------------------------------- the README / RESULTS.md tables
def _number(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def condensed(csv_path: str, metrics: list[str], deltas: list[str] | None = None, percent: tuple[str, ...] = ()) -> str:
    """Per split: value ± s.e., the Δ columns with their 95% interval (bold where it excludes 0) and the settings,
    from report.csv; ECE-like `percent` metrics in %; a split where MAP is not above chance: the gate's line only."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            groups[(row["distribution"], row["task"], row["split"], row["rows"])].append(row)
    deltas = [m for m in (deltas or metrics) if m in metrics]
    out = []
    for (dist, task, split, n_rows), rows in groups.items():
        first = rows[0]
        shown = [m for m in metrics if any(not math.isnan(_number(r.get(m, ""))) for r in rows)]
        ds = [m for m in deltas if m in shown]
        gate = ""
        if first["chance"]:
            gate = (f"MAP {_number(first['map_accuracy']):.3f}, chance {_number(first['chance']):.3f}, 95% bound "
                    f"{_number(first['chance_bound']):.3f}")
        out.append(f"\n**{dist.upper()}: {task}** ({split}, {n_rows} rows; {gate})\n")
        if first["above_chance"] == "False":
            out.append("MAP is not above chance on this split: no method comparison.")
            continue
        scale = {m: (100.0 if m in percent else 1.0) for m in shown}
        names = [(f"ECE{m[4:] or '15'} (%)" if m.startswith("ece") else f"{m} (%)") if m in percent else m for m in shown]
        label = dict(zip(shown, names))
        out.append("| method | n | " + " | ".join(names) + " | " + " | ".join(f"Δ{label[m]}" for m in ds) + " | settings |")
        out.append("|---|---|" + "---|" * (len(shown) + len(ds) + 1))
        for r in rows:
            vals = []
            for m in shown:
                v, s = _number(r[m]) * scale[m], _number(r[f"{m}_se"]) * scale[m]
                vals.append("" if math.isnan(v) else f"{v:.{2 if scale[m] > 1 else 4}f}"
                            + ("" if math.isnan(s) else f" ± {s:.{2 if scale[m] > 1 else 4}f}"))
            dcells = []
            for m in ds:
                d, lo, hi = (_number(r.get(f"d_{m}{x}", "")) * scale[m] for x in ("", "_lo", "_hi"))
                if math.isnan(d):
                    dcells.append("")
                    continue
                p = 2 if scale[m] > 1 else 4
                text = f"{d:+.{p}f}" if math.isnan(lo) else f"{d:+.{p}f} [{lo:+.{p}f}, {hi:+.{p}f}]"
                dcells.append(f"**{text}**" if not math.isnan(lo) and (lo > 0 or hi < 0) else text)
            out.append(f"| {r['method']} | {r['n']} | " + " | ".join(vals) + " | " + " | ".join(dcells)
                       + f" | {r['settings_text']} |")
    return "\n".join(out)


LOWER_IS_BETTER = ("nll", "ece", "ece_10", "ece_20", "brier")


def marks(csv_path: str, metrics: list[str]) -> str:
    """The sentences a table supports, derived from its marks alone: per split above chance, the methods whose paired
    95% interval vs MAP excludes 0, better or worse, per metric; and the lowest-NLL method with its interval.  A split
    at chance says so and nothing else."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            groups[(row["distribution"], row["task"])].append(row)
    out = []
    for (dist, task), rows in groups.items():
        head = f"- {dist.upper()} {task}: "
        if rows[0]["above_chance"] == "False":
            out.append(head + f"MAP {_number(rows[0]['map_accuracy']):.3f} is not above chance ({_number(rows[0]['chance']):.3f}, "
                       f"bound {_number(rows[0]['chance_bound']):.3f}): no comparison.")
            continue
        parts = []
        for m in metrics:
            if f"d_{m}_lo" not in rows[0]:
                continue
            better, worse = [], []
            pct = 100.0 if m.startswith("ece") else 1.0           # ECE in %, as in the tables
            for r in rows:
                d, lo, hi = (_number(r.get(f"d_{m}{x}", "")) * pct for x in ("", "_lo", "_hi"))
                if math.isnan(lo) or lo <= 0 <= hi:
                    continue
                good = (d < 0) == (m in LOWER_IS_BETTER)
                p = 2 if pct > 1 else 4
                (better if good else worse).append(f"{r['method']} {d:+.{p}f} [{lo:+.{p}f}, {hi:+.{p}f}]")
            if better or worse:
                parts.append(f"{m}{' (%)' if pct > 1 else ''}: better than MAP {', '.join(better) or 'none'}; worse {', '.join(worse) or 'none'}")
        if "nll" in metrics:
            ranked = [r for r in rows if not math.isnan(_number(r.get("nll", "")))]
            best = min(ranked, key=lambda r: _number(r["nll"]))
            d = "" if best["method"] == "map" else (
                f", vs MAP {_number(best['d_nll']):+.4f}" + ("" if not best.get("d_nll_lo") or math.isnan(_number(best["d_nll_lo"]))
                                                             else f" [{_number(best['d_nll_lo']):+.4f}, {_number(best['d_nll_hi']):+.4f}]"))
            parts.append(f"lowest NLL: {best['method']} {_number(best['nll']):.4f}{d}")
        out.append(head + ("; ".join(parts) if parts else "no difference from MAP beyond its interval") + ".")
    return "\n".join(out)


def write_results(path: str) -> None:
    """Regenerate every block `<!-- table: <report.csv> <metrics> [<deltas>] -->...<!-- /table -->` (the condensed
    table) and `<!-- marks: <report.csv> <metrics> -->...<!-- /marks -->` (the sentences the marks support) of a
    Markdown file, from the CSVs they name."""
    import re
    text = Path(path).read_text()

    for csv_path in re.findall(r"<!-- (?:table|marks): (\S+)", text):
        if not Path(csv_path).is_file():
            raise ReportError(f"{path} names {csv_path}, which does not exist (run its protocol, or remove the block)")

    def table(m):
        args = m.group(1).split()
        deltas = args[2].split(",") if len(args) > 2 else None
        metrics = args[1].split(",")
        body = condensed(args[0], metrics, deltas or [x for x in metrics if x not in ("ece_10", "ece_20")],
                         percent=("ece", "ece_10", "ece_20"))
        return f"<!-- table: {m.group(1)} -->\n{body.strip()}\n<!-- /table -->"

    def mark(m):
        csv_path, metrics = m.group(1).split()[:2]
        return f"<!-- marks: {m.group(1)} -->\n{marks(csv_path, metrics.split(','))}\n<!-- /marks -->"
    text = re.sub(r"<!-- table: ([^>]*?) -->.*?<!-- /table -->", table, text, flags=re.S)
    text = re.sub(r"<!-- marks: ([^>]*?) -->.*?<!-- /marks -->", mark, text, flags=re.S)
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Gather swag-lora evaluations into one table and figure.")
    ap.add_argument("paths", nargs="+", help="run directories, eval folders or evaluation JSON files")
    ap.add_argument("--out", default="report", help="output path without suffix (writes .md, .csv, .png)")
    ap.add_argument("--metrics", nargs="+", default=list(TABLE_METRICS))
    args = ap.parse_args(argv)
    try:
        build_report(args.paths, args.out, tuple(args.metrics))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
