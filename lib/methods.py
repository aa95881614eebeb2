"""Step strategies: what distinguishes ST, SAM, AT, SAM+AT (and later methods) inside the ONE loop.

A strategy turns a clean, augmented batch into one optimiser update:

    x_adv = strategy.adversary(model, x, y, gen)        # None for ST/SAM, PGD examples for AT
    loss, logits = strategy.loss(model, x, y, x_adv)     # the training objective on this batch
    strategy.update(model, opt, closure)                 # plain step, or SAM's two passes

The loop (lib.train) never knows which method it runs. To add a method, subclass :class:`Strategy`,
override what differs, and register it with :func:`register`.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from .attacks import pgd
from .errors import ConfigError
from .optim import frozen_bn_stats


class Strategy:
    """Standard training: cross-entropy on clean inputs, one forward/backward per step."""

    def __init__(self, config, autocast_dtype: torch.dtype | None = None):
        self.config = config
        self.autocast_dtype = autocast_dtype

    # -- pieces a subclass may override -----------------------------------------------------------
    def autocast(self, device_type: str):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast_dtype)

    def adversary(self, model, x, y, generator) -> torch.Tensor | None:
        return None

    def loss(self, model, x, y, x_adv):
        """(scalar loss, logits used for the training accuracy)."""
        inputs = x if x_adv is None else x_adv
        with self.autocast(x.device.type):
            logits = model(inputs)
        return F.cross_entropy(logits.float(), y), logits

    def update(self, model, opt, closure: Callable):
        loss, logits = closure()
        loss.backward()
        opt.step()
        return loss, logits

    # -- the step the loop calls -------------------------------------------------------------------
    def step(self, model, opt, x, y, generator):
        """One update; returns (loss, logits) detached, still on the device (no host sync)."""
        opt.zero_grad(set_to_none=True)   # nothing from a previous step (or an attack) leaks in
        x_adv = self.adversary(model, x, y, generator)
        loss, logits = self.update(model, opt, lambda: self.loss(model, x, y, x_adv))
        return loss.detach(), logits.detach()

    def passes_per_step(self) -> int:
        """Forward+backward passes per step (a PGD step with input-only gradients counts as one)."""
        return 1


class SAMStrategy(Strategy):
    """SAM / ASAM: gradient at w, climb to w + e(w), gradient there (BN stats frozen), step at w."""

    def update(self, model, opt, closure):
        loss, logits = closure()
        loss.backward()
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            closure()[0].backward()
        opt.second_step(zero_grad=False)
        return loss, logits

    def passes_per_step(self) -> int:
        return 2


class ATStrategy(Strategy):
    """PGD adversarial training: the loss is taken on PGD examples (Madry et al. 2018)."""

    def adversary(self, model, x, y, generator):
        c = self.config
        return pgd(model, x, y, eps=c.eps, alpha=c.alpha, steps=c.steps, norm=c.norm, generator=generator,
                   bn_eval=c.attack_bn_eval, autocast_dtype=self.autocast_dtype)

    def passes_per_step(self) -> int:
        return self.config.steps + 1


class SAMATStrategy(ATStrategy, SAMStrategy):
    """SAM on the adversarial loss: PGD examples first, then SAM's two passes on them."""

    def passes_per_step(self) -> int:
        return self.config.steps + 2


STRATEGIES: dict[str, type] = {"st": Strategy, "sam": SAMStrategy, "asam": SAMStrategy,
                               "at": ATStrategy, "sam_at": SAMATStrategy}
# method -> {hyperparameter: (default, validator(value) -> error message or None)}
EXTRA_HPARAMS: dict[str, dict] = {}


def register(name: str, strategy: type, spec, hparams: dict | None = None) -> None:
    """Add a method: its Strategy class, its config.MethodSpec, and its extra hyperparameters."""
    from .config import METHODS
    METHODS[name] = spec
    STRATEGIES[name] = strategy
    EXTRA_HPARAMS[name] = dict(hparams or {})


def default_extra(method: str) -> dict:
    return {k: d for k, (d, _) in EXTRA_HPARAMS.get(method, {}).items()}


def validate_extra(config) -> None:
    allowed = EXTRA_HPARAMS.get(config.method, {})
    for k, v in config.extra:
        if k not in allowed:
            raise ConfigError(f"method {config.method!r} has no hyperparameter {k!r}"
                              + (f"; it has: {', '.join(allowed)}" if allowed else ""))
        msg = allowed[k][1](v)
        if msg:
            raise ConfigError(f"{config.method} {k}={v!r}: {msg}")


def make_strategy(config, autocast_dtype=None) -> Strategy:
    return STRATEGIES[config.method](config, autocast_dtype)
from . import beyond  # noqa: E402,F401  (registers awp, trades, arow)
