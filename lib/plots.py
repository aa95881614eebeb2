"""The figures of chapters 1, 2, 3 and 5: each function draws one figure from numbers the chapter computed.

A chapter keeps the computation and the reading of the result; the matplotlib lives here. Every
function returns the figure (the chapter saves it with :func:`lib.report.savefig` and shows it) and
computes nothing the chapter does not show: axes, labels, legends and reference lines only.

Example::

    fig = plots.accuracy_vs_w(model, [0.0, 0.02, 0.05])
    report.savefig(fig, "01_accuracy_vs_w"); plt.show()
"""
from __future__ import annotations

import numpy as np

from . import theory as T
from .report import FAMILY_COLORS, errorbars, family


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _w_st_line(ax, model) -> None:
    """A dotted horizontal line at w_ST, labelled at the right edge."""
    w = T.w_st(model)
    ax.axhline(w, color="grey", lw=0.8, ls=":")
    ax.text(0.99, w, "w_ST ", va="top", ha="right", fontsize=8, color="grey", transform=ax.get_yaxis_transform())


def _toy(model) -> str:
    return f"p={model.p:g}, eta={model.eta:g}, d={model.d}"


# --------------------------------------------------------------------------------------------------
# Chapter 1: the toy model


def accuracy_vs_w(model, eps_list, w_max: float = 80.0):
    """A_eps(w) against w for each attack budget in ``eps_list`` (0 = clean), with each curve's peak w_AT(eps)."""
    import pandas as pd
    import seaborn as sns
    plt = _plt()
    w_axis = np.linspace(-5, w_max, 600)
    curves = pd.concat([pd.DataFrame({"w": w_axis, "accuracy": T.accuracy(model, w_axis, e),
                                      "attack": f"eps = {e:g}" + (" (clean)" if e == 0 else "")})
                        for e in eps_list])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sns.lineplot(curves, x="w", y="accuracy", hue="attack", palette="rocket_r", ax=ax)
    for e, ls in zip(eps_list, ["-", "--", "-.", ":", (0, (1, 3))]):
        ax.axvline(float(T.w_at(model, e)), color="grey", lw=0.8, ls=ls)
    ax.axhline(model.p, color="black", lw=0.8, ls=":")
    ax.text(w_max - 1, model.p + 0.005, "p: robust feature alone", ha="right", va="bottom", fontsize=8)
    ax.set(title=f"Accuracy of sign(w x_1 + sum x_j), {_toy(model)}\n"
                 "(vertical lines: the peak w_AT(eps) of each curve; eps=0 gives w_ST)",
           xlabel="w: weight on the robust feature (units of a non-robust weight)",
           ylabel="accuracy (fraction of test points)")
    ax.legend(title="L-inf attack on non-robust features", fontsize=8, title_fontsize=8)
    return fig


def weight_vs_perturbation(model, at_table, sam_table, n_seeds: int, profile: str,
                           eps_max: float = 0.08, rho_max: float = 20.0):
    """Where AT (left, against eps) and SAM (right, against rho) put w: closed form, numerical optimum, trained.

    ``at_table`` / ``sam_table``: indexed by eps / rho, with columns ``numerical optimum``, ``trained mean``
    and ``trained s.e.`` (chapter 1's theorem tables).
    """
    plt = _plt()
    eps_line, rho_line = np.linspace(0, eps_max, 200), np.linspace(0, rho_max, 200)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    ax = axes[0]
    ax.plot(eps_line, T.w_at(model, eps_line), color="C0", label="closed form (Thm 4.2)")
    ax.plot(at_table.index, at_table["numerical optimum"], "x", color="black", ms=8, label="numerical optimum")
    errorbars(ax, at_table.index, at_table["trained mean"], at_table["trained s.e."], "C3", "trained (mean +- s.e.)")
    ax.set(title="AT: robust weight against the training budget",
           xlabel="eps: L-inf budget on the non-robust features (feature s.d. units)",
           ylabel="w: weight on the robust feature")
    ax = axes[1]
    ax.plot(rho_line, T.w_sam(model, rho_line), color="C0", label="closed form: root of A(w-rho)=A(w+rho)")
    ax.plot(rho_line, T.w_sam_small_rho(model, rho_line), "--", color="C2", label="small-rho expansion (Thm 4.4)")
    ax.plot(sam_table.index, sam_table["numerical optimum"], "x", color="black", ms=8, label="numerical optimum")
    errorbars(ax, sam_table.index, sam_table["trained mean"], sam_table["trained s.e."], "C3",
              "trained (mean +- s.e.)")
    ax.set(title="SAM: robust weight against the radius",
           xlabel="rho: radius of the perturbation of w (weight units)", ylabel="w: weight on the robust feature")
    for ax in axes:
        _w_st_line(ax, model)
        ax.legend(fontsize=8)
    fig.suptitle(f"Where AT and SAM put the weight ({_toy(model)}; {profile} profile, {n_seeds} seeds)", y=1.02)
    return fig


def small_rho_error(model, rho_small, err):
    """|w_SAM - w_ST(1 + rho^2/3d)| against rho on log-log axes, with a slope-4 reference line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(rho_small, err, "o-", label="|w_SAM - w_ST (1 + rho^2/3d)|")
    ax.loglog(rho_small, err[0] * (rho_small / rho_small[0]) ** 4, "--", color="grey", label="slope 4 reference")
    ax.set(title=f"Theorem 4.4: error of the small-rho expansion (d={model.d})",
           xlabel="rho: radius of the perturbation of w (weight units, log scale)",
           ylabel="absolute error in w (log scale)")
    ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8) if rho_small.min() <= t <= rho_small.max()]
    ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend(fontsize=8)
    return fig


def accuracy_tradeoff(model, eps_grid, rho_grid, at_trained, sam_trained, eps_eval: float,
                      eps_max: float = 0.08, rho_max: float = 20.0):
    """Clean and robust accuracy against eps (AT) and rho (SAM), and both methods on one clean/robust plane.

    ``at_trained`` / ``sam_trained``: trained w, shape (len(grid), seeds).
    """
    plt = _plt()
    eps_line, rho_line = np.linspace(0, eps_max, 200), np.linspace(0, rho_max, 200)

    def accuracies(w):
        w = np.asarray(w)
        return T.accuracy(model, w), T.accuracy(model, w, eps_eval)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), layout="constrained")
    for ax, sizes, line, w_line, trained, name, xlabel in [
            (axes[0], eps_grid, eps_line, T.w_at(model, eps_line), at_trained, "AT",
             "eps: AT training budget (feature s.d. units)"),
            (axes[1], rho_grid, rho_line, T.w_sam(model, rho_line), sam_trained, "SAM",
             "rho: SAM radius (weight units)")]:
        clean, robust = accuracies(w_line)
        ax.plot(line, clean, color="C0", label="clean, closed form")
        ax.plot(line, robust, color="C1", label=f"robust (eps={eps_eval:g}), closed form")
        for acc, color in zip(accuracies(trained), ["C0", "C1"]):
            m, s = T.mean_se(acc)
            errorbars(ax, sizes, m, s, color)
        ax.set(title=f"{name}: accuracy against the perturbation size", xlabel=xlabel, ylabel="accuracy (fraction)")
        ax.legend(fontsize=8, title="dots: trained, mean +- s.e.", title_fontsize=8)
    ax = axes[2]
    for w_line, name, style in [(T.w_at(model, eps_line), f"AT, eps in [0, {eps_max:g}]", "-"),
                                (T.w_sam(model, rho_line), f"SAM, rho in [0, {rho_max:g}]", "--")]:
        clean, robust = accuracies(w_line)
        ax.plot(clean, robust, style, label=name, lw=2)
    c0, r0 = accuracies(T.w_st(model))
    ax.plot(c0, r0, "k*", ms=12, label="ST")
    ax.set(title="Both move along the same frontier", xlabel="clean accuracy (fraction)",
           ylabel=f"robust accuracy at eps={eps_eval:g} (fraction)")
    ax.legend(fontsize=8)
    fig.suptitle(f"Clean vs robust accuracy ({_toy(model)})")
    return fig


def eps_matching_rho(model, rho_pos, numerical, trained_mean, trained_se, rho_max: float = 20.0):
    """Theorem 4.5: the AT budget that gives the same w as SAM at each rho (leading order, exact, numerical,
    trained)."""
    plt = _plt()
    rho_line = np.linspace(0, rho_max, 200)
    fig, ax = plt.subplots(figsize=(7, 4.3))
    ax.plot(rho_line, T.eps_matching_rho_small(model, rho_line), "--", color="C2",
            label="leading order: eta rho^2/(3d + rho^2)")
    ax.plot(rho_line, T.eps_matching_rho(model, rho_line), color="C0", label="exact: eta (1 - w_ST / w_SAM(rho))")
    ax.plot(rho_pos, numerical, "x", color="black", ms=8, label="numerical optima")
    errorbars(ax, rho_pos, trained_mean, trained_se, "C3", "trained (mean +- s.e.)")
    ax.set(title=f"Theorem 4.5: the AT budget that gives the same w as SAM (d={model.d}, eta={model.eta:g})",
           xlabel="rho: SAM radius (weight units)", ylabel="matching eps (L-inf, feature s.d. units)")
    ax.legend(fontsize=8)
    return fig


def which_sam(model, rho_grid, sam_mean, sam_se, fo_rhos, fo_mean, fo_se, batch, rho_max: float = 20.0):
    """Left: the theory's SAM with the exact inner maximum and with one first-order step (trained). Right:
    batch-level SAM on all weights (``batch``: indexed by rho, one column per loss)."""
    plt = _plt()
    rho_line = np.linspace(0, rho_max, 200)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    ax.plot(rho_line, T.w_sam(model, rho_line), color="C0", label="Thm 4.3 (exact inner max)")
    errorbars(ax, rho_grid, sam_mean, sam_se, "C3", "trained, exact inner max")
    errorbars(ax, fo_rhos, fo_mean, fo_se, "C4", "trained, first-order SAM step", fmt="s")
    ax.set(title="The theory's SAM, inner problem exact vs one step",
           xlabel="rho: radius of the perturbation of w (weight units)", ylabel="w: weight on the robust feature")
    ax = axes[1]
    for col, marker in zip(batch.columns, ("o-", "s-", "^-")):
        ax.plot(batch.index, batch[col], marker, label=col)
    ax.set(title="Batch-level SAM on all weights (population)",
           xlabel="rho: L2 radius of the shared weight perturbation (units of theta)", ylabel="w = theta_1 / theta_j")
    for ax, loc in zip(axes, ("upper left", "center right")):
        _w_st_line(ax, model)
        ax.legend(fontsize=8, loc=loc)
    fig.suptitle("Which SAM? The shift towards the robust feature depends on the variant", y=1.02)
    return fig


# --------------------------------------------------------------------------------------------------
# Chapter 2: the probes of one trained network


def pgd_loss_curve(losses, title: str):
    """Mean cross-entropy after each PGD iteration, one line per budget (the ``pgd_losses`` probe's rows)."""
    import pandas as pd
    import seaborn as sns
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(pd.DataFrame(losses), x="iteration", y="mean loss", hue="budget", marker="o", ax=ax)
    ax.set(title=title, xlabel="PGD iteration (0 = random start)", ylabel="mean cross-entropy")
    return fig


def pgd_convergence(conv, title: str, paper_steps: int = 10):
    """PGD accuracy against the number of iterations (log axis), per budget and step size (``convergence`` probe)."""
    import pandas as pd
    import seaborn as sns
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(pd.DataFrame(conv), x="steps", y="robust_acc", hue="budget", style="step", markers=True, ax=ax)
    ax.set(xscale="log", title=title, xlabel="PGD iterations", ylabel="accuracy (%)")
    ax.axvline(paper_steps, color="grey", lw=0.8, ls=":")
    return fig


def feature_perturbation(fp, title: str):
    """Relative feature change ||dz||/||z|| per layer: SAM's weight step and PGD's input attack (``duality``)."""
    import seaborn as sns
    plt = _plt()
    layers = list(dict.fromkeys(fp["layer"]))
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(fp, x="layer", y="relative", hue="label", ax=ax, palette="viridis", order=layers)
    ax.set_yscale("log")
    ax.set(title=title, xlabel="layer (input side -> output side)", ylabel="||dz|| / ||z|| (log scale)")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def accuracy_vs_eps_wide(curves, network: str = "ST network"):
    """PGD accuracy against the budget up to an unbounded attack, with the per-example running minimum, per norm."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, norm in zip(axes, ["linf", "l2"]):
        c = curves[curves.norm == norm]
        ax.plot(c.eps_255, c.robust_acc, "o-", label="PGD accuracy")
        ax.plot(c.eps_255, c.running_min, "k--", label="per-example running minimum")
        ax.set(xscale="symlog", title=f"{network}, {'L-inf' if norm == 'linf' else 'L2'} PGD",
               xlabel="eps (x 1/255)", ylabel="accuracy (%)", ylim=(-2, 100))
        ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------------
# Chapters 3 and 5: the grid of methods


def passes_per_step(passes, title: str = "Forward/backward passes per training step"):
    """A horizontal bar per method: its forward/backward passes per training step (columns label, passes per step)."""
    import seaborn as sns
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.barplot(passes, y="label", x="passes per step", color="tab:blue", ax=ax)
    ax.set(title=title, xlabel="passes per step", ylabel="")
    return fig


def frontier(frame, x: str, y: str, size: str, title: str, xlabel: str, ylabel: str):
    """One point per method (column ``method``): x against y, point size ``size``, colour by family."""
    import seaborn as sns
    plt = _plt()
    frame = frame.assign(family=frame["method"].map(family))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sns.scatterplot(data=frame, x=x, y=y, size=size, hue="family", sizes=(40, 400), palette=FAMILY_COLORS,
                    alpha=0.7, ax=ax)
    for _, row in frame.iterrows():
        ax.annotate(row["method"], (row[x], row[y]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def flatness_vs_robustness(flat, y: str, title: str, ylabel: str):
    """Two panels (random and worst direction): each run's loss increase against its robust accuracy ``y``."""
    import seaborn as sns
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("random", "worst")):
        sns.scatterplot(data=flat.assign(family=flat["method"].map(family)), x=kind, y=y, hue="family",
                        palette=FAMILY_COLORS, ax=ax, s=50)
        ax.set(xlabel=f"loss increase, {kind} direction", ylabel=ylabel)
    fig.suptitle(title)
    return fig
