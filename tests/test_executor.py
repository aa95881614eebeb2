"""The run executors (lib.executor): the local one and Ray, behind the same run cache.

Tiny configs (one or two epochs of 200 images, width 8) on the real byte-exact CIFAR-10 subset. The
Ray tests start one real local Ray instance with 2 CPUs (a task per CPU); they are marked ``ray`` and
skipped when ray is not installed. Faults are injected by swapping ``lib.executor._task_fn`` (passed
to the Ray tasks by value), never through the config: the config and its hash stay the real ones.
"""
from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

from lib import executor, runs
from lib.config import make_config
from lib.errors import ConfigError

TINY = dict(epochs=1, train_per_class=20, data_source="npz")


def tiny(method="st", seed=0, **over):
    return make_config(method, "smoke", seed=seed, **{**TINY, **over})


def tiny_grid():
    return [tiny("st"), tiny("sam", rho=0.1), tiny("at", norm="linf", eps=8 / 255), tiny("at", norm="l2", eps=128 / 255)]


@pytest.fixture(autouse=True)
def train_only(monkeypatch):
    """The grids here only train: evaluation is the protocols' business (tests/test_protocols.py)."""
    monkeypatch.setattr(executor, "_task_fn", executor.train_only)


@pytest.fixture(autouse=True)
def one_thread():
    """Sequential runs with 1 torch thread, as each Ray CPU task gets: the same arithmetic, bit for bit
    (and no oversubscription of the 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray executor needs the optional ray extra "
                                            "(pip install -r requirements-extra.txt)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_raylet_start_wait_time_s", "180")     # a loaded shared machine starts slowly
        executor._connect_ray(None, dict(address="local", num_cpus=2, object_store_memory=100 * 2**20,
                                         include_dashboard=False, log_to_driver=False))
    yield ray
    ray.shutdown()


def _weights(result):
    return torch.load(result.path / runs.MODEL, map_location="cpu", weights_only=True)


def _accuracies(result):
    return {k: result.metrics[k] for k in ("config_hash", "weights_sha", "train_images")}


def _history(result, keys=("epoch", "train_loss", "train_acc", "test_acc")):
    return [{k: row[k] for k in keys} for row in result.history]


# -- choosing the executor ------------------------------------------------------------------------

def test_executor_from_argument_else_env_else_local(monkeypatch):
    monkeypatch.delenv("EXECUTOR", raising=False)
    assert executor.choose_executor() == "local"
    monkeypatch.setenv("EXECUTOR", "Ray")
    assert executor.choose_executor() == "ray"
    assert executor.choose_executor("local") == "local"
    with pytest.raises(ConfigError, match="valid executors: local, ray"):
        executor.choose_executor("slurm")


def test_runs_are_named_by_config_name_and_by_hash_only_when_ambiguous():
    a, b, c = tiny("st"), tiny("st", lr=0.05), tiny("sam")
    assert executor.run_name(c, [a, b, c]) == c.name
    assert executor.run_name(a, [a, b, c]) == f"{a.name}-{a.config_hash()}" != executor.run_name(b, [a, b, c])


# -- local executor ---------------------------------------------------------------------------------

def test_local_grid_resumes_finished_and_checkpointed_runs(tmp_path, monkeypatch, caplog):
    done, fresh, cut = tiny("st"), tiny("sam"), tiny("st", seed=1, epochs=2)
    first = runs.run(done, runs_root=tmp_path, progress=False)
    assert runs.run(cut, runs_root=tmp_path, progress=False, stop_after_epoch=1) is None
    assert (runs.run_dir(cut, tmp_path) / "checkpoint.pt").exists()
    mtime = (first.path / runs.METRICS).stat().st_mtime_ns

    calls = []
    real = executor._task_fn

    def counting(config, **kw):
        calls.append(config.name)
        return real(config, **kw)

    monkeypatch.setattr(executor, "_task_fn", counting)
    with caplog.at_level(logging.INFO, logger="lib.train"):
        report = executor.run_grid([done, fresh, cut, done], executor="local", runs_root=tmp_path, progress=False,
                                   jobs=1)

    assert report.ok and report.failed == {} and report.missing == []
    assert calls == [fresh.name, cut.name]                  # the finished run is not trained again
    assert report.cached == [done.name] and report.trained == [fresh.name, cut.name]
    assert (first.path / runs.METRICS).stat().st_mtime_ns == mtime
    assert report.results[0].path == report.results[3].path == first.path
    assert f"resumed {cut.name} at epoch 1" in caplog.text    # from its checkpoint, not from scratch
    assert not (runs.run_dir(cut, tmp_path) / "checkpoint.pt").exists()

    # the resumed run is the run that was never interrupted
    whole = runs.run(cut, runs_root=tmp_path / "whole", progress=False)
    resumed = report.results[2]
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert _history(resumed) == _history(whole)
    assert all(torch.equal(a, b) for a, b in zip(_weights(resumed).values(), _weights(whole).values()))


def test_local_failure_is_retried_then_reported_by_name(tmp_path, monkeypatch):
    ok, bad = tiny("st"), tiny("sam")
    real = executor._task_fn
    tries = []

    def broken_sam(config, **kw):
        if config.method == "sam":
            tries.append(1)
            raise RuntimeError("injected failure")
        return real(config, **kw)

    monkeypatch.setattr(executor, "_task_fn", broken_sam)
    report = executor.run_grid([bad, ok], executor="local", runs_root=tmp_path, max_retries=1, progress=False,
                               jobs=1)
    assert len(tries) == 2 and report.attempts[bad.name] == 2
    assert report.failed == {bad.name: "RuntimeError: injected failure"}
    assert report.missing == [bad.name] and report.results[0] is None
    assert report.results[1] is not None and runs.is_finished(report.results[1].path)
    with pytest.raises(executor.GridError, match="injected failure"):
        report.raise_for_failures()


def test_sweep_cli_exit_status_and_summary(tmp_path, monkeypatch, capsys):
    from lib import cli
    monkeypatch.setenv("SAMBOOK_JOBS", "1")         # in-process: the injected failure below is a closure
    monkeypatch.setattr(cli, "make_grid", lambda name, profile, dataset, seeds=None: [tiny("st"), tiny("sam")])
    args = ["sweep", "--executor", "local", "--runs-root", str(tmp_path), "--no-progress", "--only", "st"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "1 trained, 0 failed" in out

    def fail(config, **kw):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(executor, "_task_fn", fail)
    assert cli.main(args[:-2] + ["--max-retries", "0"]) == 1       # st cached, sam fails
    cap = capsys.readouterr()
    assert "1 from the cache" in cap.out and f"{tiny('sam').name}: RuntimeError: injected failure" in cap.err
    assert cli.main(["sweep", "--executor", "slurm", "--no-progress"]) == 2
    assert "valid executors" in capsys.readouterr().err


# -- local executor, several runs at once (spawned worker processes) -------------------------------
# The task functions are module-level: a spawned worker imports them by name (closures would not pickle).

def _marks():
    from pathlib import Path
    return Path(os.environ["SAMBOOK_TEST_MARKS"])


def pool_killed_once(config, **kw):
    """Kills its worker process after one epoch of the first SAM run; counts the tries of AT runs and fails them."""
    marks = _marks()
    if config.method == "at":
        (marks / f"at-try-{len(list(marks.glob('at-try-*'))) + 1}").touch()
        raise RuntimeError(f"injected failure in {config.name}")
    if config.method == "sam":
        if not (marks / "killed").exists():
            runs.run(config, **{**kw, "stop_after_epoch": 1})
            (marks / "killed").touch()
            import time
            deadline = time.monotonic() + 120     # die only after the AT run's 3 tries (a timing-free test)
            while len(list(marks.glob("at-try-*"))) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            os._exit(9)                                               # the worker dies mid-run
        ckpt = runs.run_dir(config, kw["runs_root"]) / "checkpoint.pt"
        (marks / f"retry-found-checkpoint-{ckpt.exists()}").touch()
    return executor.train_only(config, **kw)


def test_local_jobs_follow_the_profile_and_the_setting(monkeypatch):
    monkeypatch.delenv("SAMBOOK_JOBS", raising=False)
    grid = tiny_grid()
    assert executor.local_jobs(grid, device="cpu") == min(len(grid), os.cpu_count() or 1)   # smoke: 1 thread/run
    assert executor.local_jobs(grid, device="cpu", jobs=1) == 1
    assert executor.local_jobs([make_config("st", "fast")], device="cpu") == 1      # torch's threads: one run
    monkeypatch.setenv("SAMBOOK_JOBS", "3")
    assert executor.local_jobs(grid, device="cpu") == 3
    monkeypatch.setenv("SAMBOOK_JOBS", "two")
    with pytest.raises(ConfigError, match="SAMBOOK_JOBS must be a positive integer"):
        executor.local_jobs(grid, device="cpu")
    with pytest.raises(ConfigError, match="jobs must be a positive integer"):
        executor.local_jobs(grid, device="cpu", jobs=0)


@pytest.mark.slow
def test_local_parallel_grid_equals_sequential_grid(tmp_path):
    grid = tiny_grid()
    par = executor.run_grid(grid, executor="local", runs_root=tmp_path / "par", progress=False, jobs=2)
    seq = executor.run_grid(grid, executor="local", runs_root=tmp_path / "seq", progress=False, jobs=1)
    assert par.ok and seq.ok and len(par.trained) == len(grid)
    for p, s in zip(par.results, seq.results):
        assert p.config == s.config and p.path.name == s.path.name
        assert _accuracies(p) == _accuracies(s) and _history(p) == _history(s)
        assert all(torch.equal(a, b) for a, b in zip(_weights(p).values(), _weights(s).values()))


@pytest.mark.slow
def test_local_parallel_dead_worker_is_retried_and_failures_reported(tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("SAMBOOK_TEST_MARKS", str(marks))          # spawned workers inherit the environment
    monkeypatch.setattr(executor, "_task_fn", pool_killed_once)
    victim, bad = tiny("sam", epochs=2), tiny("at", norm="linf", eps=8 / 255)
    grid = [tiny("st"), victim, bad, tiny("st", seed=1)]
    report = executor.run_grid(grid, executor="local", runs_root=tmp_path / "runs", max_retries=2, progress=False,
                               jobs=2)
    assert report.failed == {bad.name: f"RuntimeError: injected failure in {bad.name}"}
    assert len(list(marks.glob("at-try-*"))) == 3 and report.attempts[bad.name] == 3
    assert report.attempts[victim.name] == 2                      # only the running runs pay for a dead worker
    assert (marks / "retry-found-checkpoint-True").exists()       # the retry resumed from epoch 1
    assert [r["epoch"] for r in report.results[1].history] == [1, 2]
    assert report.results[0] is not None and report.results[3] is not None


@pytest.mark.slow
def test_parallel_probes_equal_sequential_probes_and_are_cached(tmp_path):
    grid = [tiny("st"), tiny("at", norm="linf", eps=8 / 255)]
    report = executor.run_grid(grid, executor="local", runs_root=tmp_path / "runs", progress=False, jobs=1)
    names = ["flatness", "curves"]
    par = executor.probe_runs(report.results, names, jobs=2)
    assert all((r.path / "probes" / "curves.json").exists() for r in report.results)
    for r in report.results:                                    # a fresh sequential computation
        for f in (r.path / "probes").glob("*.json"):
            f.unlink()
    seq = executor.probe_runs(report.results, names, jobs=1)
    assert par == seq and set(seq[0]) == set(names)
    # a run without weights and without its probes is left out; cached probes are read without weights
    (report.results[1].path / runs.MODEL).unlink()
    (report.results[1].path / "probes" / "curves.json").unlink()
    again = executor.probe_runs(report.results, names)
    assert set(again[1]) == {"flatness"} and again[0] == seq[0]


# -- Ray executor (a real local instance: 2 CPUs, 2 workers) ---------------------------------------

@pytest.mark.ray
@pytest.mark.slow
def test_ray_grid_equals_sequential_grid(tmp_path, ray_cluster):
    grid = tiny_grid()
    par = executor.run_grid(grid, executor="ray", runs_root=tmp_path / "ray", progress=False)
    seq = executor.run_grid(grid, executor="local", runs_root=tmp_path / "seq", progress=False)
    assert par.ok and seq.ok and len(par.trained) == len(grid)
    for p, s in zip(par.results, seq.results):
        assert p.config == s.config and p.path.name == s.path.name      # same config, same cache folder
        assert _accuracies(p) == _accuracies(s)
        assert _history(p) == _history(s)
        assert all(torch.equal(a, b) for a, b in zip(_weights(p).values(), _weights(s).values()))
    again = executor.run_grid(grid, executor="ray", runs_root=tmp_path / "ray", progress=False)
    assert again.trained == [] and len(again.cached) == len(grid)         # nothing submitted


@pytest.mark.ray
@pytest.mark.slow
def test_ray_worker_killed_mid_run_is_retried_and_resumes(tmp_path, ray_cluster, monkeypatch):
    victim = tiny("sam", epochs=2)
    grid = [tiny("st"), victim, tiny("st", seed=1)]
    marks = tmp_path / "marks"
    marks.mkdir()
    real = executor._task_fn

    def killed_once(config, **kw):
        if config.name == victim.name:
            if not (marks / "killed").exists():
                runs.run(config, **{**kw, "stop_after_epoch": 1})        # one epoch, checkpoint written
                (marks / "killed").touch()
                os.kill(os.getpid(), signal.SIGKILL)                      # the worker dies mid-run
            ckpt = runs.run_dir(config, kw["runs_root"]) / "checkpoint.pt"
            (marks / f"retry-found-checkpoint-{ckpt.exists()}").touch()
        return real(config, **kw)

    monkeypatch.setattr(executor, "_task_fn", killed_once)
    report = executor.run_grid(grid, executor="ray", runs_root=tmp_path / "runs", max_retries=2, progress=False)
    assert report.ok, report.failed
    assert report.attempts[victim.name] == 2
    assert (marks / "retry-found-checkpoint-True").exists()               # the retry resumed from epoch 1
    assert [r["epoch"] for r in report.results[1].history] == [1, 2]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_run_that_always_fails_is_reported_and_others_finish(tmp_path, ray_cluster, monkeypatch):
    grid = [tiny("st"), tiny("at", norm="linf", eps=8 / 255), tiny("st", seed=1)]
    bad = grid[1].name
    real = executor._task_fn

    def broken_at(config, **kw):
        if config.method == "at":
            raise RuntimeError(f"injected failure in {config.name}")
        return real(config, **kw)

    monkeypatch.setattr(executor, "_task_fn", broken_at)
    report = executor.run_grid(grid, executor="ray", runs_root=tmp_path, max_retries=1, progress=False)
    assert report.failed == {bad: f"RuntimeError: injected failure in {bad}"}
    assert report.attempts[bad] == 2 and report.missing == [bad]
    assert report.results[0] is not None and report.results[2] is not None
    assert "1 failed" in report.summary()
