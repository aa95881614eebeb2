"""AutoAttack (Croce & Hein, ICML 2020) as an optional, independent check of our PGD numbers.

AutoAttack runs an ensemble of parameter-free attacks (``standard``: APGD-CE, APGD-T, FAB-T,
Square) and is the field's reference for robust accuracy. A PGD accuracy well above AutoAttack's
means our attack is too weak for that model (gradient masking, too few steps): the field's last check
that a robust accuracy is not an artefact of a weak attack.

It is an optional extra::

    pip install -r requirements-extra.txt      # installs pyautoattack (AutoAttack on PyPI)

Without it, :func:`autoattack_accuracy` raises a one-line :class:`lib.errors.SambookError` saying
how to install it, and :func:`available` returns False. The PyPI package ``pyautoattack`` is used
if present, else the original ``autoattack`` package (installed from its authors' repository).

By default only the first ``n=1000`` test images are attacked (AutoAttack is about 100x the cost of
PGD-10); pass ``n=None`` for the whole test set. Example::

    from lib.autoattack import autoattack_accuracy
    acc = autoattack_accuracy(model, data.x_test, data.y_test, norm="linf", eps=8/255)   # %, first 1000
"""
from __future__ import annotations

import torch

from .attacks import validate_budget
from .data import to_float
from .errors import ConfigError, SambookError
from .runtime import fp32_evaluation, model_mode

INSTALL_HINT = "AutoAttack is not installed: pip install -r requirements-extra.txt"
VERSIONS = ("standard", "plus", "rand", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_NORMS = {"linf": "Linf", "l2": "L2"}


def _load():
    """(AutoAttack class, package name), or a SambookError with the install hint."""
    try:
        from pyautoattack import AutoAttack
        return AutoAttack, "pyautoattack"
    except ImportError:
        pass
    try:
        from autoattack import AutoAttack
        return AutoAttack, "autoattack"
    except ImportError:
        raise SambookError(INSTALL_HINT) from None


def available() -> bool:
    """True when an AutoAttack package can be imported."""
    try:
        _load()
    except SambookError:
        return False
    return True


def package() -> str:
    """Name and version of the AutoAttack package in use, e.g. ``pyautoattack 0.2.0``."""
    _, name = _load()
    import importlib.metadata as md
    try:
        return f"{name} {md.version(name)}"
    except md.PackageNotFoundError:
        return name


def _standard_settings(aa, version: str) -> None:
    """A custom subset of attacks runs with the standard version's settings (1 restart each)."""
    if version == "custom":
        aa.apgd.n_restarts = 1
        aa.fab.n_restarts = 1
        aa.apgd_targeted.n_restarts = 1


def autoattack_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                        n: int | None = 1000, version: str = "standard", attacks=None, batch_size: int = 500,
                        seed: int = 0, per_example: bool = False):
    """Robust accuracy (%) under AutoAttack on the first ``n`` examples (``n=None``: all of them).

    Args:
        model: maps images in [0, 1] to logits; attacked in eval mode (restored afterwards).
        x, y: test images (uint8 or float in [0, 1]) and labels.
        norm: "linf" or "l2". eps: budget as a pixel fraction (8/255).
        version: "standard" (the reference evaluation), "plus", "rand", or "custom" with ``attacks``
            a subset of ``ATTACKS`` (e.g. ``["apgd-ce", "apgd-t"]``, a cheaper check), each run with
            the standard version's settings (one restart).
        seed: AutoAttack's seed; the global torch random state is left as it was.

    An example counts as robust only if it is classified correctly both clean and after the attack
    (the same rule as :func:`lib.evaluate.evaluate`). Every returned adversarial example is checked
    to lie in the eps-ball and in [0, 1]. Runs in fp32 (:func:`lib.runtime.fp32_evaluation`).
    ``per_example``: return (accuracy, boolean mask of the examples still correct).
    """
    validate_budget(norm, eps)
    if version not in VERSIONS:
        raise ConfigError(f"unknown AutoAttack version {version!r}; valid versions: {', '.join(VERSIONS)}")
    if version == "custom":
        bad = [a for a in (attacks or []) if a not in ATTACKS]
        if not attacks or bad:
            raise ConfigError(f"version 'custom' needs attacks from {', '.join(ATTACKS)}; got {attacks!r}")
    elif attacks:
        raise ConfigError("attacks are only used with version='custom'")
    if n is not None and n < 1:
        raise ConfigError(f"n must be >= 1 or None (all examples), got {n}")
    AutoAttack, pkg = _load()
    device = next(model.parameters()).device
    x = x[:n] if n is not None else x
    y = y[:n] if n is not None else y
    x = (to_float(x) if x.dtype == torch.uint8 else x).to(device)
    y = y.to(device)
    params = list(model.parameters())
    needs_grad = [p.requires_grad for p in params]
    fork_devices = [device] if device.type == "cuda" else []
    try:
        for p in params:              # the attacks need input gradients only: no weight .grad written
            p.requires_grad_(False)
        with fp32_evaluation(), model_mode(model, training=False), torch.random.fork_rng(devices=fork_devices):
            if pkg == "pyautoattack":
                aa = AutoAttack(model, norm=_NORMS[norm], eps=eps, version=version, seed=seed, device=device,
                                attacks=list(attacks) if version == "custom" else None)
                _standard_settings(aa, version)
                x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
            else:  # the authors' package: positional API, prints unless verbose=False
                aa = AutoAttack(model, norm=_NORMS[norm], eps=eps, version=version, seed=seed, device=str(device),
                                verbose=False)
                if version == "custom":
                    aa.attacks_to_run = list(attacks)
                _standard_settings(aa, version)
                x_adv = aa.run_standard_evaluation(x, y, bs=batch_size)
            correct = torch.zeros(len(y), dtype=torch.bool, device=device)
            with torch.no_grad():
                for i in range(0, len(y), batch_size):
                    sl = slice(i, i + batch_size)
                    clean = model(x[sl]).argmax(1) == y[sl]
                    correct[sl] = clean & (model(x_adv[sl].to(device)).argmax(1) == y[sl])
    finally:
        for p, r in zip(params, needs_grad):
            p.requires_grad_(r)
    delta = (x_adv.to(device) - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    tol = 1e-6 if norm == "linf" else eps * 1e-5 + 1e-6
    if bool((size > eps + tol).any()) or x_adv.min() < 0 or x_adv.max() > 1 or bool(torch.isnan(x_adv).any()):
        raise SambookError(f"AutoAttack returned infeasible examples (max size {size.max().item():.6f} > "
                           f"eps {eps:.6f}, or outside [0, 1])")
    acc = 100.0 * correct.float().mean().item()
    return (acc, correct.cpu()) if per_example else acc
