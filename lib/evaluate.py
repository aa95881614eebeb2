"""Clean and PGD robust accuracy, in fp32, with the model in eval mode.

``evaluate`` has no side effects on the model: parameters, gradients, BatchNorm statistics and the
train/eval mode of every module are the same afterwards (checked by the tests). It refuses to run
under autocast and turns TF32 off on CUDA (:func:`lib.runtime.fp32_evaluation`): an attack in a
coarser arithmetic optimises a different function from the one that classifies.

An example counts as robust only if it is classified correctly clean *and* after the attack, so
examples wrong on the clean input are never attacked (they cannot count, whatever the attack does).
Named evaluation protocols (the paper's, a converged one, a strong one, AutoAttack) and the cached
evaluation stage over a finished run live in :mod:`lib.protocols`.
"""
from __future__ import annotations

import torch

from .attacks import CONVERGED_BUDGETS, LOSSES, pgd
from .data import to_float
from .errors import ConfigError
from .runtime import fp32_evaluation, model_mode


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return to_float(x) if x.dtype == torch.uint8 else x.float()


def clean_batches(model, x, y, batch_size):
    """Yield (images, labels, clean-correct mask) per test batch, on the model's device, in fp32."""
    device = next(model.parameters()).device
    for i in range(0, len(y), batch_size):
        xb, yb = _as_float(x[i:i + batch_size].to(device)), y[i:i + batch_size].to(device)
        xb = xb.contiguous(memory_format=torch.channels_last)     # the layout of lib.runtime.memory_format
        with torch.no_grad():
            clean = model(xb).argmax(1) == yb
        yield xb, yb, clean


def evaluate(model, x, y, budgets=CONVERGED_BUDGETS, steps: int = 10, batch_size: int = 500, seed: int = 0,
             restarts: int = 1, loss: str = "ce", any_iterate: bool = False, per_example: bool = False) -> dict:
    """Accuracy (%) on clean inputs (key ``natural``) and under PGD at each budget (key ``budget.name``).

    Args:
        x, y: test images (uint8 or float in [0, 1]) and labels.
        budgets: :class:`lib.attacks.Budget` items (names are unique per norm, eps and step).
        steps: PGD iterations. restarts: random starts per example (broken if any breaks it).
        loss: ``ce`` (cross-entropy) or ``margin`` (Carlini-Wagner). seed: seeds the random starts.
        any_iterate: an example is broken if any iterate is misclassified (see :func:`lib.attacks.pgd`).
        per_example: also return boolean tensors (key ``<name>_correct``) of the examples still correct.

    Example: ``evaluate(model, data.x_test, data.y_test)`` -> ``{"natural": 94.1, "linf_1-a0.25": 41.0, ...}``.
    """
    if loss not in LOSSES:
        raise ConfigError(f"unknown attack loss {loss!r}; valid losses: {', '.join(LOSSES)}")
    names = [b.name for b in budgets]
    if len(set(names)) != len(names):
        raise ConfigError(f"two budgets share a name (same norm, eps and step): {names}")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    correct = {"natural": []}
    correct.update({b.name: [] for b in budgets})
    with fp32_evaluation(), model_mode(model, training=False):
        for xb, yb, clean in clean_batches(model, x, y, batch_size):
            correct["natural"].append(clean)
            idx = torch.nonzero(clean).flatten()
            for b in budgets:
                ok = torch.zeros_like(clean)
                if b.eps == 0:          # the budget holds only x itself: its accuracy is the clean one
                    ok = clean.clone()
                elif len(idx):
                    x_adv = pgd(model, xb[idx].contiguous(memory_format=torch.channels_last), yb[idx], eps=b.eps, alpha=b.alpha, steps=steps, norm=b.norm,
                                restarts=restarts, loss_fn=LOSSES[loss], generator=gen, any_iterate=any_iterate)
                    with torch.no_grad():
                        ok[idx] = model(x_adv).argmax(1) == yb[idx]
                correct[b.name].append(ok)
    out = {}
    for k, v in correct.items():
        c = torch.cat(v) if v else torch.zeros(0, dtype=torch.bool)
        out[k] = 100.0 * c.float().mean().item() if len(c) else float("nan")
        if per_example:
            out[f"{k}_correct"] = c.cpu()
    return out


def accuracy_vs_steps(model, x, y, budgets, steps_list=(1, 2, 5, 10, 20, 40), seed: int = 0,
                      batch_size: int = 500) -> list[dict]:
    """PGD accuracy (%) against the number of iterations, per budget: the convergence check (accuracy
    must stop falling as the steps grow).

    A converged attack gives (almost) the same accuracy at k and 2k steps. Each value equals
    ``evaluate(model, x, y, budgets=(b,), steps=k, seed=seed)[b.name]``: PGD-k is the first k steps of
    PGD-K from the same random start, so one PGD-max(steps_list) run per budget gives every k (its
    iterates are read through ``pgd(on_iterate=...)``). Returns one row per (budget, steps) with keys
    ``budget``, ``step`` (as a fraction of eps), ``steps``, ``robust_acc``.
    """
    ks = sorted({int(k) for k in steps_list})
    if not ks or ks[0] < 1:
        raise ConfigError(f"steps_list must hold positive step counts, got {list(steps_list)}")
    device = next(model.parameters()).device
    budgets = list(budgets)
    gens = [torch.Generator(device=device) for _ in budgets]
    for g in gens:
        g.manual_seed(int(seed))                        # as evaluate(budgets=(b,), seed=seed) does
    correct = [{k: [] for k in ks} for _ in budgets]    # per budget: per k, the correct-mask of each batch
    with fp32_evaluation(), model_mode(model, training=False):
        for xb, yb, clean in clean_batches(model, x, y, batch_size):
            idx = torch.nonzero(clean).flatten()
            for b, gen, hits in zip(budgets, gens, correct):
                if b.eps == 0 or not len(idx):
                    for k in ks:
                        hits[k].append(clean if b.eps == 0 else torch.zeros_like(clean))
                    continue

                def record(t, logits, yb=yb, clean=clean, idx=idx, hits=hits):
                    if t in hits:
                        ok = torch.zeros_like(clean)
                        ok[idx] = logits.argmax(1) == yb[idx]
                        hits[t].append(ok)

                pgd(model, xb[idx].contiguous(memory_format=torch.channels_last), yb[idx], eps=b.eps, alpha=b.alpha, steps=ks[-1], norm=b.norm, generator=gen,
                    on_iterate=record)
    rows = []
    for b, hits in zip(budgets, correct):
        for k in ks:
            acc = 100.0 * torch.cat(hits[k]).float().mean().item()
            rows.append({"budget": b.label, "step": f"eps/{b.eps / b.alpha:.3g}", "steps": k, "robust_acc": acc})
    return rows
