"""The toy model of section 4 (lib.theory): closed forms, numerics, training and parameter checks."""
import math

import numpy as np
import pytest
import torch
from scipy import special

from lib import theory as T
from lib.errors import ConfigError

torch.set_num_threads(1)

MODELS = [T.ToyModel(0.9, 0.1, 100), T.ToyModel(0.75, 0.05, 200), T.ToyModel(0.6, 0.3, 10),
          T.ToyModel(0.99, 0.2, 1)]


def rel(a, b):
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- closed forms vs numerics

@pytest.mark.parametrize("m", MODELS, ids=str)
def test_w_st_and_w_at_match_numerical_maximiser(m):
    assert rel(T.maximise_accuracy(m), T.w_st(m)) < 1e-4
    for frac in (0.1, 0.5, 0.8):
        eps = frac * m.eta
        assert rel(T.maximise_accuracy(m, eps), float(T.w_at(m, eps))) < 1e-4
    assert math.isclose(float(T.w_at(m, 0.0)), T.w_st(m), rel_tol=1e-15)


@pytest.mark.parametrize("m", MODELS, ids=str)
def test_w_sam_root_matches_maxmin_optimiser(m):
    for rho in (0.2 * math.sqrt(m.d), 1.0 * math.sqrt(m.d), 2.0 * math.sqrt(m.d)):
        assert rel(T.maximise_sam_objective(m, rho), T.w_sam(m, rho)) < 1e-4


@pytest.mark.parametrize("m", MODELS, ids=str)
def test_eps_matching_rho_closed_form_vs_numeric(m):
    rho = 1.0 * math.sqrt(m.d)
    exact = float(T.eps_matching_rho(m, rho))
    assert 0 < exact < m.eta
    assert rel(T.eps_matching_rho_numeric(m, rho), exact) < 1e-4
    # the AT weight at that eps is the SAM weight
    assert rel(float(T.w_at(m, exact)), T.w_sam(m, rho)) < 1e-12


def test_accuracy_formula_agrees_with_monte_carlo():
    m = T.ToyModel(0.8, 0.15, 40)
    x, y = T.sample(m, 100_000, seed=3)
    for w, eps in [(0.0, 0.0), (T.w_st(m), 0.0), (T.w_st(m), 0.05), (25.0, 0.1)]:
        a = float(T.accuracy(m, w, eps))
        se = math.sqrt(a * (1 - a) / len(y))
        assert abs(T.empirical_accuracy(m, w, x, y, eps) - a) < 4 * se


def test_log_excess_accuracy_is_log_of_a_minus_p():
    m = T.ToyModel(0.9, 0.1, 100)
    w = np.array([5.0, 11.0, 30.0, 80.0])
    a, b = (w + m.d * m.eta) / math.sqrt(m.d), (m.d * m.eta - w) / math.sqrt(m.d)
    excess = (1 - m.p) * special.ndtr(b) - m.p * special.ndtr(-a)      # = A - p, no cancellation
    np.testing.assert_allclose(np.exp(T.log_excess_accuracy(m, w)), excess, rtol=1e-9)
    np.testing.assert_allclose(excess[:3], T.accuracy(m, w[:3]) - m.p, rtol=1e-9)
    assert T.log_excess_accuracy(m, -50.0) == -np.inf          # A < p far left


# ---------------------------------------------------------------- Theorem 4.3 and 4.4

def test_theorem_4_3_sam_above_st_and_condition_holds_over_grid():
    for p in (0.6, 0.75, 0.9, 0.99):
        for eta in (0.05, 0.1, 0.3):
            for d in (1, 10, 100, 400):
                m = T.ToyModel(p, eta, d)
                rhos = np.array([0.05, 0.5, 1.0, 3.0]) * math.sqrt(d)
                ws = T.w_sam(m, rhos)
                assert np.all(ws > T.w_st(m)), (p, eta, d)
                assert np.all(np.diff(ws) > 0), (p, eta, d)              # grows with rho
                res = T.sam_condition(m, ws, rhos)
                assert np.all(np.abs(res) < 1e-9), (p, eta, d, res)
                # and it is a max-min point: moving w either way lowers min(A(w-rho), A(w+rho))
                for w, r in zip(ws, rhos):
                    h = 1e-3 * r
                    at = T.sam_objective(m, w, r, n_inner=3)
                    assert at >= T.sam_objective(m, w - h, r, n_inner=3) - 1e-14
                    assert at >= T.sam_objective(m, w + h, r, n_inner=3) - 1e-14


@pytest.mark.parametrize("m", [T.ToyModel(0.9, 0.1, 100), T.ToyModel(0.7, 0.2, 150)], ids=str)
def test_small_rho_expansion_error_shrinks_like_rho_to_the_fourth(m):
    rhos = np.array([0.5, 1.0, 2.0, 4.0])
    err = np.abs(T.w_sam(m, rhos) - T.w_sam_small_rho(m, rhos))
    ratios = err[1:] / err[:-1]                 # rho doubles: error x 16
    assert np.all((ratios > 14) & (ratios < 18)), ratios
    slope = np.polyfit(np.log(rhos), np.log(err), 1)[0]
    assert 3.8 < slope < 4.2
    # paper.md: 4 digits for rho <= 2 at d = 100..200
    assert rel(T.w_sam_small_rho(m, 2.0), T.w_sam(m, 2.0)) < 1e-4


def test_theorem_4_5_leading_order():
    m = T.ToyModel(0.9, 0.1, 100)
    for rho in (0.5, 1.0, 2.0):
        assert rel(T.eps_matching_rho_small(m, rho), T.eps_matching_rho(m, rho)) < 2e-3 * rho ** 2


# ---------------------------------------------------------------- training

def test_trained_linear_model_lands_within_monte_carlo_error():
    m = T.ToyModel(0.9, 0.2, 25)
    kw = dict(seeds=range(8), n_samples=10_000, steps=200)
    st = T.train_linear(m, "st", **kw)                    # (1, 8)
    at = T.train_linear(m, "at", [0.05], **kw)
    sam = T.train_linear(m, "sam", [3.0], **kw)
    for trained, target in [(st, T.w_st(m)), (at, float(T.w_at(m, 0.05))),
                            (sam, T.w_sam(m, 3.0))]:
        mean, se = T.mean_se(trained[0])
        assert se > 0
        assert abs(mean - target) < 4 * se, (mean, se, target)
    # paired (same data): SAM puts more weight on the robust feature than ST
    diff_mean, diff_se = T.mean_se(sam[0] - st[0])
    assert diff_mean > 3 * diff_se
    # the usual first-order SAM step never leaves ST's path in one dimension
    fo = T.train_linear(m, "sam", [3.0], sam_inner="first_order", **kw)
    np.testing.assert_array_equal(fo, st)


def test_pgd_lands_on_worst_case_shift():
    m = T.ToyModel(0.9, 0.1, 20)
    x, y = T.sample(m, 64, seed=0)
    theta = torch.cat([torch.tensor([3.0]), torch.linspace(-1, 1, 20)]).double()
    theta[1 + 10] = 0.25                                       # no zero weight
    delta = T.pgd_linf(x, y, theta, eps=0.05, steps=5)
    torch.testing.assert_close(delta, T.worst_case_shift(y, theta[1:], 0.05))


def test_per_sample_sam_is_l2_adversarial_training():
    m = T.ToyModel(0.9, 0.1, 30)
    x, y = T.sample(m, 256, seed=1)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(31, generator=g, dtype=torch.float64)
    rho = 0.3
    sam = T.per_sample_sam_loss(theta, x, y, rho)
    at = T.l2_adversarial_loss(theta, x, y, rho * x.norm(dim=1) / theta.norm())
    torch.testing.assert_close(sam, at)
    # the closed-form maximiser v = -rho y x/||x|| attains it, random v in the ball do not exceed it
    v_star = -rho * y[:, None] * x / x.norm(dim=1, keepdim=True)
    attained = torch.nn.functional.softplus(-y * ((theta + v_star) * x).sum(1))
    torch.testing.assert_close(attained, sam)
    for _ in range(20):
        v = torch.randn(31, generator=g, dtype=torch.float64)
        v = rho * v / v.norm()
        assert torch.all(torch.nn.functional.softplus(-y * (x @ (theta + v))) <= sam + 1e-12)


def test_batch_sam_shift_vanishes_for_exponential_and_reverses_for_logistic():
    m = T.ToyModel(0.9, 0.1, 100)
    assert rel(T.batch_sam_weight(m, 0.0, "logistic"), T.w_st(m)) < 1e-5
    assert rel(T.batch_sam_weight(m, 0.5, "exponential"), T.w_st(m)) < 1e-6
    assert T.batch_sam_weight(m, 0.5, "logistic") < T.w_st(m) * (1 - 1e-3)


# ---------------------------------------------------------------- bad parameters

@pytest.mark.parametrize("kwargs, match", [
    (dict(p=0.5, eta=0.1, d=10), r"p must satisfy 1/2 < p < 1.*got p=0\.5"),
    (dict(p=0.3, eta=0.1, d=10), r"p must satisfy 1/2 < p < 1.*got p=0\.3"),
    (dict(p=1.0, eta=0.1, d=10), r"p must satisfy 1/2 < p < 1.*got p=1\.0"),
    (dict(p=float("nan"), eta=0.1, d=10), r"p must satisfy 1/2 < p < 1"),
    (dict(p=0.9, eta=0.0, d=10), r"eta must be a finite number > 0.*got eta=0\.0"),
    (dict(p=0.9, eta=-0.1, d=10), r"eta must be a finite number > 0.*got eta=-0\.1"),
    (dict(p=0.9, eta=0.1, d=0), r"d must be an integer >= 1.*got d=0"),
    (dict(p=0.9, eta=0.1, d=2.5), r"d must be an integer >= 1.*got d=2\.5"),
])
def test_bad_model_parameters_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        T.ToyModel(**kwargs)


def test_bad_eps_and_rho_refused():
    m = T.ToyModel(0.9, 0.1, 10)
    for eps in (0.1, 0.2, -0.01):
        with pytest.raises(ConfigError, match=r"eps must satisfy 0 <= eps < eta=0\.1.*got eps="):
            T.w_at(m, eps)
    with pytest.raises(ConfigError, match=r"eps must satisfy 0 <= eps < eta"):
        T.accuracy(m, 1.0, eps=0.1)
    with pytest.raises(ConfigError, match=r"eps must satisfy 0 <= eps < eta"):
        T.train_linear(m, "at", [0.05, 0.15], seeds=[0], n_samples=10, steps=1)
    for call in (lambda: T.w_sam(m, -1.0), lambda: T.w_sam_small_rho(m, -0.5),
                 lambda: T.eps_matching_rho(m, -1.0), lambda: T.batch_sam_weight(m, -1.0),
                 lambda: T.train_linear(m, "sam", [-1.0], seeds=[0], n_samples=10, steps=1)):
        with pytest.raises(ConfigError,
                           match=r"rho must be a finite number >= 0.*got rho=\[?-\d"):
            call()
    with pytest.raises(ConfigError, match=r"method must be 'st', 'at' or 'sam'"):
        T.train_linear(m, "awp")
    with pytest.raises(ConfigError, match=r"profile must be one of \['cpu', 'cpu-long', 'fast', 'paper', 'smoke'\]"):
        T.train_profile("huge")
