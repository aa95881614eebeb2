"""The command line and the Makefile: bad input gets one clear line on stderr and exit status 2, never a
traceback, and nothing finished is touched."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from lib import paths
from lib.cli import main

BAD = [
    # unknown names, each error naming the valid choices
    (["train", "--method", "foo"], "unknown method 'foo'; valid methods: st, sam, asam, at, sam_at, awp, trades, arow"),
    (["train", "--dataset", "mnist"], "unknown dataset 'mnist'; valid datasets: cifar10, cifar100"),
    (["train", "--profile", "huge"], "unknown profile 'huge'; valid profiles: smoke, cpu, cpu-long, fast, paper"),
    (["grid", "--profile", "nope"], "unknown profile 'nope'; valid profiles: smoke, cpu, cpu-long, fast, paper"),
    (["sweep", "--profile", "nope"], "unknown profile 'nope'"),
    (["sweep", "--grid", "huge"], "unknown grid 'huge'; valid grids: paper, core, beyond, fp32attack, length, all"),
    (["sweep", "--grid", "all,huge"], "unknown grid 'huge'; valid grids: paper, core, beyond, fp32attack, length, all"),
    (["sweep", "--executor", "slurm"], "unknown executor 'slurm'; valid executors: local, ray"),
    (["sweep", "--only", "st,foo"], "unknown method(s) foo; valid methods"),
    (["sweep", "--grid", "core", "--only", "awp"], "has no run of method(s) awp"),
    (["evaluate", "--protocol", "pgd1000"], "unknown protocol 'pgd1000'; valid protocols: paper, converged"),
    (["evaluate", "--profile", "nope"], "unknown profile 'nope'"),
    (["train", "--norm", "l3"], "unknown norm 'l3'; valid norms: linf, l2"),
    (["train", "--source", "ftp"], "unknown source 'ftp'; valid sources: auto, official, imagefolder, npz"),
    (["check-data", "--profile", "nope"], "unknown profile 'nope'; valid profiles: auto, smoke, cpu, cpu-long, fast, paper"),
    (["bench", "--profile", "nope"], "unknown profile 'nope'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["train", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    # wrong types and values
    (["train", "--method", "at", "--eps", "8"], "did you mean 8/255?"),
    (["train", "--method", "at", "--eps", "lots"], "not a number or fraction: 'lots'"),
    (["train", "--method", "at", "--eps", "1/0"], "not a number or fraction: '1/0'"),
    (["train", "--method", "at", "--eps", "nan"], "not a finite number"),
    (["train", "--method", "at", "--eps=-0.1"], "eps must be >= 0"),
    (["train", "--method", "sam", "--rho=-0.5"], "rho must be >= 0"),
    (["train", "--method", "at", "--steps=-3"], "steps must be >= 0"),
    (["train", "--method", "at", "--steps", "two"], "invalid int value: 'two'"),
    (["train", "--epochs=-1"], "must be a positive integer, got -1"),
    (["train", "--epochs=0"], "must be a positive integer, got 0"),
    (["train", "--epochs", "1.5"], "not an integer: '1.5'"),
    (["train", "--batch-size", "0"], "must be a positive integer"),
    (["train", "--seed", "x"], "invalid int value: 'x'"),
    (["train", "--lr", "fast"], "not a number or fraction"),
    (["train", "--method", "st", "--rho", "0.1"], "rho must be 0"),
    (["train", "--hp", "oops"], "--hp expects NAME=VALUE"),
    (["train", "--method", "trades", "--hp", "beta=x"], "--hp beta: not a number"),
    (["train", "--method", "trades", "--hp", "gamma=1"], "method 'trades' has no hyperparameter 'gamma'; it has: beta"),
    (["train", "--method", "arow", "--hp", "smoothing=2"], "arow smoothing=2.0: must be in [0, 1)"),
    (["grid", "--seeds", "a"], "--seeds expects comma-separated integers, got 'a'"),
    (["sweep", "--seeds", "0,-1"], "--seeds must be non-negative integers"),
    (["sweep", "--max-retries", "-1"], "--max-retries must be >= 0"),
    (["sweep", "--jobs", "0"], "must be a positive integer"),
    (["evaluate", "--n", "0"], "must be a positive integer"),
    (["evaluate", "--n", "many"], "not an integer: 'many'"),
    (["bench", "--width", "0"], "must be a positive integer"),
    (["bench", "--device", "tpu"], "unknown device 'tpu'; valid devices: cpu, cuda, cuda:N"),
    (["train", "--device", "tpu", "--epochs", "1", "--runs-root", "/nonexistent/x"],
     "unknown device 'tpu'; valid devices: cpu, cuda, cuda:N"),
    (["gpu-session", "--budget-s", "0", "--out", "x"], "must be a positive integer"),
    # missing values
    (["train", "--method"], "argument --method: expected one argument"),
    (["evaluate", "--protocol"], "argument --protocol: expected one argument"),
    (["gpu-session"], "gpu-session needs --out DIR (or --import ARCHIVE)"),
    (["gpu-session", "--import", "/nonexistent/a.tar.gz"], "no such archive: /nonexistent/a.tar.gz"),
    # missing or empty data
    (["check-data", "--data-root", "/nonexistent/place"], "tried: /nonexistent/place"),
]


@pytest.mark.parametrize("argv,expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_book_and_the_site_report_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    from lib import book, site
    monkeypatch.setenv("SAMBOOK_OUTPUTS", str(tmp_path))
    for fn, argv, expected in [(book.main, ["--only", "99", "--no-site"], "no chapter matches 99"),
                               (site.main, ["--profile", "cpu"], "no executed chapters in")]:
        assert fn(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_input_from_a_real_process_has_no_traceback():
    p = subprocess.run([sys.executable, "-m", "lib", "grid", "--profile", "nope"], capture_output=True, text=True,
                       cwd=paths.REPO_ROOT, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: argument --profile: unknown profile 'nope'; valid profiles: smoke, cpu, cpu-long, fast, paper "
        "(see python -m lib grid --help)"]


def test_an_empty_data_folder_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAMBOOK_DATA", str(tmp_path))
    assert main(["train", "--epochs", "1", "--no-progress", "--runs-root", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no cifar10 data found") and str(tmp_path) in err and err.count("\n") == 1


def test_a_corrupt_image_folder_is_a_clear_error(tmp_path, capsys, monkeypatch):
    root = tmp_path / "cifar10-jpeg75"
    for split in ("train", "test"):
        for c in range(10):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            (d / "0000.jpg").write_bytes(b"not a jpeg at all")
    monkeypatch.setenv("SAMBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("SAMBOOK_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--profile", "cpu", "--epochs", "1", "--no-progress", "--runs-root", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not a readable image" in err and "corrupt" in err and err.count("\n") == 1 and "Traceback" not in err


def test_an_unwritable_outputs_folder_is_a_clear_error_and_touches_nothing(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", "--epochs", "1", "--no-progress", "--runs-root", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the run folder") and err.count("\n") == 1
    assert blocker.read_text() == "x"


def test_an_unwritable_evaluation_keeps_the_finished_run(tmp_path, capsys):
    """The evaluation of a finished run fails to write: one line, and the run's files are unchanged."""
    assert main(["train", "--epochs", "1", "--no-progress", "--no-eval", "--runs-root", str(tmp_path)]) == 0
    capsys.readouterr()
    run = next(tmp_path.iterdir())
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    (run / "eval").write_text("a file where the eval folder should be")
    assert main(["evaluate", "--run", str(run), "--protocol", "paper"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file() and f.name != "eval"} == before


def test_eps_accepts_fractions():
    from lib.cli import fraction
    assert fraction("8/255") == pytest.approx(8 / 255) and fraction("0.5") == 0.5


def test_list_commands(capsys):
    assert main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["st", "sam", "asam", "at", "sam_at", "awp", "trades",
                                                            "arow"]
    assert main(["list-protocols"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == \
        ["paper", "converged", "strong", "autoattack", "apgd-ce", "linf8", "autoattack-linf8"]


def test_train_command_prints_metrics_and_evaluations(tmp_path, capsys):
    rc = main(["train", "--method", "sam", "--rho", "0.05", "--profile", "smoke", "--epochs", "1",
               "--runs-root", str(tmp_path), "--no-progress", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    assert m["label"] == "SAM rho=0.05" and m["profile"] == "smoke"
    paper = m["evaluations"]["paper"]
    assert 0 <= paper["l2_32"] <= paper["natural"] and paper["n"] == 200
    assert {"paper", "converged", "strong", "linf8"} <= set(m["evaluations"])


# -- the Makefile ----------------------------------------------------------------------------------

MAKE_BAD = [
    (["book", "PROFILE=nope"], "unknown PROFILE 'nope'; valid profiles: auto, smoke, cpu, cpu-long, fast, paper"),
    (["sweep", "PROFILE=nope"], "unknown PROFILE 'nope'"),
    (["sweep", "EXECUTOR=slurm"], "unknown EXECUTOR 'slurm'; valid executors: local, ray"),
    (["sweep", "GRID=huge"], "unknown GRID 'huge'; valid grids: paper, core, beyond, fp32attack, length, all"),
    (["book", "SAMBOOK_DATA=/nonexistent/place"], "tried: /nonexistent/place"),
    (["test", "SAMBOOK_DATA=/nonexistent/place"], "tried: /nonexistent/place"),
    (["bench", "PROFILE=nope"], "unknown PROFILE 'nope'"),
]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("args,expected", MAKE_BAD, ids=[" ".join(a) for a, _ in MAKE_BAD])
def test_make_targets_refuse_bad_settings_in_one_line(args, expected):
    # run as a user would, also when the suite itself runs under make (CI: make test): no inherited
    # make state, and make's own "make: ***" / "make[1]: ***" trailer lines are not ours
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env_dir = os.path.relpath(sys.prefix, paths.REPO_ROOT)
    p = subprocess.run(["make", "--no-print-directory", f"ENV_DIR={env_dir}", *args], cwd=paths.REPO_ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    ours = [line for line in p.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(ours) == 1 and expected in ours[0] and "Traceback" not in p.stderr, p.stderr
