"""The book's machinery: what nbval compares is visible and deliberate, the expectations hold nothing
machine-dependent, and ``make book`` writes only where git does not look."""
from __future__ import annotations

import shutil
import subprocess

import nbformat
import pytest

from lib import book, paths

UNCHECKED = paths.REPO_ROOT / "tests" / "nbval_unchecked.txt"


def _listed() -> list[str]:
    return [line.strip() for line in UNCHECKED.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_the_unchecked_cells_are_the_ones_listed():
    """Every cell nbval skips is named in tests/nbval_unchecked.txt, and nothing else is."""
    found = [f"{ch.stem}: {first}" for ch in book.list_chapters() for first in book.unchecked_cells(ch)]
    assert found == _listed()


def test_the_chapters_default_to_what_make_book_renders_without_a_gpu(monkeypatch):
    """Without a GPU, `make book` (PROFILE=auto) renders the committed results of the scale the README
    answers from (cpu-long), and a chapter opened in Jupyter has the same default in its parameters cell;
    smoke is asked for by name."""
    import jupytext
    import torch

    from lib import cli
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from lib import readme
    assert book.default_profile() == cli.resolve_profile("auto") == readme.headline_scale() == "cpu-long"
    for ch in book.list_chapters():
        params = [c for c in jupytext.read(ch).cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and params[0].source.startswith('PROFILE = "cpu-long"'), ch.name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.resolve_profile("auto") == "fast" and cli.resolve_profile("smoke") == "smoke"


def test_the_theory_chapter_is_compared_in_full():
    assert book.unchecked_cells(book.chapters_dir() / "01_theory.py") == []


@pytest.mark.parametrize("chapter", [c.stem for c in book.list_chapters()])
def test_expectations_exist_and_hold_no_output_of_unchecked_cells(chapter):
    path = book.expectations_dir() / f"{chapter}.ipynb"
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert params and 'PROFILE = "smoke"' in params[0].source
    # nbval executes the stored cells in order: the injected smoke cell comes right after the chapter's own
    # parameters cell (whose default is the cpu profile), so the chapter runs at the smoke scale
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    at = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert "injected-parameters" in tags[at + 1]
    skipped = [c for c in nb.cells if c.cell_type == "code" and book.IGNORE_TAG in c.metadata.get("tags", [])]
    assert all(c.outputs == [] for c in skipped)
    compared = [c for c in nb.cells if c.cell_type == "code" and book.IGNORE_TAG not in c.metadata.get("tags", [])]
    assert any(c.outputs for c in compared)        # the notebook does compare something


@pytest.mark.skipif(shutil.which("git") is None or not (paths.REPO_ROOT / ".git").exists(),
                    reason="needs the git checkout")
def test_everything_make_book_writes_is_ignored_by_git():
    written = ["outputs/notebooks/smoke/01_theory.ipynb", "outputs/html/smoke/01_theory.html", "outputs/html/index.html",
               "outputs/site/smoke/index.html", "outputs/site-src/smoke/conf.py", "outputs/figures/x.png",
               "outputs/tables/x.csv", "outputs/.stamps/smoke/01_theory.json", "outputs/tmp/x.ipynb",
               "outputs/cache/data/x.npz", "outputs/runs/cifar10-st-s0-smoke-0123456789/metrics.json",
               "outputs/runs/cifar10-st-s0-cpu-0123456789/model.pt",
               "outputs/runs/cifar10-st-s0-cpu-0123456789/checkpoint.pt",
               "outputs/runs/cifar10-st-s0-cpu-0123456789/.lock", "outputs/screenshots/index.png"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=paths.REPO_ROOT, capture_output=True,
                       text=True)
    assert sorted(r.stdout.split()) == sorted(written)
    kept = ["outputs/runs/cifar10-st-s0-cpu-0123456789/metrics.json", "tests/notebooks/01_theory.ipynb",
            "outputs/bench/bench-cpu.md"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *kept], cwd=paths.REPO_ROOT, capture_output=True, text=True)
    assert r.stdout.split() == []


def test_the_site_folds_helper_cells_and_gives_figures_alt_text():
    from lib.site import prepare_notebook
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 9. A chapter"),
                nbformat.v4.new_code_cell("PROFILE = 'smoke'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import numpy as np"),
                nbformat.v4.new_markdown_cell("## The figure"),
                nbformat.v4.new_code_cell("\n".join(f"x{i} = {i}" for i in range(12)),
                                          outputs=[nbformat.v4.new_output("display_data", {"image/png": "AAAA"})]),
                nbformat.v4.new_code_cell("report.results_for(PROFILE)")]
    out = prepare_notebook(nb, "Ran on: somewhere\nCommits: abc, def+dirty")
    assert out.cells[1].cell_type == "markdown" and "Ran on: somewhere" in out.cells[1].source
    # one short line; the provenance folded under it
    shown, folded = out.cells[1].source.split("<details>")
    assert "Commits" not in shown and "Commits: abc, def+dirty" in folded
    code = [c for c in out.cells if c.cell_type == "code"]
    assert ["hide-input" in c.metadata["tags"] for c in code] == [True, True, True, False]
    assert code[2].metadata["mystnb"]["image"]["alt"] == "Figure: The figure"
    assert nb.cells[1].metadata["tags"] == ["parameters"]       # the input notebook is not modified


@pytest.mark.parametrize("chapter", [c.stem for c in book.list_chapters()])
def test_expectations_run_the_chapter_as_it_is_now(chapter):
    """nbval executes the expectation notebook's own code: if a chapter changed after the last
    `make expectations`, CI would check yesterday's chapter. Every code cell of the chapter (the
    parameters cell too) stands in the expectation, in order."""
    import jupytext
    now = [c.source for c in jupytext.read(book.chapters_dir() / f"{chapter}.py").cells if c.cell_type == "code"]
    nb = nbformat.read(book.expectations_dir() / f"{chapter}.ipynb", as_version=4)
    then = [c.source for c in nb.cells if c.cell_type == "code"
            and "injected-parameters" not in c.metadata.get("tags", [])]
    assert then == now, f"{chapter}: tests/notebooks/ is out of date; run `make expectations`"


def test_a_stored_notebook_has_numbered_cell_ids_and_no_timestamps(tmp_path):
    """Two executions of one chapter store the same bytes where nothing changed: jupytext and papermill
    give every cell a random id, and papermill stamps times; both are replaced or dropped."""
    stored = []
    for k in range(2):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"),
                                             nbformat.v4.new_code_cell("x = 1")])
        nb.cells[1].metadata["papermill"] = {"start_time": f"2026-01-0{k + 1}", "duration": k + 0.5}
        nb.cells[1].metadata["execution"] = {"iopub.status.busy": str(k)}
        path = tmp_path / str(k) / "04_tables.ipynb"
        path.parent.mkdir()
        nbformat.write(nb, path)
        book._strip_volatile(path)
        stored.append(path.read_text())
    assert stored[0] == stored[1]
    assert [c.id for c in nbformat.reads(stored[0], as_version=4).cells] == ["04-000", "04-001"]


def test_a_new_result_makes_the_chapters_run_again(tmp_path, monkeypatch):
    """The stamp that lets `make book` skip a chapter covers the profile's run results: a new evaluation in
    a run folder (pulled from git or computed here) re-executes the chapters; weights, another profile's
    runs and an unchanged tree do not."""
    monkeypatch.setenv("SAMBOOK_RUNS", str(tmp_path))
    chapter = book.chapters_dir() / "04_tables.py"
    params = {"PROFILE": "smoke"}
    run = tmp_path / "cifar10-st-s0-smoke-0123456789"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    before = book.source_stamp(chapter, params)
    assert book.source_stamp(chapter, params) == before
    (run / "model.pt").write_bytes(b"weights")
    other = tmp_path / "cifar10-st-s0-cpu-0123456789"
    other.mkdir()
    (other / "metrics.json").write_text("{}")
    assert book.source_stamp(chapter, params) == before
    (run / "eval" / "strong-n20.json").write_text("{}")
    added = book.source_stamp(chapter, params)
    assert added != before
    (run / "eval" / "strong-n20.json").write_text('{"n": 20}')
    assert book.source_stamp(chapter, params) not in (before, added)
