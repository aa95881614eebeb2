"""Cached runs: a run is a pure function of its frozen config, stored under a hash of it.

    outputs/runs/<readable-name>-<config-hash>/
        config.json     the full config (written first)
        history.csv     one row per epoch
        metrics.json    final clean / robust accuracies, time, images/s, device, versions, commit
                        (written last and atomically: its presence means "finished")
        model.pt        final weights (gitignored)
        checkpoint.pt   last epoch's full state while the run is unfinished (gitignored)

A finished run is reused, never retrained; a failed run never touches a finished run's files.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import logging
import platform
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import paths
from .config import PROFILES, RunConfig
from .data import CifarData, find_source, load_dataset
from .errors import SambookError
from .evaluate import evaluate
from .io import atomic_write, read_json, write_json, write_text
from .methods import make_strategy
from .train import CHECKPOINT, default_device, train

log = logging.getLogger(__name__)
METRICS, CONFIG, HISTORY, MODEL = "metrics.json", "config.json", "history.csv", "model.pt"


@dataclass
class RunResult:
    config: RunConfig
    metrics: dict
    history: list
    path: Path

    def history_frame(self):
        import pandas as pd
        return pd.DataFrame(self.history)


def resolve(config: RunConfig, data_root=None, download: bool = False) -> RunConfig:
    """Fix ``data_source`` (``auto`` -> the first source of the profile's preference that exists)."""
    from .config import PROFILES
    sources = PROFILES[config.profile].sources if config.data_source == "auto" else (config.data_source,)
    source, _ = find_source(config.dataset, data_root, sources, download)
    return replace(config, data_source=source)


def run_dir(config: RunConfig, runs_root=None) -> Path:
    if config.data_source == "auto":
        raise SambookError("resolve the config's data source first (lib.runs.resolve)")
    return paths.runs_root(runs_root) / f"{config.name}-{config.config_hash()}"


def is_finished(path: Path) -> bool:
    return (Path(path) / METRICS).is_file()


_DATA_CACHE: dict = {}


def load_data_for(config: RunConfig, data_root=None, download: bool = False, device=None) -> CifarData:
    """The config's dataset and subset, loaded once per process and device."""
    key = (config.dataset, config.data_source, str(paths.data_root(data_root)), config.train_per_class,
           config.test_per_class, str(device))
    if key not in _DATA_CACHE:
        data = load_dataset(config.dataset, data_root, sources=(config.data_source,), download=download)
        data = data.subset(config.train_per_class, config.test_per_class, seed=0)
        _DATA_CACHE[key] = data.to(device) if device is not None else data
    return _DATA_CACHE[key]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "lib"], cwd=paths.REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _history_csv(history: list) -> str:
    if not history:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Use ``n`` torch threads inside the block (None: leave the setting alone)."""
    if not n:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run(config: RunConfig, data_root=None, runs_root=None, device=None, download: bool = False,
        progress: bool = True, retrain: bool = False, stop_after_epoch: int | None = None,
        compile_model: bool = False, need_model: bool = False) -> RunResult | None:
    """Train and evaluate ``config`` unless a finished run exists; return its :class:`RunResult`.

    ``need_model``: a finished run whose weights are missing (e.g. committed metrics of a GPU run,
    whose model.pt is never committed) is trained again so that :func:`load_model` works.
    Returns None if ``stop_after_epoch`` interrupted the run (its checkpoint is kept for a resume).
    """
    config = resolve(config, data_root, download) if config.data_source == "auto" else config
    path = run_dir(config, runs_root)
    if is_finished(path) and not retrain and not (need_model and not (path / MODEL).exists()):
        return load_run(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / CONFIG, config.to_dict())
    except OSError as e:
        raise SambookError(f"cannot write the run folder {path}: {e.strerror or e}") from None
    device = torch.device(device) if device is not None else default_device()
    data = load_data_for(config, data_root, download, device)
    cuda = device.type == "cuda"
    with cpu_threads(None if cuda else PROFILES[config.profile].cpu_threads):
        result = train(config, data, device=device, run_dir=path, progress=progress,
                       stop_after_epoch=stop_after_epoch, compile_model=compile_model)
        if not result.finished:
            return None
        t0 = time.perf_counter()
        final = evaluate(result.model, data.x_test, data.y_test, budgets=config.eval_budgets,
                         steps=config.eval_steps, seed=config.seed, autocast_dtype=torch.bfloat16 if cuda else None)
        final_eval_s = time.perf_counter() - t0
        device_text = device_name(device)
    metrics = {
        "name": config.name, "label": config.label, "config_hash": config.config_hash(),
        "method": config.method, "profile": config.profile, "dataset": config.dataset, "seed": config.seed,
        "data": data.describe(), "data_exact": data.exact,
        "train_images": len(data.y_train), "test_images": len(data.y_test),
        **{k: v for k, v in final.items()},
        "train_seconds": result.train_seconds, "curve_eval_seconds": result.eval_seconds,
        "final_eval_seconds": final_eval_s,
        "images_per_second": result.images_seen / result.train_seconds if result.train_seconds else None,
        "passes_per_step": make_strategy(config).passes_per_step(),
        "device": device_text, "torch": torch.__version__, "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(path / MODEL, lambda p: torch.save(result.model.state_dict(), p))
    write_text(path / HISTORY, _history_csv(result.history))
    write_json(path / METRICS, metrics)        # last: marks the run finished
    (path / CHECKPOINT).unlink(missing_ok=True)
    return load_run(path)


def load_run(path) -> RunResult:
    path = Path(path)
    if not is_finished(path):
        raise SambookError(f"{path} is not a finished run (no {METRICS})")
    config = RunConfig.from_dict(read_json(path / CONFIG))
    history = []
    if (path / HISTORY).exists():
        with open(path / HISTORY) as f:
            history = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return RunResult(config, read_json(path / METRICS), history, path)


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
    model = build_model(c.num_classes, c.width, c.dataset)
    model.load_state_dict(torch.load(result.path / MODEL, map_location="cpu", weights_only=True))
    return model.to(device or "cpu").eval()


def find_runs(runs_root=None, **filters) -> list[RunResult]:
    """Every finished run under the runs root whose metrics match ``filters`` (e.g. profile="fast")."""
    root = paths.runs_root(runs_root)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if is_finished(d):
            try:
                r = load_run(d)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("skipping unreadable run %s: %s", d, e)
                continue
            if all(r.metrics.get(k) == v for k, v in filters.items()):
                out.append(r)
    return out


def run_all(configs, data_root=None, runs_root=None, device=None, progress: bool = True, **kw) -> list[RunResult]:
    """Run (or load) every config in order: the local, sequential executor."""
    return [run(c, data_root=data_root, runs_root=runs_root, device=device, progress=progress, **kw)
            for c in configs]



def robustness_curve(result: RunResult, norm: str, eps_list, data_root=None, steps: int | None = None,
                     device=None):
    """Robust accuracy (%) against eps for a finished run, cached as ``curve-<norm>-<key>.csv`` in its folder.

    Step size eps/4 (``lib.attacks.eval_budget``, the book's evaluation); ``steps`` defaults to the
    config's eval_steps. Also gives the per-example running minimum over increasing eps (a model can
    never be more robust at a larger eps than at a smaller one). Returns a pandas DataFrame.
    """
    import pandas as pd

    from .attacks import eval_budget
    steps = result.config.eval_steps if steps is None else steps
    eps_list = sorted(float(e) for e in eps_list)
    cached = cached_curve(result, norm, eps_list, steps)
    if cached is not None:
        return cached
    cache, key = _curve_cache(result, norm, eps_list, steps)
    device = torch.device(device) if device is not None else default_device()
    model = load_model(result, device)
    data = load_data_for(result.config, data_root, device=device)
    budgets = tuple(eval_budget(norm, e) for e in eps_list)
    cuda = device.type == "cuda"
    with cpu_threads(None if cuda else PROFILES[result.config.profile].cpu_threads):
        r = evaluate(model, data.x_test, data.y_test, budgets=budgets, steps=steps, seed=result.config.seed,
                     autocast_dtype=torch.bfloat16 if cuda else None, per_example=True)
    running = r["natural_correct"].clone()
    rows = []
    for b in budgets:
        running &= r[f"{b.name}_correct"]
        rows.append({"label": result.config.label, "norm": norm, "eps_255": b.eps * 255, "robust_acc": r[b.name],
                     "running_min": 100.0 * running.float().mean().item()})
    df = pd.DataFrame(rows)
    atomic_write(cache, lambda p: df.assign(key=key).to_csv(p, index=False))
    return df


def _curve_cache(result: RunResult, norm: str, eps_list, steps: int):
    from .attacks import EVAL_STEP_DIVISOR
    eps_list = sorted(float(e) for e in eps_list)
    key = ",".join(f"{e * 255:.4g}" for e in eps_list) + f"|step eps/{EVAL_STEP_DIVISOR}|{steps}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]      # one file per (norm, eps list, steps)
    return result.path / f"curve-{norm}-{digest}.csv", key


def cached_curve(result: RunResult, norm: str, eps_list, steps: int | None = None):
    """The cached :func:`robustness_curve` of a run for exactly these eps and steps, else None."""
    import pandas as pd
    steps = result.config.eval_steps if steps is None else steps
    cache, key = _curve_cache(result, norm, eps_list, steps)
    if cache.exists():
        df = pd.read_csv(cache)
        if "key" in df and (df["key"] == key).all():
            return df.drop(columns="key")
    return None
