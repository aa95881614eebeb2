"""The methods (lib.methods): their facts in one place, and one step of each doing what its definition says.

CPU, a width-8 PreActResNet-18 and a few random images; the whole file runs in well under a minute.
Exactness tests run in float64, where two computations of the same formula in a different order
agree to about 1e-15 relative (a few hundred roundings of 1.1e-16 each), so tolerances of 1e-10
leave four orders of magnitude of room and still catch any real difference.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lib import probes
from lib.attacks import kl_per_example, kl_pgd, pgd
from lib.config import make_config
from lib.errors import ConfigError, SambookError
from lib.methods import METHODS, arow_loss, make_method, perturbed_weights, trades_loss
from lib.models import build_model
from lib.optim import frozen_bn_stats
from lib.paths import REPO_ROOT
from lib.train import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 3, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)


@pytest.fixture(scope="module")
def batch64(batch):
    return batch[0].double(), batch[1]


def fresh(seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_model(10, width=8).to(dtype).train()


def one_step(cfg, model, x, y, seed: int = 1):
    """One method step with the engine's optimiser; returns the model's state_dict after it."""
    opt = build_optimizer(cfg, model, CPU)
    gen = torch.Generator().manual_seed(seed)
    loss, logits = make_method(cfg).step(model, opt, x, y, gen)
    assert torch.isfinite(loss)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float = 0.0, keys=None):
    for k in keys or a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def param_keys(model):
    return [n for n, _ in model.named_parameters()]


# --------------------------------------------------------------------------------------------------
# AWP


@pytest.mark.parametrize("gamma", [0.01, 0.5])
def test_awp_step_is_the_gradient_at_the_perturbed_point_applied_at_w(batch64, gamma):
    """w_new = w - lr * (grad CE(x_adv) at w + v  +  wd * w): no perturbation is left in the weights.

    v is computed here independently of the proxy: the proxy's SGD step on -CE moves w_l by
    lr * g_l, so v_l = gamma * ||w_l|| * g_l / ||g_l||. With gamma = 0.5 a leftover v would be huge.

    The model runs in float64, but every loss is computed in fp32 by design (``logits.float()``,
    for bf16 logits), so the proxy's gradient, and with it the direction of v, carries fp32
    rounding: about 6e-8 relative. v = gamma ||w|| d / ||d|| then differs from the exact one by
    about gamma ||w_l|| 1e-7 <= 1e-8 here, and the update (lr = 0.1 times the gradient's change over
    that distance) by about 1e-8. Tolerance 1e-7; a leftover v (gamma ||w|| ~ 1e-2 to 1) would be
    five orders of magnitude above it.
    """
    x, y = batch64
    cfg = make_config("awp", "smoke", gamma=gamma)
    model = fresh(dtype=torch.float64)
    ref = copy.deepcopy(model)
    w0 = {n: p.detach().clone() for n, p in ref.named_parameters()}
    after = one_step(cfg, model, x, y)

    gen = torch.Generator().manual_seed(1)           # the adversary the method saw
    x_adv = pgd(ref, x, y, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, norm=cfg.norm, generator=gen)
    probe = copy.deepcopy(ref)                        # gradient at w (train mode), for v
    g = dict(zip(param_keys(probe), torch.autograd.grad(F.cross_entropy(probe(x_adv), y), list(probe.parameters()))))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if p.dim() > 1:
                p.add_(gamma * w0[n].norm() * g[n] / g[n].norm())
    at_wv = copy.deepcopy(ref)
    with frozen_bn_stats(at_wv):
        grads = torch.autograd.grad(F.cross_entropy(at_wv(x_adv), y), list(at_wv.parameters()))
    expected = {n: w0[n] - cfg.lr * (gr + cfg.weight_decay * w0[n]) for n, gr in zip(param_keys(ref), grads)}
    assert_same(after, expected, atol=1e-7, keys=list(expected))
    # BatchNorm statistics are those of one train-mode forward at the unperturbed w on x_adv
    stats = fresh(dtype=torch.float64)
    with torch.no_grad():
        stats(x_adv)
    for k, v in stats.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(after[k], v, atol=1e-12, rtol=0, msg=k)


def test_awp_with_gamma_zero_is_at(batch64):
    x, y = batch64
    a = one_step(make_config("awp", "smoke", gamma=0.0), fresh(dtype=torch.float64), x, y)
    b = one_step(make_config("at", "smoke"), fresh(dtype=torch.float64), x, y)
    assert_same(a, b, atol=1e-12)          # the same arithmetic up to float64 rounding (see the module docstring)


def test_awp_only_perturbs_conv_and_linear_weights():
    names = [n for n, _ in perturbed_weights(fresh())]
    assert names and all(n.endswith("weight") for n in names)
    assert not any(".bn" in n or n.startswith("bn") for n in names)
    assert "linear.weight" in names and "conv1.weight" in names


# --------------------------------------------------------------------------------------------------
# TRADES and ARoW


def test_trades_with_beta_zero_is_st(batch64):
    x, y = batch64
    model = fresh(dtype=torch.float64)
    a = one_step(make_config("trades", "smoke", beta=0.0), model, x, y)
    b = one_step(make_config("st", "smoke"), fresh(dtype=torch.float64), x, y)
    assert_same(a, b, atol=1e-12, keys=param_keys(model))   # BN statistics differ: TRADES also sees x_adv


def test_arow_without_smoothing_and_weight_is_trades_with_beta_two_lambda(batch64):
    x, y = batch64
    a = one_step(make_config("arow", "smoke", lam=3.0, smoothing=0.0, weighted=0), fresh(dtype=torch.float64), x, y)
    b = one_step(make_config("trades", "smoke", beta=6.0), fresh(dtype=torch.float64), x, y)
    assert_same(a, b, atol=1e-12)


def test_arow_loss_matches_its_formula_and_keeps_the_weight_in_the_graph():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=g, requires_grad=True)
    logits_adv = torch.randn(6, 10, generator=g, requires_grad=True)
    y = torch.randint(0, 10, (6,), generator=g)
    p, q = logits.softmax(1), logits_adv.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1)
    onehot = F.one_hot(y, 10).float()
    ce_smooth = -(((1 - 0.2) * onehot + 0.2 / 10) * logits.log_softmax(1)).sum(1).mean()
    manual = ce_smooth + 2 * 3.5 * (kl * (1 - q.gather(1, y[:, None]).squeeze(1))).mean()
    ours = arow_loss(logits, logits_adv, y, lam=3.5, smoothing=0.2)
    torch.testing.assert_close(ours, manual)
    detached = ce_smooth + 2 * 3.5 * (kl * (1 - q.gather(1, y[:, None]).squeeze(1)).detach()).mean()
    g_ours = torch.autograd.grad(ours, logits_adv)[0]
    g_det = torch.autograd.grad(detached, logits_adv)[0]
    assert not torch.allclose(g_ours, g_det)     # the weight 1 - p_y(x_adv) is differentiated
    torch.testing.assert_close(arow_loss(logits, logits_adv, y, 3.0, 0.0, weighted=False),
                               trades_loss(logits, logits_adv, y, 6.0))


def test_kl_pgd_is_feasible_and_raises_the_kl(batch):
    x, y = batch
    model = fresh().eval()
    eps = 8 / 255
    x_adv = kl_pgd(model, x, eps=eps, alpha=2 / 255, steps=3, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        kl_adv = kl_per_example(model(x), model(x_adv)).mean()
        start = kl_pgd(model, x, eps=eps, alpha=2 / 255, steps=0, generator=torch.Generator().manual_seed(0))
        kl_start = kl_per_example(model(x), model(start)).mean()
    assert kl_adv > 10 * kl_start
    assert not model.training


# --------------------------------------------------------------------------------------------------
# SAM + AT and ASAM (lib.methods, lib.optim)


def test_sam_at_with_rho_zero_is_at(batch):
    x, y = batch
    a = one_step(make_config("sam_at", "smoke", rho=0.0), fresh(), x, y)
    b = one_step(make_config("at", "smoke"), fresh(), x, y)
    assert_same(a, b)


# --------------------------------------------------------------------------------------------------
# The loop, configs, errors


@pytest.mark.parametrize("method", ["awp", "trades", "arow"])
def test_each_method_trains_in_the_loop(method, batch):
    from lib.data import CifarData
    from lib.train import train
    x, y = batch
    xu = (x * 255).to(torch.uint8)
    data = CifarData("cifar10", "npz", "random", xu, y, xu[:4], y[:4])
    cfg = make_config(method, "smoke", epochs=1)
    res = train(cfg, data, device="cpu", progress=False, curve=(4, 1))
    assert res.finished and len(res.history) == 1


def test_labels_and_names():
    assert make_config("trades", "smoke").label == "TRADES L-inf 8/255 beta=6"
    assert make_config("awp", "smoke").label == "AWP L-inf 8/255 gamma=0.01"
    assert make_config("arow", "smoke").label == "ARoW L-inf 8/255 lam=3.5"
    assert make_config("arow", "smoke", weighted=0).label == "ARoW L-inf 8/255 lam=3.5 weighted=0"
    assert make_config("trades", "smoke").name == "cifar10-trades-linf8-beta6-s0-smoke"
    # the older methods keep their names (and so their cached runs)
    assert make_config("st", "smoke").name == "cifar10-st-s0-smoke"
    assert make_config("at", "smoke").name == "cifar10-at-linf8-s0-smoke"
    assert make_config("sam", "smoke", rho=0.1).label == "SAM rho=0.1"


def test_default_attack_is_linf_8_step_2_for_10_steps():
    for m in ("awp", "trades", "arow"):
        c = make_config(m, "fast")
        assert (c.norm, c.eps, c.alpha, c.steps) == ("linf", 8 / 255, 2 / 255, 10)
        assert make_config(m, "smoke").steps == 2


@pytest.mark.parametrize("method,hp,words", [
    ("awp", {"gamma": -0.1}, "gamma"), ("trades", {"beta": -1.0}, "beta"), ("arow", {"lam": -1.0}, "lam"),
    ("arow", {"smoothing": 1.0}, "smoothing"), ("arow", {"smoothing": -0.1}, "smoothing"),
    ("arow", {"weighted": 2}, "weighted"), ("trades", {"extra": {"gamma": 0.1}}, "no hyperparameter 'gamma'"),
])
def test_bad_hyperparameters_are_refused(method, hp, words):
    with pytest.raises(ConfigError) as e:
        make_config(method, "smoke", **hp)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_cli_refuses_negative_beta_in_one_line():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run([sys.executable, "-m", "lib", "train", "--method", "trades", "--hp", "beta=-1",
                        "--no-progress"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "beta" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------------
# Flatness


def test_flatness_has_no_side_effects_and_worst_beats_random(batch):
    x, y = batch
    model = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert probes.flatness(model, x, y, rho=0.0, kind="worst") == 0.0
    rnd = probes.flatness(model, x, y, rho=0.05, kind="random", draws=3)
    worst = probes.flatness(model, x, y, rho=0.05, kind="worst", steps=2)
    assert worst > rnd and worst > 0
    assert probes.flatness(model, x, y, rho=0.05, kind="random", draws=3) == rnd      # deterministic
    assert_same({k: v for k, v in model.state_dict().items()}, before)
    assert model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(ConfigError):
        probes.flatness(model, x, y, rho=0.05, kind="sharpest")


# --------------------------------------------------------------------------------------------------
# AutoAttack (optional extra)


def test_autoattack_missing_gives_the_install_hint(monkeypatch, batch):
    from lib import autoattack
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    monkeypatch.setitem(sys.modules, "autoattack", None)
    assert not autoattack.available()
    with pytest.raises(SambookError, match="pip install -r requirements-extra.txt"):
        autoattack.autoattack_accuracy(fresh().eval(), *batch, norm="linf", eps=8 / 255)


@pytest.mark.slow
def test_autoattack_on_a_tiny_model(batch):
    from lib import autoattack
    if not autoattack.available():
        pytest.skip("AutoAttack extra not installed (pip install -r requirements-extra.txt)")
    x, y = batch
    model = fresh().eval()
    y = model(x).argmax(1).detach()            # every example correct when clean
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # standard AutoAttack; the budget is large enough that APGD-CE breaks every example of an untrained
    # net, so the later (costly on a CPU) attacks of the ensemble have nothing left to do
    acc, ok = autoattack.autoattack_accuracy(model, x, y, norm="linf", eps=32 / 255, n=8, per_example=True)
    assert acc == 0.0 and ok.shape == (8,) and not ok.any()
    assert_same(model.state_dict(), before)
    assert all(p.grad is None for p in model.parameters()) and not model.training


# --------------------------------------------------------------------------------------------------
# One fact in one place


def test_every_method_describes_itself():
    assert list(METHODS) == ["st", "sam", "asam", "at", "sam_at", "awp", "trades", "arow"]
    for name, m in METHODS.items():
        assert m.name == name and m.title and m.description
        cfg = make_config(name, "smoke")
        assert m.passes_per_step(cfg) == m.train_passes + (cfg.steps if m.adversarial else 0)
        assert m.forward_equivalents(cfg) == 3 * m.train_passes + 2 * (cfg.steps if m.adversarial else 0)
        assert m.defaults() == {h.name: h.default for h in m.hparams}
        assert cfg.label.startswith(m.title)


FRESH = """
import json, sys
from lib.config import make_config
out = {}
for m in ("st", "sam", "asam", "at", "sam_at", "awp", "trades", "arow"):
    c = make_config(m, "smoke")
    out[m] = c.label
print(json.dumps(out))
"""


def test_make_config_works_for_every_method_in_a_fresh_interpreter():
    r = subprocess.run([sys.executable, "-c", FRESH], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import json
    labels = json.loads(r.stdout)
    assert labels["awp"] == "AWP L-inf 8/255 gamma=0.01" and labels["asam"] == "ASAM rho=0.5"
    assert len(labels) == 8


def test_list_methods_lists_all_eight_in_a_fresh_interpreter():
    r = subprocess.run([sys.executable, "-m", "lib", "--list-methods"], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()] == list(METHODS)


def test_lib_has_no_import_circle():
    """Module-level imports between lib's modules form a graph without cycles (imports inside
    functions are deliberate late imports and do not count)."""
    import ast
    lib = REPO_ROOT / "lib"
    graph = {}
    for f in lib.glob("*.py"):
        tree = ast.parse(f.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[f.stem] = {d for d in deps if (lib / f"{d}.py").exists()}
    seen, stack = set(), []

    def visit(n):
        if n in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
        if n in seen:
            return
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            visit(d)
        stack.pop()
        seen.add(n)

    for n in sorted(graph):
        visit(n)
    assert "methods" in graph["config"] and "config" not in graph["methods"]
