"""The HTML site, built offline and checked in a real browser (headless Chromium through selenium).

Two sites are built. The smoke site comes from nbval's expectation notebooks (tests/notebooks:
executed smoke chapters, their unchecked cells empty), so no smoke chapter runs here. The cpu site
comes from the cpu chapters executed here into a temporary outputs folder: they read the committed
cpu-profile results and train nothing (about a minute), so chapter 4 has its figures and tables on
any fresh clone. The browser loads each site's first page and chapter 4 from disk and checks that
every image has loaded, every internal link resolves, math is rendered and the console shows no
error; screenshots go to outputs/screenshots/ (cpu_index.png and cpu_04_tables.png are the ones
that show results). Chromium and ChromeDriver come from the distribution (.ci/run installs them).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from lib import paths

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx")
    from lib import site as S
    out = tmp_path_factory.mktemp("site")
    index = S.build("smoke", notebooks_dir=_notebooks(), out_root=out)
    return index


@pytest.fixture(scope="module")
def cpu_site(tmp_path_factory):
    """The cpu chapters executed from the committed results into a temporary outputs folder, and their site."""
    pytest.importorskip("sphinx")
    from lib import site as S
    out = tmp_path_factory.mktemp("cpu-book")
    env = {**os.environ, "SAMBOOK_OUTPUTS": str(out)}
    env.pop("SAMBOOK_RUNS", None)
    p = subprocess.run([sys.executable, "-m", "lib.book", "--profile", "cpu", "--no-site"], cwd=paths.REPO_ROOT,
                       env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not (out / "runs").exists() or not any((out / "runs").iterdir()), "the cpu book trained something"
    return S.build("cpu", notebooks_dir=out / "notebooks" / "cpu", out_root=out)


def _notebooks():
    """The executed smoke chapters of `make book` when they are all there, else nbval's expectations
    (a fresh clone, CI): those keep the unchecked cells empty, so chapter 4 then has no figure."""
    executed = paths.outputs_root() / "notebooks" / "smoke"
    if all((executed / f"{c}.ipynb").exists() for c in
           ("01_theory", "02_mechanics", "03_training", "04_tables", "05_beyond")):
        return executed
    return paths.REPO_ROOT / "tests" / "notebooks"


def test_the_site_is_built_offline_with_the_chapters(site):
    root = site.parent
    assert site.exists() and (root / "search.html").exists()
    chapters = sorted(p.name for p in root.glob("0[1-5]_*.html"))
    assert chapters == ["01_theory.html", "02_mechanics.html", "03_training.html", "04_tables.html",
                        "05_beyond.html"]
    assert (root / "_static" / "mathjax" / "MathJax.js").exists()
    text = site.read_text()
    assert "cdn." not in text and "googleapis" not in text          # nothing fetched from the network
    assert "The question." in text and "04_tables.html" in text
    # the first page opens with the README's one-page summary and its headline figure
    assert text.index("This is a course") < text.index("The question.") and "headline.png" in text
    assert (root / "_static" / "headline.png").exists()
    ch4 = (root / "04_tables.html").read_text()
    assert "Ran on:" in ch4 and "toggle" in ch4.lower()             # the ran-on line; folded helper cells
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in root.rglob("*.html"))   # readable by a web server


def _internal_links(driver, here: Path) -> list[Path]:
    out = []
    for href in driver.execute_script("return Array.from(document.querySelectorAll('a[href]'))"
                                      ".map(a => a.getAttribute('href'))"):
        u = urlparse(href)
        if u.scheme in ("http", "https", "mailto", "javascript") or href.startswith("#"):
            continue
        out.append((here.parent / unquote(u.path)).resolve())
    return out


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Chromium and ChromeDriver are not installed "
                    "(apt-get install chromium chromium-driver)")
@pytest.mark.parametrize("which", ["smoke", "cpu"])
def test_first_page_and_chapter_4_in_a_real_browser(which, request):
    site = request.getfixturevalue("site" if which == "smoke" else "cpu_site")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1280,2000", "--allow-file-access-from-files"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    shots = paths.outputs_root() / "screenshots"
    prefix = "" if which == "smoke" else "cpu_"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for page in (site, site.parent / "04_tables.html"):
            driver.get(page.as_uri())
            driver.execute_script("return document.readyState")
            import time
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not driver.execute_script(
                    "return Array.from(document.images).every(i => i.complete) && "
                    "(!window.MathJax || !MathJax.Hub || MathJax.Hub.queue.pending === 0)"):
                time.sleep(0.2)
            images = driver.execute_script("return Array.from(document.images).map(i => [i.src, i.naturalWidth, i.alt])")
            if page.name == "index.html" or which == "cpu" or _notebooks().parent.name != "tests":
                assert images, f"{page.name}: no image"      # the headline figure; chapter 4's figures
            if which == "cpu" and page.name == "04_tables.html":
                assert len([i for i in images if "_images" in i[0]]) >= 3, f"cpu chapter 4: too few figures: {images}"
            broken = [src for src, w, _ in images if not w]
            assert not broken, f"{page.name}: images not loaded: {broken}"
            figures = [alt for src, w, alt in images if "_images" in src or "_static/headline" in src]
            assert all(alt for alt in figures), f"{page.name}: a figure without alt text"
            missing = [str(p) for p in _internal_links(driver, page) if not p.exists()]
            assert not missing, f"{page.name}: links that do not resolve: {missing[:5]}"
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, f"{page.name}: console errors: {errors[:3]}"
            if page.name == "04_tables.html":
                # typeset as the browser's own MathML: MathJax's HTML-CSS output, without its web fonts
                # (refused on file://), set inline math above the line
                assert driver.execute_script("return document.querySelectorAll('.MathJax_MathML math').length") > 0, \
                    "math was not rendered as MathML"
            driver.save_screenshot(str(shots / f"{prefix}{page.stem}.png"))
    finally:
        driver.quit()
    assert (shots / f"{prefix}index.png").exists() and (shots / f"{prefix}04_tables.png").exists()


def test_cpu_chapter_5_sets_the_committed_methods_beside_at_8(cpu_site):
    """Chapter 5 of the cpu book shows every committed run of chapter 5's grid and, beside them,
    AT L-inf 8/255 (a run of the paper's grid, which the cpu book reads but does not train): the rows
    of its table are exactly those committed runs, each the mean over as many seeds as are committed,
    with the PGD-20 column filled from their evaluations; its comparison with AT L-inf 8/255 pairs
    each method with AT at the seeds both have."""
    import pandas as pd
    from lib import runs
    from lib.config import grid
    out = cpu_site.parent.parent.parent                 # <outputs>/site/cpu/index.html
    table = pd.read_csv(out / "tables" / "05_beyond_cpu.csv", index_col=0)
    committed = [r for r in runs.finished_runs(grid("beyond", "cpu", seeds=[0]), runs_root=paths.committed_runs_root())
                 if r is not None]
    assert committed, "no run of chapter 5's methods is committed for the cpu profile"
    at8 = [c for c in grid("paper", "cpu", seeds=[0]) if c.label == "AT L-inf 8/255"]
    assert runs.finished_runs(at8, runs_root=paths.committed_runs_root())[0] is not None
    expected = {r.config.label for r in committed} | {"AT L-inf 8/255", "ST", "SAM rho=0.1", "AT L-inf 2/255"}
    assert set(table.index) == expected and len(table) == len(expected), list(table.index)
    pgd20 = table["L-inf 8/255 (PGD-20)"]
    assert pgd20.notna().all() and ((pgd20 >= 0) & (pgd20 <= 100)).all()
    everything = [r for r in runs.finished_runs(grid("beyond", "cpu") + grid("paper", "cpu"),
                                                runs_root=paths.committed_runs_root()) if r is not None]
    for label in expected:
        assert table.loc[label, "seeds"] == sum(r.config.label == label for r in everything), label
    assert (table["PGD-20 seeds"] >= 1).all() and (table["PGD-20 seeds"] <= table["seeds"]).all()
    versus = pd.read_csv(out / "tables" / "05_versus_at8_cpu.csv", index_col=0)
    assert set(versus.index) == expected - {"AT L-inf 8/255"}
    assert (versus["seeds"] <= table.loc["AT L-inf 8/255", "seeds"]).all() and (versus["seeds"] >= 1).all()


def test_cpu_table_2_shows_every_committed_run_of_the_paper_grid(cpu_site):
    """The cpu book trains the core grid, but its Table 2 has a row for every committed run of the paper's
    grid (AT L-inf 8/255 and the other AT budgets, where they exist) and of chapter 5's, each with our
    clean accuracy filled and, for the paper's models, the published value beside it."""
    import pandas as pd
    from lib import runs
    from lib.config import grid
    out = cpu_site.parent.parent.parent                 # <outputs>/site/cpu/index.html
    table = pd.read_csv(out / "tables" / "04_table2_cifar10_cpu.csv", index_col=0)
    rows = [str(i).split(" (paper ")[0] for i in table.index]
    assert len(rows) == len(set(rows)), rows
    root = paths.committed_runs_root()
    paper = {r.config.label for r in runs.finished_runs(grid("paper", "cpu"), runs_root=root) if r is not None}
    beyond = {r.config.label for r in runs.finished_runs(grid("beyond", "cpu"), runs_root=root) if r is not None}
    core = {c.label for c in grid("core", "cpu")}
    assert paper - core, "no committed run of the paper's grid outside the core grid (AT L-inf 8/255 was)"
    assert set(rows) == paper | beyond, sorted(set(rows) ^ (paper | beyond))
    assert table["Natural ours"].notna().all()
    for label in paper:
        assert not pd.isna(table.loc[table.index[rows.index(label)], "Natural paper"]) or label == "SAM rho=0.4"


def test_no_table_of_the_cpu_chapters_shows_nan(cpu_site):
    """A missing value (no published number for a method beyond the paper, no spread with one seed) is a
    blank cell in the rendered tables, not "NaN"."""
    pages = sorted(cpu_site.parent.glob("0[1-5]_*.html"))
    assert len(pages) == 5
    for page in pages:
        assert ">NaN<" not in page.read_text(), f"{page.name}: a table shows NaN for a missing value"


def test_cpu_claims_are_judged_again_under_stronger_attacks(cpu_site):
    """Chapter 4 of the cpu book judges each claim under three measures of robust accuracy (the paper's
    protocol on every test image, on the stronger protocols' subset, and the union of paper, converged and
    strong there); the claims that read only clean accuracy or time get one verdict under all three; the
    first page says which verdicts the stronger attacks change."""
    import pandas as pd
    from lib import tables
    out = cpu_site.parent.parent.parent
    by = pd.read_csv(out / "tables" / "04_claims_by_measure_cifar10_cpu.csv", index_col=0)
    assert list(by.columns) == [*tables.CLAIM_MEASURES.values(), "same"]
    claims = [str(c).split(".")[0] for c in by.index]
    assert claims == ["1a", "1b", "2", "2", "2", "2", "3a", "3b", "3c", "4"]      # claim 2 at each of four budgets
    verdicts = {"holds", "does not hold", "not resolved at this scale"}
    assert set(by[list(tables.CLAIM_MEASURES.values())].to_numpy().ravel()) <= verdicts
    for claim, row in by.iterrows():
        if str(claim).split(".")[0] in ("1b", "3a", "3c", "4"):
            assert row["same"] and row.iloc[:3].nunique() == 1, claim
    cells = pd.read_csv(out / "tables" / "04_sam_minus_st_by_measure_cpu.csv")
    assert len(cells) == 4 * 3 and set(cells["measure"]) == set(tables.CLAIM_MEASURES.values())
    assert "Judged again under stronger attacks" in cpu_site.read_text()
