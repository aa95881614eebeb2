"""Probes of a trained network: measurements on its weights that the chapters show, cached in the run folder.

Each probe is a function of (model, test images) that returns a small table (a list of dicts). The
chapters never need a run's weights: :func:`probe` computes a probe once, writes
``probes/<name>.json`` into the run folder (keyed by the probe's parameters and the weights' hash)
and reads it back afterwards, so committed results carry their probes.

- ``sam_step``: the loss at w and at w + e(w) for SAM's step at several radii (chapter 2).
- ``pgd_losses``: the cross-entropy along PGD-10 iterations at the four budgets (it must rise; chapter 2).
- ``convergence``: PGD accuracy against iterations at L2 16 and 32/255 with the paper's step
  eps/8 and with eps/4 (has the attack converged? chapter 2).
- ``duality``: the relative feature change ||dW h|| / ||W h|| that SAM's weight step makes at a
  layer, beside ||W dh|| / ||W h|| that a PGD attack makes (claim 3; chapter 2).
- ``curves``: robust accuracy against eps under both norms, with the per-example running minimum
  (checks 3 and 6; chapters 2 and 4).
- ``flatness``: the loss increase under a random and under a worst-case per-layer weight
  perturbation (chapter 5).

Every probe runs in fp32 with the model in eval mode and leaves the model exactly as it was.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import CONVERGED_BUDGETS, PAPER_BUDGETS, pgd, step_budget
from .errors import ConfigError, SambookError
from .evaluate import accuracy_vs_steps, evaluate
from .io import read_json, write_json
from .methods import perturbed_weights
from .runtime import fp32_evaluation, model_mode, perturbed

log = logging.getLogger(__name__)
PROBE_DIR = "probes"
RHOS = (0.05, 0.1, 0.2, 0.4)
LAYERS = ("layer1.0.conv1", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2", "linear")
LINF_CURVE = (0, 1, 2, 4, 8)                # /255: chapter 4's curves
L2_CURVE = (0, 16, 32, 64, 128)
LINF_WIDE = (0, 0.5, 1, 2, 4, 8, 16, 127.5)  # /255: chapter 2's sanity checks, up to an unbounded attack
L2_WIDE = (0, 8, 16, 32, 64, 128, 256, 7650)


# --------------------------------------------------------------------------------------------------
# The measurements


def sam_direction(model, x, y) -> dict[str, torch.Tensor]:
    """g / ||g||_2 over all parameters (the SAM ascent direction at rho = 1), per parameter name."""
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)) + 1e-12
    return {n: g / norm for n, g in zip(params, grads)}


def loss_under_sam_step(model, x, y, rhos=RHOS) -> list[dict]:
    """Loss at w and at w + e(w) for each rho (eval mode; the weights are restored exactly)."""
    out = []
    with fp32_evaluation(), model_mode(model, training=False):
        direction = sam_direction(model, x, y)
        params = dict(model.named_parameters())
        with torch.no_grad():
            base = F.cross_entropy(model(x), y).item()
            for rho in rhos:
                with perturbed((p, rho * direction[n]) for n, p in params.items()):
                    after = F.cross_entropy(model(x), y).item()
                out.append({"rho": rho, "loss_clean_weights": base, "loss_perturbed_weights": after,
                            "increase": after - base})
    return out


def pgd_losses(model, x, y, steps: int = 10, seed: int = 0) -> list[dict]:
    """Mean cross-entropy after each PGD iteration at the four budgets (step eps/4), and the share that rose."""
    rows = []
    with fp32_evaluation():
        for b in CONVERGED_BUDGETS:
            _, losses = pgd(model, x, y, eps=b.eps, alpha=b.alpha, steps=steps, norm=b.norm,
                            generator=torch.Generator(device=x.device).manual_seed(seed), return_losses=True)
            rose = (losses[-1] >= losses[0]).float().mean().item()
            rows += [{"budget": b.label, "iteration": i, "mean loss": v, "rose": rose}
                     for i, v in enumerate(losses.mean(1).tolist())]
    return rows


def convergence(model, x, y, steps_list=(1, 5, 10, 20, 40), seed: int = 0) -> list[dict]:
    """PGD accuracy against iterations at L2 16 and 32/255, with the paper's step eps/8 and with eps/4."""
    budgets = [b for b in PAPER_BUDGETS if b.norm == "l2"] + [b for b in CONVERGED_BUDGETS if b.norm == "l2"]
    return accuracy_vs_steps(model, x, y, budgets, steps_list=steps_list, seed=seed)


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


def feature_perturbations(model, x, y, layers=LAYERS, rhos=RHOS, budgets=None, steps: int = 10,
                          seed: int = 0) -> list[dict]:
    """Relative feature perturbation at each layer for SAM at each rho and PGD at each budget (claim 3).

    For a layer z = W h: SAM's weight step e_W moves z by e_W h; an attack moves the layer's input by
    dh, so z by W dh. Returns rows {layer, kind ('SAM' or 'PGD'), size (rho, or eps*255), label,
    relative}, each the mean over examples of ||dz|| / ||z||.
    """
    if budgets is None:
        budgets = [step_budget("linf", e / 255, 4) for e in (1, 2, 4, 8)] + \
                  [step_budget("l2", e / 255, 4) for e in (16, 32, 64, 128)]
    rows = []
    mods = dict(model.named_modules())
    with fp32_evaluation(), model_mode(model, training=False):
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


def robustness_curve(model, x, y, linf=LINF_CURVE, l2=L2_CURVE, steps: int = 10, seed: int = 0) -> list[dict]:
    """Robust accuracy (%) against eps (PGD, step eps/4) and the per-example running minimum over eps.

    A model can never be more robust at a larger eps than at a smaller one: an example broken at a
    small budget counts as broken at every larger one (the running minimum). If the raw curve rose
    above it, the attack would be missing examples it found at a smaller budget.
    """
    rows = []
    for norm, epss in (("linf", linf), ("l2", l2)):
        budgets = tuple(step_budget(norm, e / 255, 4) for e in sorted(epss))
        r = evaluate(model, x, y, budgets=budgets, steps=steps, seed=seed, per_example=True)
        running = r["natural_correct"].clone()
        for b in budgets:
            running &= r[f"{b.name}_correct"]
            rows.append({"norm": norm, "eps_255": b.eps * 255, "robust_acc": r[b.name],
                         "running_min": 100.0 * running.float().mean().item()})
    return rows


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
    if not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
        raise ConfigError(f"flatness rho must be >= 0, got {rho}")
    if draws < 1 or steps < 1:
        raise ConfigError(f"draws and steps must be >= 1, got draws={draws}, steps={steps}")
    device = next(model.parameters()).device
    x = (x.float() / 255 if x.dtype == torch.uint8 else x).to(device)
    y = y.to(device)
    params = [p for _, p in perturbed_weights(model)]
    radius = [rho * w.detach().norm() for w in params]
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    with fp32_evaluation(), model_mode(model, training=False):
        with torch.no_grad():
            base = _mean_loss(model, x, y, batch_size)
        if kind == "random":
            total = torch.zeros((), device=device)
            for _ in range(draws):
                us = [torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype) for p in params]
                with perturbed(zip(params, [u * (r / (u.norm() + 1e-20)) for u, r in zip(us, radius)])), \
                        torch.no_grad():
                    total += _mean_loss(model, x, y, batch_size)
            after = total / draws
        else:
            vs = [torch.zeros_like(p) for p in params]
            with torch.enable_grad():
                for _ in range(steps):
                    with perturbed(zip(params, vs)):
                        gs = _mean_loss_grad(model, params, x, y, batch_size)
                    vs = [v + g * (r / steps / (g.norm() + 1e-20)) for v, g, r in zip(vs, gs, radius)]
                    vs = [v * torch.clamp(r / (v.norm() + 1e-20), max=1.0) for v, r in zip(vs, radius)]
            with perturbed(zip(params, vs)), torch.no_grad():
                after = _mean_loss(model, x, y, batch_size)
    return float(after - base)


def flatness_pair(model, x, y, random_rho: float = 0.1, worst_rho: float = 0.01, draws: int = 5,
                  seed: int = 0) -> list[dict]:
    """Random-direction flatness (rho 0.1, 5 draws) and worst-direction flatness (rho 0.01, one step =
    AWP's perturbation at gamma 0.01)."""
    return [{"kind": "random", "rho": random_rho,
             "increase": flatness(model, x, y, random_rho, "random", draws=draws, seed=seed)},
            {"kind": "worst", "rho": worst_rho, "increase": flatness(model, x, y, worst_rho, "worst", steps=1)}]


def network_and_batch(run, n: int = 32, data_root=None):
    """(model, x, y, trained): a run's network in eval mode on the CPU and its first ``n`` test images in
    [0, 1] with their labels, for the checks a chapter writes out (chapter 2's SAM and PGD).

    ``trained`` is True when the run's weights are here; committed results carry no weights, and then the
    network is a fresh one of the same shape, initialised with the run's seed (the checks compare two
    implementations of one step, which needs real images but not trained weights).

    Example: ``model, x, y, trained = network_and_batch(run, n=32)``.
    """
    from . import runs
    from .models import build_model
    c = run.config
    if run.has_weights:
        model, trained = runs.load_model(run, "cpu"), True
    else:
        with torch.random.fork_rng():                    # the caller's random state is left as it was
            torch.manual_seed(c.seed)
            model, trained = build_model(c.num_classes, c.width, c.dataset).eval(), False
    data = runs.load_data(c, data_root)
    x = data.x_test[:n]
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    return model, x.contiguous(), data.y_test[:n].clone(), trained


# --------------------------------------------------------------------------------------------------
# The cache over a finished run

# name -> (function, test images it uses, keyword arguments, version). The cache key of a probe is
# its name, images, arguments and version: bump the version when a probe's computation changes.
PROBES = {
    "sam_step": (loss_under_sam_step, 200, {}, 1),
    "pgd_losses": (pgd_losses, 200, {}, 1),
    "convergence": (convergence, 200, {}, 1),
    "duality": (feature_perturbations, 200, {}, 1),
    "curves": (robustness_curve, 200, {}, 1),
    # from tiny budgets to unbounded ones (L-inf 0.5 = 127.5/255, L2 30 = 7650/255), where accuracy
    # must reach zero (an unbounded attack that leaves images robust is broken)
    "curves_wide": (robustness_curve, 200, {"linf": LINF_WIDE, "l2": L2_WIDE, "steps": 20}, 1),
    "flatness": (flatness_pair, 1000, {}, 1),
}


def default_probes(config) -> list[str]:
    """The probes computed when a run finishes: what chapters 2, 4 and 5 show for it.

    Every run: flatness (chapter 5 correlates it with robustness over all runs and seeds). The
    first seed of ST, SAM and AT: the robustness curves (chapter 4); ST's first seed: also the SAM
    step, the PGD loss trajectory, the convergence check and the duality measurement (chapter 2).
    """
    names = ["flatness"]
    if config.on_length_axis:
        return names            # a run of the training-length axis: chapter 4 reads its paper protocol only
    if config.seed == 0 and config.method in ("st", "sam", "at"):
        names.append("curves")
    if config.seed == 0 and config.method == "st":
        names += ["sam_step", "pgd_losses", "convergence", "duality", "curves_wide"]
    return names


def probe_path(run_path: Path, name: str) -> Path:
    return Path(run_path) / PROBE_DIR / f"{name}.json"


def _digest(name: str, n: int) -> str:
    _, _, kwargs, version = PROBES[name]
    text = json.dumps({"name": name, "n": n, "kwargs": kwargs, "version": version}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def probe(run, name: str, data_root=None, device=None, force: bool = False) -> list[dict]:
    """The probe ``name`` of a finished run: read from its folder, else computed (needs the weights) and written."""
    from . import runs
    from .runtime import describe, device as pick_device, threads
    from .config import profile as get_profile
    from .data import class_sorted_test
    if name not in PROBES:
        raise ConfigError(f"unknown probe {name!r}; valid probes: {', '.join(PROBES)}")
    fn, n_default, kwargs, _ = PROBES[name]
    n = min(n_default, run.metrics.get("test_images", n_default))
    path = probe_path(run.path, name)
    weights = run.metrics.get("weights_sha")
    stale = None
    if path.exists() and not force:
        try:
            rec = read_json(path)
            if rec.get("weights_sha") == weights and rec.get("digest") == _digest(name, n):
                if not class_sorted_test(run.config, rec.get("test_order")):
                    return rec["rows"]
                stale = "was computed on the test split in its stored class order (one or two classes)"
        except (OSError, ValueError):
            pass
    if not run.has_weights:
        raise SambookError(f"{run.path.name}: probe {name!r} {stale or 'was not computed when the run finished'} "
                           f"and the weights (model.pt) are not here to compute it")
    dev = pick_device(device)
    model = runs.load_model(run, dev)
    data = runs.load_data(run.config, data_root, device=dev)
    x = data.x_test[:n].float().div(255) if data.x_test.dtype == torch.uint8 else data.x_test[:n]
    x = x.contiguous(memory_format=torch.channels_last)
    y = data.y_test[:n]
    t0 = time.perf_counter()
    with threads(None if dev.type == "cuda" else get_profile(run.config.profile).cpu_threads):
        rows = fn(model, x, y, **kwargs)
        env = describe(dev)
    rec = {"probe": name, "digest": _digest(name, n), "n": n, "test_order": data.test_order_note,
           "weights_sha": weights, "rows": rows,
           "seconds": time.perf_counter() - t0, "run": run.path.name, **env,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(path, rec)
    return rows
