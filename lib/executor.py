"""Run executors: a grid of configs through the run cache, one after another or as Ray tasks.

Both executors sit behind the same cache (:mod:`lib.runs`): a config whose finished run exists is
loaded on the driver and never submitted; every other config is trained by ``lib.runs.run``, which
writes ``outputs/runs/<name>-<hash>/`` atomically and resumes an unfinished run from its last
epoch's ``checkpoint.pt``. So an interrupted grid, run again, redoes only what is missing.

- ``local`` (the default): on this machine. One run at a time in this process (what
  :func:`lib.runs.run_all` does), except on a CPU with a profile that fixes its threads per run
  (smoke: 1), where ``jobs`` runs train at once, each in its own process (``concurrent.futures``
  with spawned workers): 2 on a 2-core machine. ``jobs`` (or ``$SAMBOOK_JOBS``) overrides it; the
  numbers are the same either way, since each run uses the same thread count.
- ``ray``: each run is one Ray task asking for one GPU when the cluster has GPUs (else
  ``cpus_per_run`` CPUs). Ray is found through the standard ``RAY_ADDRESS`` (an existing cluster,
  e.g. after ``ray start --head``); without it a local Ray instance is started for the grid. The run
  folders and the data must be on a filesystem every node sees at the same path: the driver passes
  both roots to the tasks as absolute paths.

The executor is chosen by one setting: the ``executor`` argument, else ``$EXECUTOR``, else local.

Fault handling (both executors): a run that raises, or whose Ray worker dies, is tried again up to
``max_retries`` more times (resuming from its checkpoint); after that it is reported by name with its
last error in :attr:`GridReport.failed`, and the rest of the grid still finishes.

Example::

    from lib.config import paper_grid
    from lib.executor import run_grid
    report = run_grid(paper_grid("smoke"), executor="ray")
    report.raise_for_failures()          # or inspect report.failed
    accs = [r.metrics["natural"] for r in report.results]
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from . import paths, runs
from .config import RunConfig
from .errors import ConfigError, SambookError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_HINT = "pip install -r requirements-extra.txt (or: make env-extra)"


class GridError(SambookError):
    """Some runs of a grid did not finish; the message names each with its error."""


@dataclass
class GridReport:
    """What a grid produced.

    ``results`` is aligned with ``configs`` (the configs given, data source resolved): the finished
    :class:`lib.runs.RunResult` of each, or None where the run did not finish. ``failed`` maps the
    name of each run that failed after its retries to its last error.
    """

    configs: list
    results: list
    failed: dict = field(default_factory=dict)
    cached: list = field(default_factory=list)      # names of runs already finished before the grid
    trained: list = field(default_factory=list)     # names of runs this grid trained (or resumed) to the end
    attempts: dict = field(default_factory=dict)    # name -> attempts made by this grid
    executor: str = "local"
    wall_seconds: float = 0.0

    @property
    def missing(self) -> list[str]:
        """Names of the configs without a finished run (failed, or never reached)."""
        return [run_name(c, self.configs) for c, r in zip(self.configs, self.results) if r is None]

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def finished(self) -> list:
        return [r for r in self.results if r is not None]

    def summary(self) -> str:
        """One line: how many runs finished, were found in the cache, trained, failed."""
        s = (f"{len(self.configs)} runs ({self.executor} executor): {len(self.cached)} from the cache, "
             f"{len(self.trained)} trained, {len(self.failed)} failed, in {self.wall_seconds:.1f} s")
        other = len(self.missing) - len(self.failed)
        return s + (f", {other} not run" if other else "")

    def raise_for_failures(self) -> list:
        """The finished results, or a :class:`GridError` naming every run that did not finish."""
        if self.ok:
            return self.results
        lines = [f"{name}: {self.failed.get(name, 'not run')}" for name in self.missing]
        raise GridError(f"{len(lines)} of {len(self.configs)} runs did not finish:\n  " + "\n  ".join(lines))


def choose_executor(executor: str | None = None) -> str:
    """The executor's name: the argument, else ``$EXECUTOR``, else ``local``."""
    name = (executor or os.environ.get("EXECUTOR") or "local").strip().lower()
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    return name


def run_name(config: RunConfig, configs=()) -> str:
    """The name a grid reports a run under: ``config.name``, plus the hash if it is ambiguous in ``configs``."""
    same = {c.config_hash() for c in configs if c.name == config.name}
    return config.name if len(same) <= 1 else f"{config.name}-{config.config_hash()}"


def _run_config(config, data_root=None, runs_root=None, device=None, progress=False):
    """The default task: train (or resume) and evaluate one config through the cache."""
    return runs.run(config, data_root=data_root, runs_root=runs_root, device=device, progress=progress)


# The function every executor calls for one run. Tests swap it for one that injects faults; it is
# passed to Ray tasks by value, so a swapped function reaches the workers too.
_task_fn = _run_config


def _error_text(e: BaseException) -> str:
    cause = getattr(e, "cause", None)          # a RayTaskError wraps the task's own exception
    if isinstance(cause, BaseException):
        e = cause
    text = str(e).strip() or "(no message)"
    return f"{type(e).__name__}: {text}"


def _ray_task(task_fn, config, data_root, runs_root, threads):
    """Body of one Ray task: run the config and return its run folder (a path on the shared filesystem)."""
    import torch
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(threads)        # one thread per requested CPU: no oversubscription
    result = task_fn(config, data_root=data_root, runs_root=runs_root, device=None, progress=False)
    return None if result is None else str(result.path)


class _Bar:
    """The grid's progress: a tqdm bar over runs with done / running / failed in its postfix."""

    def __init__(self, total: int, cached: int, enabled: bool, executor: str):
        self.bar = tqdm(total=total, initial=cached, desc=f"grid ({executor})", unit="run", disable=not enabled)
        self.cached = cached
        self.last = None

    def show(self, done: int, running: int, failed: int, queued: int = 0):
        state = (done, running, failed, queued)
        if state == self.last:          # redraw on change only (log files stay short)
            return
        self.last = state
        self.bar.n = done + failed
        post = dict(done=done, running=running, failed=failed)
        if queued:
            post["queued"] = queued
        if self.cached:
            post["cached"] = self.cached
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self):
        self.bar.close()


def run_grid(configs, executor: str | None = None, data_root=None, runs_root=None, device=None,
             max_retries: int = 2, progress: bool = True, download: bool = False, cpus_per_run: int = 1,
             gpus_per_run: float = 1.0, ray_address: str | None = None, ray_init: dict | None = None,
             jobs: int | None = None) -> GridReport:
    """Run (or load) every config through the run cache with the chosen executor.

    Args:
        configs: :class:`RunConfig` s, e.g. :func:`lib.config.paper_grid`; duplicates run once.
        executor: ``local`` | ``ray``; None reads ``$EXECUTOR`` (default local).
        data_root, runs_root: as in :func:`lib.runs.run`; resolved here to absolute paths, which
            every Ray node must see (a shared filesystem).
        device: the local executor's device (None: CUDA if available). Ray gives each task its GPU.
        max_retries: further attempts after a failure or a worker's death (total 1 + max_retries).
        cpus_per_run: CPUs per Ray task on a cluster without GPUs (also its torch threads).
        gpus_per_run: GPUs per Ray task when the cluster has GPUs (0.5 packs two small runs per GPU).
        ray_address: a Ray cluster to connect to; None uses ``$RAY_ADDRESS``, else Ray's default
            (a cluster started on this machine with ``ray start --head``, else a new local instance).
        ray_init: extra keyword arguments for ``ray.init`` (e.g. ``num_cpus=2`` for a local instance).
            Ignored when Ray is already initialised in this process.
        jobs: runs at once for the local executor (None: ``$SAMBOOK_JOBS``, else :func:`local_jobs`).

    Returns a :class:`GridReport`; it never raises for a failed run (see ``report.failed`` and
    :meth:`GridReport.raise_for_failures`).
    """
    name = choose_executor(executor)
    if max_retries < 0:
        raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
    if name == "ray" and device is not None:
        raise ConfigError("device applies to the local executor; Ray gives each run its own GPU "
                          "(or CPUs on a cluster without GPUs)")
    t0 = time.perf_counter()
    data_root = str(paths.data_root(data_root))
    runs_root = str(paths.runs_root(runs_root))
    configs = [runs.resolve(c, data_root, download) if c.data_source == "auto" else c for c in configs]
    report = GridReport(configs=configs, results=[None] * len(configs), executor=name)

    # One job per distinct run folder; finished runs are loaded here and never submitted.
    folders: dict[Path, list[int]] = {}
    for i, c in enumerate(configs):
        folders.setdefault(runs.run_dir(c, runs_root), []).append(i)
    todo = []
    for path, idx in folders.items():
        if runs.is_finished(path):
            try:
                res = runs.load_run(path)
            except (OSError, ValueError, KeyError, TypeError, SambookError) as e:
                report.failed[run_name(configs[idx[0]], configs)] = f"unreadable finished run {path}: {e}"
                continue
            for i in idx:
                report.results[i] = res
            report.cached.append(run_name(configs[idx[0]], configs))
        else:
            todo.append(idx)
    if todo:
        _prepare_data([configs[idx[0]] for idx in todo], data_root, download, decode=name == "ray")

    bar = _Bar(len(folders), len(report.cached), progress, name)
    try:
        if name == "local":
            n_jobs = local_jobs([configs[idx[0]] for idx in todo], device, jobs)
            if n_jobs > 1:
                _run_local_parallel(todo, report, data_root, runs_root, device, max_retries, n_jobs, bar)
            else:
                _run_local(todo, report, data_root, runs_root, device, max_retries, progress, bar)
        else:
            _run_ray(todo, report, data_root, runs_root, max_retries, cpus_per_run, gpus_per_run, ray_address,
                     ray_init or {}, bar)
    finally:
        bar.close()
        report.wall_seconds = time.perf_counter() - t0
    log.info("%s", report.summary())
    return report


def _prepare_data(configs, data_root, download: bool, decode: bool):
    """Download (if asked) and, for parallel tasks, decode each dataset once here on the driver, so that
    the tasks never download or decode the same files at the same time (they read the decoded cache)."""
    from .data import load_dataset
    for dataset, source in sorted({(c.dataset, c.data_source) for c in configs}):
        if (download and source == "official") or (decode and source != "npz"):
            load_dataset(dataset, data_root, sources=(source,), download=download)


def _log_failure(key, attempt, max_retries, err):
    then = "retrying" if attempt <= max_retries else "giving up"
    log.warning("run %s failed (attempt %d of %d), %s: %s", key, attempt, max_retries + 1, then, err)


def _finish(report, idx, result, attempts):
    key = run_name(report.configs[idx[0]], report.configs)
    report.attempts[key] = attempts
    if result is not None:
        report.trained.append(key)
    for i in idx:
        report.results[i] = result


def _run_local(todo, report, data_root, runs_root, device, max_retries, progress, bar):
    done = len(report.cached)
    for idx in todo:
        config = report.configs[idx[0]]
        key = run_name(config, report.configs)
        bar.show(done, 1, len(report.failed))
        for attempt in range(1, max_retries + 2):
            try:
                result = _task_fn(config, data_root=data_root, runs_root=runs_root, device=device,
                                  progress=progress)
            except Exception as e:  # noqa: BLE001 - any failure of one run is reported, never fatal
                err = _error_text(e)
                report.attempts[key] = attempt
                _log_failure(key, attempt, max_retries, err)
                if attempt > max_retries:
                    report.failed[key] = err
                continue
            _finish(report, idx, result, attempt)
            done += result is not None
            break
        bar.show(done, 0, len(report.failed))


def local_jobs(configs, device=None, jobs: int | None = None) -> int:
    """How many runs the local executor trains at once.

    ``jobs``, else ``$SAMBOOK_JOBS``, else: 1 on a GPU or when a profile leaves the CPU threads to
    torch; otherwise as many as the CPU cores allow at the profile's threads per run.
    """
    import torch
    if jobs is None and os.environ.get("SAMBOOK_JOBS", "").strip():
        text = os.environ["SAMBOOK_JOBS"].strip()
        try:
            jobs = int(text)
        except ValueError:
            raise ConfigError(f"SAMBOOK_JOBS must be a positive integer, got {text!r}") from None
    if jobs is not None:
        if jobs < 1:
            raise ConfigError(f"jobs must be a positive integer, got {jobs}")
        return max(1, min(jobs, len(configs)))
    from .config import PROFILES
    on_cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    threads = {PROFILES[c.profile].cpu_threads for c in configs}
    if not configs or not on_cpu or None in threads:
        return 1
    return max(1, min(len(configs), (os.cpu_count() or 1) // max(threads)))


def _pool_task(task_fn, config, data_root, runs_root, device):
    """Body of one local worker process: run the config, return its run folder."""
    result = task_fn(config, data_root=data_root, runs_root=runs_root, device=device, progress=False)
    return None if result is None else str(result.path)


def _run_local_parallel(todo, report, data_root, runs_root, device, max_retries, n_jobs, bar):
    """The local executor with ``n_jobs`` worker processes; retries as in the sequential one.

    At most ``n_jobs`` runs are submitted at a time, so a worker that dies (and breaks the pool)
    costs an attempt only to the runs that were running; they go to a new pool and resume from their
    checkpoints.
    """
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    queue = deque((idx, 1) for idx in todo)    # (indices into configs, attempt)
    done = len(report.cached)
    ctx = mp.get_context("spawn")              # no fork of a process that holds torch's thread pools
    while queue:
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
            pending = {}
            broken = False
            try:
                while pending or (queue and not broken):
                    while queue and not broken and len(pending) < n_jobs:
                        idx, attempt = queue.popleft()
                        fut = pool.submit(_pool_task, _task_fn, report.configs[idx[0]], data_root, runs_root,
                                          device)
                        pending[fut] = (idx, attempt)
                    bar.show(done, len(pending), len(report.failed), len(queue))
                    ready, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in ready:
                        idx, attempt = pending.pop(fut)
                        key = run_name(report.configs[idx[0]], report.configs)
                        try:
                            path = fut.result()
                            result = runs.load_run(path) if path is not None else None
                        except Exception as e:  # noqa: BLE001 - a run's error or a dead worker
                            broken = broken or isinstance(e, BrokenProcessPool)
                            err = _error_text(e)
                            report.attempts[key] = attempt
                            _log_failure(key, attempt, max_retries, err)
                            if attempt > max_retries:
                                report.failed[key] = err
                            else:
                                queue.append((idx, attempt + 1))
                            continue
                        _finish(report, idx, result, attempt)
                        done += result is not None
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    bar.show(done, 0, len(report.failed))


def _curve_task(path: str, norm: str, eps_list, data_root, device):
    """Body of one curve worker: the curve of the run at ``path`` (cached in its folder)."""
    return runs.robustness_curve(runs.load_run(path), norm, eps_list, data_root=data_root, device=device)


def curves(results, specs, data_root=None, device=None, jobs: int | None = None):
    """:func:`lib.runs.robustness_curve` for every run in ``results`` and every (norm, eps_list) in ``specs``.

    Returns one DataFrame (runs in the given order, then specs). Cached curves are read here; the
    others are computed, on a CPU with a profile that fixes its threads per run (smoke) several at
    once in spawned worker processes (:func:`local_jobs` of them), each at the profile's thread
    count, so the numbers are those of a computation in this process. A run with no weights (for
    example committed GPU metrics) and no cached curve is left out.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

    frames, todo = {}, []
    for i, r in enumerate(results):
        for j, (norm, eps_list) in enumerate(specs):
            hit = runs.cached_curve(r, norm, eps_list)
            if hit is not None:
                frames[i, j] = hit
            elif (r.path / runs.MODEL).exists():
                todo.append((i, j))
    n_jobs = local_jobs([results[i].config for i, _ in todo], device=device, jobs=jobs) if todo else 1
    if n_jobs > 1:
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {(i, j): pool.submit(_curve_task, str(results[i].path), specs[j][0], list(specs[j][1]),
                                           data_root, device) for i, j in todo}
            frames.update({k: f.result() for k, f in futures.items()})
    else:
        for i, j in todo:
            frames[i, j] = runs.robustness_curve(results[i], specs[j][0], specs[j][1], data_root=data_root,
                                                 device=device)
    parts = [frames[k] for k in sorted(frames)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["label", "norm", "eps_255", "robust_acc", "running_min"])


def _connect_ray(address, init_kwargs, attempts: int = 3) -> bool:
    """Initialise Ray unless it already is; True when this call started it (so it shuts it down).

    Starting a local instance is tried ``attempts`` times: on an overloaded machine Ray's node can time
    out while its agents start (ray-project/ray#65983), and a second try usually succeeds.
    """
    try:
        import ray
    except ImportError:
        raise SambookError(f"the ray executor needs the optional ray package: {RAY_HINT}") from None
    if ray.is_initialized():
        return False
    kwargs = dict(init_kwargs)
    address = kwargs.pop("address", None) or address or os.environ.get("RAY_ADDRESS") or None
    # the workers see the driver's SAMBOOK_* settings (e.g. the decoded-data cache), wherever they run
    env = {k: v for k, v in os.environ.items() if k.startswith("SAMBOOK_")}
    if env and "runtime_env" not in kwargs:
        kwargs["runtime_env"] = {"env_vars": env}
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, **kwargs)
            return True
        except ConnectionError as e:
            raise SambookError(f"cannot connect to the Ray cluster at {address}: {e}") from None
        except Exception as e:  # noqa: BLE001 - Ray reports a failed node start as a bare Exception
            ray.shutdown()
            if attempt == attempts or address not in (None, "local"):
                raise SambookError(f"could not start Ray ({e}); see the raylet log under /tmp/ray/session_latest/"
                                   f"logs, or start it yourself with `ray start --head` and run again") from None
            log.warning("starting Ray failed (attempt %d of %d), trying again: %s", attempt, attempts, e)
    return True


_REMOTE = None


def _remote():
    global _REMOTE
    if _REMOTE is None:
        import ray
        # Retries are counted by run_grid itself (the same for a raised error and a dead worker).
        _REMOTE = ray.remote(max_retries=0, retry_exceptions=False)(_ray_task)
    return _REMOTE


def _run_ray(todo, report, data_root, runs_root, max_retries, cpus_per_run, gpus_per_run, address, init_kwargs,
             bar):
    if not todo:
        return
    started = _connect_ray(address, init_kwargs)
    import ray
    pending: dict = {}           # object ref -> (indices into configs, attempt)
    try:
        total = ray.cluster_resources()
        if total.get("GPU", 0) > 0:
            opts, threads = dict(num_gpus=gpus_per_run, num_cpus=1), 0
            slots = int(total["GPU"] // gpus_per_run) if gpus_per_run else len(todo)
        else:
            opts, threads = dict(num_cpus=cpus_per_run), cpus_per_run
            slots = int(total.get("CPU", 1) // cpus_per_run) if cpus_per_run else len(todo)
        log.info("ray: %s per run, about %d at a time", opts, max(slots, 1))
        remote = _remote().options(**opts)

        def submit(idx, attempt):
            ref = remote.remote(_task_fn, report.configs[idx[0]], data_root, runs_root, threads)
            pending[ref] = (idx, attempt)

        for idx in todo:
            submit(idx, 1)
        done = len(report.cached)
        while pending:
            running = min(len(pending), max(slots, 1))
            bar.show(done, running, len(report.failed), len(pending) - running)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                idx, attempt = pending.pop(ref)
                key = run_name(report.configs[idx[0]], report.configs)
                try:
                    path = ray.get(ref)
                    if path is not None and not runs.is_finished(path):
                        report.attempts[key] = attempt
                        report.failed[key] = (f"finished on a Ray worker but {path} is not visible here: the runs "
                                              f"root must be on a filesystem shared by every node, at the same path")
                        continue
                    result = runs.load_run(path) if path is not None else None
                except Exception as e:  # noqa: BLE001 - task error, dead worker or unreadable result
                    err = _error_text(e)
                    report.attempts[key] = attempt
                    _log_failure(key, attempt, max_retries, err)
                    if attempt <= max_retries:
                        submit(idx, attempt + 1)
                    else:
                        report.failed[key] = err
                    continue
                _finish(report, idx, result, attempt)
                done += result is not None
        bar.show(done, 0, len(report.failed))
    except BaseException:
        for ref in list(pending):          # stop the workers; their checkpoints stay for a resume
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
