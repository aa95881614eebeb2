"""SAM (Foret et al. 2021, "Sharpness-Aware Minimization") and ASAM (Kwon et al. 2021).

One SAM step, for a loss L and parameters w:
    e(w) = rho * g / ||g||_2                      (SAM; g = grad L(w), norm over all parameters)
    e(w) = rho * T^2 g / ||T g||_2                (ASAM, the adaptive variant)
    w <- w - lr * base_update(grad L(w + e(w)))    (the base optimiser, at the original w)

ASAM as Kwon et al. (ICML 2021) define and run it: T_w = |w| + eta with eta = 0.01 for every
weight tensor (convolution, linear and BatchNorm weights: the parameters named ``*weight``) and
T = 1 for biases; :func:`asam_param_groups` makes those two groups. Their recommended radius is
much larger than SAM's because T shrinks the step: rho = 0.5 on CIFAR-10, 1.0 on CIFAR-100.

Usage (two forward/backward passes per step)::

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward(); opt.first_step()            # climb to w + e(w)
    with frozen_bn_stats(model):                                  # 2nd pass must not touch BN stats
        loss_fn(model(x), y).backward()
    opt.second_step()                                             # back to w, base step

With rho = 0 the step is exactly the base optimiser's (w + 0 - 0 == w bit for bit).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .errors import ConfigError


class SAM(torch.optim.Optimizer):
    """Wraps any ``torch.optim`` optimiser class; ``rho`` is the L2 radius of the weight step."""

    def __init__(self, params, base_optimizer, rho: float = 0.05, adaptive: bool = False,
                 eta: float = 0.0, **base_kwargs):
        if rho < 0:
            raise ConfigError(f"rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _scaled_grads(self, group):
        """(params, T*g) for the params with a gradient; T = |w| + eta for ASAM, 1 for SAM."""
        ps = [p for p in group["params"] if p.grad is not None]
        gs = [p.grad for p in ps]
        if group["adaptive"]:
            gs = [(p.abs() + group["eta"]) * g for p, g in zip(ps, gs)]
        return ps, gs

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """||T g||_2 over every parameter (a device tensor: no host sync)."""
        norms = []
        for group in self.param_groups:
            _, gs = self._scaled_grads(group)
            if gs:
                norms.extend(torch._foreach_norm(gs))
        if not norms:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True):
        """Move to w + e(w) and remember e(w)."""
        scale_all = None
        for group in self.param_groups:
            ps, gs = self._scaled_grads(group)
            if not ps:
                continue
            if scale_all is None:
                scale_all = self.grad_norm().add_(1e-12).reciprocal_()
            scale = scale_all * group["rho"]
            if group["adaptive"]:  # e = rho * T (T g) / ||T g||
                es = [(p.abs() + group["eta"]) * g for p, g in zip(ps, gs)]
            else:
                es = [g.clone() for g in gs]
            torch._foreach_mul_(es, scale.to(es[0].device))
            torch._foreach_add_(ps, es)
            for p, e in zip(ps, es):
                self.state[p]["e_w"] = e
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True):
        """Return to w and take the base optimiser's step with the gradient taken at w + e(w)."""
        for group in self.param_groups:
            ps = [p for p in group["params"] if "e_w" in self.state[p]]
            if ps:
                torch._foreach_sub_(ps, [self.state[p].pop("e_w") for p in ps])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure=None):  # pragma: no cover - the loop calls first/second_step
        raise RuntimeError("SAM needs two passes: call first_step() and second_step()")

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


ASAM_ETA = 0.01


def asam_param_groups(model: nn.Module, eta: float = ASAM_ETA) -> list[dict]:
    """ASAM's parameter groups: weights (adaptive, T = |w| + eta) and biases (T = 1), as in Kwon et al."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    others = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    groups = [{"params": weights, "adaptive": True, "eta": eta}]
    if others:
        groups.append({"params": others, "adaptive": False, "eta": 0.0})
    return groups


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """BatchNorm layers normalise with the batch statistics but do not update running stats.

    Used for SAM's second pass (and AWP's perturbed pass): running_mean, running_var and
    num_batches_tracked stay bit-for-bit unchanged.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in bns]
    try:
        for m in bns:
            m.track_running_stats = False
        yield model
    finally:
        for m, s in zip(bns, saved):
            m.track_running_stats = s
