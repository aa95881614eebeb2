"""Clean and PGD robust accuracy, the paper's way: PGD-10 with random start, model in eval mode.

``evaluate`` has no side effects on the model: parameters, gradients, BatchNorm statistics and the
train/eval mode of every module are the same afterwards (checked by the tests).
"""
from __future__ import annotations

import torch

from .attacks import PAPER_BUDGETS, model_mode, pgd
from .data import to_float


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return to_float(x) if x.dtype == torch.uint8 else x


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
    cast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else None
    with model_mode(model, training=False):
        for i in range(0, len(y), batch_size):
            xb, yb = _as_float(x[i:i + batch_size].to(device)), y[i:i + batch_size].to(device)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                if cast:
                    with cast():
                        logits = model(xb)
                else:
                    logits = model(xb)
            clean = logits.argmax(1) == yb
            correct["natural"].append(clean)
            for b in budgets:
                if b.eps == 0:          # the budget holds only x itself: its accuracy is the clean one
                    correct[b.name].append(clean)
                    continue
                x_adv = pgd(model, xb, yb, eps=b.eps, alpha=b.alpha, steps=steps, norm=b.norm, restarts=restarts,
                            generator=gen, autocast_dtype=autocast_dtype)
                with torch.no_grad():
                    if cast:
                        with cast():
                            adv_logits = model(x_adv)
                    else:
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


def accuracy_vs_steps(model, x, y, budgets, steps_list=(1, 2, 5, 10, 20, 40), seed: int = 0, **kw) -> list[dict]:
    """PGD accuracy (%) against the number of iterations, per budget: the convergence check (check 4).

    A converged attack gives (almost) the same accuracy at k and 2k steps. Returns one row per
    (budget, steps) with keys ``budget``, ``step`` (as a fraction of eps), ``steps``, ``robust_acc``.
    """
    rows = []
    for b in budgets:
        for k in steps_list:
            acc = evaluate(model, x, y, budgets=(b,), steps=int(k), seed=seed, **kw)[b.name]
            rows.append({"budget": b.label, "step": f"eps/{b.eps / b.alpha:.3g}", "steps": int(k), "robust_acc": acc})
    return rows
