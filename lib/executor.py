"""Run executors: one driver over futures, three backends, one retry policy.

Every grid goes through the run cache (:mod:`lib.runs`): a config whose finished run exists is
loaded here and never submitted; every other config becomes a task that trains it (resuming an
unfinished run from its last epoch's ``checkpoint.pt``), then evaluates it under its profile's
protocols and computes its probes. So an interrupted grid, run again, redoes only what is missing.

Backends (the driver, :func:`map_tasks`, does not care which):

- ``inline``: in this process, one task after another.
- ``process``: ``jobs`` spawned worker processes (``concurrent.futures``). The local executor uses
  it on a CPU when the profile fixes the threads per run (smoke, cpu: 1), so several runs train at
  once with the same arithmetic as one at a time.
- ``ray``: one Ray task per run asking for one GPU when the cluster has GPUs (else ``cpus_per_run``
  CPUs), through ``RAY_ADDRESS`` or a local instance. The run folders and the data must be on a
  filesystem every node sees at the same path.

The executor is chosen by one setting: the ``executor`` argument, else ``$EXECUTOR``, else local.

Retry policy (every backend): a task that raises, or whose worker dies, is tried again up to
``max_retries`` more times (resuming from its checkpoint); after that it is reported by name with
its last error in :attr:`GridReport.failed`, and the rest of the grid still finishes. At most as
many tasks as there are workers are in flight, so a dead worker costs an attempt only to the runs
that were running.

Example::

    from lib.config import paper_grid
    from lib.executor import run_grid
    report = run_grid(paper_grid("smoke"))
    report.raise_for_failures()
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from . import paths, runs
from .config import RunConfig, profile as get_profile
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


def finish_run(result, data_root=None, device=None) -> None:
    """What follows training: the profile's evaluation protocols and the run's probes (all cached)."""
    from . import probes, protocols
    from .autoattack import available
    for name, n, seeds in get_profile(result.config.profile).protocols_for(result.config):
        if seeds is not None and result.config.seed not in seeds:
            continue
        if name in ("autoattack", "apgd-ce") and not available():
            # info, not a warning: a chapter's output must not depend on whether the optional extra is installed
            log.info("%s: AutoAttack protocol skipped (%s)", result.path.name, RAY_HINT.replace("ray", "extras"))
            continue
        protocols.evaluate_run(result, name, n=n, data_root=data_root, device=device)
    for name in probes.default_probes(result.config):
        probes.probe(result, name, data_root=data_root, device=device)


def _run_config(config, data_root=None, runs_root=None, device=None, progress=False, finish=True):
    """The default task: train (or resume) one config through the cache, then evaluate and probe it."""
    result = runs.run(config, data_root=data_root, runs_root=runs_root, device=device, progress=progress)
    if result is not None and finish:
        finish_run(result, data_root, device)
    return result


def train_only(config, data_root=None, runs_root=None, device=None, progress=False):
    """A task that trains (or resumes) one config and leaves evaluation for later."""
    return _run_config(config, data_root, runs_root, device, progress, finish=False)


# The function every executor calls for one run. Tests swap it for one that injects faults; it is
# passed to workers by value, so a swapped function reaches them too.
_task_fn = _run_config


def _error_text(e: BaseException) -> str:
    cause = getattr(e, "cause", None)          # a RayTaskError wraps the task's own exception
    if isinstance(cause, BaseException):
        e = cause
    text = str(e).strip() or "(no message)"
    return f"{type(e).__name__}: {text}"


# --------------------------------------------------------------------------------------------------
# Backends: something with submit(fn, *args) -> Future, slots, reset() and close()


class InlineBackend:
    """Runs each task at once, in this process; its futures are already done."""

    slots = 1

    def submit(self, fn, *args):
        fut = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 - handed to the driver's retry policy
            fut.set_exception(e)
        return fut

    def reset(self):
        pass

    def close(self):
        pass


class ProcessBackend:
    """``jobs`` spawned worker processes (no fork of a process that holds torch's thread pools)."""

    def __init__(self, jobs: int):
        import multiprocessing as mp
        self.slots = jobs
        self._ctx = mp.get_context("spawn")
        self._pool = None

    def submit(self, fn, *args):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.slots, mp_context=self._ctx)
        return self._pool.submit(fn, *args)

    def reset(self):
        """After a worker died the pool is broken: the next submit starts a new one."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


class RayBackend:
    """Ray tasks (one GPU each when the cluster has GPUs, else ``cpus_per_run`` CPUs); futures via ObjectRef.future()."""

    def __init__(self, cpus_per_run=1, gpus_per_run=1.0, address=None, init_kwargs=None):
        self._started = _connect_ray(address, init_kwargs or {})
        import ray
        self._ray = ray
        total = ray.cluster_resources()
        if total.get("GPU", 0) > 0:
            self.opts, self.threads = dict(num_gpus=gpus_per_run, num_cpus=1), 0
            self.slots = max(1, int(total["GPU"] // gpus_per_run)) if gpus_per_run else 64
        else:
            self.opts, self.threads = dict(num_cpus=cpus_per_run), cpus_per_run
            self.slots = max(1, int(total.get("CPU", 1) // cpus_per_run)) if cpus_per_run else 64
        log.info("ray: %s per run, about %d at a time", self.opts, self.slots)
        # retries are counted by the driver (the same for a raised error and a dead worker)
        self._remote = ray.remote(max_retries=0, retry_exceptions=False)(_threaded_task).options(**self.opts)
        self._refs = []

    def submit(self, fn, *args):
        ref = self._remote.remote(self.threads, fn, *args)
        self._refs.append(ref)
        return ref.future()

    def reset(self):
        pass

    def close(self, cancel: bool = False):
        if cancel:
            for ref in self._refs:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort; checkpoints stay for a resume
                    pass
        if self._started:
            self._ray.shutdown()


def _threaded_task(threads, fn, *args):
    """Body of a Ray task: one torch thread per requested CPU (no oversubscription), then the task."""
    import torch
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(threads)
    return fn(*args)


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


# --------------------------------------------------------------------------------------------------
# The driver


@dataclass
class TaskReport:
    results: list
    failed: dict = field(default_factory=dict)      # index -> last error text
    attempts: dict = field(default_factory=dict)    # index -> attempts made


def map_tasks(backend, fn, arglist, names=None, max_retries: int = 2, check=None, on_done=None) -> TaskReport:
    """Run ``fn(*args)`` for every ``args`` in ``arglist`` on ``backend`` with the retry policy.

    ``check(result)`` may raise to turn a returned value into a failure (e.g. a run folder another
    node wrote but this one cannot see). ``on_done(i, result)`` is called as each task finishes.
    """
    if max_retries < 0:
        raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
    names = names or [str(i) for i in range(len(arglist))]
    report = TaskReport(results=[None] * len(arglist))
    queue = deque((i, 1) for i in range(len(arglist)))
    pending: dict = {}
    try:
        while queue or pending:
            while queue and len(pending) < backend.slots:
                i, attempt = queue.popleft()
                pending[backend.submit(fn, *arglist[i])] = (i, attempt)
            ready, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in ready:
                i, attempt = pending.pop(fut)
                report.attempts[i] = attempt
                try:
                    result = fut.result()
                    if check is not None:
                        result = check(result)
                except Exception as e:  # noqa: BLE001 - a task's error or a dead worker: the retry policy
                    if isinstance(e, BrokenProcessPool):
                        backend.reset()
                    err = _error_text(e)
                    then = "retrying" if attempt <= max_retries else "giving up"
                    log.warning("%s failed (attempt %d of %d), %s: %s", names[i], attempt, max_retries + 1, then, err)
                    if attempt <= max_retries:
                        queue.append((i, attempt + 1))
                    else:
                        report.failed[i] = err
                    continue
                report.results[i] = result
                if on_done is not None:
                    on_done(i, result)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    return report


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
        if not isinstance(jobs, int) or jobs < 1:
            raise ConfigError(f"jobs must be a positive integer, got {jobs}")
        return max(1, min(jobs, len(configs) or 1))
    on_cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    threads = {get_profile(c.profile).cpu_threads for c in configs}
    if not configs or not on_cpu or None in threads:
        return 1
    return max(1, min(len(configs), (os.cpu_count() or 1) // max(threads)))


def make_backend(name: str, configs, device=None, jobs=None, cpus_per_run=1, gpus_per_run=1.0, ray_address=None,
                 ray_init=None):
    if name == "ray":
        return RayBackend(cpus_per_run, gpus_per_run, ray_address, ray_init)
    n = local_jobs(configs, device, jobs)
    return ProcessBackend(n) if n > 1 else InlineBackend()


class _Bar:
    """The grid's progress: a tqdm bar over runs with done / running / failed in its postfix."""

    def __init__(self, total: int, cached: int, enabled: bool, executor: str):
        self.bar = tqdm(total=total, initial=cached, desc=f"grid ({executor})", unit="run", disable=not enabled)
        self.cached = cached

    def step(self, failed: int):
        self.bar.update(1)
        post = {"failed": failed}
        if self.cached:
            post["cached"] = self.cached
        self.bar.set_postfix(post)

    def close(self):
        self.bar.close()


def _path_task(task_fn, config, data_root, runs_root, device, progress):
    """Body of one task in any backend: run the config, return its run folder (a path every node sees)."""
    result = task_fn(config, data_root=data_root, runs_root=runs_root, device=device, progress=progress)
    return None if result is None else str(result.path)


def run_grid(configs, executor: str | None = None, data_root=None, runs_root=None, device=None,
             max_retries: int = 2, progress: bool = True, download: bool = False, cpus_per_run: int = 1,
             gpus_per_run: float = 1.0, ray_address: str | None = None, ray_init: dict | None = None,
             jobs: int | None = None) -> GridReport:
    """Run (or load) every config through the run cache with the chosen executor; see the module docstring.

    Args:
        configs: :class:`RunConfig` s, e.g. :func:`lib.config.paper_grid`; duplicates run once.
        executor: ``local`` | ``ray``; None reads ``$EXECUTOR`` (default local).
        data_root, runs_root: as in :func:`lib.runs.run`; resolved here to absolute paths.
        device: the local executor's device (None: CUDA if available). Ray gives each task its GPU.
        max_retries: further attempts after a failure or a worker's death (total 1 + max_retries).
        cpus_per_run / gpus_per_run: resources of one Ray task.
        ray_address / ray_init: the Ray cluster (None: ``$RAY_ADDRESS`` or a local instance) and extra
            ``ray.init`` arguments.
        jobs: runs at once for the local executor (None: ``$SAMBOOK_JOBS``, else :func:`local_jobs`).

    Returns a :class:`GridReport`; it never raises for a failed run.
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
    configs = [runs.resolve(c, data_root, download) for c in configs]
    report = GridReport(configs=configs, results=[None] * len(configs), executor=name)

    # One task per distinct run folder; finished runs are loaded here and never submitted.
    folders: dict[Path, list[int]] = {}
    for i, c in enumerate(configs):
        folders.setdefault(runs.run_dir(c, runs_root), []).append(i)
    todo = []
    for path, idx in folders.items():
        key = run_name(configs[idx[0]], configs)
        if runs.is_finished(path):
            try:
                res = runs.load_run(path)
            except SambookError as e:
                report.failed[key] = str(e)
                continue
            for i in idx:
                report.results[i] = res
            report.cached.append(key)
        else:
            todo.append(idx)
    if todo:
        _prepare_data([configs[idx[0]] for idx in todo], data_root, download, decode=True)
        # the costliest runs first: with several workers the grid then ends with short runs, not a long tail
        todo.sort(key=lambda idx: -configs[idx[0]].spec.forward_equivalents(configs[idx[0]]) * configs[idx[0]].epochs)
    bar = _Bar(len(folders), len(report.cached), progress, name)
    try:
        if todo:
            todo_configs = [configs[idx[0]] for idx in todo]
            backend = make_backend(name, todo_configs, device, jobs, cpus_per_run, gpus_per_run, ray_address,
                                   ray_init)
            inline = isinstance(backend, InlineBackend)
            args = [(_task_fn, c, data_root, runs_root, device, progress and inline) for c in todo_configs]
            keys = [run_name(c, configs) for c in todo_configs]

            def check(path):
                if path is not None and not runs.is_finished(path):
                    raise SambookError(f"finished on a worker but {path} is not visible here: the runs root must "
                                       f"be on a filesystem shared by every node, at the same path")
                return runs.load_run(path) if path is not None else None

            try:
                tr = map_tasks(backend, _path_task, args, names=keys, max_retries=max_retries, check=check,
                               on_done=lambda i, r: bar.step(len(report.failed)))
            except BaseException:
                backend.close(**({"cancel": True} if name == "ray" else {}))
                raise
            backend.close()
            for j, idx in enumerate(todo):
                report.attempts[keys[j]] = tr.attempts.get(j, 0)
                if j in tr.failed:
                    report.failed[keys[j]] = tr.failed[j]
                elif tr.results[j] is not None:
                    report.trained.append(keys[j])
                    for i in idx:
                        report.results[i] = tr.results[j]
    finally:
        bar.close()
        report.wall_seconds = time.perf_counter() - t0
    log.info("%s", report.summary())
    return report


def _prepare_data(configs, data_root, download: bool, decode: bool):
    """Download (if asked) and decode each dataset once here on the driver, so that parallel tasks
    never download or decode the same files at the same time (they read the decoded cache)."""
    from .data import load_dataset
    for dataset, source in sorted({(c.dataset, c.data_source) for c in configs}):
        if (download and source == "official") or (decode and source != "npz"):
            load_dataset(dataset, data_root, sources=(source,), download=download)


def _probe_task(path, names, data_root, device):
    from . import probes
    r = runs.load_run(path)
    return {n: probes.probe(r, n, data_root=data_root, device=device) for n in names}


def probe_runs(results, names, data_root=None, device=None, jobs: int | None = None) -> list[dict]:
    """:func:`lib.probes.probe` of every run in ``results`` for every probe in ``names``, with the same
    driver (several at once on a CPU profile with fixed threads). Runs whose probe is neither cached
    nor computable (no weights) get an empty dict. Returns one {name: rows} per run."""
    from . import probes
    out, todo = [], []
    for i, r in enumerate(results):
        have = {}
        for n in names:
            try:
                have[n] = probes.probe(r, n, data_root=data_root, device=device) if not r.has_weights else None
            except SambookError:
                have[n] = None
        out.append({k: v for k, v in have.items() if v is not None})
        if r.has_weights:
            todo.append(i)
    if todo:
        backend = make_backend("local", [results[i].config for i in todo], device, jobs)
        tr = map_tasks(backend, _probe_task, [(str(results[i].path), list(names), data_root, device) for i in todo],
                       names=[results[i].path.name for i in todo], max_retries=0)
        backend.close()
        for j, i in enumerate(todo):
            if tr.results[j] is not None:
                out[i] = tr.results[j]
            elif j in tr.failed:
                raise SambookError(f"probe of {results[i].path.name} failed: {tr.failed[j]}")
    return out
