"""Execute the chapters headlessly (``make book``): papermill -> notebooks, then the HTML site.

For each ``chapters/NN_*.py`` (Jupytext percent format, the only source):
  1. convert to a notebook in memory (jupytext),
  2. execute it with papermill, injecting PROFILE and DATA into its ``parameters`` cell, into
     ``outputs/notebooks/<profile>/NN_*.ipynb`` (not tracked; written atomically: a failed chapter
     never replaces a good notebook),
then build the site ``outputs/site/<profile>/`` from the executed notebooks (:mod:`lib.site`).
A chapter whose source, lib/, parameters and the profile's run results (every small file of its run
folders, committed and cached: configs, metrics, evaluations, probes) have not changed since the
start of its last successful execution is not executed again (stamps under ``outputs/.stamps/``). Trained runs are reused from the run
cache, so re-running after a finished profile takes seconds. ``make book`` never writes a tracked
file: nbval's expectations live in ``tests/notebooks/`` and change only through
``python -m lib.book --expectations`` (``make expectations``).

What nbval compares: every cell's output except those tagged ``nbval-ignore-output`` in the
chapter source (the cells that print or draw trained numbers, which differ in their last digits
between processors). :func:`unchecked_cells` lists them; the expectations keep those cells'
outputs empty, so the committed notebooks hold only what is the same on every machine.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from . import paths
from .errors import SambookError
from .io import read_json, write_json, write_text

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
    """What ``auto`` means: ``fast`` when a CUDA GPU is visible, else the scale the README answers from
    (:func:`lib.readme.headline_scale`: the most real profile whose committed runs hold ST and SAM at every
    seed, ``cpu-long`` today), rendered from the committed results without training; ``cpu`` where no
    profile has them. The smoke profile, which trains tiny models from scratch, is asked for by name."""
    import torch
    if torch.cuda.is_available():
        return "fast"
    from .readme import headline_scale
    return headline_scale() or "cpu"


def source_stamp(chapter: Path, params: dict) -> str:
    """Hash of the chapter, every lib/ source file, the parameters and :func:`results_digest`."""
    h = hashlib.sha256()
    h.update(chapter.read_bytes())
    for f in sorted((paths.REPO_ROOT / "lib").glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(results_digest(params.get("PROFILE", "")).encode())
    return h.hexdigest()[:16]


RESULT_SUFFIXES = (".json", ".csv")     # what a chapter reads from a run folder (weights are never shown)


def results_digest(profile: str) -> str:
    """Hash of the profile's run results a chapter can read: every JSON and CSV file of the run folders
    ``*-<profile>-*`` in the committed results and in the run cache (names and contents). A new
    evaluation or run, pulled from git or computed here, makes the chapters run again."""
    h = hashlib.sha256()
    roots = dict.fromkeys(r.resolve() for r in (paths.committed_runs_root(), paths.runs_root()))
    for root in roots:
        for folder in sorted(root.glob(f"*-{profile}-*")) if root.is_dir() else []:
            for f in sorted(folder.rglob("*")):
                if f.suffix in RESULT_SUFFIXES and f.is_file():
                    h.update(str(f.relative_to(root)).encode())
                    h.update(f.read_bytes())
    return h.hexdigest()[:16]


def execute_chapter(chapter: Path, profile: str, data=None, force: bool = False, kernel: str = "python3") -> dict:
    """Execute one chapter; returns {'chapter', 'status': executed|skipped, 'seconds', 'notebook'}."""
    import jupytext
    import papermill as pm

    out_nb = paths.outputs_root() / "notebooks" / profile / f"{chapter.stem}.ipynb"
    params = {"PROFILE": profile}
    if data is not None:
        params["DATA"] = str(data)
    stamp_file = paths.outputs_root() / ".stamps" / profile / f"{chapter.stem}.json"
    stamp = source_stamp(chapter, params)
    if not force and out_nb.exists() and stamp_file.exists():
        try:
            if read_json(stamp_file).get("stamp") == stamp:
                return {"chapter": chapter.stem, "status": "skipped", "seconds": 0.0, "notebook": out_nb}
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
        raise SambookError(f"chapter {chapter.stem} failed in cell {e.exec_count}: {e.ename}: "
                           f"{str(e.evalue).splitlines()[0] if e.evalue else ''} (partial notebook: {tmp_out})") from None
    seconds = time.perf_counter() - t0
    _strip_volatile(tmp_out)
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_out, out_nb)
    src.unlink(missing_ok=True)
    write_json(stamp_file, {"stamp": stamp, "seconds": round(seconds, 1),
                            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return {"chapter": chapter.stem, "status": "executed", "seconds": seconds, "notebook": out_nb}


IGNORE_TAG = "nbval-ignore-output"


def expectations_dir() -> Path:
    return paths.REPO_ROOT / "tests" / "notebooks"


def unchecked_cells(chapter: Path) -> list[str]:
    """The first line of every code cell of ``chapter`` whose output nbval does not compare."""
    import jupytext
    nb = jupytext.read(chapter)
    return [c.source.strip().splitlines()[0] if c.source.strip() else "" for c in nb.cells
            if c.cell_type == "code" and IGNORE_TAG in c.metadata.get("tags", [])]


def write_expectation(executed: Path, target: Path) -> Path:
    """nbval's expectation from an executed smoke notebook: the outputs of unchecked cells removed."""
    import nbformat
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and IGNORE_TAG in cell.metadata.get("tags", []):
            cell.outputs = []
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_text(target, nbformat.writes(nb) + "\n")


def _strip_volatile(nb_path: Path) -> None:
    """Drop papermill's per-cell timestamps from the stored notebook (they change on every run), and
    number the cells instead of jupytext's and papermill's random ids, so that a re-executed chapter
    differs from the last one only where its content did."""
    import nbformat
    nb = nbformat.read(nb_path, as_version=4)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{nb_path.name[:2]}-{i:03d}"
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


def _warn_stale(profile: str) -> None:
    """Say which of the profile's results were made by different training code than the checkout's."""
    from . import runs
    root = paths.runs_root()
    found = [runs.load_run(d) for d in sorted(root.glob(f"*-{profile}-*")) if runs.is_finished(d)] \
        if root.is_dir() else []
    old = runs.stale(found)
    if old:
        print(f"book: warning: {len(old)} {profile} result(s) were made by different training code than this "
              f"checkout's (fingerprint {runs.fingerprint()}): {', '.join(old)}", flush=True)


def main(argv=None) -> int:
    from .cli import ArgumentParser, guarded, parse, profile_arg, resolve_profile
    ap = ArgumentParser(prog="python -m lib.book", description="Execute the chapters and build the site (make book).")
    profile_arg(ap)
    ap.add_argument("--data", default=None, help="data root passed to the chapters (default $SAMBOOK_DATA)")
    ap.add_argument("--only", default=None, help="comma-separated chapter numbers or names, e.g. 01,03")
    ap.add_argument("--force", action="store_true", help="execute even if nothing changed")
    ap.add_argument("--no-site", action="store_true", help="execute the chapters only")
    ap.add_argument("--expectations", action="store_true",
                    help="after a smoke build, copy the notebooks into tests/notebooks/ as nbval's expectations")
    args = parse(ap, argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.WARNING)

    def command() -> int:
        from .config import profile as get_profile
        from .data import find_source
        profile = resolve_profile(args.profile)
        find_source("cifar10", args.data, get_profile(profile).sources)  # fail fast, before any kernel starts
        chapters = list_chapters(args.only.split(",") if args.only else None)
        print(f"book: profile {profile}, {len(chapters)} chapter(s)", flush=True)
        total = time.perf_counter()
        for ch in chapters:
            r = execute_chapter(ch, profile, args.data, force=args.force)
            print(f"  {r['chapter']:24s} {r['status']:9s} {r['seconds']:7.1f} s -> {r['notebook']}", flush=True)
        if args.expectations:
            if profile != "smoke":
                raise SambookError("nbval's expectations come from the smoke profile: --profile smoke")
            for ch in chapters:
                nb = paths.outputs_root() / "notebooks" / profile / f"{ch.stem}.ipynb"
                print(f"  expectation -> {write_expectation(nb, expectations_dir() / nb.name)}")
        _warn_stale(profile)
        site_line = ""
        if not args.no_site:
            from .site import build
            t_site = time.perf_counter()
            index = build(profile)
            site_line = f"; site {index} ({time.perf_counter() - t_site:.1f} s)"
        print(f"book: done in {time.perf_counter() - total:.1f} s{site_line}", flush=True)
        return 0
    return guarded(command)


if __name__ == "__main__":
    raise SystemExit(main())
