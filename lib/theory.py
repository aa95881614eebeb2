"""The paper's toy model (Wei, Zhu, Zhang 2023, section 4): where ST, AT and SAM put their weight.

Setting (the paper's theory model):

- y is uniform in {-1, +1};
- the robust feature x_1 equals +y with probability p (1/2 < p < 1) and -y otherwise;
- the d non-robust features x_2 .. x_{d+1} are i.i.d. N(eta*y, 1), with eta > 0 small;
- the classifier is sign(w^T x). By scale invariance and symmetry the d non-robust weights are
  pinned at 1, so the one free number is w = w_1, the weight on the robust feature (dimensionless,
  in units of a non-robust weight). Larger w means more reliance on the robust feature.

Units used throughout: w and the SAM radius rho are weights (same units as w_1); the attack budget
eps is in feature units (the non-robust features have unit variance), an L-inf budget on the
non-robust features only, so 0 <= eps < eta; accuracies are fractions in [0, 1]; margins
y * w^T x are in the units of x.

Closed forms (Theorems 4.1-4.5; 4.4 and 4.5 are re-derived here, see :func:`w_sam_small_rho`):

- clean / robust accuracy   A_eps(w) = p Phi((w + d(eta-eps))/sqrt d) + (1-p) Phi((d(eta-eps) - w)/sqrt d)
- standard training         w_ST  = ln(p/(1-p)) / (2 eta)
- adversarial training      w_AT  = ln(p/(1-p)) / (2 (eta - eps))
- SAM (exact inner problem) w_SAM solves A(w - rho) = A(w + rho), and w_SAM > w_ST
- small rho                 w_SAM = w_ST (1 + rho^2/(3d)) + O(rho^4)
- same w from AT and SAM    eps/eta = 1 - w_ST/w_SAM(rho) ~ rho^2/(3d + rho^2)

Numerics: every probability is computed in log space with scipy.special.log_ndtr; roots are bracketed
near w_ST (A is flat in its tails, so an unbracketed bounded optimiser wanders off).

Training: :func:`train_linear` runs normalised gradient descent on sampled data for ST, AT (inner
maximisation = the worst-case L-inf shift, which is where PGD lands on a linear model; see
:func:`pgd_linf`) and SAM (weight perturbation of w_1 within [-rho, rho]).

Beyond the paper (section 4 of the chapter): :func:`per_sample_sam_loss`,
:func:`l2_adversarial_loss` (per-sample SAM on a linear model is L2 adversarial training with radius
rho*||x||/||w||) and :func:`batch_sam_weight` (batch-level SAM on the usual losses).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import optimize, special

from .errors import ConfigError

__all__ = [
    "ToyModel", "check_eps", "check_rho",
    "accuracy", "log_accuracy", "log_excess_accuracy", "empirical_accuracy", "sample",
    "w_st", "w_at", "w_sam", "sam_condition", "w_sam_small_rho", "sam_objective",
    "eps_matching_rho", "eps_matching_rho_small", "eps_matching_rho_numeric",
    "maximise_accuracy", "maximise_sam_objective",
    "worst_case_shift", "pgd_linf", "train_linear", "train_profile", "TRAIN_PROFILES", "mean_se",
    "per_sample_sam_loss", "l2_adversarial_loss", "batch_sam_weight",
]


# ----------------------------------------------------------------------------------------------
# The model and its parameters
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ToyModel:
    """The data distribution of section 4: robust feature x_1, d non-robust N(eta*y, 1) features.

    p: probability that x_1 = y (1/2 < p < 1). eta: mean shift of each non-robust feature, in units
    of its standard deviation (eta > 0). d: number of non-robust features (integer >= 1).

    Example: ``ToyModel(p=0.9, eta=0.1, d=100)``. Bad values raise :class:`ConfigError`.
    """

    p: float
    eta: float
    d: int

    def __post_init__(self):
        p, eta, d = self.p, self.eta, self.d
        if not _is_real(p) or not 0.5 < p < 1.0:
            raise ConfigError(f"p must satisfy 1/2 < p < 1 (x_1 must agree with y more often than "
                              f"not, and not always), got p={p!r}")
        if not _is_real(eta) or not eta > 0 or not math.isfinite(eta):
            raise ConfigError(f"eta must be a finite number > 0 (the non-robust features' mean "
                              f"shift), got eta={eta!r}")
        if isinstance(d, bool) or not _is_real(d) or d != int(d) or d < 1:
            raise ConfigError(f"d must be an integer >= 1 (the number of non-robust features), "
                              f"got d={d!r}")
        object.__setattr__(self, "p", float(p))
        object.__setattr__(self, "eta", float(eta))
        object.__setattr__(self, "d", int(d))

    @property
    def log_odds(self) -> float:
        """ln(p/(1-p)): the log-odds carried by the robust feature (dimensionless)."""
        return math.log(self.p) - math.log1p(-self.p)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and v == v


def _show(v) -> str:
    """A parameter value for an error message: scalars as numbers, sequences as plain lists."""
    a = np.asarray(v, dtype=float) if not isinstance(v, str) else None
    if a is None or a.ndim == 0:
        return repr(float(a)) if a is not None else repr(v)
    return repr([float(t) for t in a.ravel()])


def check_eps(model: ToyModel, eps) -> np.ndarray:
    """Validate an L-inf budget on the non-robust features: 0 <= eps < eta. Returns it as an array."""
    e = np.asarray(eps, dtype=float)
    if e.size == 0 or not np.all(np.isfinite(e)) or np.any(e < 0) or np.any(e >= model.eta):
        raise ConfigError(f"eps must satisfy 0 <= eps < eta={model.eta:g} (at eps >= eta the "
                          f"non-robust features carry no signal), got eps={_show(eps)}")
    return e


def check_rho(rho) -> np.ndarray:
    """Validate a SAM radius: finite and rho >= 0. Returns it as an array."""
    r = np.asarray(rho, dtype=float)
    if r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ConfigError(f"rho must be a finite number >= 0 (the SAM radius), got "
                          f"rho={_show(rho)}")
    return r


# ----------------------------------------------------------------------------------------------
# Accuracy: closed form (special functions, log space) and Monte Carlo
# ----------------------------------------------------------------------------------------------

def log_accuracy(model: ToyModel, w, eps=0.0) -> np.ndarray:
    """ln A_eps(w), computed stably with log_ndtr and logaddexp.

    A_eps(w) = p Phi(a) + (1-p) Phi(b),  a = (w + d(eta-eps))/sqrt(d),  b = (d(eta-eps) - w)/sqrt(d).
    w: weight on the robust feature (non-robust weights = 1); eps: L-inf budget on the non-robust
    features (feature units). Broadcasts over w and eps.
    """
    eps = check_eps(model, eps)
    w = np.asarray(w, dtype=float)
    mu = model.d * (model.eta - eps)
    sd = math.sqrt(model.d)
    return np.logaddexp(math.log(model.p) + special.log_ndtr((w + mu) / sd),
                        math.log1p(-model.p) + special.log_ndtr((mu - w) / sd))


def accuracy(model: ToyModel, w, eps=0.0) -> np.ndarray:
    """Clean (eps = 0) or robust accuracy of sign(w x_1 + sum_j x_j), a fraction in [0, 1].

    A_eps(w) = p Phi((w + d(eta-eps))/sqrt d) + (1-p) Phi((d(eta-eps) - w)/sqrt d).

    Robust accuracy is against the worst L-inf shift of size eps of the non-robust features, which
    for unit non-robust weights is x_j -> x_j - eps*y (it replaces eta by eta - eps). Example:
    ``accuracy(ToyModel(0.9, 0.1, 100), w_st(ToyModel(0.9, 0.1, 100)))`` is about 0.931.
    """
    return np.exp(log_accuracy(model, w, eps))


def log_excess_accuracy(model: ToyModel, w, eps=0.0) -> np.ndarray:
    """ln(A_eps(w) - p), -inf where A_eps(w) <= p. A monotone transform of A_eps on {A_eps > p}.

    A_eps(w) - p = (1-p) Phi(b) - p Phi(-a) (a, b as in :func:`log_accuracy`): both terms are
    computed in log space, so the difference keeps full relative precision even where A_eps is
    within 1e-16 of p (large w, eps near eta), where A_eps itself is flat to float64. The maximum
    of A_eps always exceeds p (A_eps decreases to p as w grows), so maximising this maximises A_eps.
    """
    eps = check_eps(model, eps)
    w = np.asarray(w, dtype=float)
    mu = model.d * (model.eta - eps)
    sd = math.sqrt(model.d)
    log_b = math.log1p(-model.p) + special.log_ndtr((mu - w) / sd)     # ln (1-p) Phi(b)
    log_a = math.log(model.p) + special.log_ndtr(-(w + mu) / sd)      # ln p Phi(-a)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = log_b + np.log(-np.expm1(np.minimum(log_a - log_b, 0.0)))
    return np.where(log_b > log_a, out, -np.inf)


def sample(model: ToyModel, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n i.i.d. samples (x, y): x of shape (n, d+1) float64, y of shape (n,) in {-1., +1.}.

    y ~ uniform{-1,+1}; x_1 = y with probability p else -y; x_j ~ N(eta*y, 1) for j = 2..d+1.
    Deterministic given ``seed``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be an integer >= 1 (number of samples), got n={n!r}")
    g = torch.Generator().manual_seed(int(seed))
    y = torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1            # (n,)
    agree = (torch.rand(n, generator=g, dtype=torch.float64) < model.p).to(torch.float64)
    x1 = y * (2 * agree - 1)                                                          # (n,)
    xr = model.eta * y[:, None] + torch.randn(n, model.d, generator=g, dtype=torch.float64)
    return torch.cat([x1[:, None], xr], dim=1), y                                     # (n, d+1)


def empirical_accuracy(model: ToyModel, w: float, x: torch.Tensor, y: torch.Tensor,
                       eps: float = 0.0) -> float:
    """Fraction of samples with y (w x_1 + sum_j x_j) > eps*d: the Monte Carlo estimate of A_eps(w).

    The right-hand side eps*d is the margin lost to the worst L-inf shift of the d non-robust
    features (eps * ||(1, ..., 1)||_1).
    """
    eps = float(check_eps(model, eps))
    margin = y * (w * x[:, 0] + x[:, 1:].sum(dim=1))
    return float((margin > eps * model.d).to(torch.float64).mean())


# ----------------------------------------------------------------------------------------------
# Closed forms (Theorems 4.1-4.5)
# ----------------------------------------------------------------------------------------------

def w_st(model: ToyModel) -> float:
    """Theorem 4.1: the accuracy-maximising weight w_ST = ln(p/(1-p)) / (2 eta) (dimensionless).

    It is also the Bayes classifier: the log-odds of y given x are ln(p/(1-p)) x_1 + 2 eta sum_j x_j.
    """
    return model.log_odds / (2 * model.eta)


def w_at(model: ToyModel, eps) -> np.ndarray:
    """Theorem 4.2: the robust-accuracy maximiser w_AT = ln(p/(1-p)) / (2 (eta - eps)).

    eps: L-inf budget on the non-robust features (feature units), 0 <= eps < eta. Equals
    w_ST * eta / (eta - eps).
    """
    eps = check_eps(model, eps)
    return model.log_odds / (2 * (model.eta - eps))


def sam_condition(model: ToyModel, w, rho) -> np.ndarray:
    """Theorem 4.3's optimality condition as a residual: ln A(w + rho) - ln A(w - rho).

    Zero at w = w_SAM(rho); positive to its left, negative to its right (on [w_ST-rho, w_ST+rho]).
    """
    rho = check_rho(rho)
    return log_accuracy(model, np.asarray(w) + rho) - log_accuracy(model, np.asarray(w) - rho)


def _sam_residual(model: ToyModel, w: float, rho: float) -> float:
    """ln(A(w+rho) - p) - ln(A(w-rho) - p): same sign and root as :func:`sam_condition`, computed
    without losing A - p to rounding. Infinite values (A <= p at an end) are clipped to +-1e6."""
    hi, lo = log_excess_accuracy(model, [w + rho, w - rho])
    if np.isinf(lo) or np.isinf(hi):
        return 1e6 if hi > lo else -1e6
    return float(hi - lo)


def w_sam(model: ToyModel, rho) -> np.ndarray:
    """Theorem 4.3: w_SAM = argmax_w min_{|v| <= rho} A(w + v), the root of A(w - rho) = A(w + rho).

    rho: radius of the perturbation of w_1 (weight units, non-robust weights pinned at 1).
    Solved by Brent's method on the bracket [w_ST - rho, w_ST + rho]: A is unimodal with its peak at
    w_ST, so ln A(w+rho) - ln A(w-rho) is positive at the left end, negative at the right end and
    monotone in between. Broadcasts over rho. Example: ``w_sam(ToyModel(0.9, 0.1, 100), 5.0)``.
    """
    rhos = check_rho(rho)
    out = np.empty(rhos.shape)
    w0 = w_st(model)
    for i, r in np.ndenumerate(rhos):
        if r == 0:
            out[i] = w0
            continue
        f = lambda w: _sam_residual(model, w, r)  # noqa: E731
        lo, hi = w0 - r, w0 + r
        if not (f(lo) > 0 > f(hi)):
            raise ArithmeticError(f"SAM condition not bracketed on [{lo:g}, {hi:g}] at rho={r:g}: "
                                  f"A(w) is too flat there to resolve in float64")
        out[i] = optimize.brentq(f, lo, hi, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)
    return out if out.ndim else float(out)


def w_sam_small_rho(model: ToyModel, rho) -> np.ndarray:
    """Theorem 4.4 (re-derived): w_SAM = w_ST (1 + rho^2/(3d)) + O(rho^4).

    Derivation: expand A(w+rho) - A(w-rho) = 2 rho A'(w) + rho^3 A'''(w)/3 + O(rho^5) = 0 around
    w_ST, so w_SAM - w_ST = -rho^2 A'''(w_ST) / (6 A''(w_ST)). With c = p phi(a) = (1-p) phi(b) at
    w_ST: A'' = -2 c eta / sqrt(d) and A''' = 4 c w_ST eta / d^(3/2), giving w_ST rho^2 / (3d).
    The residual is even in rho, so the next term is O(rho^4).
    """
    rho = check_rho(rho)
    return w_st(model) * (1 + rho ** 2 / (3 * model.d))


def eps_matching_rho(model: ToyModel, rho) -> np.ndarray:
    """Theorem 4.5, exact: the AT budget giving the same weight as SAM, w_AT(eps) = w_SAM(rho).

    eps = eta (1 - w_ST / w_SAM(rho)) (feature units), from w_AT = w_ST eta/(eta - eps).
    """
    return model.eta * (1 - w_st(model) / np.asarray(w_sam(model, rho)))


def eps_matching_rho_small(model: ToyModel, rho) -> np.ndarray:
    """Theorem 4.5 to leading order: eta/(eta-eps) = 1 + rho^2/(3d), i.e. eps = eta rho^2/(3d + rho^2)."""
    rho = check_rho(rho)
    return model.eta * rho ** 2 / (3 * model.d + rho ** 2)


# ----------------------------------------------------------------------------------------------
# Direct numerical optimisation of the exact objectives (no closed-form optimum used)
# ----------------------------------------------------------------------------------------------

def _scan_grid(model: ToyModel) -> np.ndarray:
    """A symmetric, geometric grid of w spanning 1e-3 .. 1e3 times the natural scale sqrt(d)/eta."""
    scale = math.sqrt(model.d) + 1.0 / model.eta
    pos = scale * np.geomspace(1e-3, 1e3, 1200)
    return np.concatenate([-pos[::-1], [0.0], pos])


def _grid_then_brent(f, grid: np.ndarray, what: str) -> float:
    """Maximise a vectorised f: take the best grid point, then bounded Brent on its neighbours."""
    vals = f(grid)
    i = int(np.argmax(vals))
    if not (0 < i < len(grid) - 1 and vals[i] > vals[i - 1] and vals[i] > vals[i + 1]):
        raise ArithmeticError(f"{what}: no resolvable peak on the search grid (the objective is "
                              f"flat to float64 precision there)")
    lo, hi = grid[i - 1], grid[i + 1]
    # -inf (A <= p) is floored so that Brent's parabolic steps never see inf - inf
    res = optimize.minimize_scalar(lambda w: -max(float(f(w)), -1e10), bounds=(lo, hi),
                                   method="bounded",
                                   options={"xatol": 1e-12 * max(1.0, abs(grid[i])),
                                            "maxiter": 500})
    return float(res.x)


def maximise_accuracy(model: ToyModel, eps: float = 0.0) -> float:
    """argmax_w A_eps(w) found numerically: grid scan of ln(A_eps - p), then bounded Brent on the
    bracket around the best grid point.

    Uses only the accuracy formula (special functions), not Theorems 4.1/4.2; checks them.
    """
    eps = float(check_eps(model, eps))
    return _grid_then_brent(lambda w: log_excess_accuracy(model, w, eps), _scan_grid(model),
                            f"maximise_accuracy(eps={eps:g})")


def sam_objective(model: ToyModel, w, rho: float, n_inner: int = 201) -> np.ndarray:
    """min_{|v| <= rho} ln A(w + v), the inner problem of SAM, taken over a grid of n_inner values
    of v in [-rho, rho] (endpoints included). Nothing assumes the minimum is at an endpoint."""
    rho = float(check_rho(rho))
    v = np.linspace(-rho, rho, n_inner)
    w = np.asarray(w, dtype=float)
    return log_accuracy(model, w[..., None] + v).min(axis=-1)


def _sam_excess_objective(model: ToyModel, w, rho: float, n_inner: int = 201) -> np.ndarray:
    """min_{|v| <= rho} ln(A(w + v) - p): the same maximiser as :func:`sam_objective`, resolvable
    in the flat right tail."""
    v = np.linspace(-rho, rho, n_inner)
    w = np.asarray(w, dtype=float)
    return log_excess_accuracy(model, w[..., None] + v).min(axis=-1)


def maximise_sam_objective(model: ToyModel, rho: float) -> float:
    """argmax_w min_{|v| <= rho} A(w + v) found numerically (grid scan, then bounded Brent).

    Independent of the SAM condition: it optimises the max-min objective itself (as
    min_v ln(A(w+v) - p), the same maximiser, resolvable where A is flat).
    """
    rho = float(check_rho(rho))
    return _grid_then_brent(lambda w: _sam_excess_objective(model, w, rho), _scan_grid(model),
                            f"maximise_sam_objective(rho={rho:g})")


def eps_matching_rho_numeric(model: ToyModel, rho: float) -> float:
    """The eps with maximise_accuracy(eps) = maximise_sam_objective(rho), by Brent's method on eps.

    Numerical counterpart of :func:`eps_matching_rho` (feature units).
    """
    rho = float(check_rho(rho))
    target = maximise_sam_objective(model, rho)
    f = lambda e: maximise_accuracy(model, e) - target  # noqa: E731
    if rho == 0 or f(0.0) >= 0:
        return 0.0
    hi = 0.5 * model.eta
    while f(hi) <= 0:
        hi = model.eta - 0.5 * (model.eta - hi)
        if model.eta - hi < 1e-6 * model.eta:
            raise ArithmeticError(f"eps_matching_rho_numeric: no eps < eta matches rho={rho:g}")
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-13, rtol=1e-12))


# ----------------------------------------------------------------------------------------------
# Training the linear classifier on sampled data
# ----------------------------------------------------------------------------------------------

def worst_case_shift(y: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """The exact solution of the L-inf inner maximisation for a linear model: delta = -eps y sign(weights).

    y: (n,) labels; weights: (k,) weights of the attacked features; returns delta of shape (n, k).
    It lowers every margin y w^T x by eps ||weights||_1 (eps in feature units).
    """
    return -eps * y[:, None] * torch.sign(weights)[None, :]


def pgd_linf(x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, eps: float, steps: int = 10,
             alpha: float | None = None) -> torch.Tensor:
    """PGD (Madry et al. 2018) on the logistic loss of sign(theta^T x), L-inf budget eps on the
    non-robust features x_2.. only (x_1 is left alone). Returns delta of shape (n, d).

    Step alpha defaults to 2.5 eps / steps; no random start. On a linear model every step moves
    each coordinate towards -eps y sign(theta_j), so PGD ends at :func:`worst_case_shift`.
    """
    alpha = 2.5 * eps / steps if alpha is None else alpha
    delta = torch.zeros_like(x[:, 1:])
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = x[:, 0] * theta[0] + (x[:, 1:] + delta) @ theta[1:]
        loss = torch.nn.functional.softplus(-y * logits).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return delta.detach()


TRAIN_PROFILES = {
    # seeds: independent data sets (Monte Carlo replicates); n_samples: per seed; steps: GD steps
    "smoke": {"seeds": (0, 1, 2, 3), "n_samples": 20_000, "steps": 300},
    "cpu": {"seeds": tuple(range(8)), "n_samples": 20_000, "steps": 300},    # twice smoke's replicates: ~1 min
    "cpu-long": {"seeds": tuple(range(8)), "n_samples": 20_000, "steps": 300},  # the toy model does not need longer
    "fast": {"seeds": tuple(range(8)), "n_samples": 100_000, "steps": 400},
    "paper": {"seeds": tuple(range(16)), "n_samples": 400_000, "steps": 500},
}


def train_profile(profile: str) -> dict:
    """Training sizes for :func:`train_linear` by profile name (smoke | cpu | cpu-long | fast | paper)."""
    if profile not in TRAIN_PROFILES:
        raise ConfigError(f"profile must be one of {sorted(TRAIN_PROFILES)}, got {profile!r}")
    return dict(TRAIN_PROFILES[profile])


def train_linear(model: ToyModel, method: str, sizes: Sequence[float] = (0.0,), *,
                 seeds: Sequence[int] = (0, 1, 2, 3), n_samples: int = 20_000, steps: int = 300,
                 lr: float | None = None, tau: float | None = None,
                 sam_inner: str = "exact") -> np.ndarray:
    """Train w_1 of the linear classifier sign(w x_1 + sum_j x_j) by gradient descent on samples.

    method: "st" (standard), "at" (adversarial training, sizes = eps budgets, feature units) or
    "sam" (sizes = rho radii, weight units). Returns the trained w, shape (len(sizes), len(seeds)):
    one independent data set of n_samples per seed, shared across sizes (common random numbers).
    The d non-robust weights stay pinned at 1, as in the theory.

    Loss: the 0-1 loss smoothed so that it has a gradient, L(w) = mean_i Phi(-m_i / tau), with
    margin m_i = y_i (w x_i1 + sum_j x_ij) and gradient dL/dw = -mean_i phi(m_i/tau) y_i x_i1 / tau.
    Its population version is the error 1 - A(w) of a model whose margin noise has variance
    d + tau^2 instead of d, so its optimum is biased by a factor 1 + tau^2/d (0.25% at the default
    tau = 0.05 sqrt(d), margin units), well below the Monte Carlo error of the defaults.

    - "at": each step the inner maximisation is solved exactly (:func:`worst_case_shift`, the point
      PGD reaches on a linear model): every margin drops by eps * ||(1, .., 1)||_1 = eps * d.
    - "sam", sam_inner="exact": each step evaluates L at w - rho and w + rho and descends on the
      larger one (the exact inner max over [-rho, rho] of a unimodal loss), as Theorem 4.3 assumes.
    - "sam", sam_inner="first_order": the usual SAM step, v = rho * g/|g| with g = dL/dw (in one
      dimension, the sign of the gradient), then descend with the gradient taken at w + v.

    Optimiser: normalised full-batch gradient descent from w = 0, w <- w - lr_k g/|g|, with step
    lr_k decaying linearly from lr (weight units, default 0.1 sqrt(d)) to 0 over ``steps`` steps.
    The normalisation makes the step independent of how flat L is (AT at large eps is very flat).
    """
    if method not in ("st", "at", "sam"):
        raise ConfigError(f"method must be 'st', 'at' or 'sam', got {method!r}")
    if sam_inner not in ("exact", "first_order"):
        raise ConfigError(f"sam_inner must be 'exact' or 'first_order', got {sam_inner!r}")
    sizes = np.atleast_1d(np.asarray(sizes, dtype=float))
    if method == "at":
        check_eps(model, sizes)
    elif method == "sam":
        check_rho(sizes)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ConfigError("seeds must name at least one seed")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    lr = 0.1 * math.sqrt(model.d) if lr is None else float(lr)
    tau = 0.05 * math.sqrt(model.d) if tau is None else float(tau)
    if not (lr > 0 and tau > 0):
        raise ConfigError(f"lr and tau must be > 0, got lr={lr!r}, tau={tau!r}")

    # Per seed, the margin is w * r + u with r = y x_1 (= +-1) and u = y sum_j x_j: the non-robust
    # weights are pinned at 1, so their contribution is computed once.
    r_list, u_list = [], []
    for s in seeds:
        x, y = sample(model, n_samples, s)
        r_list.append(y * x[:, 0])
        u_list.append(y * x[:, 1:].sum(dim=1))
        del x
    # The loop runs in float32 (3x faster special functions; only signs of gradients are used).
    r = torch.stack(r_list)[None].float()                          # (1, S, n)
    u = torch.stack(u_list)[None].float()                          # (1, S, n)
    size = torch.tensor(sizes, dtype=torch.float32)[:, None]       # (G, 1)
    if method == "at":
        # Margin change of the worst-case L-inf shift at eps = 1 for label +1 and unit non-robust
        # weights: y * delta @ ones = -d. It scales linearly with eps.
        ones = torch.ones(model.d, dtype=torch.float32)
        unit = worst_case_shift(torch.ones(1, dtype=torch.float32), ones, 1.0) @ ones   # (1,)
        u = u + size[..., None] * unit                             # (G, S, n)

    def loss(w):                                                   # (G, S) -> (G, S)
        return torch.special.ndtr(-(w[..., None] * r + u) / tau).mean(dim=-1)

    def grad(w):                                                   # dL/dw, (G, S) -> (G, S)
        z = (w[..., None] * r + u) / tau
        return -(torch.exp(-0.5 * z * z) * r).mean(dim=-1) / (tau * math.sqrt(2 * math.pi))

    w = torch.zeros(len(sizes), len(seeds), dtype=torch.float32)   # (G, S)
    for k in range(steps):
        if method != "sam":
            g = grad(w)
        elif sam_inner == "exact":
            v = torch.where(loss(w + size) >= loss(w - size), size, -size)
            g = grad(w + v)
        else:
            g = grad(w + size * torch.sign(grad(w)))
        w = w - lr * (1 - k / steps) * torch.sign(g)
    return w.numpy().astype(np.float64)


def mean_se(samples, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error (sample std with ddof=1, divided by sqrt(count)) along ``axis``."""
    a = np.asarray(samples, dtype=float)
    k = a.shape[axis]
    se = a.std(axis=axis, ddof=1) / math.sqrt(k) if k > 1 else np.full(a.mean(axis=axis).shape,
                                                                         np.nan)
    return a.mean(axis=axis), se


# ----------------------------------------------------------------------------------------------
# Beyond the paper: which SAM?
# ----------------------------------------------------------------------------------------------

def _loss_torch(name: str):
    if name == "logistic":
        return lambda m: torch.nn.functional.softplus(-m)
    if name == "exponential":
        return lambda m: torch.exp(-m)
    raise ConfigError(f"loss must be 'logistic' or 'exponential', got {name!r}")


def per_sample_sam_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rho: float,
                        loss: str = "logistic") -> torch.Tensor:
    """Per-sample SAM loss of a linear model: max_{||v||_2 <= rho} l(y (theta + v)^T x), per sample.

    The max is at v = -rho y x / ||x||, so it equals l(y theta^T x - rho ||x||). Shape (n,).
    """
    rho = float(check_rho(rho))
    return _loss_torch(loss)(y * (x @ theta) - rho * x.norm(dim=1))


def l2_adversarial_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, radius,
                        loss: str = "logistic") -> torch.Tensor:
    """L2 adversarial loss of a linear model: max_{||delta||_2 <= r} l(y theta^T (x + delta)).

    The max is at delta = -r y theta / ||theta||, so it equals l(y theta^T x - r ||theta||).
    radius r (feature units) may be a scalar or a per-sample tensor of shape (n,). With
    r = rho ||x|| / ||theta|| it equals :func:`per_sample_sam_loss` with radius rho.
    """
    return _loss_torch(loss)(y * (x @ theta) - radius * theta.norm())


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(40)
_GH_W = _GH_W / math.sqrt(2 * math.pi)                       # E f(Z) ~ sum w_k f(x_k), Z ~ N(0,1)


def _batch_log_loss(model: ToyModel, loss: str, u1, m_sum, sq_sum):
    """ln E l(y u^T x) for weights u with u_1 = u1, sum_j u_j = m_sum, sum_j u_j^2 = sq_sum.

    y u^T x = u1 s + N(eta m_sum, sq_sum), with s = +1 (prob p) or -1 (prob 1-p).
    """
    u1, m_sum, sq_sum = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in
                                              (u1, m_sum, sq_sum)))
    lp, lq = math.log(model.p), math.log1p(-model.p)
    if loss == "exponential":          # E e^{-m} in closed form
        return (np.logaddexp(lp - u1, lq + u1) - model.eta * m_sum + 0.5 * sq_sum)
    if loss != "logistic":
        raise ConfigError(f"loss must be 'logistic' or 'exponential', got {loss!r}")
    mu = model.eta * m_sum[..., None]
    sd = np.sqrt(np.maximum(sq_sum, 0.0))[..., None]
    pos = (np.logaddexp(0, -(u1[..., None] + mu + sd * _GH_X)) * _GH_W).sum(-1)
    neg = (np.logaddexp(0, -(-u1[..., None] + mu + sd * _GH_X)) * _GH_W).sum(-1)
    return np.log(model.p * pos + (1 - model.p) * neg)


def batch_sam_weight(model: ToyModel, rho: float, loss: str = "logistic") -> float:
    """Robust weight chosen by batch-level SAM on the population loss, normalised: theta_1 / theta_j.

    Solves min_theta max_{||v||_2 <= rho} E l(y (theta + v)^T x) over all d+1 weights (the usual
    SAM objective: one perturbation v for the whole batch, L2 ball of radius rho in the units of
    theta), then returns theta_1 divided by the (common) non-robust weight, comparable with w_ST.

    Reduction: the objective is convex and symmetric in theta_2..theta_{d+1}, so theta = (a, t, ..,
    t). The inner max depends on v through v_1, V = sum_j v_j and Q = sum_j v_j^2; the loss grows
    with the margin variance, so Q = rho^2 - v_1^2, and the maximiser has equal v_2 = .. = v_{d+1}
    (checked at the solution against a 2-D grid over (v_1, V); ArithmeticError if not), leaving a
    search over the circle v_1 = rho cos(phi), V = sqrt(d) rho sin(phi). At the optimum two inner
    maximisers tie (like A(w - rho) = A(w + rho) in Theorem 4.3), so the outer objective has a kink:
    it is minimised by nested bounded Brent searches (over a for each t, then over t), which do not
    stall on kinks as Nelder-Mead does. Expectations: closed form for the exponential loss, 40-point
    Gauss-Hermite quadrature for the logistic loss.
    """
    rho = float(check_rho(rho))
    if loss not in ("logistic", "exponential"):
        raise ConfigError(f"loss must be 'logistic' or 'exponential', got {loss!r}")
    d = model.d
    sqd = math.sqrt(d)
    phi = np.linspace(0.0, 2 * np.pi, 721)[:-1]

    def on_circle(a, t, ph):
        v1, vsum = rho * np.cos(ph), sqd * rho * np.sin(ph)
        return _batch_log_loss(model, loss, a + v1, d * t + vsum,
                               d * t * t + 2 * t * vsum + rho ** 2 - v1 ** 2)

    def inner(a, t):
        if rho == 0:
            return float(_batch_log_loss(model, loss, a, d * t, d * t * t))
        vals = on_circle(a, t, phi)
        peaks = np.flatnonzero((vals >= np.roll(vals, 1)) & (vals >= np.roll(vals, -1)))
        best = -np.inf
        for i in peaks[np.argsort(vals[peaks])[::-1][:2]]:      # the two highest local maxima
            res = optimize.minimize_scalar(lambda q: -float(on_circle(a, t, q)),
                                           bounds=(phi[i] - phi[1], phi[i] + phi[1]),
                                           method="bounded", options={"xatol": 1e-10})
            best = max(best, -res.fun, float(vals[i]))
        return best

    def best_a(t):
        res = optimize.minimize_scalar(lambda a: inner(a, t), bounds=(0.2 * a0 * t / t0,
                                       5 * a0 * t / t0), method="bounded",
                                       options={"xatol": 1e-9 * a0})
        return res.x, res.fun

    scale = 0.5 if loss == "exponential" else 1.0    # the ERM solution is scale * log-odds
    a0, t0 = scale * model.log_odds, scale * 2 * model.eta
    res = optimize.minimize_scalar(lambda t: best_a(t)[1], bounds=(0.25 * t0, 4 * t0),
                                   method="bounded", options={"xatol": 1e-9 * t0})
    t = float(res.x)
    a = float(best_a(t)[0])
    if rho > 0:                                      # the symmetric-v reduction, checked
        c1, s = np.meshgrid(np.linspace(-1, 1, 81), np.linspace(-1, 1, 81), indexing="ij")
        v1, rest = rho * c1, rho * np.sqrt(1 - c1 ** 2)
        vsum = sqd * rest * s
        grid_max = _batch_log_loss(model, loss, a + v1, d * t + vsum,
                                   d * t * t + 2 * t * vsum + rest ** 2).max()
        if grid_max > inner(a, t) + 1e-9:
            raise ArithmeticError("batch_sam_weight: the inner maximiser is not symmetric in "
                                  "the non-robust weights; the circle search does not apply")
    return a / t
