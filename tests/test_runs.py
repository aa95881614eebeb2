"""The run cache's guarantees: file permissions, one trainer per run folder (two real processes), a stale
lock from a killed process, and the fingerprint of the training code."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lib import paths, runs
from lib.config import make_config
from lib.io import atomic_write, write_json

TINY = "dict(epochs={epochs}, train_per_class=20, batch_size=64)"
CHILD = """
import sys, time, json
from lib import runs
from lib.config import make_config
cfg = make_config("st", "smoke", **{tiny})
t0 = time.time()
r = runs.run(cfg, runs_root=sys.argv[1], device="cpu", progress=False)
print(json.dumps({{"path": str(r.path), "date": r.metrics["date"], "t0": t0, "t1": time.time()}}))
"""


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        atomic_write(tmp_path / "b.bin", lambda p: p.write_bytes(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644


def _child(root, epochs):
    env = {**os.environ, "PYTHONPATH": str(paths.REPO_ROOT)}
    code = CHILD.format(tiny=TINY.format(epochs=epochs))
    return subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=paths.REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_processes_never_train_the_same_run(tmp_path):
    """The second process waits on the first's lock and then reuses its finished result."""
    import json
    a = _child(tmp_path, 2)
    cfg = runs.resolve(make_config("st", "smoke", epochs=2, train_per_class=20, batch_size=64))
    lock = runs.run_dir(cfg, tmp_path) / runs.LOCK
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().startswith("pid")) and time.monotonic() < deadline:
        time.sleep(0.05)
    b = _child(tmp_path, 2)
    out_a, err_a = a.communicate(timeout=600)
    out_b, err_b = b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    ra, rb = json.loads(out_a), json.loads(out_b)
    assert ra["path"] == rb["path"] and ra["date"] == rb["date"]      # one training, reused by the second
    assert "waiting for it" in err_b
    assert rb["t1"] >= ra["t1"] - 1.0                                  # b finished only after a had


@pytest.mark.slow
def test_a_killed_trainer_leaves_a_stale_lock_that_the_next_process_takes_over(tmp_path):
    a = _child(tmp_path, 3)
    cfg = runs.resolve(make_config("st", "smoke", epochs=3, train_per_class=20, batch_size=64))
    folder = runs.run_dir(cfg, tmp_path)
    deadline = time.monotonic() + 180
    while not (folder / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    a.send_signal(signal.SIGKILL)
    a.communicate(timeout=60)
    assert (folder / runs.LOCK).read_text().startswith("pid") and not runs.is_finished(folder)
    b = _child(tmp_path, 3)
    out, err = b.communicate(timeout=600)
    assert b.returncode == 0, err
    assert "stale lock" in err and runs.is_finished(folder)
    assert [h["epoch"] for h in runs.load_run(folder).history] == [1, 2, 3]


def test_the_fingerprint_follows_the_code_not_its_prose(tmp_path, monkeypatch):
    src = paths.REPO_ROOT / "lib"
    fake = tmp_path / "lib"
    fake.mkdir()
    for name in runs.TRAINING_CODE:
        (fake / name).write_text((src / name).read_text())
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    base = runs.fingerprint()
    train = fake / "train.py"
    text = train.read_text()
    train.write_text(text.replace('"""The one training loop', '"""A reworded docstring. The one training loop', 1)
                     + "\n# a comment\n")
    assert runs.fingerprint() == base                      # prose does not count
    train.write_text(text.replace("lr *= 0.1", "lr *= 0.2"))
    assert runs.fingerprint() != base                      # arithmetic does


def test_results_made_by_other_training_code_are_named(tmp_path):
    r = runs.run(make_config("st", "smoke", epochs=1, train_per_class=10), runs_root=tmp_path, device="cpu",
                 progress=False)
    assert runs.stale([r]) == []
    m = dict(r.metrics, fingerprint="000000000000")
    write_json(r.path / runs.METRICS, m)
    assert runs.stale([runs.load_run(r.path)]) == [r.path.name]


def test_weights_sha_is_of_the_weights_not_of_the_file(tmp_path):
    """torch.save names an archive's records after its file, so hashing the file made two identical
    models (saved through two temporary names) look different; the digest is of the tensors."""
    import torch
    from lib.models import build_model
    from lib.runs import weights_sha
    torch.manual_seed(0)
    sd = build_model(10, 4).state_dict()
    for name in ("a.pt", "b.pt"):
        torch.save(sd, tmp_path / name)
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    loaded = [torch.load(tmp_path / n, weights_only=True) for n in ("a.pt", "b.pt")]
    assert weights_sha(sd) == weights_sha(loaded[0]) == weights_sha(loaded[1])
    changed = {k: v.clone() for k, v in sd.items()}
    changed["conv1.weight"].view(-1)[0] += 1e-6
    assert weights_sha(changed) != weights_sha(sd)


def test_committed_results_are_found_when_the_cache_points_elsewhere(tmp_path, monkeypatch):
    """The chapters and the site read the cpu results committed under <repo>/outputs/runs even when
    $SAMBOOK_OUTPUTS (or $SAMBOOK_RUNS) names another folder; an explicit runs_root stays isolated."""
    from lib import report
    from lib.config import grid
    configs = grid("core", "cpu", seeds=[0])
    committed = runs.finished_runs(configs, runs_root=paths.committed_runs_root())
    assert all(r is not None for r in committed), "the cpu seed-0 core grid is committed"
    monkeypatch.setenv("SAMBOOK_OUTPUTS", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SAMBOOK_RUNS", str(tmp_path / "elsewhere" / "runs"))
    found = runs.finished_runs(configs)
    assert [r.path for r in found] == [r.path for r in committed]
    assert runs.finished_runs(configs, runs_root=tmp_path / "elsewhere" / "runs") == [None] * len(configs)
    results, missing = report.results_for("cpu", "core", seeds=[0])
    assert len(results) == len(configs) and missing == []


def test_a_run_records_the_commit_it_started_from(tmp_path, monkeypatch):
    """A commit made (or lib edited) while a run trains must not be stamped on it: the provenance is the
    checkout as training started, like the fingerprint."""
    checkout = {"commit": "aaaaaaaaaaaa"}
    monkeypatch.setattr(runs, "git_commit", lambda: checkout["commit"])
    train = runs.train

    def train_while_someone_commits(*args, **kwargs):
        result = train(*args, **kwargs)
        checkout["commit"] = "bbbbbbbbbbbb+dirty"
        return result

    monkeypatch.setattr(runs, "train", train_while_someone_commits)
    cfg = make_config("st", "smoke", epochs=1, train_per_class=10, batch_size=50)
    r = runs.run(cfg, runs_root=tmp_path, device="cpu", progress=False)
    assert r.metrics["commit"] == "aaaaaaaaaaaa"


def test_weights_that_are_not_the_runs_own_are_refused(tmp_path):
    """Evaluations are keyed by the weights_sha in metrics.json: other weights put in a run folder (a
    retraining that came out different) must not be evaluated under that key."""
    import torch
    from lib.errors import SambookError
    cfg = make_config("st", "smoke", epochs=1, train_per_class=12, batch_size=32)
    r = runs.run(cfg, runs_root=tmp_path, device="cpu", progress=False)
    assert not runs.load_model(r).training                      # its own weights load
    sd = torch.load(r.path / runs.MODEL, weights_only=True)
    sd["conv1.weight"].view(-1)[0] += 1e-3
    torch.save(sd, r.path / runs.MODEL)
    with pytest.raises(SambookError, match="not the weights its results were made from"):
        runs.load_model(runs.load_run(r.path))


def test_no_committed_run_reads_as_made_by_other_training_code():
    """Every committed run was made by this training code, or by a fingerprint checked to reproduce it bit
    for bit (runs.EQUIVALENT_FINGERPRINTS, keyed by the current fingerprint, so a later change of the
    training code drops the equivalence until it is checked again and recorded)."""
    from lib import paths
    folders = [d for d in sorted(paths.committed_runs_root().iterdir()) if runs.is_finished(d)]
    assert folders and runs.stale([runs.load_run(d) for d in folders]) == []
    for now, older in runs.EQUIVALENT_FINGERPRINTS.items():
        assert now not in older and now in runs.EQUIVALENCE_CHECKS


def test_lost_weights_are_restored_only_when_bit_identical(tmp_path):
    """Weights are never committed, so a new machine retrains a committed run to evaluate it again:
    `lib restore` installs the retrained model.pt only when its digest is the recorded one, and leaves
    the run folder untouched otherwise."""
    import shutil

    from lib.cli import main
    from lib.errors import SambookError
    cfg = make_config("st", "smoke", epochs=1, train_per_class=10, batch_size=50)
    r = runs.run(cfg, runs_root=tmp_path / "cache", device="cpu", progress=False)
    folder = tmp_path / "committed" / r.path.name
    shutil.copytree(r.path, folder)
    (folder / runs.MODEL).unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    out = runs.restore_weights(folder, device="cpu", progress=False, scratch=tmp_path / "scratch")
    assert out["status"] == "restored" and out["weights_sha"] == r.metrics["weights_sha"]
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != runs.MODEL} == before
    assert not runs.load_model(runs.load_run(folder)).training       # the installed weights are its own
    assert runs.restore_weights(folder, device="cpu", progress=False)["status"] == "present"

    (folder / runs.MODEL).unlink()
    write_json(folder / runs.METRICS, dict(r.metrics, weights_sha="0123456789abcdef"))
    with pytest.raises(SambookError, match="differ from the recorded weights_sha 0123456789abcdef") as e:
        runs.restore_weights(folder, device="cpu", progress=False)
    assert "legacy file hash" in str(e.value)          # same curve: the digest, not the training, differs
    assert not (folder / runs.MODEL).exists()
    hist = (folder / runs.HISTORY).read_text().splitlines()
    cols = hist[0].split(",")
    row = hist[1].split(",")
    row[cols.index("train_loss")] = repr(float(row[cols.index("train_loss")]) + 1e-6)
    (folder / runs.HISTORY).write_text("\n".join([hist[0], ",".join(row), *hist[2:]]) + "\n")
    with pytest.raises(SambookError, match="not bit-identical here"):
        runs.restore_weights(folder, device="cpu", progress=False)
    assert not (folder / runs.MODEL).exists()
    assert main(["restore", "--run", str(tmp_path / "nowhere"), "--no-progress"]) == 2
