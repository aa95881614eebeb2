"""The command line: bad input gets one clear line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lib import paths
from lib.cli import main


@pytest.mark.parametrize("argv,expected", [
    (["train", "--method", "foo"], "unknown method 'foo'; valid methods: st, sam"),
    (["train", "--dataset", "mnist"], "unknown dataset 'mnist'; valid datasets: cifar10, cifar100"),
    (["train", "--profile", "huge"], "unknown profile 'huge'; valid profiles: smoke, fast, paper"),
    (["train", "--method", "at", "--eps", "8"], "did you mean 8/255?"),
    (["train", "--method", "at", "--eps=-0.1"], "eps must be >= 0"),
    (["train", "--method", "sam", "--rho=-0.5"], "rho must be >= 0"),
    (["train", "--method", "at", "--steps=-3"], "steps must be >= 0"),
    (["train", "--epochs=-1"], "epochs must be a positive integer"),
    (["train", "--epochs=0"], "epochs must be a positive integer"),
    (["train", "--method", "st", "--rho", "0.1"], "rho must be 0"),
    (["train", "--hp", "oops"], "--hp expects NAME=VALUE"),
    (["check-data", "--data-root", "/nonexistent/place"], "tried: /nonexistent/place"),
    (["grid", "--seeds", "a"], "--seeds expects comma-separated integers, got 'a'"),
    (["sweep", "--seeds", "0,-1"], "--seeds must be non-negative integers"),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_input_from_a_real_process_has_no_traceback():
    p = subprocess.run([sys.executable, "-m", "lib", "train", "--method", "at", "--eps", "8"],
                       capture_output=True, text=True, cwd=paths.REPO_ROOT, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == ("error: L-inf eps=8 is larger than the pixel range [0, 1]; did you mean 8/255?")


def test_eps_accepts_fractions(capsys):
    from lib.cli import fraction
    assert fraction("8/255") == pytest.approx(8 / 255) and fraction("0.5") == 0.5


def test_list_methods(capsys):
    assert main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    for m in ("st", "sam", "asam", "at", "sam_at"):
        assert any(line.split()[0] == m for line in out.splitlines())


def test_train_command_prints_metrics(tmp_path, capsys):
    rc = main(["train", "--method", "sam", "--rho", "0.05", "--profile", "smoke", "--epochs", "1",
               "--runs-root", str(tmp_path), "--no-progress", "--json"])
    assert rc == 0
    import json
    m = json.loads(capsys.readouterr().out)
    assert m["label"] == "SAM rho=0.05" and m["profile"] == "smoke" and 0 <= m["l2_32"] <= m["natural"]
