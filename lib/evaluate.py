"""Clean and PGD robust accuracy, the paper's way: PGD-10 with random start, model in eval mode.

``evaluate`` has no side effects on the model: parameters, gradients, BatchNorm statistics and the
train/eval mode of every module are the same afterwards (checked by the tests).
"""
from __future__ import annotations

import contextlib

import torch

from .attacks import PAPER_BUDGETS, model_mode, pgd
from .data import to_float
from .errors import ConfigError


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return to_float(x) if x.dtype == torch.uint8 else x


def _cast(device, autocast_dtype):
    return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()


def _clean_batches(model, x, y, batch_size, autocast_dtype):
    """Yield (images, labels, clean-correct mask) per test batch, on the model's device."""
    device = next(model.parameters()).device
    for i in range(0, len(y), batch_size):
        xb, yb = _as_float(x[i:i + batch_size].to(device)), y[i:i + batch_size].to(device)
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), _cast(device, autocast_dtype):
            clean = model(xb).argmax(1) == yb
        yield xb, yb, clean


def evaluate(model, x, y, budgets=PAPER_BUDGETS, steps: int = 10, batch_size: int = 500, seed: int = 0,
             autocast_dtype=None, restarts: int = 1, per_example: bool = False) -> dict:
    """Accuracy (%) on clean inputs (key ``natural``) and under PGD at each budget (key ``budget.name``).

    Args:
        x, y: test images (uint8 or float in [0, 1]) and labels, on the model's device.
        budgets: :class:`lib.attacks.Budget` items; default the paper's four (L-inf 1, 2; L2 16, 32 /255).
        steps: PGD iterations (10 in the paper). seed: seeds the random starts (deterministic results).
        per_example: also return boolean tensors (key ``<name>_correct``) of the examples still correct.

    Example: ``evaluate(model, data.x_test, data.y_test)`` -> ``{"natural": 94.1, "linf_1": 41.0, ...}``.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    correct = {"natural": []}
    correct.update({b.name: [] for b in budgets})
    with model_mode(model, training=False):
        for xb, yb, clean in _clean_batches(model, x, y, batch_size, autocast_dtype):
            correct["natural"].append(clean)
            for b in budgets:
                if b.eps == 0:          # the budget holds only x itself: its accuracy is the clean one
                    correct[b.name].append(clean)
                    continue
                x_adv = pgd(model, xb, yb, eps=b.eps, alpha=b.alpha, steps=steps, norm=b.norm, restarts=restarts,
                            generator=gen, autocast_dtype=autocast_dtype)
                with torch.no_grad(), _cast(device, autocast_dtype):
                    adv_logits = model(x_adv)
                # an example counts as robust only if it is also classified correctly when clean
                correct[b.name].append((adv_logits.argmax(1) == yb) & clean)
    out = {}
    for k, v in correct.items():
        c = torch.cat(v) if v else torch.zeros(0, dtype=torch.bool)
        out[k] = 100.0 * c.float().mean().item() if len(c) else float("nan")
        if per_example:
            out[f"{k}_correct"] = c.cpu()
    return out


def accuracy_vs_steps(model, x, y, budgets, steps_list=(1, 2, 5, 10, 20, 40), seed: int = 0, batch_size: int = 500,
                      autocast_dtype=None) -> list[dict]:
    """PGD accuracy (%) against the number of iterations, per budget: the convergence check (check 4).

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
    with model_mode(model, training=False):
        for xb, yb, clean in _clean_batches(model, x, y, batch_size, autocast_dtype):
            for b, gen, hits in zip(budgets, gens, correct):
                if b.eps == 0:
                    for k in ks:
                        hits[k].append(clean)
                    continue

                def record(t, logits, yb=yb, clean=clean, hits=hits):
                    if t in hits:
                        hits[t].append((logits.argmax(1) == yb) & clean)

                pgd(model, xb, yb, eps=b.eps, alpha=b.alpha, steps=ks[-1], norm=b.norm, generator=gen,
                    autocast_dtype=autocast_dtype, on_iterate=record)
    rows = []
    for b, hits in zip(budgets, correct):
        for k in ks:
            acc = 100.0 * torch.cat(hits[k]).float().mean().item()
            rows.append({"budget": b.label, "step": f"eps/{b.eps / b.alpha:.3g}", "steps": k, "robust_acc": acc})
    return rows
