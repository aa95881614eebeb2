"""Beyond the paper: AWP, TRADES and ARoW as step strategies of the one loop, and a flatness measure.

Each method is a :class:`lib.methods.Strategy` subclass registered under its name, so it runs in
``lib.train.train`` like ST, SAM and AT and is chosen by name::

    make_config("trades", "smoke", beta=6.0)            # from a chapter
    python -m lib train --method trades --hp beta=6     # from the shell

Methods (default training attack: L-inf 8/255, step 2/255, 10 steps; the smoke profile caps steps):

- ``awp``: adversarial weight perturbation on top of PGD-AT (Wu, Xia, Wang, NeurIPS 2020). Per
  batch: PGD examples x_adv; a proxy copy of the network takes one SGD step on -CE(proxy(x_adv), y);
  for every conv/linear weight w_l (``dim > 1``: no BatchNorm parameters, no biases) the proxy's
  change d_l gives v_l = gamma * ||w_l|| * d_l / ||d_l||; the gradient of CE(x_adv) is taken at
  w + v and the optimiser steps from w (the perturbation is removed first, by restoring a copy of
  w: no rounding residue). Hyperparameter ``gamma`` (0.01). The proxy's step uses the config's lr,
  which only scales d_l (normalised away) as long as lr > 0.
- ``trades``: CE(f(x), y) + beta * KL(p(x) || p(x_adv)) (Zhang et al., ICML 2019); x_adv from PGD
  on the KL term started at x + 0.001 * N(0, 1). Hyperparameter ``beta`` (6).
- ``arow``: label-smoothed CE on x + 2 * lam * mean_i[KL(p(x_i) || p(x_adv_i)) * (1 - p_y(x_adv_i))]
  (Yang, Kong, Kim, ICML 2023), adversary as TRADES. ``lam`` is the paper's lambda (3.5): the paper
  writes the regulariser as 2*lambda*R and its code multiplies R by 7, so the factor 2 is here.
  Hyperparameters ``lam`` (3.5), ``smoothing`` (0.2), ``weighted`` (1; 0 drops the factor
  (1 - p_y(x_adv)), which with smoothing 0 gives TRADES with beta = 2 * lam).

Choices worth knowing (they differ from the authors' scripts in small ways):

- AWP, BatchNorm: the perturbed pass runs with running statistics frozen
  (:func:`lib.optim.frozen_bn_stats`); the running statistics are instead those of the proxy's
  forward at the unperturbed weights w on the same x_adv, copied back. So the model's statistics
  are exactly what one train-mode forward at w would give (the AWP authors let the perturbed pass
  update them, i.e. statistics of w + v, which differ by O(gamma)). With gamma = 0, AWP is AT.
- AWP, order: the perturbation is removed before the optimiser step (weight decay acts on w); the
  authors step at w + v and subtract v afterwards (weight decay acts on w + v, a difference of
  lr * wd * v).
- TRADES/ARoW: PGD on the KL term runs with BatchNorm in eval mode (``config.attack_bn_eval``), as
  in the TRADES code; the two training forwards (clean, adversarial) are separate passes, so
  BatchNorm sees each batch on its own, as in the reference code. The training accuracy logged for
  them is on clean inputs. ARoW's own code starts PGD uniformly in the ball; here it shares
  TRADES's start so that the two differ only in the loss.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import _ascent, model_mode, project, validate_budget
from .config import MethodSpec
from .errors import ConfigError
from .methods import ATStrategy, Strategy, register
from .optim import frozen_bn_stats

# --------------------------------------------------------------------------------------------------
# Losses


def kl_per_example(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for each row, p = softmax(logits_p), q = softmax(logits_q); shape (B,), in fp32."""
    logp = F.log_softmax(logits_p.float(), dim=1)
    logq = F.log_softmax(logits_q.float(), dim=1)
    return F.kl_div(logq, logp, reduction="none", log_target=True).sum(1)


def trades_loss(logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES: CE(logits, y) + beta * mean_i KL(p(x_i) || p(x_adv_i)); p(x) is not detached.

    Example: ``trades_loss(model(x), model(x_adv), y, beta=6.0)``.
    """
    return F.cross_entropy(logits.float(), y) + beta * kl_per_example(logits, logits_adv).mean()


def arow_loss(logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, lam: float,
              smoothing: float = 0.2, weighted: bool = True) -> torch.Tensor:
    """ARoW: CE_smooth(logits, y) + 2 * lam * mean_i[KL(p(x_i) || p(x_adv_i)) * (1 - p_y(x_adv_i))].

    ``smoothing`` is PyTorch's label smoothing (target (1 - s) * onehot + s / K, as the ARoW code's);
    the weight (1 - p_y(x_adv)) is not detached. ``weighted=False`` drops it: with ``smoothing=0``
    this is exactly :func:`trades_loss` with ``beta = 2 * lam``.
    """
    ce = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    kl = kl_per_example(logits, logits_adv)
    if weighted:
        p_y = F.softmax(logits_adv.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        kl = kl * (1 - p_y)
    return ce + 2 * lam * kl.mean()


# --------------------------------------------------------------------------------------------------
# The TRADES adversary


def kl_pgd(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int, norm: str = "linf",
           generator: torch.Generator | None = None, bn_eval: bool = True, autocast_dtype=None,
           init_std: float = 0.001) -> torch.Tensor:
    """PGD on KL(p(x) || p(x + delta)) within ||delta||_norm <= eps (the TRADES adversary).

    The start is x + init_std * N(0, 1) (projected): at delta = 0 the KL and its gradient are zero,
    so PGD needs a small random push. Steps and projection are those of :func:`lib.attacks.pgd`
    (sign steps for L-inf, normalised steps for L2); the result is feasible and detached, and the
    model's train/eval mode is restored.

    Example: ``x_adv = kl_pgd(model, x, eps=8/255, alpha=2/255, steps=10)``.
    """
    validate_budget(norm, eps, alpha, steps)
    x = x.detach()
    cast = (lambda: torch.autocast(x.device.type, dtype=autocast_dtype)) if autocast_dtype else None
    with model_mode(model, training=not bn_eval and model.training), torch.enable_grad():
        with torch.no_grad():
            if cast:
                with cast():
                    logits_clean = model(x)
            else:
                logits_clean = model(x)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = project(init_std * noise, x, eps, norm)
        for _ in range(steps):
            delta.requires_grad_(True)
            if cast:
                with cast():
                    logits = model(x + delta)
            else:
                logits = model(x + delta)
            loss = kl_per_example(logits_clean, logits).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            delta = project(_ascent(delta.detach(), grad, alpha, norm), x, eps, norm)
    return (x + delta).detach()


# --------------------------------------------------------------------------------------------------
# Strategies


def perturbed_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every conv/linear weight: ``dim > 1``, so no BatchNorm and no biases."""
    return [(n, p) for n, p in module.named_parameters() if p.dim() > 1]


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind a ``torch.compile`` wrapper (its state_dict has no prefix)."""
    return getattr(model, "_orig_mod", model)


class AWPStrategy(ATStrategy):
    """PGD-AT with adversarial weight perturbation (Wu et al. 2020); see the module docstring."""

    def __init__(self, config, autocast_dtype=None):
        super().__init__(config, autocast_dtype)
        self.gamma = float(config.hparam("gamma", 0.01))
        self._proxy = None
        self._proxy_opt = None

    def weight_perturbation(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> list:
        """[(parameter, v)] with v_l = gamma * ||w_l|| * d_l / ||d_l||, d_l one proxy SGD step on -CE.

        Side effect (wanted): the model's buffers (BatchNorm running statistics) become the proxy's,
        i.e. those of one train-mode forward at the unperturbed weights on ``x_adv``.
        """
        base = _unwrap(model)
        if self._proxy is None:
            self._proxy = copy.deepcopy(base)
            self._proxy_opt = torch.optim.SGD(self._proxy.parameters(), lr=self.config.lr)
        proxy = self._proxy
        proxy.load_state_dict(base.state_dict())
        proxy.train(base.training)
        self._proxy_opt.zero_grad(set_to_none=True)
        with self.autocast(x_adv.device.type):
            logits = proxy(x_adv)
        (-F.cross_entropy(logits.float(), y)).backward()
        self._proxy_opt.step()
        out = []
        with torch.no_grad():
            for mb, pb in zip(base.buffers(), proxy.buffers()):
                mb.copy_(pb)
            proxy_params = dict(proxy.named_parameters())
            for name, w in perturbed_weights(base):
                d = proxy_params[name] - w
                v = d * (self.gamma * w.norm() / (d.norm() + 1e-20))
                out.append((w, v))
        return out

    def step(self, model, opt, x, y, generator):
        opt.zero_grad(set_to_none=True)
        x_adv = self.adversary(model, x, y, generator)
        vs = self.weight_perturbation(model, x_adv, y)
        saved = [w.detach().clone() for w, _ in vs]
        with torch.no_grad():
            for w, v in vs:
                w.add_(v)
        try:
            with frozen_bn_stats(model):
                loss, logits = self.loss(model, x, y, x_adv)
                loss.backward()
        finally:
            with torch.no_grad():
                for (w, _), w0 in zip(vs, saved):
                    w.copy_(w0)            # exactly w again: no (w + v) - v rounding residue
        opt.step()
        return loss.detach(), logits.detach()

    def passes_per_step(self) -> int:
        return self.config.steps + 2


class TRADESStrategy(Strategy):
    """TRADES (Zhang et al. 2019): clean CE plus beta * KL(p(x) || p(x_adv)); x_adv from :func:`kl_pgd`."""

    def adversary(self, model, x, y, generator):
        c = self.config
        return kl_pgd(model, x, eps=c.eps, alpha=c.alpha, steps=c.steps, norm=c.norm, generator=generator,
                      bn_eval=c.attack_bn_eval, autocast_dtype=self.autocast_dtype)

    def logits_pair(self, model, x, x_adv):
        with self.autocast(x.device.type):
            return model(x), model(x_adv)

    def loss(self, model, x, y, x_adv):
        logits, logits_adv = self.logits_pair(model, x, x_adv)
        return trades_loss(logits, logits_adv, y, float(self.config.hparam("beta", 6.0))), logits

    def passes_per_step(self) -> int:
        return self.config.steps + 2


class ARoWStrategy(TRADESStrategy):
    """ARoW (Yang et al. 2023): TRADES's adversary, :func:`arow_loss`."""

    def loss(self, model, x, y, x_adv):
        c = self.config
        logits, logits_adv = self.logits_pair(model, x, x_adv)
        loss = arow_loss(logits, logits_adv, y, lam=float(c.hparam("lam", 3.5)),
                         smoothing=float(c.hparam("smoothing", 0.2)), weighted=bool(c.hparam("weighted", 1)))
        return loss, logits


# --------------------------------------------------------------------------------------------------
# Hyperparameter validators: a message, or None when the value is fine


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nonneg(what: str):
    def check(v):
        if not _number(v) or v < 0:
            return f"must be a number >= 0 ({what})"
        return None
    return check


def _smoothing(v):
    if not _number(v) or not 0 <= v < 1:
        return "must be in [0, 1) (label smoothing of the clean cross-entropy)"
    return None


def _flag(v):
    if v not in (0, 1):                     # True/False compare equal to 1/0
        return "must be 1 (weight the KL by 1 - p_y(x_adv)) or 0 (no weight)"
    return None


register("awp", AWPStrategy,
         MethodSpec("awp", adversarial=True, sam=False, passes="steps + 2",
                    description="AWP (Wu et al. 2020): PGD-AT with an adversarial weight perturbation of size gamma",
                    extra=("gamma",)),
         hparams={"gamma": (0.01, _nonneg("relative size of the weight perturbation per layer"))})
register("trades", TRADESStrategy,
         MethodSpec("trades", adversarial=True, sam=False, passes="steps + 2",
                    description="TRADES (Zhang et al. 2019): clean CE + beta * KL(clean || adversarial)",
                    extra=("beta",)),
         hparams={"beta": (6.0, _nonneg("weight of the KL robustness term"))})
register("arow", ARoWStrategy,
         MethodSpec("arow", adversarial=True, sam=False, passes="steps + 2",
                    description="ARoW (Yang et al. 2023): smoothed CE + 2*lam * KL weighted by 1 - p_y(x_adv)",
                    extra=("lam", "smoothing", "weighted")),
         hparams={"lam": (3.5, _nonneg("the paper's lambda; the KL term is weighted 2 * lam")),
                  "smoothing": (0.2, _smoothing),
                  "weighted": (1, _flag)})


# --------------------------------------------------------------------------------------------------
# Flatness


def _mean_loss(model, x, y, batch_size: int) -> torch.Tensor:
    total = torch.zeros((), device=x.device)
    for i in range(0, len(y), batch_size):
        total += F.cross_entropy(model(x[i:i + batch_size]).float(), y[i:i + batch_size], reduction="sum")
    return total / len(y)


def _mean_loss_grad(model, params, x, y, batch_size: int) -> list[torch.Tensor]:
    grads = [torch.zeros_like(p) for p in params]
    for i in range(0, len(y), batch_size):
        loss = F.cross_entropy(model(x[i:i + batch_size]).float(), y[i:i + batch_size], reduction="sum") / len(y)
        for g, gi in zip(grads, torch.autograd.grad(loss, params)):
            g += gi
    return grads


def flatness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rho: float, kind: str = "random",
             draws: int = 5, steps: int = 1, seed: int = 0, batch_size: int = 500) -> float:
    """Loss increase L(w + v) - L(w) under a weight perturbation of relative size ``rho`` per layer.

    For every conv/linear weight w_l (as in AWP; BatchNorm parameters and biases stay), ||v_l|| =
    rho * ||w_l||:

    - ``kind="random"``: v_l = rho * ||w_l|| * u_l / ||u_l||, u_l ~ N(0, I); mean over ``draws`` draws
      (average-case flatness).
    - ``kind="worst"``: ``steps`` ascent steps of size rho/steps along the layer-normalised gradient
      of the loss, v_l projected back onto ||v_l|| <= rho * ||w_l|| (worst-case flatness, one step
      = AWP's perturbation with gamma = rho).

    L is the mean cross-entropy on (x, y) with the model in eval mode (the deployed function). The
    model is left exactly as it was (weights restored from a copy, no ``.grad`` written, modes
    restored). Smaller means flatter. Example: ``flatness(model, x, y, rho=0.05, kind="worst")``.
    """
    if kind not in ("random", "worst"):
        raise ConfigError(f"unknown flatness kind {kind!r}; valid kinds: random, worst")
    if not _number(rho) or rho < 0:
        raise ConfigError(f"flatness rho must be >= 0, got {rho}")
    if draws < 1 or steps < 1:
        raise ConfigError(f"draws and steps must be >= 1, got draws={draws}, steps={steps}")
    device = next(model.parameters()).device
    x = (x.float() / 255 if x.dtype == torch.uint8 else x).to(device)
    y = y.to(device)
    params = [p for _, p in perturbed_weights(model)]
    saved = [p.detach().clone() for p in params]
    radius = [rho * w.norm() for w in saved]
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))

    def restore():
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)

    def set_to(vs):
        with torch.no_grad():
            for p, w, v in zip(params, saved, vs):
                p.copy_(w + v)

    with model_mode(model, training=False):
        try:
            with torch.no_grad():
                base = _mean_loss(model, x, y, batch_size)
            if kind == "random":
                total = torch.zeros((), device=device)
                for _ in range(draws):
                    us = [torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype) for p in params]
                    set_to([u * (r / (u.norm() + 1e-20)) for u, r in zip(us, radius)])
                    with torch.no_grad():
                        total += _mean_loss(model, x, y, batch_size)
                perturbed = total / draws
            else:
                vs = [torch.zeros_like(p) for p in params]
                with torch.enable_grad():
                    for _ in range(steps):
                        set_to(vs)
                        gs = _mean_loss_grad(model, params, x, y, batch_size)
                        vs = [v + g * (r / steps / (g.norm() + 1e-20)) for v, g, r in zip(vs, gs, radius)]
                        vs = [v * torch.clamp(r / (v.norm() + 1e-20), max=1.0) for v, r in zip(vs, radius)]
                set_to(vs)
                with torch.no_grad():
                    perturbed = _mean_loss(model, x, y, batch_size)
        finally:
            restore()
    return float(perturbed - base)
