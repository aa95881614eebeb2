"""The run cache: a run is a pure function of its frozen config, stored under a hash of it.

    outputs/runs/<readable-name>-<config-hash>/
        config.json     the full config (written first)
        history.csv     one row per epoch
        metrics.json    training time, images/s, precision, weights' hash, code fingerprint and
                        provenance (CPU model and flags or GPU, threads, torch, commit, date);
                        written last and atomically: its presence means "finished"
        eval/*.json     evaluations under named protocols (:mod:`lib.protocols`)
        probes/*.json   measurements on the weights (:mod:`lib.probes`)
        model.pt        final weights (never committed)
        checkpoint.pt   last epoch's full state while the run is unfinished (never committed)
        .lock           held while a process trains the run

A finished run is reused, never retrained; a failed run never touches a finished run's files. Two
processes never train the same run at once: the second waits on the lock and then reuses the
first's result (or, if the first was killed, resumes from its checkpoint).
"""
from __future__ import annotations

import ast
import contextlib
import csv
import datetime as _dt
import fcntl
import hashlib
import io
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import paths, runtime
from .config import RunConfig, profile as get_profile
from .data import find_source, load_subset
from .errors import SambookError
from .io import atomic_write, read_json, write_json, write_text
from .train import CHECKPOINT, train

log = logging.getLogger(__name__)
METRICS, CONFIG, HISTORY, MODEL, LOCK = "metrics.json", "config.json", "history.csv", "model.pt", ".lock"
# The files whose code determines a trained network (data, model, optimiser, attacks, methods, loop,
# arithmetic). Their fingerprint is recorded in every run; a changed fingerprint means a result was
# made by different training code than the checkout's.
TRAINING_CODE = ("data.py", "models.py", "optim.py", "attacks.py", "methods.py", "train.py", "runtime.py")


@dataclass
class RunResult:
    config: RunConfig
    metrics: dict
    history: list
    path: Path

    def history_frame(self):
        import pandas as pd
        return pd.DataFrame(self.history)

    @property
    def has_weights(self) -> bool:
        return (self.path / MODEL).exists()


def resolve(config: RunConfig, data_root=None, download: bool = False) -> RunConfig:
    """Fix ``data_source`` (``auto`` -> the first source of the profile's preference that exists)."""
    if config.data_source != "auto":
        return config
    source, _ = find_source(config.dataset, data_root, get_profile(config.profile).sources, download)
    return replace(config, data_source=source)


def run_dir(config: RunConfig, runs_root=None) -> Path:
    if config.data_source == "auto":
        raise SambookError("resolve the config's data source first (lib.runs.resolve)")
    return paths.runs_root(runs_root) / f"{config.name}-{config.config_hash()}"


def is_finished(path: Path) -> bool:
    return (Path(path) / METRICS).is_file()


def load_data(config: RunConfig, data_root=None, download: bool = False, device=None):
    """The config's training subset and its profile's test subset (loaded once per process and device)."""
    prof = get_profile(config.profile)
    return load_subset(config.dataset, config.data_source, data_root, config.train_per_class, prof.test_per_class,
                       device=device, download=download)


def git_commit() -> str:
    """The checkout's commit (``+dirty`` when lib/ has uncommitted changes); ``$SAMBOOK_COMMIT`` where
    there is no git repository (a copied working tree, e.g. on the GPU machine)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() or os.environ.get("SAMBOOK_COMMIT", "unknown")
        if out.returncode != 0:
            return os.environ.get("SAMBOOK_COMMIT", "unknown")
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "lib"], cwd=paths.REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("SAMBOOK_COMMIT", "unknown")


class _Prose(ast.NodeTransformer):
    """Drops what cannot change a number: docstrings, log calls, and the messages of raised errors."""

    def generic_visit(self, node):
        node = super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [b for b in body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                                            and isinstance(b.value.value, str))]
            kept = [b for b in kept if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Call)
                                            and isinstance(b.value.func, ast.Attribute)
                                            and isinstance(b.value.func.value, ast.Name) and b.value.func.value.id == "log")]
            node.body = kept or [ast.Pass()]
        return node

    def visit_Raise(self, node):
        return ast.Raise(exc=None, cause=None)


def _normalised_source(path: Path) -> str:
    """The file's syntax tree without comments, formatting, docstrings, log calls or error messages."""
    return ast.dump(_Prose().visit(ast.parse(path.read_text())), include_attributes=False)


def fingerprint() -> str:
    """A hash of the training code (``TRAINING_CODE``): what it computes, not how it is worded (comments,
    docstrings, formatting, log calls and error messages do not count)."""
    h = hashlib.sha1()
    for name in TRAINING_CODE:
        h.update(name.encode())
        h.update(_normalised_source(paths.REPO_ROOT / "lib" / name).encode())
    return h.hexdigest()[:12]


# Earlier fingerprints whose runs the current training code reproduces bit for bit, keyed by the current
# fingerprint (a later change of the training code drops the equivalence until it is checked again).
# eb5c81d3211f differs from 15a7ff419d77 only where a profile with ``compile`` runs (torch.compile of the
# training steps on the CPU); checked by retraining a committed eager cpu run with it (see EQUIVALENCE_CHECKS).
# 0c2efa058a3f differs from eb5c81d3211f only in lib/data.py's test order (the training split is untouched);
# checked on 2026-12-07 with `python -m lib restore` (which installs retrained weights only when bit-identical)
# on one eager cpu run and two compiled cpu-long runs.
# f98623ceff42 differs from 0c2efa058a3f only in which methods a profile compiles (``Profile.compiles``: on
# cpu-long ST and SAM still compile, AT no longer does, and no AT run of that profile existed); checked on
# 2026-12-07 with `python -m lib restore` on one eager cpu run (fingerprint 15a7ff419d77) and one compiled
# cpu-long run (eb5c81d3211f); 0c2efa058a3f by way of eb5c81d3211f, checked equal to it before.
EQUIVALENT_FINGERPRINTS = {"f98623ceff42": ("0c2efa058a3f", "eb5c81d3211f", "15a7ff419d77")}
EQUIVALENCE_CHECKS = {"f98623ceff42": "cifar10-st-s2-cpu-7d0fcc07de (eager, 524 s) and cifar10-st-e4-s0-cpu-long-ff46e68f2a "
                                      "(compiled, 504 s) retrained: weights_sha 3b54fd113dd0ce1f and a5cacf6a94bd54d3, "
                                      "the committed ones; earlier (0c2efa058a3f against eb5c81d3211f and 15a7ff419d77): "
                                      "cifar10-st-s2-cpu-7d0fcc07de, cifar10-st-s1-cpu-long-cb28467254 and "
                                      "cifar10-sam-rho0.4-s1-cpu-long-719ae3b472"}


def stale(results) -> list[str]:
    """Names of the runs made by different training code than the checkout's (see :func:`fingerprint`),
    counting as the same code the earlier fingerprints checked to reproduce this code's runs bit for bit."""
    now = fingerprint()
    same = (None, now, *EQUIVALENT_FINGERPRINTS.get(now, ()))
    return [r.path.name for r in results if r.metrics.get("fingerprint") not in same]


def _history_csv(history: list) -> str:
    if not history:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def weights_sha(state_dict) -> str:
    """A digest of the weights themselves (names, dtypes, shapes, bytes), not of the file: torch.save
    names the archive's records after the file, so the same weights saved under two temporary names
    would give two file hashes (runs written before this carry the file hash; each run's evaluations
    are keyed by whatever its metrics.json says)."""
    h = hashlib.sha1()
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def run_lock(path: Path, poll: float = 2.0):
    """Hold ``path/.lock`` exclusively (fcntl.flock): other processes wait until it is released.

    The kernel releases the lock when its holder exits, killed or not, so a lock file left by a dead
    process is stale: the next process takes it over (and says so).
    """
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            log.warning("%s is being trained by %s; waiting for it", path.name, holder)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(poll)
        else:
            old = os.pread(fd, 200, 0).decode(errors="replace").strip()
            if old:
                log.warning("%s: stale lock of %s (no longer running) taken over", path.name, old)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def run(config: RunConfig, data_root=None, runs_root=None, device=None, download: bool = False,
        progress: bool = True, retrain: bool = False, stop_after_epoch: int | None = None,
        compile_model: bool = False, need_model: bool = False) -> RunResult | None:
    """Train ``config`` unless a finished run exists; return its :class:`RunResult`.

    ``need_model``: a finished run whose weights are missing (e.g. committed results, whose model.pt
    is never committed) is trained again so that :func:`load_model` works.
    Returns None if ``stop_after_epoch`` interrupted the run (its checkpoint is kept for a resume).
    Evaluation is a separate stage (:func:`lib.protocols.evaluate_run`).
    """
    config = resolve(config, data_root, download)
    path = run_dir(config, runs_root)
    code = fingerprint()            # the training code as this run starts (recorded in its metrics)
    commit = git_commit()           # likewise the commit: the checkout may change while a run trains

    def reusable():
        return is_finished(path) and not retrain and not (need_model and not (path / MODEL).exists())

    if reusable():
        return load_run(path)
    dev = runtime.device(device)
    data = load_data(config, data_root, download, dev)       # bad or missing data stops here, before any write
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SambookError(f"cannot write the run folder {path}: {e.strerror or e}") from None
    with run_lock(path):
        if reusable():                  # another process finished it while this one waited
            return load_run(path)
        try:
            write_json(path / CONFIG, config.to_dict())
        except OSError as e:
            raise SambookError(f"cannot write the run folder {path}: {e.strerror or e}") from None
        with runtime.threads(None if dev.type == "cuda" else get_profile(config.profile).cpu_threads):
            result = train(config, data, device=dev, run_dir=path, progress=progress,
                           stop_after_epoch=stop_after_epoch, compile_model=compile_model)
            env = runtime.describe(dev)
        if not result.finished:
            return None
        atomic_write(path / MODEL, lambda p: torch.save(result.model.state_dict(), p))
        metrics = {
            "name": config.name, "label": config.label, "config_hash": config.config_hash(),
            "method": config.method, "profile": config.profile, "dataset": config.dataset, "seed": config.seed,
            "data": data.describe(), "data_exact": data.exact,
            "train_images": len(data.y_train), "test_images": len(data.y_test), "test_order": data.test_order_note,
            "train_seconds": result.train_seconds, "curve_eval_seconds": result.eval_seconds,
            "images_per_second": result.images_seen / result.train_seconds if result.train_seconds else None,
            "passes_per_step": config.spec.passes_per_step(config), "precision": result.precision,
            "attack_precision": "fp32" if (config.attack_fp32 or result.precision == "fp32") else result.precision,
            "weights_sha": weights_sha(result.model.state_dict()), "fingerprint": code, **env,
            "compiled": bool(get_profile(config.profile).compiles(config.method)
                             or (compile_model and dev.type == "cuda")),
            "commit": commit, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_text(path / HISTORY, _history_csv(result.history))
        write_json(path / METRICS, metrics)        # last: marks the run finished
        (path / CHECKPOINT).unlink(missing_ok=True)
    return load_run(path)


def _same_curve(a: list, b: list) -> bool:
    """Two learning curves (history rows) equal in every column that training computes (timings apart)."""
    timing = {"epoch_seconds", "images_per_second"}

    def value(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)

    def keep(rows):
        return [{k: value(v) for k, v in row.items() if k not in timing} for row in rows]
    return bool(a) and keep(a) == keep(b)


def restore_weights(path, data_root=None, device=None, progress: bool = True, scratch=None) -> dict:
    """Train a finished run's weights again when its model.pt is gone (weights are never committed), and
    install them only if they are the weights its results were made from.

    The run is retrained from its own config.json into a scratch run cache (``scratch``, else a temporary
    folder), so nothing in the run folder changes unless the new weights' digest equals the ``weights_sha``
    in its metrics.json; then model.pt is written atomically into the folder. A mismatch is an error that
    names both digests and leaves the folder as it was. Returns what happened: ``status`` (``present`` or
    ``restored``), the digest, and the retraining's seconds and history file (measured on this machine,
    kept in the scratch cache only)."""
    import shutil
    import tempfile
    path = Path(path)
    result = load_run(path)
    recorded = result.metrics.get("weights_sha")
    if not recorded:
        raise SambookError(f"{path.name}: its metrics.json has no weights_sha, so retrained weights cannot be "
                           f"checked against it")
    if result.has_weights:
        load_model(result)          # raises when the weights there are not the recorded ones
        return {"status": "present", "weights_sha": recorded, "run": path.name}
    tmp = None
    if scratch is None:
        tmp = tempfile.TemporaryDirectory(prefix="sambook-restore-")
        scratch = tmp.name
    try:
        again = run(result.config, data_root=data_root, runs_root=scratch, device=device, progress=progress,
                    retrain=True)
        digest = again.metrics.get("weights_sha")
        if digest != recorded:
            if _same_curve(again.history, result.history):
                why = ("its learning curve (history.csv) came out identical to the committed one in every digit, "
                       "so the recorded digest is likely a legacy file hash (runs written before weights_sha "
                       "digested the tensors, 2026-12-02), which no retraining reproduces")
            else:
                why = ("its learning curve differs from the committed history.csv too: the training is not "
                       "bit-identical here (another CPU, torch or library version?)")
            raise SambookError(f"{path.name}: retrained weights {digest} differ from the recorded weights_sha "
                               f"{recorded}; nothing was installed; {why}")
        atomic_write(path / MODEL, lambda p: shutil.copyfile(again.path / MODEL, p))
        return {"status": "restored", "weights_sha": digest, "run": path.name,
                "train_seconds": again.metrics.get("train_seconds"), "device": again.metrics.get("device")}
    finally:
        if tmp is not None:
            tmp.cleanup()


def load_run(path) -> RunResult:
    path = Path(path)
    if not is_finished(path):
        raise SambookError(f"{path} is not a finished run (no {METRICS})")
    try:
        config = RunConfig.from_dict(read_json(path / CONFIG))
        metrics = read_json(path / METRICS)
    except (OSError, ValueError, TypeError) as e:
        raise SambookError(f"{path}: unreadable run files ({e})") from None
    history = []
    if (path / HISTORY).exists():
        with open(path / HISTORY) as f:
            history = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return RunResult(config, metrics, history, path)


def _num(v: str):
    try:
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    except ValueError:
        return v


def load_model(result: RunResult, device=None):
    """The trained network of a finished run, in eval mode."""
    from .models import build_model
    c = result.config
    if not result.has_weights:
        raise SambookError(f"{result.path.name} has no weights (model.pt is never committed); retrain it with "
                           f"python -m lib train ... or read its cached evaluations")
    state = torch.load(result.path / MODEL, map_location="cpu", weights_only=True)
    recorded = result.metrics.get("weights_sha")
    # the weights a run's results were made from, not others put in its folder (retrained weights of a
    # committed run must be the same bits); runs trained before the digest of tensors carry the file's
    digest = weights_sha(state) if recorded else None
    if recorded and recorded != digest and recorded != hashlib.sha1((result.path / MODEL).read_bytes()).hexdigest()[:16]:
        raise SambookError(f"{result.path.name}: model.pt (weights {digest}) is not the weights its results were "
                           f"made from (weights_sha {recorded} in metrics.json)")
    model = build_model(c.num_classes, c.width, c.dataset)
    model.load_state_dict(state)
    return model.to(device or "cpu", memory_format=torch.channels_last).eval()


def finished_runs(configs, data_root=None, runs_root=None) -> list[RunResult | None]:
    """The finished run of each config (None where there is none), without training anything.

    With no ``runs_root`` given, the run cache is searched first and then the results committed
    with the book (``<repo>/outputs/runs``), so that pointing ``$SAMBOOK_OUTPUTS`` or
    ``$SAMBOOK_RUNS`` elsewhere still finds them. An explicit ``runs_root`` is searched alone, and
    smoke runs (never committed) only in the run cache.
    """
    roots = [paths.runs_root(runs_root)]
    committed = paths.committed_runs_root().resolve()
    if runs_root is None and committed != roots[0]:
        roots.append(committed)
    out = []
    for c in configs:
        # a committed result is found even where its data is absent: try each source of the profile
        sources = get_profile(c.profile).sources if c.data_source == "auto" else (c.data_source,)
        here = roots[:1] if c.profile == "smoke" else roots
        paths_ = [run_dir(replace(c, data_source=s), root) for root in here for s in sources]
        done = [p for p in paths_ if is_finished(p)]
        out.append(load_run(done[0]) if done else None)
    return out
