"""The speed benchmark (lib.bench): it runs and writes its report, and its two sides compute the same thing.

No timing is asserted: CPU timings here are noise. What is asserted is that the reference-style loop
and the engine, from the same weights, batch and random start, give the same PGD examples, the same
updated weights and the same accuracies, so a speed ratio never hides a change in what is computed.
The comparisons run in float64 (model and inputs), where the two code paths' different orders of
summation agree to about 1e-15 relative. One thing is not float64 on the engine side: every loss is
computed from ``logits.float()`` (by design, for bf16 logits), so the engine's loss and its gradient
with respect to the logits carry fp32 rounding. Tolerances follow from that: the loss is a
log-softmax and a mean, a handful of fp32 roundings of 2^-24 (6e-8) each, so rel 1e-6; a PGD step
moves by alpha (<= 0.13) in a direction with about 1e-7 relative error, five steps, so 1e-7 on x_adv;
an update is lr (0.1) times a gradient of size <= 1 with that relative error, two steps with momentum,
so atol 1e-7 on the weights. Weight decay alone moves a weight by lr * wd * |w| ~ 1e-5 a step, two
orders above, so a dropped term, a wrong radius or a sign error still fails.
"""
from __future__ import annotations

import json

import pytest
import torch

from lib import bench, cli
from lib.attacks import CONVERGED_BUDGETS, pgd
from lib.data import make_generator
from lib.errors import ConfigError
from lib.evaluate import evaluate
from lib.methods import make_method
from lib.models import build_model
from lib.train import build_optimizer

WIDTH = 4
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread: on shared cores, descheduled OpenMP threads make small steps many times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(10, WIDTH).double()


def _batch(n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("norm,eps,alpha", [("linf", 8 / 255, 2 / 255), ("l2", 128 / 255, 32 / 255)])
def test_backward_pgd_and_input_only_pgd_give_the_same_x_adv(norm, eps, alpha):
    model = _model().eval()
    x, y = _batch()
    ref = bench.reference_pgd(model, x, y, eps, alpha, 5, norm, make_generator(CPU, 3))
    eng = pgd(model, x, y, eps, alpha, 5, norm, generator=make_generator(CPU, 3), autocast_dtype=None)
    torch.testing.assert_close(ref, eng, atol=1e-7, rtol=0)
    assert not torch.equal(ref, x)
    # the reference leaves no parameter gradient behind
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["st", "sam", "at"])
def test_reference_step_and_engine_step_compute_the_same_update(method):
    rc = bench._run_config(method, WIDTH, 16)
    a, b = _model(), _model()
    opt_a, opt_b = bench.reference_optimizer(rc, a), build_optimizer(rc, b, CPU)
    m = make_method(rc, None)
    gen_a, gen_b = make_generator(CPU, 7), make_generator(CPU, 7)
    for step in range(2):                                   # two steps: momentum buffers are used too
        x, y = _batch(seed=10 + step)
        loss_a, _ = bench.reference_step(method, a, opt_a, x, y, rc, gen_a)
        loss_b, _ = m.step(b, opt_b, x, y, gen_b)
        assert loss_a == pytest.approx(loss_b.item(), rel=1e-6)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-7, rtol=0, msg=f"{method}: {name} differs")


def test_reference_evaluate_matches_lib_evaluate():
    model = _model().eval()
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(3))
    loader = bench.reference_loader(x, y, batch_size=6, train=False)
    model = model.float()
    ref = bench.reference_evaluate(model, loader, CONVERGED_BUDGETS, steps=2, seed=4)
    eng = evaluate(model, x, y, CONVERGED_BUDGETS, steps=2, batch_size=6, seed=4)
    assert ref == pytest.approx(eng)


def test_reference_loader_serves_augmented_float_batches():
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(10)
    xb, yb = next(iter(bench.reference_loader(x, y, batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32
    assert 0 <= xb.min() and xb.max() <= 1 and yb.shape == (4,)


def test_arithmetic():
    f = bench.forward_flop(64)
    assert f == pytest.approx(1.11e9)
    assert bench.forward_flop(32) == pytest.approx(f / 4)
    assert [bench.forward_equivalents(w, "engine") for w in bench.WORKLOADS] == [3, 6, 23, 85]
    assert [bench.forward_equivalents(w, "reference") for w in bench.WORKLOADS] == [3, 6, 33, 125]
    from lib.config import make_config        # the same facts as the methods' own
    c = make_config("at", "paper", eps=8 / 255)
    assert bench.forward_equivalents("at", "engine", c) == c.spec.forward_equivalents(c) == 23
    assert bench.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(990)
    assert bench.bf16_peak_tflops("NVIDIA H200") == pytest.approx(990)
    assert bench.bf16_peak_tflops("cpu (x86_64, 1 threads)") is None
    assert bench.bf16_peak_tflops("Some Unknown GPU") is None


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError):
        bench.default_config("cpu", width=0)
    with pytest.raises(ConfigError):
        bench.default_config("cpu", data="imaginary")          # not a setting: the bench uses synthetic data


def test_cli_bench_error_is_one_line(capsys):
    assert cli.main(["bench", "--quick", "--repeats", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = cli.main(["bench", "--quick", "--device", "cpu", "--repeats", "1", "--out", str(out),
                   "--no-progress"])
    assert rc == 0
    return out


def test_quick_bench_writes_json_and_markdown(quick_report):
    r = json.loads((quick_report / "bench-cpu.json").read_text())
    for key in ("device", "device_kind", "torch", "torchvision", "commit", "date", "config", "data", "threads",
                "workloads", "engine_precision", "cpu", "cpu_flags"):
        assert key in r, key
    assert r["device_kind"] == "cpu" and r["cuda"] is False and r["peak_bf16_tflops"] is None
    assert r["complete"] is True and r["threads"] == 1 and r["config"]["profile"] == "cpu"
    assert r["config"]["quick"] is True and r["config"]["width"] == 4
    assert [w["workload"] for w in r["workloads"]] == list(bench.WORKLOADS)
    for w in r["workloads"]:
        for side in ("reference", "engine"):
            s = w[side]
            assert s["images_per_second"] > 0 and len(s["seconds"]) == 1
            assert s["forward_equivalents"] == bench.forward_equivalents(w["workload"], side)   # batch-independent
            assert s["tflops"] > 0 and s["peak_fraction"] is None
        assert w["ratio"] == pytest.approx(w["engine"]["images_per_second"] / w["reference"]["images_per_second"])
        assert "projected_seconds" not in w          # no absolute-time claims from a CPU
    assert "compile" not in r                    # only with --compile

    md = (quick_report / "bench-cpu.md").read_text()
    assert "| workload |" in md and "CPU, noisy: ratios only" in md and "engine / reference" in md
    assert "TFLOP/s |" not in md and "% of bf16 peak" not in md
    for w in r["workloads"]:
        assert w["label"] in md


def test_the_compile_section_decides_by_the_slowest_workload(quick_report):
    """torch.compile is adopted only when every measured workload gains 1.2x (issue: the long CPU profile):
    a faster training step beside a slower evaluation reads "eager", and the page shows each ratio."""
    r = json.loads((quick_report / "bench-cpu.json").read_text())
    w = {"label": "ST step", "images_per_second": {"eager": 100.0, "compiled": 150.0}, "ratio": 1.5,
         "compile_seconds": 40.0, "agreement": 4e-5, "agreement_measures": "relative difference"}
    slow = dict(w, label="PGD-10 evaluation", images_per_second={"eager": 40.0, "compiled": 25.0}, ratio=0.625)
    assert bench.compile_choice({"st": 1.5, "eval": 0.625}) == "eager"
    assert bench.compile_choice({"st": 1.5, "sam": 1.2}) == "compile" and bench.compile_choice({}) == "eager"
    r["compile"] = {"measured": True, "workloads": {"st": w, "eval": slow}, "ratio": 0.625,
                    "choice": bench.compile_choice({"st": 1.5, "eval": 0.625})}
    md = bench.to_markdown(r)
    assert "| ST step | 100 | 150 | 1.50x | 40 |" in md and "| PGD-10 evaluation | 40 | 25 | 0.62x |" in md
    assert "together: **eager**" in md and "gain 1.2x or more: ST step; that do not: PGD-10 evaluation." in md
