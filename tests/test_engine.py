"""SAM, the training loop, checkpoints and resume, the run cache, and the paper's settings."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from lib import runs
from lib.attacks import pgd
from lib.config import PROFILES, make_config, paper_grid, paper_train_attack
from lib.errors import ConfigError, NonFiniteLossError, SambookError
from lib.methods import make_strategy
from lib.models import build_model, count_parameters
from lib.optim import SAM, frozen_bn_stats
from lib.train import lr_at, train


def _batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_preactresnet18_has_the_standard_size():
    assert abs(count_parameters(build_model(10, 64)) - 11.17e6) < 0.05e6
    assert build_model(100, 8)(torch.rand(2, 3, 32, 32)).shape == (2, 100)


# 16: SAM ------------------------------------------------------------------------------------------
def test_sam_with_rho_zero_is_exactly_sgd():
    torch.manual_seed(0)
    a = build_model(10, 8)
    b = copy.deepcopy(a)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    sgd = torch.optim.SGD(a.parameters(), **kw)
    sam = SAM(b.parameters(), torch.optim.SGD, rho=0.0, **kw)
    st_strategy = make_strategy(make_config("st"))
    sam_strategy = make_strategy(make_config("sam", rho=0.0))
    for i in range(3):
        x, y = _batch(seed=i)
        st_strategy.step(a, sgd, x, y, None)
        sam_strategy.step(b, sam, x, y, None)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)     # weights, BN statistics and counters: bit for bit


def test_sam_second_pass_does_not_touch_batchnorm_statistics():
    torch.manual_seed(0)
    model = build_model(10, 8).train()
    ref = copy.deepcopy(model)
    x, y = _batch()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0)   # lr 0: only BN buffers could move
    make_strategy(make_config("sam", rho=0.5)).step(model, opt, x, y, None)
    with torch.no_grad():
        ref(x)                                                 # exactly one BN update (the first pass)
    buffers = dict(model.named_buffers())
    for k, v in ref.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_frozen_bn_stats_restores_tracking():
    model = build_model(10, 8).train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    with frozen_bn_stats(model):
        model(torch.rand(8, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_sam_climbs_rho_along_the_normalised_gradient():
    torch.manual_seed(0)
    model = build_model(10, 8)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = _batch()
    w0 = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), y).backward()
    g = [p.grad.clone() for p in model.parameters()]
    gnorm = torch.sqrt(sum((t ** 2).sum() for t in g))
    opt.first_step()
    e = [p.detach() - w for p, w in zip(model.parameters(), w0)]
    assert torch.sqrt(sum((t ** 2).sum() for t in e)).item() == pytest.approx(0.05, rel=1e-4)
    for ei, gi in zip(e, g):
        assert torch.allclose(ei, 0.05 * gi / gnorm, atol=1e-6)
    F.cross_entropy(model(x), y).backward()
    opt.second_step()
    assert all(not opt.state[p].get("e_w") for p in model.parameters())


def test_asam_perturbation_is_scaled_by_the_weights():
    torch.manual_seed(0)
    model = build_model(10, 8)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, lr=0.1)
    x, y = _batch()
    w0 = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), y).backward()
    tg = [w.abs() * p.grad for w, p in zip(w0, model.parameters())]
    norm = torch.sqrt(sum((t ** 2).sum() for t in tg))
    opt.first_step()
    for p, w, t in zip(model.parameters(), w0, tg):
        assert torch.allclose(p.detach() - w, 0.5 * w.abs() * t / norm, atol=1e-6)


def test_negative_rho_is_refused():
    with pytest.raises(ConfigError, match="rho"):
        SAM(build_model(10, 8).parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)


# adversarial training step -------------------------------------------------------------------------
def test_attack_does_not_leak_parameter_gradients():
    model = build_model(10, 8).train()
    x, y = _batch()
    pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=2)
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_at_step_trains_on_adversarial_examples_with_bn_in_eval_during_the_attack():
    cfg = make_config("at", eps=8 / 255)
    torch.manual_seed(0)
    model = build_model(10, 8).train()
    strategy = make_strategy(cfg)
    seen_modes = []
    hook = model.bn.register_forward_pre_hook(lambda m, inp: seen_modes.append(m.training))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    strategy.step(model, opt, x, y, torch.Generator().manual_seed(0))
    hook.remove()
    assert seen_modes == [False] * cfg.steps + [True]    # attack steps in eval mode, the update in train mode


# the loop, checkpoints, resume (17) -----------------------------------------------------------------
def _tiny(method="st", **kw):
    base = dict(epochs=2, train_per_class=12, test_per_class=3, epoch_eval_size=30, eval_steps=1, batch_size=32)
    base.update(kw)
    return make_config(method, "smoke", **base)


@pytest.mark.parametrize("method,kw", [("st", {}), ("sam", {"rho": 0.1}), ("at", {"eps": 4 / 255})])
def test_resume_after_a_kill_is_bitwise_identical(exact, tmp_path, method, kw):
    cfg = _tiny(method, **kw)
    data = exact.subset(cfg.train_per_class, cfg.test_per_class)
    straight = train(cfg, data, device="cpu", run_dir=tmp_path / "a", progress=False)
    first = train(cfg, data, device="cpu", run_dir=tmp_path / "b", progress=False, stop_after_epoch=1)
    assert not first.finished and (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = train(cfg, data, device="cpu", run_dir=tmp_path / "b", progress=False)
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    drop = ("epoch_seconds", "images_per_second")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in resumed.history]


def test_odd_sized_last_batch_trains(exact):
    cfg = _tiny(train_per_class=None, epochs=1)     # 5,085 images: a last batch of 29
    res = train(cfg, exact.subset(None, 3), device="cpu", progress=False)
    assert res.finished and res.history[0]["train_loss"] > 0


def test_non_finite_loss_stops_with_a_clear_error(exact):
    cfg = _tiny(lr=1e12, epochs=1)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train(cfg, exact.subset(cfg.train_per_class, cfg.test_per_class), device="cpu", progress=False)


def test_paper_schedule():
    cfg = make_config("st", "paper")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (100, 128, 0.1, 0.9, 5e-4)
    assert [lr_at(cfg, e) for e in (0, 74, 75, 89, 90, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert PROFILES["paper"].seeds == (0, 1, 2)


def test_paper_training_attacks():
    assert paper_train_attack("linf", 1 / 255) == pytest.approx((0.5 / 255, 5))
    assert paper_train_attack("linf", 8 / 255) == pytest.approx((2 / 255, 10))
    assert paper_train_attack("l2", 64 / 255) == pytest.approx((32 / 255, 5))
    grid = paper_grid("paper")
    assert len(grid) == 13 * 3 and len({c.config_hash() for c in grid}) == 39


# the run cache ---------------------------------------------------------------------------------------
def test_run_is_cached_and_a_failed_rerun_keeps_the_finished_result(tmp_path, monkeypatch):
    cfg = _tiny(epochs=1)
    r1 = runs.run(cfg, runs_root=tmp_path, device="cpu", progress=False)
    assert r1.path.name.startswith("cifar10-st-s0-smoke-") and (r1.path / "model.pt").exists()
    assert not (r1.path / "checkpoint.pt").exists()
    m = json.loads((r1.path / "metrics.json").read_text())
    for k in ("natural", "linf_1", "linf_2", "l2_16", "l2_32", "train_seconds", "images_per_second", "device",
              "torch", "commit", "data"):
        assert k in m, k
    assert list(r1.history[0]) [:4] == ["epoch", "lr", "train_loss", "train_acc"]
    before = (r1.path / "metrics.json").read_bytes()
    r2 = runs.run(cfg, runs_root=tmp_path, device="cpu", progress=False)      # reused, not retrained
    assert r2.metrics == r1.metrics
    # the same config, made to fail: a retrain with a diverging learning rate cannot touch the result
    def exploding(config, *a, **k):
        raise NonFiniteLossError("non-finite training loss (simulated)")
    monkeypatch.setattr(runs, "train", exploding)
    with pytest.raises(NonFiniteLossError):
        runs.run(cfg, runs_root=tmp_path, device="cpu", progress=False, retrain=True)
    assert (r1.path / "metrics.json").read_bytes() == before
    model = runs.load_model(r2)
    assert not model.training


def test_clean_accuracy_in_metrics_equals_the_training_log(tmp_path):
    cfg = _tiny(epochs=1, test_per_class=3, epoch_eval_size=30)      # the curve sees the whole test split
    r = runs.run(cfg, runs_root=tmp_path, device="cpu", progress=False)
    assert abs(r.metrics["natural"] - r.history[-1]["test_acc"]) <= 0.1


def test_unwritable_runs_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SambookError, match="cannot write the run folder"):
        runs.run(_tiny(), runs_root=blocker, device="cpu", progress=False)


def test_config_hash_changes_with_any_setting():
    a, b = make_config("sam", rho=0.1), make_config("sam", rho=0.2)
    assert a.config_hash() != b.config_hash() and a.name != b.name
    assert make_config("sam", rho=0.1).config_hash() == a.config_hash()
    from lib.config import RunConfig
    assert RunConfig.from_dict(a.to_dict()) == a


def test_smoke_run_end_to_end_is_clearly_above_chance(tmp_path):
    """The real smoke profile on the real byte-exact CIFAR-10 subset."""
    r = runs.run(make_config("st", "smoke"), runs_root=tmp_path, device="cpu", progress=False)
    assert r.metrics["test_images"] == 200 and r.metrics["train_images"] == 2000
    assert r.metrics["natural"] >= 18.0               # chance is 10 %
    for b in ("linf_1", "linf_2", "l2_16", "l2_32"):
        assert 0.0 <= r.metrics[b] <= r.metrics["natural"]
