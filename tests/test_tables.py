"""lib.tables on synthetic results: the verdicts and intervals the book prints are computed right.

A verdict must follow from the intervals and nothing else: with one seed it is never "holds" or
"does not hold"; a clear effect over seeds gives "holds"; an effect the other way "does not hold".
"""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from scipy import stats

from lib import tables
from lib.errors import SambookError
from lib.attacks import THREAT_NAMES


def _frame(seeds, sam_gain=2.0, at_clean_cost=8.0, noise=0.3, sam_rhos=(0.05, 0.1, 0.2, 0.4)):
    """ST, SAM at several radii and two AT runs per seed, with a known effect plus a seed-dependent wobble."""
    rows = []
    for s in seeds:
        w = noise * ((s * 7919) % 5 - 2) / 2          # deterministic, different per seed, shared by all runs
        v = noise * ((s * 104729) % 7 - 3) / 3        # SAM's own wobble: paired differences do not cancel it
        u = noise * ((s * 31) % 3 - 1) / 2            # AT's own (real runs never differ by the same amount twice)
        rows.append({"label": "ST", "seed": s, "rho": None, "natural": 80 + w, "train_seconds": 100 + s,
                     **{f"paper_{t}": 40 + w for t in THREAT_NAMES}})
        for r in sam_rhos:
            robust = 40 + sam_gain * (1 + r * (1 + v / 10)) + w + v
            rows.append({"label": f"SAM rho={r:g}", "seed": s, "rho": r, "natural": 80 - 0.1 + w + v / 10,
                         "train_seconds": 200 + s, **{f"paper_{t}": robust for t in THREAT_NAMES}})
        for lab in ("AT L-inf 1/255", "AT L-inf 2/255"):
            rows.append({"label": lab, "seed": s, "rho": None, "natural": 80 - at_clean_cost + w + u,
                         "train_seconds": 600 + s, **{f"paper_{t}": 55 + w for t in THREAT_NAMES}})
    return pd.DataFrame(rows)


def _verdicts(df, measure="paper"):
    """Claim id -> verdict; claim 2 (one verdict per budget) -> its verdicts joined when they differ."""
    out = {}
    for c in tables.check_claims(df, measure):
        out.setdefault(c["id"].split()[0], set()).add(c["verdict"])
    return {k: v.pop() if len(v) == 1 else " / ".join(sorted(v)) for k, v in out.items()}


def test_one_seed_resolves_nothing():
    v = _verdicts(_frame([0]))
    assert set(v.values()) == {"not resolved at this scale"}, v


def test_a_clear_effect_over_three_seeds_holds():
    v = _verdicts(_frame([0, 1, 2]))
    assert v["1a"] == "holds" and v["1b"] == "holds" and v["2"] == "holds"
    assert v["3a"] == "holds" and v["3b"] == "holds" and v["3c"] == "holds"
    assert v["4"] == "holds"                         # SAM 2x ST, AT 6x


def test_time_ratios_pair_only_runs_of_one_processor():
    # seed 0's AT runs on another machine, twice as slow: counted, they would be SAM-like ratios of 12x
    # beside 6x and widen the interval; claim 4 must pair only runs that one processor trained
    df = _frame([0, 1, 2])
    df["cpu"] = "AMD EPYC"
    other = (df["seed"] == 0) & df["label"].str.startswith("AT")
    df.loc[other, "cpu"] = "Intel Xeon"
    df.loc[other, "train_seconds"] *= 2
    assert [s for s, _ in tables._ratios(df, "AT L-inf 1/255", "ST", by_seed=True)] == [1, 2]
    assert [s for s, _ in tables._ratios(df, "SAM rho=0.1", "ST", by_seed=True)] == [0, 1, 2]
    claim = next(c for c in tables.check_claims(df) if c["claim"].startswith("4."))
    assert claim["verdict"] == "holds", claim           # 6x on seeds 1 and 2, the same-machine pairs
    at_ratios = [float(x) for x in re.findall(r"/255 ([0-9.]+)x", claim["evidence"])]
    assert len(at_ratios) == 2 and all(5.5 < r < 6.5 for r in at_ratios), claim["evidence"]
    df.loc[df["label"] == "ST", "cpu"] = "Intel Xeon"   # no pair shares a processor: nothing to judge
    claim = next(c for c in tables.check_claims(df) if c["claim"].startswith("4."))
    assert claim["verdict"] == "not resolved at this scale" and "no pair" in claim["evidence"]


def test_time_ratios_pair_only_runs_compiled_alike():
    # the cpu-long profile compiles ST and SAM but trains AT eager: a compiled ST (1.47x faster on the EPYC)
    # over an eager AT would inflate AT's ratio by the compiler; claim 4 pairs only runs compiled alike
    df = _frame([0, 1, 2])
    df["cpu"] = "AMD EPYC"
    df["compiled"] = ~df["label"].str.startswith("AT")
    assert tables._ratios(df, "AT L-inf 1/255", "ST") == []
    assert len(tables._ratios(df, "SAM rho=0.1", "ST")) == 3
    claim = next(c for c in tables.check_claims(df) if c["claim"].startswith("4."))
    assert claim["verdict"] == "not resolved at this scale" and "compiled alike" in claim["deciding"], claim
    # the deciding text names the cell without an interval and still gives SAM's, which has one
    assert "no interval for AT L-inf 1/255: no pair" in claim["deciding"]
    assert re.search(r"; SAM \d\.\dx \[\d\.\d, \d\.\d\]$", claim["deciding"]), claim["deciding"]
    df["compiled"] = False
    claim = next(c for c in tables.check_claims(df) if c["claim"].startswith("4."))
    assert claim["verdict"] == "holds", claim


def test_claims_are_judged_on_the_measure_asked_for():
    # the paper's protocol shows SAM's gain; a stronger measure ("strict") shows SAM below ST: the claims
    # that read robust accuracy (1a, 2, 3b) follow the measure, those on clean accuracy and time do not
    df = _frame([0, 1, 2])
    for t in THREAT_NAMES:
        df[f"strict_{t}"] = df[f"paper_{t}"] - df["label"].str.startswith("SAM") * (4.0 + 10 * df["rho"].fillna(0))
    paper, strict = _verdicts(df, "paper"), _verdicts(df, "strict")
    assert paper == _verdicts(df) and paper["1a"] == "holds" and paper["2"] == "holds"
    assert strict["1a"] == "does not hold" and strict["2"] == "does not hold"
    assert all(strict[k] == paper[k] for k in ("1b", "3a", "3c", "4"))
    table = tables.claims_by_measure(df, {"paper": "paper", "strict": "strict", "absent": "no such measure"})
    assert list(table.columns) == ["paper", "strict", "same"]          # a measure no run has is left out
    same = {k.split(".")[0]: v for k, v in table["same"].items()}     # claim 2's rows share the key "2"
    assert not same["1a"] and not same["2"] and same["1b"] and same["4"]
    cells = tables.sam_vs_st_by_measure(df, {"paper": "paper", "strict": "strict"})
    assert cells.index.names == ["rho", "measure"] and len(cells) == 2 * 4
    assert cells.loc[(0.4, "strict"), "Linf 2/255"].startswith("-")         # SAM below ST under strict
    assert cells.loc[(0.4, "paper"), "Linf 2/255"].startswith("+")


def test_the_opposite_effect_does_not_hold():
    v = _verdicts(_frame([0, 1, 2], sam_gain=-3.0))
    assert v["1a"] == "does not hold" and v["2"] == "does not hold"


def test_an_effect_inside_the_noise_is_not_resolved():
    v = _verdicts(_frame([0, 1, 2], sam_gain=0.05, noise=6.0))
    assert v["1a"] == "not resolved at this scale"


def test_per_seed_values_give_the_t_interval_over_seeds():
    from lib.stats import estimate
    x = [1.0, 2.0, 4.0]
    e = estimate(x, scale=1.0)
    ref = stats.t.interval(0.95, df=2, loc=sum(x) / 3, scale=stats.sem(x))
    assert e.seeds == 3 and e.images == 0 and e.mean == pytest.approx(7 / 3)
    assert (e.low, e.high) == pytest.approx(ref, rel=1e-9) and e.covers == "seeds only"
    assert not estimate([5.0], scale=1.0).resolved


def test_welch_ci_matches_the_welch_satterthwaite_formula():
    a, b = [60.1, 61.0, 59.5], [58.0, 58.9, 57.2, 58.4]
    d, lo, hi = tables.welch_ci(a, b)
    va, vb = pd.Series(a).var() / 3, pd.Series(b).var() / 4
    dof = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert d == pytest.approx(sum(a) / 3 - sum(b) / 4) and (lo, hi) == pytest.approx((d - half, d + half), rel=1e-9)


def test_comparison_table_diff_worst_and_weak_flag():
    df = _frame([0])
    for t in THREAT_NAMES:                            # the worst case: 3 points below on ST, 0.5 on the others
        df[f"worst_{t}"] = df[f"paper_{t}"] - 0.5
        df[f"gap_{t}"] = 0.5
    st = df["label"] == "ST"
    df.loc[st, [f"worst_{t}" for t in THREAT_NAMES]] -= 2.5
    df.loc[st, [f"gap_{t}" for t in THREAT_NAMES]] = 3.0
    t = tables.comparison_table(df)
    col = tables.COLUMN_LABELS[THREAT_NAMES[0]]
    assert "±" not in {c[1] for c in t.columns}       # one seed: no empty '±' columns
    assert t.loc["ST", (col, "diff")] == pytest.approx(t.loc["ST", (col, "ours")] - t.loc["ST", (col, "paper")])
    assert t.loc["ST", (col, "flag")] == "WEAK"
    assert t.loc["AT L-inf 1/255", (col, "flag")] == ""
    assert t.loc["ST", (col, "worst")] == pytest.approx(t.loc["ST", (col, "ours")] - 3.0)


def test_table2_by_scale_puts_each_scale_beside_the_paper_and_counts_its_seeds():
    short, long = _frame([0, 1, 2]), _frame([0, 1], sam_rhos=(0.4,))
    long = long[long["label"].isin(["ST", "SAM rho=0.4"])]
    t = tables.table2_by_scale({"cpu": short, "cpu-long": long})
    nat = tables.COLUMN_LABELS["natural"]
    assert t.loc["ST", (nat, "cpu")] == pytest.approx(short[short["label"] == "ST"]["natural"].mean())
    assert t.loc["ST", (nat, "cpu-long")] == pytest.approx(long[long["label"] == "ST"]["natural"].mean())
    assert t.loc["ST", (nat, "paper")] == tables.PAPER["cifar10"]["ST"][0]
    assert t.loc["ST", ("seeds", "cpu")] == 3 and t.loc["ST", ("seeds", "cpu-long")] == 2
    assert t.loc["AT L-inf 1/255", ("seeds", "cpu-long")] == 0              # not trained there: no seeds
    assert "<NA>" not in t.to_markdown()
    assert math.isnan(t.loc["AT L-inf 1/255", (nat, "cpu-long")])
    assert math.isnan(t.loc["SAM rho=0.4", (nat, "paper")])                    # no published row


def test_attack_precision_table():
    df = _frame([0, 1, 2])
    assert list(tables.attack_precision_table(df).columns) == tables.PRECISION_COLUMNS   # no fp32 runs: empty
    fp32 = df[df["label"] == "AT L-inf 2/255"].copy()
    fp32["label"] = "AT L-inf 2/255 fp32-attack"
    fp32[[f"paper_{t}" for t in THREAT_NAMES]] += 0.05
    p = tables.attack_precision_table(pd.concat([df, fp32]))
    assert set(p["model"]) == {"AT L-inf 2/255"} and (p["within seed noise"] == "yes").all()
    fp32[[f"paper_{t}" for t in THREAT_NAMES]] += 5.0
    p = tables.attack_precision_table(pd.concat([df, fp32]))
    robust = p[p["column"] != "Natural"]
    assert (robust["within seed noise"] == "no").all() and (robust["fp32 - bf16"] > 4.9).all()


def test_saved_tables_keep_integer_columns_integer_and_leave_missing_cells_blank():
    """A table with counts (seeds, images) beside accuracies: the Markdown and LaTeX files print the counts
    as integers, the accuracies at the requested precision, and a missing value as an empty cell."""
    from lib import report
    df = pd.DataFrame({"seeds": [3, 1], "images": [2000, 200], "natural": [71.234, float("nan")]},
                      index=pd.Index(["ST", "AT"], name="model"))
    md = report.to_markdown(df, ".1f").splitlines()
    assert md[2] == "| ST | 3 | 2000 | 71.2 |"
    assert md[3] == "| AT | 1 | 200 |  |"
    tex = report._to_latex(df, ".1f", None).splitlines()
    assert tex[1] == r"ST & 3 & 2000 & 71.2 \\"


def test_a_table_with_two_index_levels_prints_one_column_per_level():
    """The length-change table is indexed by (rho, column): its Markdown has a header cell for each level and
    the levels' values in their own cells, never a Python tuple."""
    from lib import report
    df = pd.DataFrame({"reading": ["no change shown", "SAM gained on ST"]},
                      index=pd.MultiIndex.from_tuples([(0.1, "clean"), (0.4, "L2 16/255")], names=["rho", "column"]))
    md = report.to_markdown(df).splitlines()
    assert md[0] == "| rho | column | reading |" and md[1] == "|---|---|---|"
    assert md[3] == "| 0.4 | L2 16/255 | SAM gained on ST |" and "(" not in "".join(md)
    tex = report._to_latex(df, ".1f", None).splitlines()
    assert tex[0] == "% rho & column & reading" and tex[2] == r"0.4 & L2 16/255 & SAM gained on ST \\"


def test_the_missing_note_names_the_missing_runs_per_seed():
    """A reader told that runs are missing learns which: each seed's missing runs by name, not only a count."""
    from lib import report
    assert report.missing_note([]) == "All runs of the grid are here."
    missing = [f"cifar10-{w}-s{s}-cpu-0123456789" for s in (1, 2)
               for w in ("awp-linf8-gamma0.01", "trades-linf8-beta6", "asam-rho0.5")]
    note = report.missing_note(missing)
    assert note.startswith("6 runs of the grid are not here yet: seed 1 (3 runs: awp-linf8-gamma0.01, ")
    assert "seed 2 (3 runs: awp-linf8-gamma0.01, trades-linf8-beta6, asam-rho0.5)" in note
    many = report.missing_note([f"cifar10-sam-rho0.{i}-s1-cpu-0123456789" for i in range(10)])
    assert many == "10 runs of the grid are not here yet: seed 1 (10 runs)."


def test_versus_pairs_by_seed_and_reads_only_what_the_interval_resolves():
    """Chapter 5's comparison with AT L-inf 8/255: each method minus the base at the same seed. A clear
    gain over three seeds reads "higher", a clear loss "lower", an effect inside the noise and any single
    seed "not resolved"; a seed where one side lacks the value drops out of that column only."""
    rows = []
    for s, w in zip((0, 1, 2), (-0.4, 0.1, 0.3)):
        rows += [{"label": "AT", "seed": s, "natural": 50 + w, "pgd20": 35 + w},
                 {"label": "TRADES", "seed": s, "natural": 56 + w + 0.1 * s, "pgd20": 35.2 - w},
                 {"label": "AWP", "seed": s, "natural": 47 + w - 0.1 * s, "pgd20": 35 + w if s < 2 else float("nan")}]
    df = pd.DataFrame(rows)
    v = tables.versus(df, "AT", {"natural": "clean", "pgd20": "PGD-20"}).set_index(["method", "column"])
    assert list(v.index.get_level_values(0).unique()) == ["TRADES", "AWP"]
    assert v.loc[("TRADES", "clean"), "mean"] == pytest.approx(6.1) and v.loc[("TRADES", "clean"), "reading"] == "higher"
    assert v.loc[("AWP", "clean"), "reading"] == "lower" and v.loc[("AWP", "clean"), "seeds"] == 3
    assert v.loc[("TRADES", "PGD-20"), "reading"] == "not resolved"        # +0.2 with a wobble of +-0.7
    assert v.loc[("AWP", "PGD-20"), "seeds"] == 2 and v.loc[("AWP", "PGD-20"), "mean"] == pytest.approx(0.0)
    one = tables.versus(df[df["seed"] == 0], "AT", {"natural": "clean"})
    assert set(one["reading"]) == {"not resolved"} and one["95% low"].isna().all()
    wide = tables.versus_table(tables.versus(df, "AT", {"natural": "clean", "pgd20": "PGD-20"}))
    assert list(wide.columns) == ["clean", "PGD-20", "seeds"] and list(wide.index) == ["TRADES", "AWP"]
    assert wide.loc["TRADES", "clean"].startswith("+6.1 [") and wide.loc["TRADES", "seeds"] == 3
    assert tables.versus_table(tables.versus(df[df["seed"] == 0], "AT", {"natural": "clean"})).loc["AWP", "clean"] \
        == "-3.0 (1 seed)"


def test_identical_paired_differences_are_not_an_interval_of_width_zero():
    """Two or more seeds whose differences are equal (AWP minus AT at PGD-20 gave -1.6 at both seeds on
    500 images) have a sample spread of zero: a t-interval of zero width would read a 1.6-point gap as
    resolved on two draws of a measurement whose binomial error is about 2 points. No spread estimate, no
    interval: the reading stays "not resolved" and the cell says why."""
    rows = [{"label": lab, "seed": s, "pgd20": v} for s in (0, 1) for lab, v in (("AT", 35.4 - s), ("AWP", 33.8 - s))]
    v = tables.versus(pd.DataFrame(rows), "AT", {"pgd20": "PGD-20"}).set_index(["method", "column"])
    assert v.loc[("AWP", "PGD-20"), "mean"] == pytest.approx(-1.6) and v.loc[("AWP", "PGD-20"), "seeds"] == 2
    assert v.loc[("AWP", "PGD-20"), "reading"] == "not resolved" and math.isnan(v.loc[("AWP", "PGD-20"), "95% low"])
    wide = tables.versus_table(tables.versus(pd.DataFrame(rows), "AT", {"pgd20": "PGD-20"}))
    assert wide.loc["AWP", "PGD-20"] == "-1.6 (2 seeds, no spread)"
    from lib.stats import estimate, judge
    e = estimate([2.0, 2.0, 2.0], scale=1.0)
    assert (e.mean, e.seeds) == (2.0, 3) and math.isnan(e.low) and math.isnan(e.high)
    assert judge({"cell": estimate([2.0, 2.0], scale=1.0)}, +1).verdict == "not resolved at this scale"


def test_autoattack_check_compares_pgd_and_autoattack_on_the_runs_and_images_both_covered():
    """Only the runs AutoAttack ran on enter (TRADES at seed 1 had PGD-20 on 500 images but no AutoAttack:
    its 40.0 must not pull the mean); the gap is PGD minus AutoAttack; a gap over 3 points is flagged."""
    nan = float("nan")
    rows = [{"label": "TRADES", "seed": 0, "commonlinf8_linf_8": 36.0, "commonautoattack-linf8_linf_8": 32.0,
             "commonworst_linf_8": 31.5, "ncommon_linf_8": 200},
            {"label": "TRADES", "seed": 1, "commonlinf8_linf_8": 40.0, "commonautoattack-linf8_linf_8": nan,
             "commonworst_linf_8": 40.0, "ncommon_linf_8": 500},
            {"label": "AWP", "seed": 0, "commonlinf8_linf_8": 34.0, "commonautoattack-linf8_linf_8": 33.0,
             "commonworst_linf_8": 33.0, "ncommon_linf_8": 200},
            {"label": "AT", "seed": 0, "commonlinf8_linf_8": 35.0, "commonautoattack-linf8_linf_8": nan,
             "commonworst_linf_8": 35.0, "ncommon_linf_8": 500}]
    pt = tables.autoattack_check(pd.DataFrame(rows), "linf_8", "linf8", ("autoattack-linf8",))
    assert list(pt.index) == ["TRADES", "AWP"] and pt.attrs["autoattack"] == "autoattack-linf8"
    assert pt.loc["TRADES", "linf8"] == 36.0 and pt.loc["TRADES", "images"] == 200 and pt.loc["TRADES", "seeds"] == 1
    assert pt.loc["TRADES", "gap (linf8 - autoattack-linf8)"] == pytest.approx(4.0)
    assert list(pt["flag"]) == ["PGD too weak", ""]
    assert tables.autoattack_check(pd.DataFrame(rows), "linf_2", "paper", ("autoattack", "apgd-ce")) is None


def test_protocol_table_never_averages_a_protocol_over_other_seeds_than_its_row():
    """AutoAttack on seed 1 only: the ST row's autoattack cell would be seed 1's number beside the other
    protocols' three-seed means. It stays blank there, the images column says the seeds' range, and the
    AutoAttack check shows seed 1 alone with every column on its images."""
    nan = float("nan")
    rows = [{"label": "ST", "seed": s, "commonpaper_linf_1": p, "commonstrong_linf_1": p - 1,
             "commonautoattack_linf_1": aa, "commonworst_linf_1": p - 1 if aa != aa else min(p - 1, aa),
             "ncommon_linf_1": 200 if aa != aa else 100, "paper_linf_1": p - 0.5}
            for s, p, aa in ((0, 26.0, nan), (1, 24.0, 22.0), (2, 25.0, nan))]
    rows.append({"label": "AT", "seed": 0, "commonpaper_linf_1": 57.5, "commonstrong_linf_1": 57.5,
                 "commonautoattack_linf_1": 57.5, "commonworst_linf_1": 57.5, "ncommon_linf_1": 40,
                 "paper_linf_1": 49.9})
    pt = tables.protocol_table(pd.DataFrame(rows), "linf_1")
    assert math.isnan(pt.loc["ST", "autoattack"]) and pt.loc["AT", "autoattack"] == 57.5
    assert pt.loc["ST", "paper"] == pytest.approx(25.0) and pt.loc["ST", "seeds"] == 3
    assert pt.loc["ST", "worst case"] == pytest.approx((25 + 22 + 24) / 3)     # seed 1's AutoAttack counts
    assert pt.loc["ST", "images"] == "100-200" and pt.loc["AT", "images"] == 40
    check = tables.autoattack_check(pd.DataFrame(rows), "linf_1", "paper", ("autoattack",))
    assert check.loc["ST", "seeds"] == 1 and check.loc["ST", "autoattack"] == 22.0
    assert check.loc["ST", "paper"] == 24.0 and check.loc["ST", "images"] == 100


def test_accuracy_by_length_is_each_lengths_own_mean_with_its_images():
    """The measured curve behind the long scale's length: each (label, length) cell is the mean over its own
    seeds, with an interval over seeds and test images when per-example outcomes are there, the image count
    of that length, and no cell for a label a length lacks."""
    import numpy as np
    rng = np.random.default_rng(0)
    rows = []
    for prof, epochs, n, base in (("cpu", 2, 200, 0.70), ("cpu-long", 10, 1000, 0.84)):
        for s in (0, 1, 2):
            for lab, shift in (("ST", 0.0), ("SAM rho=0.1", -0.02)):
                if lab == "SAM rho=0.1" and epochs == 10:
                    continue                      # not trained at this length yet
                ok = rng.random(n) < base + shift + 0.01 * s
                rows.append({"label": lab, "seed": s, "profile": prof, "epochs": epochs, "natural": 100 * ok.mean(),
                             "ok_natural": ok, "images_natural": f"digest-{prof}"})
    df = pd.DataFrame(rows)
    got = {(r["label"], r["epochs"]): r for r in tables.accuracy_by_length(df)}
    assert set(got) == {("ST", 2), ("ST", 10), ("SAM rho=0.1", 2)}
    for (lab, e), r in got.items():
        sub = df[(df["label"] == lab) & (df["epochs"] == e)]
        assert r["mean"] == pytest.approx(sub["natural"].mean())
        assert r["seeds"] == 3 and r["images"] == {2: 200, 10: 1000}[e]
        assert r["low"] < r["mean"] < r["high"]
    # the image noise counts: 200 images give a wider interval than 1,000 at a similar spread over seeds
    assert got[("ST", 2)]["high"] - got[("ST", 2)]["low"] > got[("ST", 10)]["high"] - got[("ST", 10)]["low"]
    assert [r["label"] for r in tables.accuracy_by_length(df)] == ["ST", "ST", "SAM rho=0.1"]


def _length_frame(gain_at_10, n_short=400, n_long=1000, order="10000 images, the official order"):
    """ST, SAM 0.1 and SAM 0.4 at 4 and 10 epochs, three seeds, per-example outcomes: at 4 epochs SAM and ST
    are equally good; at 10 epochs SAM rho 0.4 gets ``gain_at_10`` of ST's wrong images right (seed by seed a
    little differently). The 10-epoch runs are measured on more images; past the shorter's images ST wins
    every one, which a paired change must never see."""
    import numpy as np
    rng = np.random.default_rng(0)
    rows = []
    for s in (0, 1, 2):
        for e, n in ((4, n_short), (10, n_long)):
            st = rng.random(n) < 0.6
            masks = {"ST": st, "SAM rho=0.1": st.copy(), "SAM rho=0.4": st.copy()}
            if e == 10:
                wrong = np.flatnonzero(~st[:n_short])
                flip = rng.choice(wrong, int(len(wrong) * gain_at_10 * (1 + 0.2 * (s - 1))), replace=False)
                masks["SAM rho=0.4"][flip] = True
                masks["SAM rho=0.1"][flip[: len(flip) // 10]] = True
                for lab in ("SAM rho=0.1", "SAM rho=0.4"):
                    masks[lab][n_short:] = False
                masks["ST"][n_short:] = True
            for lab, m in masks.items():
                row = {"label": lab, "seed": s, "profile": "cpu-long", "epochs": e, "paper_order": order,
                       "rho": float(lab.split("=")[1]) if "=" in lab else None, "natural": 100 * m.mean(),
                       "ok_natural": m}
                rows.append(row)
    return pd.DataFrame(rows)


def test_the_paired_length_change_reads_the_same_images_and_seeds_at_both_lengths():
    rows = {r["rho"]: r for r in tables.gap_change_paired(_length_frame(0.3))}
    big, small = rows[0.4], rows[0.1]
    # SAM 0.4 got about 30 % of ST's wrong images (about 40 % of the first 400) right: about +12 points,
    # measured on the first 400 images only (the 10-epoch runs' extra images, where ST wins, are not read)
    assert big["from"] == 4 and big["to"] == 10 and big["change"].images == 400 and big["change"].seeds == 3
    assert 10 < big["change"].mean < 14 and big["change"].low > 0 and big["word"] == "SAM gained on ST"
    assert small["change"].mean < big["change"].mean and small["p_holm"] >= big["p_holm"]
    none = {r["rho"]: r for r in tables.gap_change_paired(_length_frame(0.0))}
    assert none[0.4]["word"] in ("no change shown", "no interval") and abs(none[0.4]["change"].mean) < 1e-9
    mixed = _length_frame(0.3)
    mixed.loc[(mixed["epochs"] == 10) & (mixed["seed"] == 1), "paper_order"] = "10000 images, a fixed random order"
    with pytest.raises(SambookError, match="different test orderings"):
        tables.gap_change_paired(mixed)
    # the README's clause says the same, on the images and lengths it rests on
    from lib import readme
    said = readme.paired_moves(_length_frame(0.3))
    assert said.startswith("Paired within `cpu-long` instead (from 4 to 10 epochs, the same seeds and the first "
                           "400 test images") and "SAM gained on ST at rho 0.4 Natural" not in said
    assert re.search(r"SAM gained on ST at .*rho 0\.4 clean \+1\d\.\d \[", said), said
    assert "other 0 cells" not in said                   # every cell moved here: nothing left to mention
