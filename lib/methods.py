"""The training methods: each one class that carries its own facts and its step inside the ONE loop.

A method's facts (name, title, whether it trains on adversarial examples or perturbs the weights
as SAM does, its hyperparameters with defaults and validators, its passes per step) are class
attributes; its behaviour is a step the loop (:mod:`lib.train`) calls without knowing the method::

    x_adv = method.adversary(model, x, y, gen)        # None for ST/SAM, PGD examples for AT
    loss, logits = method.loss(model, x, y, x_adv)     # the training objective on this batch
    method.update(model, opt, closure)                 # plain step, or SAM's two passes

``METHODS`` below lists them all. Adding a method is one class and one entry there. This module
imports no other part of the configuration (``lib.config`` imports it, never the reverse).

Methods (adversarial ones default to L-inf 8/255, step 2/255, 10 steps; profiles may cap steps):

- ``st``: cross-entropy on clean inputs.
- ``sam``: SAM (Foret et al. 2021), radius ``rho``; ``asam``: adaptive SAM (Kwon et al. 2021).
- ``at``: PGD adversarial training (Madry et al. 2018); ``sam_at``: SAM on the PGD loss.
- ``awp``: adversarial weight perturbation on top of PGD-AT (Wu, Xia, Wang, NeurIPS 2020). Per
  batch: PGD examples x_adv; a proxy copy of the network takes one SGD step on -CE(proxy(x_adv), y);
  for every conv/linear weight w_l (``dim > 1``: no BatchNorm parameters, no biases) the proxy's
  change d_l gives v_l = gamma * ||w_l|| * d_l / ||d_l||; the gradient of CE(x_adv) is taken at
  w + v and the optimiser steps from w (restored from a copy: no rounding residue).
- ``trades``: CE(f(x), y) + beta * KL(p(x) || p(x_adv)) (Zhang et al., ICML 2019); x_adv from PGD
  on the KL term started at x + 0.001 * N(0, 1).
- ``arow``: label-smoothed CE on x + 2 * lam * mean_i[KL(p(x_i) || p(x_adv_i)) * (1 - p_y(x_adv_i))]
  (Yang, Kong, Kim, ICML 2023), adversary as TRADES. ``lam`` is the paper's lambda (3.5): the paper
  writes the regulariser as 2*lambda*R and its code multiplies R by 7, so the factor 2 is here.
  ``weighted=0`` drops the factor (1 - p_y(x_adv)); with smoothing 0 that is TRADES, beta = 2 * lam.

Choices worth knowing (they differ from the authors' scripts in small ways):

- AWP, BatchNorm: the perturbed pass runs with running statistics frozen; the statistics are those
  of the proxy's forward at the unperturbed w on the same x_adv, copied back (the authors let the
  perturbed pass update them: statistics of w + v, an O(gamma) difference). With gamma = 0, AWP is AT.
- AWP, order: the perturbation is removed before the optimiser step (weight decay acts on w).
- TRADES/ARoW: PGD on the KL term runs with BatchNorm in eval mode; the clean and adversarial
  forwards are separate passes. The training accuracy logged for them is on clean inputs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import kl_per_example, kl_pgd, pgd
from .errors import ConfigError
from .optim import frozen_bn_stats
from .runtime import autocast, perturbed

# --------------------------------------------------------------------------------------------------
# Hyperparameters


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def nonneg(v) -> str | None:
    return None if _number(v) and v >= 0 else "must be a number >= 0"


def unit_interval(v) -> str | None:
    return None if _number(v) and 0 <= v < 1 else "must be in [0, 1)"


def flag(v) -> str | None:
    return None if v in (0, 1) else "must be 1 or 0"


@dataclass(frozen=True)
class HParam:
    """A method's own hyperparameter: its default, what it means, and a validator (message or None)."""

    name: str
    default: float
    doc: str
    check: Callable[[object], str | None] = nonneg


# --------------------------------------------------------------------------------------------------
# Losses


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


def perturbed_weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every conv/linear weight: ``dim > 1``, so no BatchNorm and no biases."""
    return [(n, p) for n, p in module.named_parameters() if p.dim() > 1]


# --------------------------------------------------------------------------------------------------
# The methods


class Method:
    """Standard training (ST): cross-entropy on clean inputs, one forward/backward per step."""

    name = "st"
    title = "ST"
    description = "standard training: SGD on clean cross-entropy"
    adversarial = False         # trains on attacked inputs (needs eps, alpha, steps)
    sam = False                 # perturbs the weights as SAM does (needs rho; a SAM optimiser)
    adaptive = False            # ASAM's weight-relative perturbation
    train_passes = 1            # forward/backward passes with weight gradients per step
    hparams: tuple[HParam, ...] = ()
    default_rho: dict = {}      # dataset -> rho, for the SAM-based methods

    def __init__(self, config, autocast_dtype: torch.dtype | None = None):
        self.config = config
        self.autocast_dtype = autocast_dtype
        # training attacks in bf16 with the training passes, unless the config asks for fp32 attacks
        self.attack_dtype = None if getattr(config, "attack_fp32", False) else autocast_dtype

    # -- facts ---------------------------------------------------------------------------------------
    @classmethod
    def attack_steps(cls, config) -> int:
        """Attack iterations per step (input-only gradient passes)."""
        return config.steps if cls.adversarial else 0

    @classmethod
    def passes_per_step(cls, config) -> int:
        """Forward+backward passes per step; a PGD step with input-only gradients counts as one."""
        return cls.train_passes + cls.attack_steps(config)

    @classmethod
    def forward_equivalents(cls, config) -> int:
        """Cost per image in forward passes: a training pass 3 (forward, backward for inputs and
        weights), an input-only attack step 2 (docs/performance.md)."""
        return 3 * cls.train_passes + 2 * cls.attack_steps(config)

    @classmethod
    def passes_text(cls) -> str:
        return f"{cls.train_passes}" + (" + attack steps" if cls.adversarial else "")

    @classmethod
    def defaults(cls) -> dict:
        return {h.name: h.default for h in cls.hparams}

    @classmethod
    def validate(cls, extra: dict) -> None:
        known = {h.name: h for h in cls.hparams}
        for k, v in extra.items():
            if k not in known:
                raise ConfigError(f"method {cls.name!r} has no hyperparameter {k!r}"
                                  + (f"; it has: {', '.join(known)}" if known else ""))
            msg = known[k].check(v)
            if msg:
                raise ConfigError(f"{cls.name} {k}={v!r}: {msg} ({known[k].doc})")

    @classmethod
    def shown_hparams(cls, extra: dict) -> list[tuple[str, float]]:
        """The hyperparameters worth a label: the first always, the others when not at their default."""
        return [(h.name, extra.get(h.name, h.default)) for i, h in enumerate(cls.hparams)
                if i == 0 or extra.get(h.name, h.default) != h.default]

    @classmethod
    def label(cls, config) -> str:
        """A short label: ``ST``, ``SAM rho=0.1``, ``AT L-inf 8/255``, ``TRADES L-inf 8/255 beta=6``."""
        base = cls.title
        if cls.sam and not cls.adversarial:
            base += f" rho={config.rho:g}"
        if cls.adversarial:
            base += f" {'L-inf' if config.norm == 'linf' else 'L2'} {config.eps * 255:g}/255"
            if cls.sam:
                base += f" rho={config.rho:g}"
        for k, v in cls.shown_hparams(dict(config.extra)):
            base += f" {k}={v:g}"
        return base

    # -- behaviour -----------------------------------------------------------------------------------
    def hparam(self, name: str) -> float:
        return float(self.config.hparam(name, type(self).defaults()[name]))

    def adversary(self, model, x, y, generator) -> torch.Tensor | None:
        return None

    def loss(self, model, x, y, x_adv):
        """(scalar loss, logits used for the training accuracy)."""
        inputs = x if x_adv is None else x_adv
        with autocast(x.device.type, self.autocast_dtype):
            logits = model(inputs)
        return F.cross_entropy(logits.float(), y), logits

    def update(self, model, opt, closure: Callable):
        loss, logits = closure()
        loss.backward()
        opt.step()
        return loss, logits

    def step(self, model, opt, x, y, generator):
        """One update; returns (loss, logits) detached, still on the device (no host sync)."""
        opt.zero_grad(set_to_none=True)   # nothing from a previous step (or an attack) leaks in
        x_adv = self.adversary(model, x, y, generator)
        loss, logits = self.update(model, opt, lambda: self.loss(model, x, y, x_adv))
        return loss.detach(), logits.detach()


class SAM(Method):
    """SAM: gradient at w, climb to w + e(w), gradient there (BN statistics frozen), step at w."""

    name, title = "sam", "SAM"
    description = "SAM (Foret et al. 2021) with SGD, radius rho"
    sam = True
    train_passes = 2
    default_rho = {"cifar10": 0.1, "cifar100": 0.1}

    def update(self, model, opt, closure):
        loss, logits = closure()
        loss.backward()
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            closure()[0].backward()
        opt.second_step(zero_grad=False)
        return loss, logits


class ASAM(SAM):
    """Adaptive SAM: e(w) = rho T^2 g / ||T g||, T_w = |w| + 0.01 on weights (Kwon et al. 2021)."""

    name, title = "asam", "ASAM"
    description = "adaptive SAM (Kwon et al. 2021), T = |w| + 0.01 on weights, radius rho"
    adaptive = True
    default_rho = {"cifar10": 0.5, "cifar100": 1.0}      # Kwon et al.'s recommended radii


class AT(Method):
    """PGD adversarial training: the loss is taken on PGD examples (Madry et al. 2018)."""

    name, title = "at", "AT"
    description = "PGD adversarial training (Madry et al. 2018)"
    adversarial = True

    def adversary(self, model, x, y, generator):
        c = self.config
        return pgd(model, x, y, eps=c.eps, alpha=c.alpha, steps=c.steps, norm=c.norm, generator=generator,
                   bn_eval=c.attack_bn_eval, autocast_dtype=self.attack_dtype)


class SAMAT(AT, SAM):
    """SAM on the adversarial loss: PGD examples first, then SAM's two passes on them."""

    name, title = "sam_at", "SAM+AT"
    description = "SAM on the PGD adversarial loss"
    train_passes = 2
    default_rho = {"cifar10": 0.1, "cifar100": 0.1}


class AWP(AT):
    """PGD-AT with adversarial weight perturbation (Wu et al. 2020); see the module docstring."""

    name, title = "awp", "AWP"
    description = "AWP (Wu et al. 2020): PGD-AT with an adversarial weight perturbation of size gamma"
    train_passes = 2          # the proxy's step and the perturbed pass
    hparams = (HParam("gamma", 0.01, "relative size of the weight perturbation per layer"),)

    def __init__(self, config, autocast_dtype=None):
        super().__init__(config, autocast_dtype)
        self._proxy = None
        self._proxy_opt = None

    def weight_perturbation(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> list:
        """[(parameter, v)] with v_l = gamma * ||w_l|| * d_l / ||d_l||, d_l one proxy SGD step on -CE.

        Side effect (wanted): the model's buffers (BatchNorm running statistics) become the proxy's,
        i.e. those of one train-mode forward at the unperturbed weights on ``x_adv``.
        """
        base = getattr(model, "_orig_mod", model)     # the plain module behind torch.compile
        if self._proxy is None:
            self._proxy = copy.deepcopy(base)
            self._proxy_opt = torch.optim.SGD(self._proxy.parameters(), lr=self.config.lr)
        proxy = self._proxy
        proxy.load_state_dict(base.state_dict())
        proxy.train(base.training)
        self._proxy_opt.zero_grad(set_to_none=True)
        with autocast(x_adv.device.type, self.autocast_dtype):
            logits = proxy(x_adv)
        (-F.cross_entropy(logits.float(), y)).backward()
        self._proxy_opt.step()
        gamma = self.hparam("gamma")
        out = []
        with torch.no_grad():
            for mb, pb in zip(base.buffers(), proxy.buffers()):
                mb.copy_(pb)
            proxy_params = dict(proxy.named_parameters())
            for name, w in perturbed_weights(base):
                d = proxy_params[name] - w
                out.append((w, d * (gamma * w.norm() / (d.norm() + 1e-20))))
        return out

    def step(self, model, opt, x, y, generator):
        opt.zero_grad(set_to_none=True)
        x_adv = self.adversary(model, x, y, generator)
        with perturbed(self.weight_perturbation(model, x_adv, y)), frozen_bn_stats(model):
            loss, logits = self.loss(model, x, y, x_adv)
            loss.backward()
        opt.step()
        return loss.detach(), logits.detach()


class TRADES(Method):
    """TRADES (Zhang et al. 2019): clean CE plus beta * KL(p(x) || p(x_adv)); x_adv from :func:`kl_pgd`."""

    name, title = "trades", "TRADES"
    description = "TRADES (Zhang et al. 2019): clean CE + beta * KL(clean || adversarial)"
    adversarial = True
    train_passes = 2          # clean and adversarial forward/backward
    hparams = (HParam("beta", 6.0, "weight of the KL robustness term"),)

    def adversary(self, model, x, y, generator):
        c = self.config
        return kl_pgd(model, x, eps=c.eps, alpha=c.alpha, steps=c.steps, norm=c.norm, generator=generator,
                      bn_eval=c.attack_bn_eval, autocast_dtype=self.attack_dtype)

    def logits_pair(self, model, x, x_adv):
        with autocast(x.device.type, self.autocast_dtype):
            return model(x), model(x_adv)

    def loss(self, model, x, y, x_adv):
        logits, logits_adv = self.logits_pair(model, x, x_adv)
        return trades_loss(logits, logits_adv, y, self.hparam("beta")), logits


class ARoW(TRADES):
    """ARoW (Yang et al. 2023): TRADES's adversary, :func:`arow_loss`."""

    name, title = "arow", "ARoW"
    description = "ARoW (Yang et al. 2023): smoothed CE + 2*lam * KL weighted by 1 - p_y(x_adv)"
    hparams = (HParam("lam", 3.5, "the paper's lambda; the KL term is weighted 2 * lam"),
               HParam("smoothing", 0.2, "label smoothing of the clean cross-entropy", unit_interval),
               HParam("weighted", 1, "1 weights the KL by 1 - p_y(x_adv), 0 does not", flag))

    def loss(self, model, x, y, x_adv):
        logits, logits_adv = self.logits_pair(model, x, x_adv)
        loss = arow_loss(logits, logits_adv, y, lam=self.hparam("lam"), smoothing=self.hparam("smoothing"),
                         weighted=bool(self.hparam("weighted")))
        return loss, logits


# The one table of methods. Adding a method: a class above and an entry here.
METHODS: dict[str, type[Method]] = {m.name: m for m in (Method, SAM, ASAM, AT, SAMAT, AWP, TRADES, ARoW)}


def method(name: str) -> type[Method]:
    """The method class called ``name``, or a one-line error naming the valid methods."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


def make_method(config, autocast_dtype: torch.dtype | None = None) -> Method:
    """The method of ``config``, ready to step (training passes under ``autocast_dtype``)."""
    return method(config.method)(config, autocast_dtype)
