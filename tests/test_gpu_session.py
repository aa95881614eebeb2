"""The prepared GPU session, rehearsed: ``python -m lib gpu-session --dry-run`` runs the same code path on
the CPU (smoke profile, a one-minute budget) and leaves the archive a device session would bring back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from lib import paths


@pytest.mark.slow
def test_the_dry_run_runs_end_to_end_and_packs_one_archive(tmp_path):
    out = tmp_path / "out"
    # The whole path with one run (ST, first in priority order): a budget of 300 s, not the dry run's default
    # minute, because the run starts only if the bench's measured speed says it fits, and on two cores shared
    # with other work the smoke ST run's estimate alone can exceed a minute; --max-runs 1 ends the queue after
    # it, so the test's length does not grow with the budget.
    env = {**os.environ, "SAMBOOK_RUNS": str(tmp_path / "committed"), "SAMBOOK_OUTPUTS": str(tmp_path / "outputs")}
    p = subprocess.run([sys.executable, "-m", "lib", "gpu-session", "--dry-run", "--budget-s", "300", "--max-runs", "1",
                        "--out", str(out)], cwd=paths.REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(f.name for f in out.iterdir())
    assert files == ["gpu-session.tar.gz", "session.md"]               # at most 8 files come back from a device
    with tarfile.open(out / "gpu-session.tar.gz") as tar:
        names = tar.getnames()
        status = json.load(tar.extractfile("gpu-session/status.json"))
        checks = json.load(tar.extractfile("gpu-session/correctness.json"))
        prov = json.load(tar.extractfile("gpu-session/provenance.json"))
    assert {"gpu-session/provenance.json", "gpu-session/correctness.json", "gpu-session/bench-cpu.json",
            "gpu-session/bench-cpu.md"} <= set(names)
    assert not any(n.endswith(".pt") for n in names)                   # never weights
    assert checks["all_ok"] and checks["sam_rho0_is_fused_sgd"]["ok"] and checks["fp32_eval_matches_cpu"]["ok"]
    assert prov["torch"] and prov["commit"]
    runs = [n for n in names if n.endswith("/metrics.json")]
    assert runs and any("cifar10-st-s0-smoke" in n for n in runs)      # ST first, in priority order
    assert any(n.endswith("/eval/paper-nall.json") for n in names)
    assert status["end"]["seconds"] <= 300 + 5 and status["end"]["ok"]
    assert "runs-stop" in status and len(runs) == 1                       # --max-runs 1: ST, then the queue ends
    assert "session.md" in files and "runs-plan" in (out / "session.md").read_text()
    # after a device session: the archive unpacks into the checkout's outputs/, to be committed
    from lib.gpu_session import import_archive
    written = import_archive(out / "gpu-session.tar.gz", outputs=tmp_path / "checkout-outputs")
    assert any("/runs/cifar10-st-s0-smoke" in w and w.endswith("metrics.json") for w in written)
    assert any(w.endswith("/bench/bench-cpu.md") for w in written)
    assert any("/gpu/" in w and w.endswith("correctness.json") for w in written)


def test_without_a_gpu_the_real_session_refuses_in_one_line(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    from lib.cli import main
    assert main(["gpu-session", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--dry-run" in err and err.count("\n") == 1
