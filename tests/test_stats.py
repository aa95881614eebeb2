"""lib.stats and the verdicts built on it, on synthetic per-example outcomes with known noise.

Each test is one of the ways an interval or a verdict could mislead a reader: an interval that counts
seeds only, a claim that can never be refuted, a claim refuted by one chance cell among many, a
correlation that counts seeds as independent samples.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lib import stats, tables
from lib.attacks import THREAT_NAMES
from lib.errors import SambookError


def _outcomes(n, seeds, acc, flips=1, seed=0, flip_seed=0):
    """Per seed, a 0/1 outcome per image: the same hard images fail at every seed (image noise shared
    across seeds, as on a fixed test set), plus ``flips`` images that change per seed (tiny seed noise)."""
    difficulty = np.random.default_rng(seed).random(n)
    rng = np.random.default_rng(1000 + flip_seed)
    out = []
    for s in seeds:
        ok = difficulty < acc
        ok[rng.integers(0, n, flips)] ^= True
        out.append(ok)
    return out


def _mask_frame(n, seeds=(0, 1, 2), gain=0.05):
    """ST and SAM rho=0.1 with per-example outcomes on ``n`` images; SAM right on a superset of ST's images."""
    st_ok = _outcomes(n, seeds, 0.5, seed=1)
    sam_ok = _outcomes(n, seeds, 0.5 + gain, seed=1, flip_seed=1)
    rows = []
    for s, a, b in zip(seeds, st_ok, sam_ok):
        for lab, ok in (("ST", a), ("SAM rho=0.1", b)):
            rows.append({"label": lab, "seed": s, "natural": 100 * ok.mean(), "ok_natural": ok})
    return pd.DataFrame(rows)


def test_the_interval_covers_test_images_and_widens_as_they_shrink():
    """Seed spread tiny, image sampling the real noise: the seed-only interval is nearly a point; the
    interval over seeds and images widens about sqrt(10)-fold from 2,000 to 200 images."""
    wide = {}
    for n in (2000, 200):
        e = tables.paired(_mask_frame(n), "SAM rho=0.1", "ST", "natural")
        assert e.images == n and e.covers == "seeds and test images"
        assert e.se_image > 5 * e.se_seed                       # the images dominate
        d, _ = tables.contrast_matrix(_mask_frame(n), [("SAM rho=0.1", 1), ("ST", -1)], "natural")
        seeds_only = stats.estimate(d.mean(axis=0))
        assert e.se > 3 * seeds_only.se and (e.high - e.low) > 2 * (seeds_only.high - seeds_only.low)
        wide[n] = e.high - e.low
    assert 2.5 < wide[200] / wide[2000] < 4.0


def test_the_formula_agrees_with_the_crossed_bootstrap():
    rng = np.random.default_rng(3)
    n, s = 800, 3
    image = rng.normal(0, 0.3, (n, 1))
    seed = rng.normal(0, 0.05, (1, s))
    d = np.clip(np.round(image + seed + rng.normal(0, 0.4, (n, s))), -1, 1)
    e = stats.estimate(d)
    boot = stats.crossed_bootstrap_se(d, reps=1000)
    assert 0.75 < e.se / boot < 1.25


def test_an_interval_is_never_narrower_than_over_seeds_alone():
    rng = np.random.default_rng(0)
    d = (rng.random((2000, 3)) < 0.5).astype(float) - (rng.random((2000, 3)) < 0.47)
    e = stats.estimate(d)
    seeds_only = stats.estimate(d.mean(axis=0))
    assert e.low <= seeds_only.low and e.high >= seeds_only.high


def _cells(means, se=1.0, df=30.0):
    out = {}
    for k, m in means.items():
        half = float(stats.st.t.ppf(0.975, df)) * se
        out[k] = stats.Estimate(m, m - half, m + half, se, 0.2 * se, se, df, 3, 1000)   # images dominate
    return out


def test_one_chance_cell_among_sixteen_does_not_refute_but_a_strong_one_does():
    base = {f"cell {i}": 3.0 for i in range(15)}              # 15 cells with no clear sign either way
    chance = _cells({**{k: 0.5 for k in base}, "chance": -2.3})  # p ~ 0.03 alone: refutes without correction
    assert chance["chance"].high < 0
    assert stats.judge(chance, +1).verdict == stats.OPEN
    strong = _cells({**{k: 0.5 for k in base}, "strong": -6.0})
    j = stats.judge(strong, +1)
    assert j.verdict == stats.REFUTED and j.deciding.startswith("strong:")
    assert stats.judge(_cells({f"c{i}": 3.0 for i in range(16)}), +1).verdict == stats.HOLDS


def test_holm_matches_its_definition():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04, made monotone
    assert list(stats.holm(p)) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_claim_3c_can_fail_by_the_same_interval_rule():
    """SAM that loses more clean accuracy than AT: claim 3c must read "does not hold" (it used to compare
    point means and could only hold or stay unresolved)."""
    rows = []
    for s, w in zip((0, 1, 2), (-0.3, 0.1, 0.2)):
        rows.append({"label": "ST", "seed": s, "rho": None, "natural": 80 + w, **{f"paper_{t}": 40 + w for t in THREAT_NAMES}})
        for r in (0.1, 0.4):
            rows.append({"label": f"SAM rho={r:g}", "seed": s, "rho": r, "natural": 80 - 40 * r + w + 0.1 * s,
                         **{f"paper_{t}": 41 + w for t in THREAT_NAMES}})
        rows.append({"label": "AT L2 16/255", "seed": s, "rho": None, "natural": 79 + w - 0.1 * s,
                     **{f"paper_{t}": 60 + w for t in THREAT_NAMES}})
    c = next(c for c in tables.check_claims(pd.DataFrame(rows)) if c["id"] == "3c")
    assert c["verdict"] == "does not hold", c
    assert "rho 0.4 - L2 16/255" in c["deciding"]


def test_claim_2_is_judged_per_budget():
    """A larger rho that helps at L-inf 2/255 and hurts under L2 16/255 gets two verdicts, not one average."""
    rows = []
    for s, w in zip((0, 1, 2), (-0.3, 0.1, 0.2)):
        rows.append({"label": "ST", "seed": s, "rho": None, "natural": 80, **{f"paper_{t}": 40 for t in THREAT_NAMES}})
        for r in (0.05, 0.1, 0.2, 0.4):
            vals = {f"paper_{t}": 40 + w * (1 + r) for t in THREAT_NAMES}
            vals["paper_linf_2"] += 20 * r
            vals["paper_l2_16"] -= 20 * r
            rows.append({"label": f"SAM rho={r:g}", "seed": s, "rho": r, "natural": 80, **vals})
    v = {c["id"]: c["verdict"] for c in tables.check_claims(pd.DataFrame(rows)) if c["id"].startswith("2")}
    assert v["2 linf_2"] == "holds" and v["2 l2_16"] == "does not hold"
    assert set(v) == {f"2 {t}" for t in THREAT_NAMES}


def test_claim_2_corrects_for_its_four_budgets_in_both_directions():
    """Claim 2 gives four verdicts at once (one per budget), so Holm runs over the budgets: a slope whose own
    interval just excludes zero (p = 0.017, the cpu-long L2 16/255 cell) is not refuted beside three budgets
    with larger p-values, while a slope far from zero holds or does not hold as before."""
    import scipy.stats as st
    from lib.stats import HOLDS, OPEN, REFUTED, Estimate, judge_each

    def cell(mean, p, df=2):                     # an Estimate with two-sided p-value p over seeds alone
        se = abs(mean) / st.t.isf(p / 2, df)
        half = st.t.ppf(0.975, df) * se
        return Estimate(mean, mean - half, mean + half, se, se, 0.0, df, df + 1, 1)
    cells = {"a": cell(5.7, 0.053), "b": cell(17.3, 0.0028), "c": cell(-4.1, 0.017), "d": cell(1.3, 0.2)}
    assert cells["c"].high < 0 and abs(cells["c"].p_value() - 0.017) < 1e-6     # alone, it would not hold
    got = judge_each(cells, family="budgets")
    assert {k: j.verdict for k, j in got.items()} == {"a": OPEN, "b": HOLDS, "c": OPEN, "d": OPEN}
    assert "Holm p = 0.051 over 4 budgets" in got["c"].deciding      # 3 x 0.017: the second smallest
    strong = judge_each({**cells, "c": cell(-32.4, 0.0029)})
    assert strong["c"].verdict == REFUTED and strong["b"].verdict == HOLDS
    one = judge_each({"c": cells["c"]})                          # a family of one: no correction
    assert one["c"].verdict == REFUTED and "p = 0.017" in one["c"].deciding
    lone = judge_each({**cells, "b": Estimate(17.3, seeds=1)})    # no interval: not resolved, counted with p = 1
    assert lone["b"].verdict == OPEN and "(no interval)" in lone["b"].deciding


def test_a_correlation_over_configurations_does_not_grow_with_seeds():
    """Duplicating each configuration as extra seeds must not shrink the p-value: seeds are averaged first."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=8), rng.normal(size=8)
    groups = [f"cfg{i}" for i in range(8)]
    r1, p1, k1 = stats.config_spearman(x, y, groups)
    r3, p3, k3 = stats.config_spearman(np.tile(x, 3), np.tile(y, 3), groups * 3)
    assert (k1, k3) == (8, 8) and r3 == pytest.approx(r1) and p3 == pytest.approx(p1)
    naive = stats.st.spearmanr(np.tile(x, 3), np.tile(y, 3)).pvalue
    assert naive < p1                                           # what counting seeds as samples would claim


def test_a_cell_with_fewer_seeds_than_the_profile_says_so():
    e = stats.Estimate(1.2, 0.2, 2.2, seeds=2)
    assert e.text(seeds_expected=3) == "+1.2 [+0.2, +2.2] (2 of 3 seeds)"
    assert e.text(seeds_expected=2) == "+1.2 [+0.2, +2.2]"
    assert stats.Estimate(1.2, seeds=1).text(seeds_expected=3) == "+1.2 (1 of 3 seeds)"
    assert math.isnan(stats.Estimate(1.0).p_value())


def _committed_copy(tmp_path, pattern="cifar10-st-s1-cpu-*"):
    import shutil
    from pathlib import Path
    src = sorted((Path(__file__).resolve().parents[1] / "outputs" / "runs").glob(pattern))
    assert src, f"no committed run matches {pattern}"
    dst = tmp_path / src[0].name
    shutil.copytree(src[0], dst)
    return dst


@pytest.mark.parametrize("damage", ["truncate", "other weights", "wrong count"])
def test_a_damaged_record_is_an_error_naming_the_file(tmp_path, damage):
    """A truncated record once loaded ST seed 1 with NaN accuracies and no message, and every mean then
    dropped that seed. Each kind of damage must stop the reader with the file's name and what to do."""
    import json

    from lib import protocols, runs
    from lib.errors import SambookError
    run_dir = _committed_copy(tmp_path)
    path = run_dir / "eval" / "paper-nall.json"
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    else:
        rec = json.loads(text)
        if damage == "other weights":
            rec["weights_sha"] = "0" * 16
        else:
            rec["n"] = 100
        path.write_text(json.dumps(rec))
    run = runs.load_run(run_dir)
    with pytest.raises(SambookError, match="paper-nall.json") as e:
        tables.run_row(run)
    assert "git checkout" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SambookError, match="paper-nall.json"):
        protocols.evaluate_run(run, "paper", cached_only=True)


def test_the_committed_records_all_pass_the_checks():
    from pathlib import Path

    from lib import protocols, runs
    folders = [d for d in sorted((Path(__file__).resolve().parents[1] / "outputs" / "runs").iterdir())
               if (d / "metrics.json").exists()]
    assert folders
    assert sum(len(protocols.evaluations(runs.load_run(d))) for d in folders) >= len(folders)


def test_the_p_value_matches_the_interval():
    """p < 0.05 exactly when the 95 % interval excludes the margin, whichever bound (seeds alone, or both
    components) set the interval's width."""
    rng = np.random.default_rng(5)
    for shift in np.linspace(-0.08, 0.08, 17):
        for n in (200, 2000):
            d = (rng.random((n, 3)) < 0.5 + shift).astype(float) - (rng.random((n, 3)) < 0.5)
            d[:, 0] += rng.normal(0, 0.02)                      # some seed spread
            e = stats.estimate(d)
            for margin in (0.0, -1.0, 2.0):
                excluded = e.low > margin or e.high < margin
                assert (e.p_value(margin) < 0.05) == excluded, (shift, n, margin, e)


def test_tables_say_how_many_seeds_stand_behind_a_row():
    """Table 2 carries each row's seed count; chapter 5's versus table says "2 of 3 seeds" where one is missing."""
    rows = []
    for s in (0, 1, 2):
        rows += [{"label": "ST", "seed": s, "profile": "cpu", "natural": 70 + s,
                  **{f"paper_{t}": 40 + s for t in THREAT_NAMES}},
                 {"label": "AT L-inf 1/255", "seed": s, "profile": "cpu", "natural": 68 + s / 2,
                  **{f"paper_{t}": 55 + s if s < 2 else float("nan") for t in THREAT_NAMES}}]
    df = pd.DataFrame(rows)
    t = tables.flat_comparison(tables.comparison_table(df[~((df["label"] == "ST") & (df["seed"] > 0))]))
    assert t.loc["ST", "seeds"] == 1 and t.loc["AT L-inf 1/255", "seeds"] == 3
    wide = tables.versus_table(tables.versus(df, "ST", {"paper_linf_1": "L-inf 1/255"}))
    assert wide.loc["AT L-inf 1/255", "L-inf 1/255"].endswith("(2 of 3 seeds)")


def test_a_run_without_the_paper_evaluation_is_an_error_naming_it(tmp_path):
    """Every table rests on the paper protocol: a committed run without it must stop the reader, not enter
    the means as a row of NaN."""
    from lib import runs
    from lib.errors import SambookError
    run_dir = _committed_copy(tmp_path)
    for f in (run_dir / "eval").glob("paper-*.json"):
        f.unlink()
    with pytest.raises(SambookError, match="no evaluation under the paper protocol") as e:
        tables.run_row(runs.load_run(run_dir))
    assert str(run_dir) in str(e.value)


def test_claims_by_scale_never_shows_nan_where_a_scale_has_fewer_cells():
    rows = []
    for s in (0, 1, 2):
        rows.append({"label": "ST", "seed": s, "natural": 70 + s, **{f"paper_{t}": 40 + s for t in THREAT_NAMES}})
        for r in (0.1, 0.4):
            rows.append({"label": f"SAM rho={r:g}", "seed": s, "rho": r, "natural": 69 + s,
                         **{f"paper_{t}": 41 + s + r for t in THREAT_NAMES}})
    full = pd.DataFrame(rows)
    one_radius = full[full["label"] != "SAM rho=0.4"]           # claim 2 needs two radii: no per-budget rows
    table = tables.claims_by_scale({"short": full, "long": one_radius})
    assert not table.isna().any().any()
    assert (table.filter(like="long: verdict").iloc[:, 0].loc[lambda v: v.index.str.contains(" at ")]
            == "not resolved at this scale").all()
    # one row per claim: claim 2's single "needs two radii" row at the long scale fans out over the budgets,
    # never a second, generic row beside the per-budget ones
    assert table.index.is_unique and sum(t.startswith("2.") for t in table.index) == len(THREAT_NAMES)
    assert (table.loc[lambda d: d.index.str.startswith("2."), "long: deciding"] == "needs two or more SAM radii").all()


def test_a_claim_judged_on_part_of_the_grid_says_so():
    """cpu-long with one SAM radius trained: claim 1a judged on its 4 cells must say "4 of 16"; the cpu-style
    frame with every radius says nothing of the kind."""
    def frame(radii, profile):
        rows = []
        for s in (0, 1, 2):
            rows.append({"label": "ST", "seed": s, "rho": None, "profile": profile, "natural": 80 + 0.1 * s,
                         **{f"paper_{t}": 40 + 0.1 * s for t in THREAT_NAMES}})
            for r in radii:
                rows.append({"label": f"SAM rho={r:g}", "seed": s, "rho": r, "profile": profile,
                             "natural": 80 + (0.2, -0.1, 0.3)[s], **{f"paper_{t}": 45 + (0.2, -0.1, 0.3)[s] + r
                                                                      for t in THREAT_NAMES}})
        return pd.DataFrame(rows)
    part = {c["id"]: c for c in tables.check_claims(frame((0.4,), "cpu-long"))}
    assert part["1a"]["verdict"] == "holds"
    assert part["1a"]["coverage"] == "4 of 16 cells" and "on 4 of the grid's 16 cells (SAM rho 0.4" in part["1a"]["deciding"]
    assert part["1b"]["coverage"] == "1 of 4 cells"
    full = {c["id"]: c for c in tables.check_claims(frame((0.05, 0.1, 0.2, 0.4), "cpu-long"))}
    assert "coverage" not in full["1a"] and "grid's" not in full["1a"]["deciding"]
    assert "coverage" not in full["2 linf_2"]
    two = {c["id"]: c for c in tables.check_claims(frame((0.1, 0.4), "cpu-long"))}
    assert two["2 linf_2"]["coverage"] == "2 of 4 radii"


def test_a_model_with_one_seed_waits_beside_the_verdict_instead_of_blocking_it():
    """cpu-long with SAM 0.1 and 0.4 at three seeds and SAM 0.05 (and an AT) at one: the claims are judged on
    the models with two seeds or more and name the one-seed models as not judged yet; before, any cell
    without an interval turned the whole claim "not resolved"."""
    rows = []
    for s in (0, 1, 2):
        rows.append({"label": "ST", "seed": s, "rho": None, "profile": "cpu-long", "natural": 80 + 0.1 * s,
                     **{f"paper_{t}": 40 + 0.1 * s for t in THREAT_NAMES}})
        for r in (0.1, 0.4) + ((0.05,) if s == 0 else ()):
            rows.append({"label": f"SAM rho={r:g}", "seed": s, "rho": r, "profile": "cpu-long",
                         "natural": 80 + (0.2, -0.1, 0.3)[s],
                         **{f"paper_{t}": 45 + (0.2, -0.1, 0.3)[s] + (10, 12, 9)[s] * r for t in THREAT_NAMES}})
        rows.append({"label": "AT L-inf 2/255", "seed": s, "rho": None, "profile": "cpu-long",
                     "natural": 70 + (0.3, -0.2, 0.1)[s], **{f"paper_{t}": 60 + (0.3, -0.2, 0.1)[s] for t in THREAT_NAMES}})
    rows.append({"label": "AT L2 32/255", "seed": 0, "rho": None, "profile": "cpu-long", "natural": 72,
                 **{f"paper_{t}": 58 for t in THREAT_NAMES}})
    claims = {c["id"]: c for c in tables.check_claims(pd.DataFrame(rows))}
    for cid in ("1a", "1b", "2 linf_2", "3a", "3b", "3c"):
        assert claims[cid]["verdict"] == "holds", (cid, claims[cid]["deciding"])
    assert claims["1a"]["coverage"] == "8 of 16 cells"
    assert "not judged yet: SAM rho 0.05 (1 of 3 seeds)" in claims["1a"]["deciding"]
    assert "AT L2" not in claims["1a"]["deciding"]
    assert claims["2 linf_2"]["coverage"] == "2 of 4 radii"
    assert "not judged yet: AT L2 32/255 (1 of 3 seeds)" in claims["3a"]["deciding"]
    assert "SAM rho 0.05" in claims["3c"]["deciding"] and "AT L2 32/255" in claims["3c"]["deciding"]
    # every model at one seed: nothing to judge on, and the claims say there is no interval
    one = pd.DataFrame([r for r in rows if r["seed"] == 0])
    assert all(c["verdict"] == "not resolved at this scale" for c in tables.check_claims(one))


def test_an_interval_over_images_alone_is_the_t_interval_of_the_per_image_means():
    rng = np.random.default_rng(5)
    d = (rng.random((200, 2)) < 0.3).astype(float) - (rng.random((200, 2)) < 0.2).astype(float)
    e = stats.images_only(d)
    per_image = 100 * d.mean(axis=1)
    lo, hi = stats.st.t.interval(0.95, 199, loc=per_image.mean(), scale=stats.st.sem(per_image))
    assert e.mean == pytest.approx(per_image.mean()) and (e.low, e.high) == (pytest.approx(lo), pytest.approx(hi))
    assert e.covers.startswith("test images only") and e.seeds == 2 and e.images == 200
    assert e.p_value() < 0.05 if (lo > 0 or hi < 0) else e.p_value() >= 0.05
    assert not stats.images_only(np.ones((1, 3))).resolved          # one image: no interval


def _gain_frame(n=200, seeds=(0, 1), broken_only_sam=10, aa_seeds=(0, 1)):
    """ST and SAM rho=0.4, paper-protocol masks on n images and AutoAttack masks on the first n // 2; AutoAttack
    breaks what the paper protocol broke plus ``broken_only_sam`` more of SAM's images (none more of ST's)."""
    rng = np.random.default_rng(9)
    rows = []
    for s in seeds:
        st_ok, sam_ok = rng.random(n) < 0.3, rng.random(n) < 0.5
        for lab, ok in (("ST", st_ok), ("SAM rho=0.4", sam_ok)):
            row = {"label": lab, "seed": s, "natural": 90.0, "paper_linf_2": 100 * ok.mean(), "ok_paper_linf_2": ok}
            if s in aa_seeds:
                aa = ok[: n // 2].copy()
                if lab.startswith("SAM"):
                    aa[np.flatnonzero(aa)[:broken_only_sam]] = False
                row |= {"autoattack_linf_2": 100 * aa.mean(), "ok_autoattack_linf_2": aa}
            rows.append(row)
    return pd.DataFrame(rows)


def test_sam_minus_st_under_autoattack_finds_a_gain_the_paper_protocol_overstated():
    g = tables.autoattack_gains(_gain_frame(), threats=["linf_2"])
    assert len(g) == 1
    r = g.iloc[0]
    assert (r["method"], r["seeds"], r["images"], r["attack"]) == ("SAM rho=0.4", 2, 100, "autoattack")
    # 10 images broken only by AutoAttack, at each of two seeds, on 100 images: 10 points less gain
    assert r["AutoAttack minus paper"].mean == pytest.approx(-10.0)
    assert r["AutoAttack minus paper"].high < 0 and r["covers"].startswith("test images only")
    assert r["paper protocol"].mean - r["AutoAttack"].mean == pytest.approx(10.0)
    assert "overstated" in tables.autoattack_gain_sentence(g)
    # the same attack everywhere: no change, and the sentence says so
    same = tables.autoattack_gains(_gain_frame(broken_only_sam=0), threats=["linf_2"])
    assert same.iloc[0]["AutoAttack minus paper"].mean == 0 and "same difference" in tables.autoattack_gain_sentence(same)


def test_autoattack_gains_use_only_seeds_where_both_models_were_attacked():
    g = tables.autoattack_gains(_gain_frame(aa_seeds=(1,)), threats=["linf_2"])
    assert g.iloc[0]["seeds"] == 1
    none = tables.autoattack_gains(_gain_frame(aa_seeds=()), threats=["linf_2"])
    assert none.empty and "not known here" in tables.autoattack_gain_sentence(none)
    assert tables.autoattack_gains_table(none).empty


def test_a_run_still_being_evaluated_here_is_left_out_of_a_committed_book_but_a_committed_one_is_an_error(
        tmp_path, monkeypatch):
    """A run trained on this machine whose evaluations are still running has weights and no paper record: the
    book of committed results (make book PROFILE=cpu-long beside a training lane) lists it as missing instead of
    stopping. A run without weights (as committed) and without the paper record is still an error."""
    from lib import report, runs
    from lib.errors import SambookError
    root = tmp_path / "runs"
    run_dir = _committed_copy(root)
    monkeypatch.setenv("SAMBOOK_RUNS", str(root))
    for f in (run_dir / "eval").glob("paper-*.json"):
        f.unlink()
    (run_dir / runs.MODEL).write_bytes(b"weights of a run being evaluated")
    found, missing = report.results_for("cpu", "core", seeds=[1])
    assert run_dir.name.startswith(next(n for n in missing if n.startswith("cifar10-st-s1")))
    assert all(r.path != run_dir for r in found)
    (run_dir / runs.MODEL).unlink()
    found, _ = report.results_for("cpu", "core", seeds=[1])
    mine = [r for r in found if r.path == run_dir]
    assert mine
    with pytest.raises(SambookError, match="no evaluation under the paper protocol"):
        tables.run_row(mine[0])


def test_outcomes_on_different_images_or_orders_are_never_paired():
    """Per-example outcomes are subtracted image by image: a run whose record lists its test images in another
    order (another labels digest) is an error naming it, never a silently scrambled difference."""
    df = _mask_frame(200)
    df["run"] = [f"{lab}-s{s}" for lab, s in zip(df["label"], df["seed"])]
    df["images_natural"] = "aaaa"
    assert tables.paired(df, "SAM rho=0.1", "ST", "natural").seeds == 3
    df.loc[(df["label"] == "ST") & (df["seed"] == 1), "images_natural"] = "bbbb"
    with pytest.raises(SambookError, match=r"different test images or orders.*bbbb: ST-s1"):
        tables.paired(df, "SAM rho=0.1", "ST", "natural")


def _contrast(rng, n, delta, seed_sd=0.01):
    """An images x 3 seeds paired contrast (0/1 outcomes of two models) whose expectation is ``delta``."""
    a = (rng.random((n, 3)) < 0.5 + delta).astype(float)
    b = (rng.random((n, 3)) < 0.5).astype(float)
    return a - b + rng.normal(0, seed_sd, 3)[None, :]


def test_a_change_between_two_lengths_adds_both_noises_and_keeps_its_coverage():
    """lib.stats.change (how SAM - ST moved between two training lengths): its mean is the difference, its
    interval mirrors when the two are swapped, its p-value agrees with its interval, it is wider than either
    side's, and over independent replicates with a known change it covers the truth at least 95 % of the
    time (it may err wide, never narrow)."""
    rng = np.random.default_rng(11)
    a, b = stats.estimate(_contrast(rng, 2000, 0.00)), stats.estimate(_contrast(rng, 10000, 0.08))
    e, back = stats.change(a, b), stats.change(b, a)
    assert e.mean == pytest.approx(b.mean - a.mean)
    assert (e.low, e.high) == pytest.approx((-back.high, -back.low))
    assert e.high - e.low > max(a.high - a.low, b.high - b.low)
    assert (e.p_value() < 0.05) == (e.low > 0 or e.high < 0)
    assert not stats.change(a, stats.Estimate(3.0, seeds=1)).resolved       # one seed at one end: no interval
    truth, covered, reps = 2.0, 0, 400
    for _ in range(reps):
        e = stats.change(stats.estimate(_contrast(rng, 400, 0.0, seed_sd=0.02)),
                         stats.estimate(_contrast(rng, 400, truth / 100, seed_sd=0.02)))
        covered += e.low <= truth <= e.high
    assert covered / reps >= 0.95, covered / reps


def test_the_gap_moves_with_length_only_by_the_holm_rule():
    """tables.gap_change_by_length: per rho and column, the shortest length against the longest; a large
    change is read as SAM gaining (or losing) ground, one that clears its own interval but not Holm's
    correction over the cells is "no change shown", and a one-seed end has no interval."""
    def row(rho, col, epochs, mean, se, seeds=3, images=2000):
        lo, hi = (mean - 4.3 * se, mean + 4.3 * se) if seeds > 1 else (math.nan, math.nan)
        return {"rho": rho, "column": col, "epochs": epochs, "mean": mean, "low": lo, "high": hi, "se": se,
                "se_seed": se, "se_image": 0.0, "df": 2.0, "seeds": seeds, "images": images}
    rows = [row(0.4, "Natural", 2, -15.0, 0.3), row(0.4, "Natural", 10, -3.0, 0.3),       # moved: +12
            row(0.4, "Linf 2/255", 2, 8.0, 0.3), row(0.4, "Linf 2/255", 10, 4.0, 0.3),    # moved: -4
            row(0.1, "Natural", 2, -1.0, 0.3), row(0.1, "Natural", 6, 0.0, 0.3, seeds=1),
            row(0.1, "Natural", 10, 0.2, 0.3)]                                           # within noise
    rows += [row(0.1, f"L2 {k}/255", e, m, 0.3) for k in (16, 32) for e, m in ((2, 0.0), (10, 2.3))]
    got = {(r["rho"], r["column"]): r for r in tables.gap_change_by_length(rows)}
    assert {(k, r["from"], r["to"]) for k, r in got.items()} == {(k, 2, 10) for k in got}
    assert got[(0.4, "Natural")]["word"] == "SAM gained on ST"
    assert got[(0.4, "Linf 2/255")]["word"] == "SAM lost ground"
    assert got[(0.1, "Natural")]["word"] == "no change shown"
    # +2.3 clears its own 95 % interval (p < 0.05) but not Holm over the five cells
    l2 = got[(0.1, "L2 16/255")]
    assert l2["change"].low > 0 and l2["p"] < 0.05 <= l2["p_holm"] and l2["word"] == "no change shown"
    one = tables.gap_change_by_length([row(0.4, "Natural", 2, -15.0, 0.3), row(0.4, "Natural", 10, -3.0, 0, seeds=1)])
    assert one[0]["word"] == "no interval" and not one[0]["change"].resolved


def test_a_ratio_interval_stays_positive_and_treats_a_ratio_and_its_inverse_alike():
    """Time ratios (claim 4) get a geometric mean and a t interval on the log scale: never below zero even
    where the ratios spread widely, and the interval of the inverses is the inverse of the interval."""
    r = stats.ratio_interval([1.0, 1.05, 2.65])
    assert 0 < r.low < r.mean < r.high and r.seeds == 3
    assert math.isclose(r.mean, (1.0 * 1.05 * 2.65) ** (1 / 3))
    inv = stats.ratio_interval([1 / 1.0, 1 / 1.05, 1 / 2.65])
    assert math.isclose(inv.low, 1 / r.high) and math.isclose(inv.high, 1 / r.low)
    assert not stats.ratio_interval([2.0]).resolved                          # one seed: no interval
    for bad in ([2.0, float("nan")], [2.0, 0.0]):
        with pytest.raises(ValueError, match="positive and finite"):
            stats.ratio_interval(bad)
