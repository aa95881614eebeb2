"""Execute the chapters headlessly (``make book``): papermill -> notebooks, nbconvert -> HTML.

For each ``chapters/NN_*.py`` (Jupytext percent format, the only source):
  1. convert to a notebook in memory (jupytext),
  2. execute it with papermill, injecting PROFILE and DATA into its ``parameters`` cell, into
     ``outputs/notebooks/<profile>/NN_*.ipynb`` (written atomically: a failed chapter never
     replaces a good notebook),
  3. render ``outputs/html/<profile>/NN_*.html`` and the index ``outputs/html/index.html``.
A chapter whose source, lib/ and parameters have not changed since its last successful execution
is not executed again (stamps under ``outputs/.stamps/``). Trained runs are reused from the run
cache, so re-running after a finished profile takes minutes.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import html
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import paths
from .errors import SambookError
from .io import atomic_write, read_json, write_json, write_text

log = logging.getLogger(__name__)


def chapters_dir() -> Path:
    return paths.REPO_ROOT / "chapters"


def list_chapters(only=None) -> list[Path]:
    chs = sorted(p for p in chapters_dir().glob("[0-9][0-9]_*.py"))
    if only:
        keys = set(only)
        chs = [c for c in chs if c.stem in keys or c.stem[:2] in keys]
        if not chs:
            raise SambookError(f"no chapter matches {', '.join(sorted(keys))}; chapters: "
                               f"{', '.join(c.stem for c in sorted(chapters_dir().glob('[0-9][0-9]_*.py')))}")
    return chs


def default_profile() -> str:
    """``fast`` when a CUDA GPU is visible, else ``smoke``."""
    import torch
    return "fast" if torch.cuda.is_available() else "smoke"


def source_stamp(chapter: Path, params: dict) -> str:
    """Hash of the chapter, every lib/ source file and the parameters."""
    h = hashlib.sha256()
    h.update(chapter.read_bytes())
    for f in sorted((paths.REPO_ROOT / "lib").glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:16]


def execute_chapter(chapter: Path, profile: str, data=None, force: bool = False, kernel: str = "python3") -> dict:
    """Execute one chapter; returns {'chapter', 'status': executed|skipped, 'seconds', 'notebook', 'html'}."""
    import jupytext
    import papermill as pm

    out_nb = paths.outputs_root() / "notebooks" / profile / f"{chapter.stem}.ipynb"
    out_html = paths.outputs_root() / "html" / profile / f"{chapter.stem}.html"
    params = {"PROFILE": profile}
    if data is not None:
        params["DATA"] = str(data)
    stamp_file = paths.outputs_root() / ".stamps" / profile / f"{chapter.stem}.json"
    stamp = source_stamp(chapter, params)
    if not force and out_nb.exists() and out_html.exists() and stamp_file.exists():
        try:
            if read_json(stamp_file).get("stamp") == stamp:
                return {"chapter": chapter.stem, "status": "skipped", "seconds": 0.0, "notebook": out_nb,
                        "html": out_html}
        except (OSError, ValueError):
            pass
    nb = jupytext.read(chapter)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    tmp_dir = paths.outputs_root() / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    src = tmp_dir / f"{chapter.stem}.src.ipynb"
    jupytext.write(nb, src)
    t0 = time.perf_counter()
    tmp_out = tmp_dir / f"{chapter.stem}.{profile}.ipynb"
    try:
        pm.execute_notebook(str(src), str(tmp_out), parameters=params, kernel_name=kernel,
                            cwd=str(chapters_dir()), progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as e:
        raise SambookError(f"chapter {chapter.stem} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                           f"(partial notebook: {tmp_out.relative_to(paths.REPO_ROOT) if tmp_out.is_relative_to(paths.REPO_ROOT) else tmp_out})") from None
    seconds = time.perf_counter() - t0
    _strip_volatile(tmp_out)
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_out, out_nb)
    src.unlink(missing_ok=True)
    render_html(out_nb, out_html)
    write_json(stamp_file, {"stamp": stamp, "seconds": round(seconds, 1),
                            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return {"chapter": chapter.stem, "status": "executed", "seconds": seconds, "notebook": out_nb, "html": out_html}


def _strip_volatile(nb_path: Path) -> None:
    """Drop papermill's per-cell timestamps from the stored notebook (they change on every run)."""
    import nbformat
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        pm_meta = cell.metadata.get("papermill")
        if pm_meta:
            for k in ("start_time", "end_time", "duration", "exception", "status"):
                pm_meta.pop(k, None)
    pm_meta = nb.metadata.get("papermill", {})
    for k in ("start_time", "end_time", "duration", "input_path", "output_path", "environment_variables",
              "version"):
        pm_meta.pop(k, None)
    nbformat.write(nb, nb_path)


def render_html(nb_path: Path, html_path: Path) -> Path:
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter().from_filename(str(nb_path))
    return write_text(html_path, body)


def write_index() -> Path:
    """outputs/html/index.html: every executed chapter of every profile, with its stamp date."""
    root = paths.outputs_root() / "html"
    rows = []
    for prof_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        for f in sorted(prof_dir.glob("*.html")):
            stamp = paths.outputs_root() / ".stamps" / prof_dir.name / f"{f.stem}.json"
            when = read_json(stamp).get("date", "") if stamp.exists() else "committed"
            rows.append(f"<tr><td>{html.escape(prof_dir.name)}</td><td><a href='{prof_dir.name}/{f.name}'>"
                        f"{html.escape(f.stem)}</a></td><td>{html.escape(when)}</td></tr>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>SAM and adversarial robustness: the book"
            "</title><style>body{font-family:sans-serif;max-width:50em;margin:2em auto}td{padding:.2em 1em}"
            "</style></head><body><h1>Sharpness-Aware Minimization and adversarial robustness</h1>"
            "<p>Chapters executed by <code>make book</code>. The <b>smoke</b> profile runs a tiny network on a CPU: "
            "its numbers only show that the code runs. <b>fast</b> and <b>paper</b> are real GPU runs.</p>"
            "<table><tr><th>profile</th><th>chapter</th><th>executed (UTC)</th></tr>" + "".join(rows) +
            "</table></body></html>\n")
    return write_text(root / "index.html", page)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.book", description="Execute the chapters (make book).")
    ap.add_argument("--profile", default="auto", help="smoke | fast | paper | auto (fast with a GPU, else smoke)")
    ap.add_argument("--data", default=None, help="data root passed to the chapters (default $SAMBOOK_DATA)")
    ap.add_argument("--only", default=None, help="comma-separated chapter numbers or names, e.g. 01,03")
    ap.add_argument("--force", action="store_true", help="execute even if nothing changed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from .config import PROFILES
    try:
        profile = default_profile() if args.profile == "auto" else args.profile
        if profile not in PROFILES:
            raise SambookError(f"unknown profile {profile!r}; valid profiles: auto, {', '.join(PROFILES)}")
        from .data import find_source
        prefs = PROFILES[profile].sources
        find_source("cifar10", args.data, prefs)  # fail fast with the data error, before any kernel starts
        chapters = list_chapters(args.only.split(",") if args.only else None)
        print(f"book: profile {profile}, {len(chapters)} chapter(s)", flush=True)
        total = time.perf_counter()
        for ch in chapters:
            r = execute_chapter(ch, profile, args.data, force=args.force)
            print(f"  {r['chapter']:24s} {r['status']:9s} {r['seconds']:7.1f} s -> "
                  f"{Path(r['notebook']).relative_to(paths.outputs_root().parent)}", flush=True)
        write_index()
        print(f"book: done in {time.perf_counter() - total:.1f} s; open outputs/html/index.html", flush=True)
        return 0
    except SambookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
