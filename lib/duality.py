"""The paper's duality argument, made measurable (claim 3).

For a layer z = W h (conv or linear), a weight perturbation dW moves the layer's output by dW h; an
input perturbation moves the layer's input by dh and so the output by W dh. SAM perturbs W with
e(w) = rho * g / ||g|| (g the gradient over all weights); PGD perturbs the image with delta. This
module measures, on the same images, the size of both feature perturbations at chosen layers:

    sam[rho]  = || e_W(rho) * h ||  /  || W h ||        (the feature change SAM's weight step makes)
    pgd[eps]  = || W (h(x+delta) - h(x)) ||  /  || W h ||   (the feature change an attack makes)

Both are per-example relative L2 norms over the layer's output, averaged over examples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import model_mode, pgd


def _apply(module: nn.Module, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with ``weight`` and no bias: W h."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(h, weight, None, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, nn.Linear):
        return F.linear(h, weight)
    raise TypeError(f"layer {type(module).__name__} is neither Conv2d nor Linear")


def _layer_inputs(model, x, names):
    mods = dict(model.named_modules())
    store = {}
    hooks = [mods[n].register_forward_pre_hook(lambda m, inp, n=n: store.__setitem__(n, inp[0].detach()))
             for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return store


def sam_direction(model, x, y) -> dict[str, torch.Tensor]:
    """g / ||g||_2 over all parameters (the SAM ascent direction at rho = 1), per parameter name."""
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)) + 1e-12
    return {n: g / norm for n, g in zip(params, grads)}


def feature_perturbations(model, x, y, layers, rhos, budgets, steps: int = 10, seed: int = 0):
    """Relative feature perturbation at each layer for SAM at each rho and PGD at each budget.

    Returns a list of dicts {layer, kind ('SAM' or 'PGD'), size (rho, or eps*255), label, relative}.
    The model is evaluated in eval mode and left exactly as it was.
    """
    rows = []
    mods = dict(model.named_modules())
    with model_mode(model, training=False):
        direction = sam_direction(model, x, y)
        clean_in = _layer_inputs(model, x, layers)
        base = {n: _apply(mods[n], clean_in[n], mods[n].weight).flatten(1).norm(dim=1) + 1e-12 for n in layers}
        for rho in rhos:
            for n in layers:
                dz = _apply(mods[n], clean_in[n], rho * direction[f"{n}.weight"]).flatten(1).norm(dim=1)
                rows.append({"layer": n, "kind": "SAM", "size": rho, "label": f"SAM rho={rho:g}",
                             "relative": (dz / base[n]).mean().item()})
        gen = torch.Generator(device=x.device).manual_seed(seed)
        for b in budgets:
            x_adv = pgd(model, x, y, eps=b.eps, alpha=b.alpha, steps=steps, norm=b.norm, generator=gen)
            adv_in = _layer_inputs(model, x_adv, layers)
            for n in layers:
                dz = _apply(mods[n], adv_in[n] - clean_in[n], mods[n].weight).flatten(1).norm(dim=1)
                rows.append({"layer": n, "kind": "PGD", "size": b.eps * 255, "label": f"PGD {b.label}",
                             "relative": (dz / base[n]).mean().item()})
    return rows


def loss_under_sam_step(model, x, y, rhos) -> list[dict]:
    """Loss at w and at w + e(w) for each rho (eval mode; the weights are restored exactly)."""
    out = []
    with model_mode(model, training=False):
        direction = sam_direction(model, x, y)
        params = dict(model.named_parameters())
        with torch.no_grad():
            base = F.cross_entropy(model(x), y).item()
            for rho in rhos:
                saved = {n: p.detach().clone() for n, p in params.items()}
                for n, p in params.items():
                    p.add_(rho * direction[n])
                out.append({"rho": rho, "loss_clean_weights": base,
                            "loss_perturbed_weights": F.cross_entropy(model(x), y).item()})
                for n, p in params.items():
                    p.copy_(saved[n])
    return out
