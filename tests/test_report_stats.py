"""The report's statistics against independent computations (scipy, closed forms), and its plumbing: NaN entries,
row caps, ambiguous MAP evaluations, the chance gate, ensembles' leave-one-out spread, and n = 1 bars."""
import math

import numpy as np
import pytest
from scipy import stats as st

from swag_lora.report.records import ReportError
from swag_lora.report.stats import chance_gate, jackknife_interval, mean_se, paired_interval
from swag_lora.report.tables import aggregate, render


def test_paired_interval_is_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5), rng.normal(size=5) + 0.3
    d = paired_interval(b - a)
    ref = st.ttest_rel(b, a)
    ci = ref.confidence_interval(0.95)
    assert d.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (d.lo, d.hi) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert d.n == 5 and d.kind == "paired t"


def test_three_seeds_need_four_point_three_standard_errors():
    # |mean| = 3 s.e.: beyond the old "2 s.e." mark, inside the t interval with 2 degrees of freedom (4.30 s.e.)
    d = np.array([1.0, 2.0, 3.0])
    se = d.std(ddof=1) / math.sqrt(3)
    shifted = d - d.mean() + 3 * se
    assert not paired_interval(shifted).excludes_zero
    assert paired_interval(d - d.mean() + 4.4 * se).excludes_zero
    assert st.t.ppf(0.975, 2) == pytest.approx(4.3027, abs=1e-4)


def test_jackknife_of_leave_one_out_means_is_the_standard_error_of_the_mean():
    # a closed form: for the mean, the jackknife standard error equals sd / sqrt(n)
    x = np.array([0.3, 1.2, -0.4, 2.2, 0.9])
    loo = [np.delete(x, i).mean() for i in range(len(x))]
    j = jackknife_interval(loo)
    assert j.se == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)), rel=1e-12)
    assert j.mean == pytest.approx(x.mean()) and j.kind == "jackknife"


def test_chance_bound_is_the_binomial_95_percent_quantile():
    n, p0 = 277, 0.527
    cdf = np.cumsum([math.comb(n, k) * p0 ** k * (1 - p0) ** (n - k) for k in range(n + 1)])
    k = int(np.argmax(cdf >= 0.95))
    g = chance_gate(0.53, p0, n)
    assert g.bound == pytest.approx(k / n) and not g.passed
    assert chance_gate(k / n + 1e-9, p0, n).passed
    assert "NOT above chance 0.5270" in g.message("ood/rte") and "277 rows" in g.message("ood/rte")


def test_standard_errors_count_only_the_values_there_are():
    mean, se, n = mean_se([1.0, float("nan"), 3.0])
    assert (mean, n) == (2.0, 2) and se == pytest.approx(np.std([1.0, 3.0], ddof=1) / math.sqrt(2))


def rec(label, seed, value, *, rows=100, dist="id", members=None, accuracy=0.9, method=None, chance=0.25, path="r"):
    seeds = members if members is not None else [seed]
    return {"distribution": dist, "task": "t", "subtask": "", "split": "test", "num_examples": rows, "model": "m",
            "label": label, "method": method or label, "name": f"{label}_x", "chance_accuracy": chance,
            "run_dirs": [f"{path}/seed{s}" for s in seeds], "train_seeds": seeds, "_file": f"{label}{seed}{rows}.json",
            "metrics": {"nll": value, "accuracy": accuracy, "auroc_entropy": float("nan")},
            "settings": {"num_samples": 1, "num_members": len(seeds), "num_draws": len(seeds), "seed": 0}}


def test_different_row_caps_are_not_pooled_and_each_pairs_with_its_own_map():
    records = [rec("map", s, 1.0 + s, rows=r) for s in range(3) for r in (100, 16)]
    records += [rec("swag", s, 0.9 + s, rows=r) for s in range(3) for r in (100, 16)]
    rows = aggregate(records, ("nll", "accuracy"))
    assert sorted((r["method"], r["rows"], r["n"]) for r in rows) == [("map", 16, 3), ("map", 100, 3), ("swag", 16, 3),
                                                                      ("swag", 100, 3)]
    swag = next(r for r in rows if r["method"] == "swag" and r["rows"] == 16)
    assert swag["d_nll"].mean == pytest.approx(-0.1)


def test_one_training_family_saved_under_two_folders_is_one_row_paired_with_its_map():
    """Seeds of one run family evaluated from two checkouts (kept records of seeds 0-1 from one folder, seed 2 from
    another node) are one row of n = 3, each paired with its own seed's MAP."""
    layout = "t/m/swag/lr0.1_seed{}_abc123"
    records = [{**rec("map", s, 1.0 + s), "run_dirs": [f"/node{s % 2}/results/runs/swag/{layout.format(s)}"]}
               for s in range(3)]
    records += [{**rec("laplace", s, 0.8 + s), "run_dirs": [f"/node{s // 2}/out/{layout.format(s)}"]} for s in range(3)]
    rows = aggregate(records, ("nll",))
    assert sorted((r["method"], r["n"]) for r in rows) == [("laplace", 3), ("map", 3)]
    laplace = next(r for r in rows if r["method"] == "laplace")
    assert laplace["d_nll"].mean == pytest.approx(-0.2) and laplace["d_nll"].se == pytest.approx(0.0)
    assert laplace["runs"] == layout.format("*")
    other = {**rec("laplace", 0, 0.8), "run_dirs": ["/node0/out/t/m/swag/lr0.2_seed0_def456"]}   # another training
    assert sorted((r["method"], r["n"]) for r in aggregate(records + [other], ("nll",))) == [
        ("laplace", 1), ("laplace", 3), ("map", 3)]


def test_two_map_evaluations_of_one_run_on_the_same_rows_are_refused():
    with pytest.raises(ReportError, match="two map evaluations of the same training seed"):
        aggregate([rec("map", 0, 1.0), {**rec("map", 0, 1.1), "_file": "other.json"}], ("nll",))


def test_a_split_at_chance_shows_no_method_comparison():
    records = [rec("map", s, 1.0, accuracy=0.26, chance=0.25) for s in range(3)]
    records += [rec("swag", s, 0.5 + 0.01 * s, accuracy=0.26, chance=0.25) for s in range(3)]
    rows = aggregate(records, ("nll", "accuracy"))
    assert not rows[0]["gate"].passed
    md = render(rows, ("nll", "accuracy"))
    assert "NOT above chance 0.2500" in md and "| swag |" not in md and "| map |" in md
    passed = aggregate([{**r, "metrics": {**r["metrics"], "accuracy": 0.6}} for r in records], ("nll", "accuracy"))
    assert "| swag |" in render(passed, ("nll", "accuracy"))


def test_three_seeds_mark_only_what_the_t_interval_excludes():
    # per-seed differences -0.10, -0.12, -0.03: |mean| = 3.05 s.e. (the old 2 s.e. mark) but inside 4.30 s.e.
    records = [rec("map", s, 1.0, accuracy=0.9) for s in range(3)]
    records += [rec("swag", s, 1.0 + d, accuracy=0.9) for s, d in enumerate((-0.10, -0.12, -0.03))]
    md = render(aggregate(records, ("nll", "accuracy")), ("nll", "accuracy"))
    swag = next(line for line in md.splitlines() if "| swag |" in line)
    assert "**" not in swag and "[" in swag


def test_ensembles_over_leave_one_out_members_take_the_jackknife():
    maps = [1.0, 1.2, 0.8]
    records = [rec("map", s, v) for s, v in enumerate(maps)]
    loo = [[1, 2], [0, 2], [0, 1]]
    ens = [0.7, 0.75, 0.8]
    records += [rec("ensemble", ms[0], v, members=ms, path="x") for ms, v in zip(loo, ens)]
    row = next(r for r in aggregate(records, ("nll",)) if r["method"] == "ensemble")
    diffs = [v - np.mean([maps[s] for s in ms]) for ms, v in zip(loo, ens)]
    assert row["d_nll"].kind == "jackknife" and row["n"] == 3
    assert row["d_nll"].mean == pytest.approx(np.mean(diffs))
    assert row["d_nll"].se == pytest.approx(math.sqrt(2 / 3 * np.sum((np.array(diffs) - np.mean(diffs)) ** 2)))
    # one ensemble of every seed: a single value, no interval and no mark
    single = aggregate(records[:3] + [rec("ensemble", 0, 0.7, members=[0, 1, 2], path="x")], ("nll",))
    d = next(r for r in single if r["method"] == "ensemble")["d_nll"]
    assert math.isnan(d.lo) and not d.excludes_zero


def test_single_values_are_drawn_without_error_bars(monkeypatch, tmp_path):
    from swag_lora.report import figures
    made = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: made.append(fig))
    rows = [{"distribution": "id", "task": "t", "method": m, "nll": (1.0, se, n)}
            for m, se, n in (("map", 0.1, 3), ("ensemble", float("nan"), 1))]
    figures.comparison_figure(rows, ("nll",), tmp_path / "x.png")
    ax = made[0].axes[0]
    errorbars = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(errorbars) == 1                      # MAP's; the n = 1 bar has none (not a zero-width one)
    assert ax.patches[1].get_hatch() == "//"


def test_the_sentences_a_table_supports_come_from_its_marks_alone(tmp_path):
    from swag_lora.report.tables import condensed, marks, write_csv, write_results
    records = [rec("map", s, 1.0, accuracy=0.9) for s in range(3)]
    records += [rec("swag", s, 1.0 + d, accuracy=0.9) for s, d in enumerate((-0.10, -0.11, -0.12))]   # excludes 0
    records += [rec("dropout", s, 1.0 + d, accuracy=0.9) for s, d in enumerate((-0.10, -0.12, -0.03))]  # does not
    records += [rec("map", s, 1.0, accuracy=0.26, dist="ood") for s in range(3)]                      # at chance
    records += [rec("swag", s, 0.5, accuracy=0.26, dist="ood") for s in range(3)]
    write_csv(aggregate(records, ("nll", "accuracy")), ("nll", "accuracy"), tmp_path / "r.csv")
    text = marks(str(tmp_path / "r.csv"), ["nll", "accuracy"])
    id_line, ood_line = text.splitlines()
    assert "nll: better than MAP swag -0.1100" in id_line and "dropout" not in id_line.split("lowest")[0]
    assert "lowest NLL: swag" in id_line
    assert "not above chance" in ood_line and "swag" not in ood_line
    table = condensed(str(tmp_path / "r.csv"), ["nll", "accuracy"])
    assert "**-0.1100" in table and "no method comparison" in table
    md = tmp_path / "R.md"
    md.write_text(f"x\n<!-- table: {tmp_path / 'r.csv'} nll,accuracy -->\nold\n<!-- /table -->\n"
                  f"<!-- marks: {tmp_path / 'r.csv'} nll,accuracy -->\nold\n<!-- /marks -->\ny\n")
    write_results(str(md))
    out = md.read_text()
    assert "old" not in out and out.startswith("x\n") and out.endswith("y\n") and "lowest NLL: swag" in out


def test_one_evaluation_found_twice_counts_once():
    a = {**rec("map", 0, 1.0), "evaluation_key": {"runs": ["r/seed0"], "seed": 10}}
    b = {**rec("swag", 0, 0.9), "evaluation_key": {"runs": ["r/seed0"], "seed": 10, "m": "swag"}}
    rows = aggregate([a, {**a, "_file": "copy.json"}, b, {**b, "_file": "copy2.json"}], ("nll",))
    assert sorted((r["method"], r["n"]) for r in rows) == [("map", 1), ("swag", 1)]
    other_seed = {**a, "evaluation_key": {"runs": ["r/seed0"], "seed": 11}, "_file": "other.json"}
    assert sorted((r["method"], r["n"]) for r in aggregate([a, other_seed, b], ("nll",))) == [("map", 1), ("swag", 1)]
    with pytest.raises(ReportError, match="two map evaluations of the same training seed"):   # numbers that disagree
        aggregate([a, {**other_seed, "metrics": {**a["metrics"], "nll": 1.2}}], ("nll",))
