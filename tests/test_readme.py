"""README.md's answer is generated from the committed runs (``make readme``, :mod:`lib.readme`): the block
between its markers and the headline figure must be what the runs give today."""
from __future__ import annotations

import os
import re

import pytest

from lib import paths, readme
from lib.errors import SambookError


@pytest.fixture(scope="module")
def generated():
    """(block, rows, scale) regenerated from the committed runs, once for the module."""
    return readme.block()


def test_the_readme_result_block_agrees_with_the_committed_runs(generated):
    new, rows, scale = generated
    assert scale is not None and rows, "no committed profile holds ST and SAM at every seed"
    now = readme.current_block(readme.readme_path().read_text())
    assert now == new, "README.md's result block disagrees with the committed runs: run `make readme`"


def test_the_headline_figure_is_small_committed_and_drawn_from_the_same_numbers(generated):
    _, rows, _ = generated
    fig = readme.figure_path()
    assert fig.exists() and fig.stat().st_size < 100_000, fig
    assert readme.figure_digest(fig) == readme.data_digest(rows), \
        f"{readme.FIGURE_REL} was drawn from other numbers than the committed runs': run `make readme`"
    assert readme.FIGURE_REL in readme.current_block(readme.readme_path().read_text())


def test_the_block_has_one_line_per_claim_with_its_verdict(generated):
    from lib import tables
    new, _, scale = generated
    df, _ = readme.committed_frame(scale)
    claims = tables.check_claims(df, readme.MEASURE)
    verdicts = new.split("<details>")[0]            # the rules table follows, folded
    table = [line for line in verdicts.splitlines() if line.startswith("| ") and not line.startswith("| claim |")]
    assert len(table) == len(claims)
    for line, c in zip(table, claims):
        assert c["verdict"] in line and readme.deciding(c) in line


def _link_runs(src_root, dst, profile, labels, seeds):
    """Symlink the committed run folders of ``profile`` whose config has one of ``labels`` and a seed in
    ``seeds`` into ``dst``: a committed-results folder with only those runs."""
    from lib import runs
    from lib.config import grid
    configs = [c for c in grid("core", profile) if c.label in labels and c.seed in seeds]
    for c, r in zip(configs, runs.finished_runs(configs, runs_root=src_root)):
        if r is not None:
            os.symlink(r.path, dst / r.path.name)


def test_the_scale_is_the_most_real_profile_with_st_and_sam_at_every_seed(tmp_path):
    from lib.config import profile
    seeds = profile("cpu").seeds
    root = paths.committed_runs_root()
    full = tmp_path / "full"
    full.mkdir()
    _link_runs(root, full, "cpu", {"ST", "SAM rho=0.4"}, set(seeds))
    assert readme.has_st_and_sam("cpu", full) and readme.headline_scale(full) == "cpu"
    short = tmp_path / "short"          # ST lacks the last seed: no profile qualifies
    short.mkdir()
    _link_runs(root, short, "cpu", {"ST"}, set(seeds[:-1]))
    _link_runs(root, short, "cpu", {"SAM rho=0.4"}, set(seeds))
    assert not readme.has_st_and_sam("cpu", short) and readme.headline_scale(short) is None
    new, rows, scale = readme.block(short)
    assert scale is None and rows == [] and "No committed runs" in new


def test_the_deciding_number_falls_back_to_the_evidence():
    assert readme.deciding({"verdict": "holds", "deciding": "x: +1.0 [+0.5, +1.5]", "evidence": "e"}) == \
        "x: +1.0 [+0.5, +1.5]"
    ev = "a: +2.0 [+1.0, +3.0]; b: +1.0 [+0.2, +1.8]; c: -4.0 [-5.0, -3.0]"
    assert readme.deciding({"verdict": "holds", "evidence": ev}) == "c: -4.0 [-5.0, -3.0]"
    assert readme.deciding({"verdict": "does not hold", "evidence": ev}) == "c: -4.0 [-5.0, -3.0]"
    assert readme.deciding({"verdict": "holds", "evidence": ev.rsplit("; ", 1)[0]}) == "b: +1.0 [+0.2, +1.8]"
    assert readme.deciding({"verdict": "not resolved at this scale", "evidence": "needs runs"}) == "needs runs"


def test_a_readme_without_markers_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(SambookError, match="README.md has no result block"):
        readme.current_block("# a README\n")
    fake = tmp_path / "README.md"
    fake.write_text("# a README without the markers\n")
    monkeypatch.setattr(readme, "readme_path", lambda: fake)
    assert readme.main(["--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: README.md has no result block") and err.count("\n") == 1
    assert readme.main(["--nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_site_opens_with_the_readme_summary():
    text = readme.summary_markdown("_static/headline.png")
    assert text.startswith("This is a course") and "_static/headline.png" in text
    assert readme.BEGIN in text and readme.FIGURE_REL not in text


def test_only_run_folders_git_tracks_count(tmp_path):
    """A run folder beside the committed ones that git does not track (a run still training or evaluating,
    or one not committed yet) is not read: the block stays what every clone of the commit gives."""
    import shutil
    import subprocess
    from lib import runs
    from lib.config import grid
    configs = [c for c in grid("core", "cpu") if c.label == "ST"][:2]
    found = runs.finished_runs(configs, runs_root=paths.committed_runs_root())
    assert all(r is not None for r in found)
    root = tmp_path / "runs"
    for r in found:
        shutil.copytree(r.path, root / r.path.name, ignore=shutil.ignore_patterns("*.pt", ".lock"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", f"runs/{found[0].path.name}"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "one run"], check=True)
    got = readme._committed(configs, root)
    assert got[0] is not None and got[0].path.name == found[0].path.name and got[1] is None
    subprocess.run(git + ["add", "runs"], check=True)      # tracked once added (git ls-files lists the index)
    assert all(r is not None for r in readme._committed(configs, root))


def test_the_verdict_sentence_names_what_moved_and_what_is_not_judged_yet():
    import pandas as pd
    from lib.attacks import THREAT_NAMES

    def frame(profile, sam_gain, radii):
        rows = []
        for s, w in zip((0, 1, 2), (0.2, -0.1, 0.3)):
            rows.append({"label": "ST", "seed": s, "rho": None, "profile": profile, "natural": 80,
                         **{f"paper_{t}": 40 for t in THREAT_NAMES}})
            for r in radii:
                rows.append({"label": f"SAM rho={r:g}", "seed": s, "rho": r, "profile": profile,
                             "natural": 80 + sam_gain + w, **{f"paper_{t}": 40 + sam_gain + w for t in THREAT_NAMES}})
        return pd.DataFrame(rows)
    text = readme.verdict_moves(frame("cpu", -10, (0.1, 0.4)), frame("cpu-long", +5, (0.4,)))
    assert "1a does not hold → holds (4 of 16 cells)" in text and "1b does not hold → holds (1 of 4 cells)" in text
    assert "until its runs are trained: 2, 3a, 3b, 3c" in text
    same = readme.verdict_moves(frame("cpu", -10, (0.1, 0.4)), frame("cpu-long", -10, (0.1, 0.4)))
    assert "none changed; unchanged: 1a, 1b" in same
    assert "2 at L-inf 2/255" in same and "linf_2" not in same          # a reader's budget, not a column name


def test_the_length_sentence_walks_every_committed_length_of_the_axis():
    """The README's sentence on training length reads the training-length axis too, not only its ends: every
    length at which ST and SAM rho 0.1 are both committed appears, in order, with its interval (or, where one
    seed gives none, the seeds it rests on)."""
    from lib import tables
    from lib.config import grid
    axis = [r for r in readme._committed(grid("length", "cpu-long")) if r is not None]
    if not axis:
        pytest.skip("no committed run of the training-length axis")
    df = tables.results_frame(axis)
    lengths = sorted(set(df[df["label"] == "ST"]["epochs"]) & set(df[df["label"] == "SAM rho=0.1"]["epochs"]))
    text = "\n".join(readme.length_sentence("cpu-long"))
    rho01 = text.split("rho 0.1 clean: ")[1].split(";")[0]
    said = [int(e) for e in re.findall(r"after (\d+)", rho01)]
    assert said == sorted({2, 10, *lengths}), (said, lengths)
    # every length with its interval, or the seeds it rests on where one seed gives none
    # (an interval, an interval and "(2 of 3 seeds)", or "(1 of 3 seeds)" alone)
    cells = re.findall(r"[+-]\d+\.\d( \[[^\]]+\])?( \(\d+ of \d+ seeds\))? after \d+", rho01)
    assert len(cells) == len(said) and all(any(c) for c in cells), rho01


def test_the_length_lead_takes_the_largest_radius_with_intervals_at_both_ends():
    """The paragraph's lead gives SAM - ST at the two ends of the length axis for one radius: the largest whose
    four end cells (clean and L-inf 2/255, shortest and longest) all have an interval, not a one-seed cell."""
    from lib import tables
    from lib.stats import Estimate
    lin = tables.COLUMN_LABELS["linf_2"]

    def e(m, seeds=3):
        return Estimate(m, m - 1, m + 1, seeds=seeds) if seeds > 1 else Estimate(m, float("nan"), float("nan"), seeds=1)
    ends = {(0.1, "Natural"): (e(-2.0), e(-0.1)), (0.1, lin): (e(1.6), e(4.1)),
            (0.4, "Natural"): (e(-15.8), e(-3.0, seeds=1)), (0.4, lin): (e(6.6), e(8.4, seeds=1))}
    text = readme._length_lead(ends, 2, 10, 3)
    assert "at rho 0.1 went from -2.0 [-3.0, -1.0] to -0.1 [-1.1, +0.9] in clean accuracy" in text, text
    assert "from +1.6 [+0.6, +2.6] to +4.1 [+3.1, +5.1] at L-inf 2/255" in text and "rho 0.4" not in text
    ends[0.4, "Natural"] = (e(-15.8), e(-3.0))
    ends[0.4, lin] = (e(6.6), e(8.4, seeds=2))
    assert "at rho 0.4 went from -15.8 [-16.8, -14.8] to -3.0 [-4.0, -2.0] in clean" in readme._length_lead(ends, 2, 10, 3)
    assert "+8.4 [+7.4, +9.4] (2 of 3 seeds) at L-inf 2/255" in readme._length_lead(ends, 2, 10, 3)


def test_the_runs_table_lists_every_committed_run_of_the_long_scale_with_its_cost():
    """REPRODUCING.md's generated block: one row per committed cpu-long run, its clean accuracy the paper
    record's, its seconds from the run's own records; and check() notices a stale block."""
    from lib import runs
    from lib.config import grid
    text = readme.runs_table()
    assert text.startswith(readme.RUNS_BEGIN) and text.endswith(readme.RUNS_END)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| run |")]
    configs = grid("core", readme.RUNS_PROFILE) + grid("length", readme.RUNS_PROFILE)
    found = [r for r in readme._committed(configs) if r is not None]
    assert len(rows) == len(found) > 0
    header = text.splitlines()[2]
    assert header.count("|") == text.splitlines()[3].count("|") == rows[0].count("|")
    r = found[0]
    assert any(f"{r.metrics['train_seconds']:,.0f}" in line and f" {r.config.seed} " in line for line in rows)
    assert readme._runs_block(readme.reproducing_path().read_text()) == text, "run `make readme`"


def test_the_short_answer_sorts_each_cell_by_its_interval():
    """The README's plain-words answer puts a budget under "raised" only when its interval lies above zero,
    under "lowered" only when below, and under "no measurable difference" otherwise (a one-seed cell too,
    with its seed count); clean accuracy likewise; AT's cells come from claim 3b."""
    from lib.stats import Estimate

    def row(col, mean, low, high, seeds=3):
        return {"rho": 0.4, "column": col, "mean": mean, "low": low, "high": high, "seeds": seeds}
    nan = float("nan")
    rows = [row("Natural", -3.0, -3.5, -2.5), row("Linf 1/255", 2.0, -0.5, 4.5), row("Linf 2/255", 8.0, 7.0, 9.0),
            row("L2 16/255", -2.0, -3.0, -1.0), row("L2 32/255", 5.0, nan, nan, seeds=1)]
    claims = [{"id": "3b", "cells": {"L-inf 2/255": Estimate(30.0, nan, nan, seeds=1)}}]
    text = readme.in_short(rows, claims, seeds_expected=3)
    assert "raised robust accuracy at L-inf 2/255 (most at L-inf 2/255: +8.0 [+7.0, +9.0] points)" in text, text
    assert "lowered it at L2 16/255 (L2 16/255: -2.0 [-3.0, -1.0])" in text, text
    assert "made no measurable difference at L-inf 1/255 and L2 32/255" in text, text
    assert "cost clean accuracy (-3.0 [-3.5, -2.5])" in text, text
    assert "+30.0 (1 of 3 seeds) points for AT trained at L-inf 2/255" in text, text
    # a radius with one seed so far is not described as "no measurable difference"
    one = [dict(r, rho=0.05, low=nan, high=nan, seeds=1) for r in rows]
    text = readme.in_short(rows + one, claims, seeds_expected=3)
    assert "SAM with rho 0.05 has no interval yet (1 of 3 seeds trained)" in text, text
    # the same cells all inside their noise: nothing raised, nothing lowered, clean unchanged
    flat = [dict(r, low=-abs(r["mean"]) - 1, high=abs(r["mean"]) + 1, seeds=3) for r in rows]
    text = readme.in_short(flat, [], seeds_expected=3)
    assert "raised" not in text and "lowered" not in text and "Adversarial training" not in text, text
    assert "made no measurable difference to robust accuracy at L-inf 1/255, L-inf 2/255, L2 16/255 and L2 32/255" \
        in text and "did not measurably change clean accuracy" in text, text


def test_the_readme_stays_a_page():
    """README.md is the answer, the two commands and links: at most 100 lines, the generated block included
    (the rules table folds away under <details>)."""
    lines = (paths.REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 100, len(lines)


def test_the_first_page_answers_at_every_scale_with_committed_runs(tmp_path):
    """The site's first page has a section for each profile whose runs are committed, the most real first
    (cpu-long before cpu), whichever profile its chapters were built from."""
    from lib import site
    from lib.config import grid
    scales = [s for s in ("cpu-long", "cpu") if any(r is not None for r in readme._committed(grid("core", s)))]
    if not scales:
        pytest.skip("no committed runs")
    (tmp_path / "fig").mkdir()
    page = site.index_page("smoke", [], tmp_path / "fig")
    at = [page.index(f"## At the {s} scale") for s in scales]
    assert at == sorted(at), scales
