"""Attacks in pixel space [0, 1]: PGD under L-inf and L2 (Madry et al. 2018), FGSM, random noise, and
the TRADES adversary (PGD on a KL divergence).

Budgets are fractions of the pixel range: ``eps=8/255``, never ``eps=8``. Gradients are taken with
respect to the input only (``torch.autograd.grad(loss, delta)``), so parameter ``.grad`` fields are
never touched and weight gradients are never computed. The model's train/eval mode is restored
afterwards. Every returned ``x_adv`` is feasible: ||x_adv - x|| <= eps and x_adv in [0, 1].

Example::

    x_adv = pgd(model, x, y, eps=8/255, alpha=2/255, steps=10, norm="linf")
    x_adv = pgd(model, x, y, eps=8/255, alpha=1/255, steps=50, loss_fn=margin_loss, any_iterate=True)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .runtime import autocast, model_mode

NORMS = ("linf", "l2")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> per-example loss


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy on logits (never on probabilities), in fp32."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example margin (Carlini & Wagner 2017): max_{j != y} z_j - z_y; positive means misclassified.

    Unlike cross-entropy it does not saturate on confident examples, so it reaches some examples
    that a cross-entropy attack's vanishing gradient misses.
    """
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), -float("inf")).amax(1)
    return other - true


def kl_per_example(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for each row, p = softmax(logits_p), q = softmax(logits_q); shape (B,), in fp32."""
    logp = F.log_softmax(logits_p.float(), dim=1)
    logq = F.log_softmax(logits_q.float(), dim=1)
    return F.kl_div(logq, logp, reduction="none", log_target=True).sum(1)


LOSSES = {"ce": ce_loss, "margin": margin_loss}


def validate_budget(norm: str, eps: float, alpha: float | None = None, steps: int | None = None) -> None:
    """Refuse budgets that are certainly mistakes, with a one-line message."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if not isinstance(eps, (int, float)) or eps != eps or eps < 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"L-inf eps={eps:g} is larger than the pixel range [0, 1]; "
                          f"did you mean {eps:g}/255?")
    if alpha is not None and alpha < 0:
        raise ConfigError(f"attack step alpha must be >= 0, got {alpha}")
    if steps is not None and steps < 0:
        raise ConfigError(f"attack steps must be >= 0, got {steps}")


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
    return project(delta.contiguous(memory_format=_layout(x)), x, eps, norm)


def _layout(x: torch.Tensor):
    """The memory format of a batch of images, so that perturbations are laid out like the images."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def ascent(delta: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """One steepest-ascent step of size alpha: sign of the gradient (L-inf) or its direction (L2)."""
    if norm == "linf":
        return delta + alpha * grad.sign()
    return delta + alpha * grad / (_flat_norm(grad) + 1e-12)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
        norm: str = "linf", random_init: bool = True, restarts: int = 1,
        loss_fn: LossFn = ce_loss, generator: torch.Generator | None = None,
        bn_eval: bool = True, autocast_dtype: torch.dtype | None = None,
        return_losses: bool = False, on_iterate: Callable[[int, torch.Tensor], None] | None = None,
        any_iterate: bool = False):
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
        loss_fn: per-example loss of (logits, y); cross-entropy (default) or :func:`margin_loss`.
        generator: a torch.Generator for the random start (reproducible attacks).
        bn_eval: run the model in eval mode during the attack (BatchNorm statistics untouched).
        autocast_dtype: torch.bfloat16 for training attacks under autocast; None (evaluation) is fp32.
        return_losses: also return the (steps + 1, B) loss trajectory of the first restart.
        on_iterate: called as ``on_iterate(t, logits)`` with the (detached) logits of the first
            restart's iterate after t steps, for t = 0 .. steps: the PGD-t result for every t at the
            cost of one PGD-steps run and one extra forward pass (the convergence check).
        any_iterate: keep, for each example, the first iterate (of any restart) that is
            misclassified, and stop attacking it there; the others are attacked to the end. A
            stronger evaluation than the last iterate's (any misclassified iterate is a valid
            adversarial example), and cheaper: broken examples leave the batch. Needs ``bn_eval``.

    Returns:
        x_adv (detached), or (x_adv, losses) with ``return_losses``.
    """
    validate_budget(norm, eps, alpha, steps)
    if restarts < 1:
        raise ConfigError(f"restarts must be >= 1, got {restarts}")
    if any_iterate and (not bn_eval or return_losses or on_iterate is not None):
        raise ConfigError("any_iterate needs bn_eval=True and no return_losses / on_iterate")
    if any_iterate:
        return _pgd_any_iterate(model, x, y, eps, alpha, steps, norm, random_init, restarts, loss_fn, generator,
                                autocast_dtype)
    x = x.detach()
    best = x.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    trajectory = None
    with model_mode(model, training=not bn_eval and model.training), torch.enable_grad():
        for r in range(restarts):
            delta = random_start(x, eps, norm, generator) if random_init and eps > 0 else torch.zeros_like(x)
            losses = []
            for t in range(steps):
                delta.requires_grad_(True)
                with autocast(x.device.type, autocast_dtype):
                    logits = model(x + delta)
                if on_iterate is not None and r == 0:
                    on_iterate(t, logits.detach())
                loss = loss_fn(logits, y)
                (grad,) = torch.autograd.grad(loss.sum(), delta)
                if return_losses and r == 0:
                    losses.append(loss.detach())
                delta = project(ascent(delta.detach(), grad, alpha, norm), x, eps, norm)
            x_adv = (x + delta).detach()
            if on_iterate is not None and r == 0:
                with torch.no_grad(), autocast(x.device.type, autocast_dtype):
                    on_iterate(steps, model(x_adv))
            if restarts == 1 and not return_losses:
                return x_adv
            with torch.no_grad(), autocast(x.device.type, autocast_dtype):
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


def _pgd_any_iterate(model, x, y, eps, alpha, steps, norm, random_init, restarts, loss_fn, generator, dtype):
    """:func:`pgd` with ``any_iterate``: broken examples are frozen at their first misclassified iterate."""
    x = x.detach()
    best = x.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with model_mode(model, training=False), torch.enable_grad():
        for _ in range(restarts):
            # the random start is drawn for the whole batch, so the generator advances as in pgd()
            start = random_start(x, eps, norm, generator) if random_init and eps > 0 else torch.zeros_like(x)
            idx = torch.nonzero(~broken).flatten()
            fmt = _layout(x)
            xa, ya, delta = x[idx].contiguous(memory_format=fmt), y[idx], start[idx].contiguous(memory_format=fmt)
            for t in range(steps + 1):
                if len(idx) == 0:
                    break
                last = t == steps
                delta.requires_grad_(not last)
                with (torch.no_grad() if last else contextlib.nullcontext()), autocast(x.device.type, dtype):
                    logits = model(xa + delta)
                wrong = (logits.argmax(1) != ya).detach()
                if wrong.any():
                    hit = idx[wrong]
                    best[hit] = (xa + delta)[wrong].detach()
                    broken[hit] = True
                if last:
                    break
                (grad,) = torch.autograd.grad(loss_fn(logits, ya).sum(), delta)
                keep = ~wrong
                idx, xa, ya = idx[keep], xa[keep].contiguous(memory_format=fmt), ya[keep]
                delta = project(ascent(delta.detach()[keep], grad[keep], alpha, norm), xa, eps, norm)
                delta = delta.contiguous(memory_format=fmt)
    return best


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


def kl_pgd(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int, norm: str = "linf",
           generator: torch.Generator | None = None, bn_eval: bool = True, autocast_dtype=None,
           init_std: float = 0.001) -> torch.Tensor:
    """PGD on KL(p(x) || p(x + delta)) within ||delta||_norm <= eps (the TRADES adversary, Zhang et al. 2019).

    The start is x + init_std * N(0, 1) (projected): at delta = 0 the KL and its gradient are zero,
    so PGD needs a small random push. Steps and projection are those of :func:`pgd`; the result is
    feasible and detached, and the model's train/eval mode is restored.

    Example: ``x_adv = kl_pgd(model, x, eps=8/255, alpha=2/255, steps=10)``.
    """
    validate_budget(norm, eps, alpha, steps)
    x = x.detach()
    with model_mode(model, training=not bn_eval and model.training), torch.enable_grad():
        with torch.no_grad(), autocast(x.device.type, autocast_dtype):
            logits_clean = model(x)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = project(init_std * noise, x, eps, norm)
        for _ in range(steps):
            delta.requires_grad_(True)
            with autocast(x.device.type, autocast_dtype):
                logits = model(x + delta)
            loss = kl_per_example(logits_clean, logits).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            delta = project(ascent(delta.detach(), grad, alpha, norm), x, eps, norm)
    return (x + delta).detach()


@dataclass(frozen=True)
class Budget:
    """A threat model with the attack's step: norm, eps and step size alpha, as pixel fractions."""

    norm: str
    eps: float
    alpha: float

    @property
    def threat(self) -> str:
        """The threat model's column name, without the step: ``linf_1`` for L-inf 1/255, ``l2_16``."""
        return f"{self.norm}_{self.eps * 255:g}"

    @property
    def name(self) -> str:
        """Unique per (norm, eps, step): ``linf_1-a0.25`` is L-inf 1/255 with step 0.25/255."""
        return f"{self.threat}-a{self.alpha * 255:.4g}"

    @property
    def label(self) -> str:
        return f"{'L-inf' if self.norm == 'linf' else 'L2'} {self.eps * 255:g}/255"


def threat_label(threat: str) -> str:
    """``linf_1`` -> ``L-inf 1/255``, ``l2_32`` -> ``L2 32/255``."""
    norm, eps = threat.split("_", 1)
    return f"{'L-inf' if norm == 'linf' else 'L2'} {eps}/255"


# The paper's four threat models (Table 2's columns): L-inf 1/255, 2/255; L2 16/255, 32/255.
THREATS = (("linf", 1 / 255), ("linf", 2 / 255), ("l2", 16 / 255), ("l2", 32 / 255))
THREAT_NAMES = tuple(f"{n}_{e * 255:g}" for n, e in THREATS)


def step_budget(norm: str, eps: float, divisor: float) -> Budget:
    """The budget at ``eps`` with step eps/divisor."""
    return Budget(norm, eps, eps / divisor)


# Step eps/4 under both norms: PGD-10 travels 2.5 eps and has converged on the book's models
# (its accuracy no longer falls with more steps). The paper's L2 step eps/8 travels only 1.25 eps (chapter 2 draws both).
CONVERGED_BUDGETS = tuple(step_budget(n, e, 4) for n, e in THREATS)
# The paper's own evaluation steps: L-inf eps/4, L2 eps/8.
PAPER_BUDGETS = tuple(step_budget(n, e, 4 if n == "linf" else 8) for n, e in THREATS)
