"""The book as a browsable HTML site, built offline from the executed notebooks (``make site``, called by
``make book``).

Sphinx with myst-nb and the sphinx-book-theme: a sidebar with the chapters, previous/next links,
search, and math rendered by a local MathJax (from the jupyter-server-mathjax package: no CDN).
The notebooks are not executed again (myst-nb's execution is off). What this module adds to them:

- a first page (``index``) that says what the book found at the scale that exists: the committed
  ``cpu``-profile results and, where present, GPU (``fast``/``paper``) results: one headline figure,
  one short table, each verdict of chapter 4, with provenance, and links into the chapters;
- at the top of each chapter, a "ran on" line (profile, data, device, commit);
- the import and plotting cells of each chapter folded (``hide-input``: a click shows them),
  and every figure's alt text (the heading it sits under).

Output: ``outputs/site/<profile>/index.html`` (sources in ``outputs/site-src/<profile>/``).
"""
from __future__ import annotations

import copy
import html
import logging
import shutil
import time
from pathlib import Path

from . import paths
from .errors import SambookError
from .io import write_text

log = logging.getLogger(__name__)
FOLD_LINES = 8          # code cells longer than this are folded (plotting); shorter ones (calls into lib) stay open

CONF = '''# Sphinx configuration written by lib/site.py (do not edit: it is regenerated).
project = "SAM and adversarial robustness"
author = "the sambook authors"
extensions = ["myst_nb"]
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
exclude_patterns = ["_build"]
html_theme = "sphinx_book_theme"
html_title = "SAM and adversarial robustness ({profile} profile)"
html_static_path = ["_static"]
html_theme_options = {{"home_page_in_toc": True, "show_navbar_depth": 1, "use_download_button": False,
                      "use_fullscreen_button": False, "use_repository_button": False,
                      "navigation_with_keys": False, "show_toc_level": 2}}
html_context = {{"default_mode": "light"}}   # without it the theme's script logs an error for an empty mode
html_show_sourcelink = False
# math offline: MathJax 2.7 from the jupyter-server-mathjax package, copied into _static/mathjax
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"   # the package ships only the -full config
mathjax2_config = {{"tex2jax": {{"inlineMath": [["\\\\(", "\\\\)"]], "displayMath": [["\\\\[", "\\\\]"]],
                                "processRefs": False, "processEnvironments": False,
                                # myst-nb marks notebook content tex2jax_ignore: process the math spans
                                "ignoreClass": "document", "processClass": "math|output_area"}},
                   # no web fonts: a browser refuses font files (and MathJax's font probe) on a page opened
                   # from disk (file://) as cross-origin requests; the system's Unicode fonts render the math
                   "HTML-CSS": {{"availableFonts": [], "preferredFont": None, "webFont": None, "imageFont": None}},
                   # ...and HTML-CSS placed with system fonts sets inline math above the baseline: the
                   # browser's own MathML (Chromium, Firefox, Safari) typesets it on the line instead
                   "menuSettings": {{"renderer": "NativeMML"}},
                   "messageStyle": "none"}}
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
'''


def mathjax_dir() -> Path:
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise SambookError("the site needs jupyter-server-mathjax (math offline): pip install -r requirements.txt") \
            from None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


# --------------------------------------------------------------------------------------------------
# Preparing the notebooks


def _first_line(cell) -> str:
    src = cell.source.strip()
    return src.splitlines()[0] if src else ""


def prepare_notebook(nb, ran_on: str):
    """A copy of an executed chapter for the site: the ran-on line, folded helper cells, figure alt text."""
    import nbformat
    nb = copy.deepcopy(nb)
    heading = ""
    first_code = True
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    heading = line.lstrip("#").strip()
            continue
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        is_params = "parameters" in tags or "injected-parameters" in tags
        lines = len(cell.source.strip().splitlines())
        if is_params or first_code or lines > FOLD_LINES or _first_line(cell).startswith(("import", "from ")):
            if "hide-input" not in tags:
                tags.append("hide-input")
        if not is_params:
            first_code = False
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                cell.metadata.setdefault("mystnb", {}).setdefault("image", {})["alt"] = \
                    f"Figure: {heading}" if heading else "Figure"
    # the ran-on line just under the chapter's title
    title_at = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), 0)
    note = nbformat.v4.new_markdown_cell(ran_on_markdown(ran_on))
    nb.cells.insert(title_at + 1, note)
    return nb


def ran_on_markdown(ran_on: str) -> str:
    """A "ran on" note as a page shows it: its first line (and any warning) in a note, the details
    (data, devices, commits) folded under it."""
    lines = ran_on.splitlines()
    shown = [lines[0]] + [x for x in lines[1:] if x.startswith("WARNING")]
    details = [x for x in lines[1:] if not x.startswith("WARNING")]
    out = "```{note}\n" + "\n".join(shown) + "\n```\n"
    if details:
        out += ("\n<details><summary>Provenance: data, devices, commits</summary>\n\n"
                + "\n\n".join(html.escape(x) for x in details) + "\n\n</details>\n")
    return out


# --------------------------------------------------------------------------------------------------
# The first page


def _results(profile: str):
    """The profile's finished runs of its book grid, read only (the site never trains)."""
    from . import report, runs
    from .config import grid
    if profile == "smoke":
        return [], []
    configs = grid(report.book_grid(profile), profile)
    found = runs.finished_runs(configs)          # the run cache, then the committed results
    return [r for r in found if r is not None], [c.name for c, r in zip(configs, found) if r is None]


def _answer(profile: str, figures: Path, figure: bool = True) -> list[str]:
    """The answer at one scale: the headline figure (unless ``figure`` is False: the first page's summary
    already shows it), the short table and the verdicts (Markdown lines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import report, tables
    from .config import profile as get_profile
    results, missing = _results(profile)
    if not results:
        return []
    p = get_profile(profile)
    df = tables.results_frame(results)
    seeds = df["seed"].nunique()
    lines = [f"## At the {profile} scale", "",
             f"{p.description}: PreActResNet-18 topology at width {p.width}, {p.epochs} epochs, "
             f"{results[0].metrics['train_images']} training and {results[0].metrics['test_images']} test images, "
             f"{seeds} seed(s). {report.missing_note(missing)}", "",
             ran_on_markdown(report.ran_on(results)), ""]
    diffs = tables.sam_vs_st(df)
    if diffs and figure:
        fig = report.differences(diffs, f"SAM - ST, paired by seed ({profile} profile, {seeds} seed(s); "
                                        f"95% intervals)")
        name = f"headline_{profile}.png"
        fig.savefig(figures / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        lines += [f"```{{figure}} _static/{name}", f":alt: Paired differences between SAM and ST in clean and robust "
                  f"accuracy at each budget, {profile} profile", "",
                  "Each SAM radius against the ST run of the same seed, under the paper's evaluation protocol: "
                  "above zero means SAM is better.", "```", ""]
    cols = ["natural"] + [f"paper_{t}" for t in tables.ROBUST]
    mean, std, n = tables.aggregate(df, cols)
    short = mean.rename(columns={c: tables.COLUMN_LABELS[c.replace("paper_", "")] for c in cols})
    lines += ["| model | " + " | ".join(short.columns) + " |", "|---|" + "---|" * len(short.columns)]
    for label, row in short.iterrows():
        cells = [f"{v:.1f}" + (f" ± {std.loc[label, c]:.1f}" if n.loc[label] > 1 else "")
                 for c, v in zip(cols, row)]
        lines.append(f"| {html.escape(label)} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy (%) under the paper's protocol (PGD-10), mean ± standard deviation over seeds. "
              "Chapter 4 has every protocol and the worst case.", "", "**The paper's claims at this scale:**", ""]
    for c in tables.check_claims(df):
        lines.append(f"- *{c['verdict']}*: {c['claim']}")
    by = tables.claims_by_measure(df)
    strict, paper = tables.CLAIM_MEASURES["strict"], tables.CLAIM_MEASURES["paper"]
    if strict in by and "strict_n" in df:
        changed = [f"{k.split('.')[0]} *{v}*" for k, v in by[strict].items() if v != by.loc[k, paper]]
        lines += ["", f"Judged again under stronger attacks ({', '.join(tables.STRICT_PROTOCOLS)} together, on the "
                  f"first {int(df['strict_n'].min())} test images of every run): "
                  + ("every verdict the same." if not changed else "; ".join(changed) + "; the others the same.")
                  + " Chapter 4 separates the effect of the attack from that of the smaller sample."]
    return lines + [""]


def index_page(profile: str, chapters: list[str], figures: Path) -> str:
    from . import readme, tables
    summary, rows, headline = readme.summary("_static/headline.png")
    if rows:
        readme.save_figure(readme.headline_figure(rows, headline), figures / "headline.png", readme.data_digest(rows))
    lines = ["# Sharpness-Aware Minimization and adversarial robustness", ""]
    if summary:
        lines += [summary, "## The question, and the answer at each scale", ""]
    lines += ["**The question.** Wei, Zhu and Zhang (2023) claim that SAM alone, without a single adversarial "
             "example, makes a network more robust to small adversarial perturbations than standard training "
             "(ST), at no cost in clean accuracy; that a larger radius gives more; and that SAM does what "
             "adversarial training (AT) does, only more weakly. This book re-runs their experiments, checks "
             "every robustness number against stronger attacks, and judges each claim over seeds.", ""]
    answered = False
    for scale in ("paper", "fast", "cpu-long", "cpu"):      # the most real scale first
        part = _answer(scale, figures, figure=scale != headline)
        if part:
            lines += part
            answered = True
    if not answered:
        lines += ["No real results are here yet (only the smoke profile, whose numbers show that the code runs).", ""]
    lines += ["## The published numbers", "", f"{tables.PAPER_TABLE_NAME['cifar10']} of the paper (CIFAR-10, "
              "PreActResNet-18, 100 epochs, 3 seeds): ST 94.6 % clean and 39.6 % at L-inf 1/255; SAM up to "
              "56.1 %; AT L-inf 1/255 86.4 %.", "",
              f"## The chapters ({profile} profile)", ""]
    if profile == "smoke":
        lines += ["```{warning}\nThis build of the chapters is the **smoke** profile: a tiny network trained for "
                  "seconds. Its numbers show that the code runs, not what the paper's claims look like. The results "
                  "above come from the committed runs of the profiles named there.\n```", ""]
    lines += ["```{toctree}", ":maxdepth: 1", "", *chapters, "```", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Build


def build(profile: str, quiet: bool = True, notebooks_dir=None, out_root=None) -> Path:
    """Build the site of ``profile`` from its executed chapters; returns the path of its index.html.

    ``notebooks_dir``: default ``outputs/notebooks/<profile>/``; ``out_root``: default ``outputs/``
    (the site goes to ``<out_root>/site/<profile>/``).
    """
    import nbformat

    from . import report
    nb_dir = Path(notebooks_dir) if notebooks_dir else paths.outputs_root() / "notebooks" / profile
    notebooks = sorted(nb_dir.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SambookError(f"no executed chapters in {nb_dir}: run make book PROFILE={profile} first")
    root = Path(out_root) if out_root else paths.outputs_root()
    src = root / "site-src" / profile
    out = root / "site" / profile
    shutil.rmtree(src, ignore_errors=True)
    (src / "_static").mkdir(parents=True)
    shutil.copytree(mathjax_dir(), src / "_static" / "mathjax")
    results, _ = _results(profile) if profile != "smoke" else (None, None)
    for f in notebooks:
        nb = nbformat.read(f, as_version=4)
        if profile == "smoke":
            ran = ("Ran on: the smoke profile (a width-8 network, 3 epochs, 2,000 training images): numbers that "
                   "show the code runs. Device and commit: see the chapter's first output.")
        else:
            ran = report.ran_on(results or [])
        nbformat.write(prepare_notebook(nb, ran), src / f.name)
    write_text(src / "conf.py", CONF.format(profile=profile))
    write_text(src / "index.md", index_page(profile, [f.stem for f in notebooks], src / "_static"))
    from sphinx.cmd.build import build_main
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    args = ["-b", "html", "-q", str(src), str(tmp)] if quiet else ["-b", "html", str(src), str(tmp)]
    rc = build_main(args)
    if rc != 0:
        raise SambookError(f"sphinx failed to build the {profile} site (sources in {src}); rerun with "
                           f"python -m lib.site --profile {profile} --verbose")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    _chmod_tree(out)
    write_text(root / "site" / "index.html", _root_page(root / "site"))
    return out / "index.html"


def _chmod_tree(root: Path) -> None:
    """Sphinx copies static files with their source's mode; make everything readable by a web server."""
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _root_page(site_root: Path) -> str:
    built = sorted(d.name for d in site_root.iterdir() if (d / "index.html").exists())
    links = "".join(f"<li><a href='{html.escape(b)}/index.html'>{html.escape(b)} profile</a></li>" for b in built)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>SAM and adversarial robustness</title>"
            "</head><body><h1>SAM and adversarial robustness: the book</h1><p>Built profiles:</p><ul>"
            f"{links}</ul></body></html>\n")


def main(argv=None) -> int:
    from .cli import ArgumentParser, guarded, parse, profile_arg, resolve_profile
    ap = ArgumentParser(prog="python -m lib.site", description="Build the HTML site from the executed chapters.")
    profile_arg(ap)
    ap.add_argument("--verbose", action="store_true", help="show Sphinx's output")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.WARNING)

    def command() -> int:
        t0 = time.perf_counter()
        index = build(resolve_profile(args.profile), quiet=not args.verbose)
        print(f"site: {index} ({time.perf_counter() - t0:.1f} s)")
        return 0
    return guarded(command)


if __name__ == "__main__":
    raise SystemExit(main())
