"""Attacks in pixel space [0, 1]: PGD under L-inf and L2 (Madry et al. 2018), FGSM, random noise.

Budgets are fractions of the pixel range: ``eps=8/255``, never ``eps=8``. Gradients are taken with
respect to the input only (``torch.autograd.grad(loss, delta)``), so parameter ``.grad`` fields are
never touched and weight gradients are never computed. The model's train/eval mode is restored
afterwards. Every returned ``x_adv`` is feasible: ||x_adv - x|| <= eps and x_adv in [0, 1].

Example::

    x_adv = pgd(model, x, y, eps=8/255, alpha=2/255, steps=10, norm="linf")
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

NORMS = ("linf", "l2")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> per-example loss


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy on logits (never on probabilities), in fp32."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def validate_budget(norm: str, eps: float, alpha: float | None = None, steps: int | None = None) -> None:
    """Refuse budgets that are certainly mistakes, with a one-line message."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if eps < 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"L-inf eps={eps:g} is larger than the pixel range [0, 1]; "
                          f"did you mean {eps:g}/255?")
    if alpha is not None and alpha < 0:
        raise ConfigError(f"attack step alpha must be >= 0, got {alpha}")
    if steps is not None and steps < 0:
        raise ConfigError(f"attack steps must be >= 0, got {steps}")


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool):
    """Temporarily put the model in train or eval mode; restore every submodule's mode after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, t in saved:
            m.training = t


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped (B, 1, 1, 1) for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project delta onto the eps-ball of ``norm`` and then so that x + delta lies in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = _flat_norm(delta)
        delta = delta * torch.where(n > eps, eps / (n + 1e-12), torch.ones_like(n))
    # Clamping x + delta into [0, 1] only shrinks every coordinate of delta, so it stays in the ball.
    return (x + delta).clamp(0, 1) - x


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random feasible delta: uniform in the L-inf cube, or uniform direction and radius in the L2 ball."""
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
        delta = d / (_flat_norm(d) + 1e-12) * r * eps
    return project(delta, x, eps, norm)


def _ascent(delta: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta + alpha * grad.sign()
    return delta + alpha * grad / (_flat_norm(grad) + 1e-12)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
        norm: str = "linf", random_init: bool = True, restarts: int = 1,
        loss_fn: LossFn = ce_loss, generator: torch.Generator | None = None,
        bn_eval: bool = True, autocast_dtype: torch.dtype | None = None,
        return_losses: bool = False, on_iterate: Callable[[int, torch.Tensor], None] | None = None):
    """Projected gradient ascent on ``loss_fn(model(x + delta), y)`` within ||delta||_norm <= eps.

    Args:
        model: maps images in [0, 1] to logits.
        x, y: images (B, C, H, W) in [0, 1] and labels (B,).
        eps: budget as a fraction of the pixel range (8/255). alpha: step size, same units.
        steps: number of ascent steps (0 returns the random start, or x itself without it).
        norm: "linf" (sign-gradient steps) or "l2" (normalised-gradient steps).
        random_init: start from a random point of the ball (Madry et al.).
        restarts: independent starts; an example counts as broken if any restart breaks it.
            The first restart uses the generator exactly as ``restarts=1`` would.
        loss_fn: per-example loss of (logits, y); the default is cross-entropy on logits.
        generator: a torch.Generator for the random start (reproducible attacks).
        bn_eval: run the model in eval mode during the attack (BatchNorm statistics untouched).
        autocast_dtype: e.g. torch.bfloat16 on CUDA; None runs in the input dtype.
        return_losses: also return the (steps + 1, B) loss trajectory of the first restart.
        on_iterate: called as ``on_iterate(t, logits)`` with the (detached) logits of the first
            restart's iterate after t steps, for t = 0 .. steps: the PGD-t result for every t at the
            cost of one PGD-steps run and one extra forward pass (the convergence check).

    Returns:
        x_adv (detached), or (x_adv, losses) with ``return_losses``.
    """
    validate_budget(norm, eps, alpha, steps)
    if restarts < 1:
        raise ConfigError(f"restarts must be >= 1, got {restarts}")
    x = x.detach()
    best = x.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    trajectory = None
    cast = (torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
            else contextlib.nullcontext())
    with model_mode(model, training=not bn_eval and model.training), torch.enable_grad():
        for r in range(restarts):
            delta = random_start(x, eps, norm, generator) if random_init and eps > 0 else torch.zeros_like(x)
            losses = []
            for t in range(steps):
                delta.requires_grad_(True)
                with cast:
                    logits = model(x + delta)
                if on_iterate is not None and r == 0:
                    on_iterate(t, logits.detach())
                loss = loss_fn(logits, y)
                (grad,) = torch.autograd.grad(loss.sum(), delta)
                if return_losses and r == 0:
                    losses.append(loss.detach())
                delta = project(_ascent(delta.detach(), grad, alpha, norm), x, eps, norm)
            x_adv = (x + delta).detach()
            if on_iterate is not None and r == 0:
                with torch.no_grad(), cast:
                    on_iterate(steps, model(x_adv))
            if restarts == 1 and not return_losses:
                return x_adv
            with torch.no_grad(), cast:
                logits = model(x_adv)
                loss = loss_fn(logits, y).float()
                wrong = logits.argmax(1) != y
            if return_losses and r == 0:
                losses.append(loss)
                trajectory = torch.stack(losses)
            # keep the first restart that breaks an example; among unbroken ones, the highest loss
            take = (~broken & wrong) | (~broken & ~wrong & (loss > best_loss))
            best[take] = x_adv[take]
            best_loss = torch.where(take, loss, best_loss)
            broken |= wrong
    return (best, trajectory) if return_losses else best


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf", **kw) -> torch.Tensor:
    """One full-size gradient step from x (Goodfellow et al. 2015): PGD with steps=1, alpha=eps, no random start."""
    return pgd(model, x, y, eps=eps, alpha=eps, steps=1, norm=norm, random_init=False, **kw)


def random_noise(x: torch.Tensor, eps: float, norm: str = "linf", generator: torch.Generator | None = None) -> torch.Tensor:
    """A random point of the ball's surface (L-inf: a random sign pattern of size eps), kept in [0, 1]."""
    validate_budget(norm, eps)
    if norm == "linf":
        s = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        delta = s * eps
    else:
        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = d / (_flat_norm(d) + 1e-12) * eps
    return (x + project(delta, x, eps, norm)).detach()


@dataclass(frozen=True)
class Budget:
    """An evaluation (or training) threat model: norm, eps and step size as pixel fractions."""

    norm: str
    eps: float
    alpha: float

    @property
    def name(self) -> str:
        """Column name, e.g. ``linf_1`` for L-inf 1/255 or ``l2_16`` for L2 16/255."""
        return f"{self.norm}_{self.eps * 255:g}"

    @property
    def label(self) -> str:
        return f"{'L-inf' if self.norm == 'linf' else 'L2'} {self.eps * 255:g}/255"


# Evaluation step size: eps/4 under both norms. The paper uses eps/4 for L-inf but eps/8 for L2;
# with eps/8, PGD-10 travels at most 1.25 eps, and on a trained CPU model it is not converged at
# L2 32/255 (doubling the steps lowers accuracy by ~2.5 points: robustness check 4 fails). Step
# eps/4 passes that check (tests/test_robustness_checks.py; chapter 02 draws both).
EVAL_STEP_DIVISOR = 4


def eval_budget(norm: str, eps: float) -> Budget:
    """The book's evaluation budget at ``eps``: step eps/4 (see ``EVAL_STEP_DIVISOR``)."""
    return Budget(norm, eps, eps / EVAL_STEP_DIVISOR)


# The paper's four evaluation budgets (L-inf 1/255, 2/255; L2 16/255, 32/255), PGD-10, our step size.
PAPER_BUDGETS = tuple(eval_budget(n, e / 255) for n, e in (("linf", 1), ("linf", 2), ("l2", 16), ("l2", 32)))
# The same budgets with the paper's own step sizes (eps/8 under L2), for the convergence comparison.
PAPER_PROTOCOL_BUDGETS = (
    Budget("linf", 1 / 255, 0.25 / 255),
    Budget("linf", 2 / 255, 0.5 / 255),
    Budget("l2", 16 / 255, 2 / 255),
    Budget("l2", 32 / 255, 4 / 255),
)
