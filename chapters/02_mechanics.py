# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. SAM and adversarial training, mechanically
#
# **The question of this chapter.** What exactly do SAM and an adversarial attack do to a network,
# step by step, and in what sense is SAM a weaker form of adversarial training?
#
# **Words used here** (chapter 6, the glossary, collects them all). A network with weights $\theta$ (all of them, as one long vector) maps an
# image $x$ with pixels in $[0, 1]$ to logits; $L(\theta)$ is the cross-entropy on a batch and
# $g = \nabla_\theta L$ its gradient. *SAM* (sharpness-aware minimisation) takes each training step
# from the worst point of a small ball of weights around $\theta$, of L2 radius $\rho$. *PGD*
# (projected gradient descent, here ascent) is the standard iterative attack: it moves the *input* by
# a perturbation $\delta$ that raises the loss, within a *budget* $\epsilon$ in the L-inf norm (no
# pixel moves by more than $\epsilon$) or the L2 norm (the perturbation's length is at most
# $\epsilon$). Budgets are fractions of the pixel range, written in units of 1/255: L-inf 2/255 lets
# each pixel move by two grey levels. *Adversarial training* (AT) trains on PGD examples;
# *standard training* (ST) on clean images.
#
# **The paper's argument.** Both methods perturb the network's *features*. Take one layer
# $z = W h$ (a convolution or the last linear layer; $W$ is its part of $\theta$, $h$ its input). AT
# moves the input, so the layer's input moves by $dh$ and its output by $W\,dh$. SAM moves the
# weights, so the same output moves by $dW\,h$. The paper argues that SAM's feature perturbation is
# the weaker one, which is why SAM trades less clean accuracy for less robustness than AT.
#
# This chapter writes both algorithms out in a few lines and checks them against the library that
# trains and evaluates every model of the book; then it measures what one SAM step and one PGD
# attack do to a trained network, compares the two feature perturbations on the same images, and
# draws the sanity checks that make the robust accuracies of the later chapters trustworthy. Every
# measurement on the trained network is a *probe* (`lib.probes`), computed once when the run
# finished and stored beside it, so this chapter can render committed results without their weights.

# %% tags=["parameters"]
PROFILE = "cpu-long"  # smoke | cpu | cpu-long | fast | paper
DATA = None           # data root; None means $SAMBOOK_DATA (see README)

# %%
import copy

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from lib import attacks, methods, optim, plots, probes, protocols, report
from lib.config import make_config, profile

sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.precision", 3)
results, missing = report.results_for(PROFILE, "core", data_root=DATA)
st = next(r for r in results if r.config.label == "ST" and r.config.seed == 0)
c = st.config
print(f"the network: {c.label}, seed {c.seed}: PreActResNet-18 topology at width {c.width}, trained for "
      f"{c.epochs} epochs ({PROFILE} profile)")

# %% tags=["nbval-ignore-output"]
print(report.ran_on([st]))
print(report.banner(PROFILE, st.metrics["data"]))
print(f"after the last epoch: clean {st.history[-1]['test_acc']:.1f}%, PGD-{profile(PROFILE).curve_steps} L-inf 1/255 "
      f"{st.history[-1]['test_linf_1']:.1f}% (the learning curve's test images)")
print(report.curve_images_note([st]))

# %% [markdown]
# ## 1. The SAM update, in a few lines
#
# One SAM step from weights $\theta$ with learning rate $\mathrm{lr}$:
#
# 1. the gradient $g = \nabla L(\theta)$ and the *ascent step* $e(\theta) = \rho\, g/\lVert g\rVert_2$
#    (the norm over all weights at once): to first order, the worst point of the ball;
# 2. the gradient $g_{SAM} = \nabla L(\theta + e(\theta))$ taken *there*;
# 3. back to $\theta$, and a step $\theta \leftarrow \theta - \mathrm{lr}\, g_{SAM}$.
#
# Two forward/backward passes per step instead of one. In plain torch:

# %%
def sam_update(model, x, y, rho, lr):
    """One SAM step with plain SGD, in place: climb to theta + e, take the gradient there, step from theta."""
    params = list(model.parameters())
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params)        # g at theta
    g_norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))                 # ||g||_2 over all weights
    e = [rho * gi / (g_norm + 1e-12) for gi in g]                         # e = rho g / ||g||
    with torch.no_grad():
        for p, ei in zip(params, e):
            p.add_(ei)                                                    # climb to theta + e
    g_sam = torch.autograd.grad(F.cross_entropy(model(x), y), params)    # gradient at theta + e
    with torch.no_grad():
        for p, ei, gi in zip(params, e, g_sam):
            p.sub_(ei).sub_(lr * gi)                                      # back to theta, then the step


# %% [markdown]
# The book trains with `lib.optim.SAM`, an optimiser that wraps SGD (`first_step` climbs,
# `second_step` returns and steps), driven by the `sam` method of `lib.methods`, the step the one
# training loop calls. Below, both take one step from the same weights on the same batch of real
# test images; they must land on the same weights. The network is put in eval mode so that BatchNorm
# uses its running statistics in both (in training, the library freezes those statistics during the
# second pass), and the base optimiser is plain SGD (in training it adds momentum and weight decay
# to $g_{SAM}$).

# %%
net, x, y, trained = probes.network_and_batch(st, n=8, data_root=DATA)
print(f"{len(y)} test images; the network: "
      + ("the run's trained weights" if trained else "a freshly initialised one of the same shape "
         "(committed results carry no weights)"))
RHO, LR = 0.1, 0.1
mine, lib_net = copy.deepcopy(net), copy.deepcopy(net)
sam_update(mine, x, y, RHO, LR)
opt = optim.SAM(lib_net.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
methods.make_method(make_config("sam", PROFILE, rho=RHO)).step(lib_net, opt, x, y, None)
sgd_net = copy.deepcopy(net)                                              # a plain SGD step, for contrast
F.cross_entropy(sgd_net(x), y).backward()
with torch.no_grad():
    for p in sgd_net.parameters():
        p.sub_(LR * p.grad)
same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(mine.parameters(), lib_net.parameters()))
differs = not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(mine.parameters(), sgd_net.parameters()))
print(f"sam_update equals lib's SAM step (lib.optim.SAM + lib.methods.SAM.step): {same}")
print(f"...and differs from a plain SGD step: {differs}")
assert same and differs

# %% [markdown]
# ## 2. One PGD step, in a few lines
#
# PGD climbs the loss in input space. Each step moves $\delta$ in the steepest-ascent direction of
# the norm and projects back:
#
# - **L-inf**: $\delta \leftarrow \mathrm{clip}_{[-\epsilon, \epsilon]}\big(\delta + \alpha\,\mathrm{sign}(\nabla_x L)\big)$;
# - **L2**: $\delta \leftarrow \Pi_{\lVert\delta\rVert_2 \le \epsilon}\big(\delta + \alpha\,\nabla_x L/\lVert\nabla_x L\rVert_2\big)$,
#   where the projection rescales a too-long $\delta$ to length $\epsilon$;
#
# and in both cases $x + \delta$ is clipped to $[0, 1]$, so it stays an image (clipping only shrinks
# $\delta$, so it stays in the ball). An attack is a random start in the ball followed by a number
# of such steps of size $\alpha$.

# %%
def pgd_step(model, x, y, delta, eps, alpha, norm):
    """One PGD step: ascend the loss in input space, project onto the eps-ball and into [0, 1]."""
    delta = delta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
    if norm == "linf":
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps)           # sign step, clip to the cube
    else:
        g_norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta + alpha * grad / (g_norm + 1e-12)                   # normalised gradient step
        d_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(eps / (d_norm + 1e-12), max=1.0)     # back into the ball
    return ((x + delta).clamp(0, 1) - x).detach()                         # x + delta stays an image


def pgd_attack(model, x, y, eps, alpha, steps, norm, start):
    delta = start
    for _ in range(steps):
        delta = pgd_step(model, x, y, delta, eps, alpha, norm)
    return x + delta


# %% [markdown]
# The book's attack is `lib.attacks.pgd`. At each of the paper's four budgets, with the paper's
# step sizes and ten steps, the two must give the same adversarial images from the same random
# start; every image must stay within its budget and in $[0, 1]$.

# %%
rows = []
for b in attacks.PAPER_BUDGETS:
    start = attacks.random_start(x, b.eps, b.norm, torch.Generator().manual_seed(0))
    x_mine = pgd_attack(net, x, y, b.eps, b.alpha, 10, b.norm, start)
    x_lib = attacks.pgd(net, x, y, eps=b.eps, alpha=b.alpha, steps=10, norm=b.norm,
                        generator=torch.Generator().manual_seed(0))
    size = (x_mine - x).flatten(1).abs().amax(1) if b.norm == "linf" else (x_mine - x).flatten(1).norm(dim=1)
    rows.append({"budget": b.label, "step": f"{b.alpha * 255:g}/255", "equal to lib.attacks.pgd":
                 torch.allclose(x_mine, x_lib, atol=1e-6),
                 "within the budget": bool((size <= b.eps + 1e-6).all()),
                 "in [0, 1]": bool(((x_mine >= 0) & (x_mine <= 1)).all())})
pgd_check = pd.DataFrame(rows).set_index("budget")
assert pgd_check.drop(columns="step").all().all()
pgd_check

# %% [markdown]
# ## 3. One SAM step on the trained network
#
# The `sam_step` probe measures, on the trained ST network and its test images, the loss at
# $\theta$ and at $\theta + e(\theta)$ for several radii. The climb raises the loss: that increase
# is the *sharpness* SAM minimises.

# %% tags=["nbval-ignore-output"]
sam_rows = pd.DataFrame(probes.probe(st, "sam_step", data_root=DATA)).set_index("rho")
lo, hi = sam_rows.index.min(), sam_rows.index.max()
display(Markdown(
    f"The loss at θ is {sam_rows['loss_clean_weights'].iloc[0]:.3f}. SAM's climb raises it by "
    f"{sam_rows.loc[lo, 'increase']:.3f} at ρ = {lo:g} and by {sam_rows.loc[hi, 'increase']:.3f} at "
    f"ρ = {hi:g}: {sam_rows.loc[hi, 'increase'] / sam_rows.loc[lo, 'increase']:.0f} times as much for "
    f"{hi / lo:g} times the radius (a purely first-order climb would give {hi / lo:g} times)."))
sam_rows.round(3)

# %% [markdown]
# ## 4. One PGD attack on the trained network
#
# The `pgd_losses` probe follows the cross-entropy along ten PGD iterations at the four budgets
# (step $\epsilon/4$). The loss must rise along the iterations: an attack whose loss falls is broken.

# %% tags=["nbval-ignore-output"]
losses = pd.DataFrame(probes.probe(st, "pgd_losses", data_root=DATA))
fig = plots.pgd_loss_curve(losses, f"Cross-entropy along PGD-10 iterations (ST network, {PROFILE} profile)")
report.savefig(fig, f"02_pgd_loss_along_iterations_{PROFILE}")
plt.show()
rose = losses.groupby("budget", sort=False)["rose"].first().mul(100)
ends = losses.groupby("budget", sort=False)["mean loss"].agg(["first", "last"])
display(Markdown(
    f"At every budget the loss rose on at least {rose.min():.1f} % of the test images; the mean went from "
    + ", ".join(f"{r['first']:.2f} to {r['last']:.2f} ({b})" for b, r in ends.iterrows()) + "."))
rose.round(1).rename("% of examples whose loss rose")

# %% [markdown]
# ## 5. Has the attack converged?
#
# A robust accuracy means something only if a longer attack would not lower it. The paper's
# evaluation (the `paper` protocol) and the book's `converged` protocol differ only in the L2 step:

# %%
for name in ("paper", "converged"):
    print(f"{name}: {protocols.PROTOCOLS[name].attacks[0].describe()}")

# %% [markdown]
# With step $\epsilon/8$, ten steps travel at most $1.25\,\epsilon$, so the `convergence` probe
# runs both step sizes for 1 to 40 iterations at the two L2 budgets. The book keeps both protocols:
# `paper` (the published steps, so that a difference from the paper is a reproduction error and
# nothing else) and `converged`; chapter 4 shows both, and the worst case over all.

# %% tags=["nbval-ignore-output"]
conv = pd.DataFrame(probes.probe(st, "convergence", data_root=DATA))
fig = plots.pgd_convergence(conv, f"PGD accuracy against iterations (ST network, {PROFILE} profile)")
report.savefig(fig, f"02_pgd_convergence_{PROFILE}")
plt.show()
gap = conv.pivot_table(index=["budget", "step"], columns="steps", values="robust_acc", sort=False)
longest = gap.columns.max()
gap[f"PGD-10 minus PGD-{longest}"] = gap[10] - gap[longest]
worst_gap = gap[f"PGD-10 minus PGD-{longest}"].idxmax()
display(Markdown(
    f"Going from 10 to {longest} iterations lowers the accuracy by at most "
    f"{gap[f'PGD-10 minus PGD-{longest}'].max():.1f} points, at {worst_gap[0]} with step {worst_gap[1]} "
    f"({gap.loc[worst_gap, 10]:.1f} % after 10 iterations, {gap.loc[worst_gap, longest]:.1f} % after {longest}); "
    f"with step eps/4 the largest drop is "
    f"{gap.xs('eps/4', level='step')[f'PGD-10 minus PGD-{longest}'].max():.1f} points."))
gap.round(2)

# %% [markdown]
# ## 6. The duality, measured
#
# For several layers the `duality` probe computes, on the same images, the relative size of the
# feature change $\lVert dW\,h\rVert / \lVert W h\rVert$ that SAM's weight step makes at radius
# $\rho$, and the relative size $\lVert W\,dh\rVert / \lVert W h\rVert$ of the change a PGD-10
# attack makes at budget $\epsilon$ (L-inf and L2). The figure has one group of bars per layer, from
# the input side to the output side, on a log scale.

# %% tags=["nbval-ignore-output"]
fp = pd.DataFrame(probes.probe(st, "duality", data_root=DATA))
layers = list(dict.fromkeys(fp["layer"]))
fig = plots.feature_perturbation(fp, f"Relative feature perturbation: SAM weight step vs PGD input attack "
                                     f"({PROFILE} profile)")
report.savefig(fig, f"02_feature_perturbation_{PROFILE}")
plt.show()
fp.pivot_table(index="label", columns="layer", values="relative", sort=False)[layers].round(4)

# %% [markdown]
# The paper's argument is about the *strongest* SAM step against the *weakest* attack: the table
# below sets, per layer, SAM's largest radius beside the smallest PGD perturbation of any budget.

# %% tags=["nbval-ignore-output"]
sam_rows_fp, pgd_rows_fp = fp[fp.kind == "SAM"], fp[fp.kind == "PGD"]
rho_max = sam_rows_fp["size"].max()
sam_max = sam_rows_fp.groupby("layer")["relative"].max()[layers]
weakest = pgd_rows_fp.loc[pgd_rows_fp.groupby("layer")["relative"].idxmin()].set_index("layer").loc[layers]
summary = pd.DataFrame({f"largest SAM (rho {rho_max:g})": sam_max, "smallest PGD": weakest["relative"],
                        "weakest attack": weakest["label"], "SAM weaker": sam_max < weakest["relative"]})
stronger = summary[~summary["SAM weaker"]]
if len(stronger):
    finding = (f"SAM's step at ρ = {rho_max:g} moves the features *more* than the weakest attack at "
               f"{len(stronger)} of {len(layers)} layers: "
               + "; ".join(f"{layer} ({row.iloc[0]:.3g} against {row['smallest PGD']:.3g}, {row['weakest attack']})"
                           for layer, row in stronger.iterrows())
               + ". At those layers the paper's argument that SAM's perturbation is the weaker one fails against "
               + "the weakest attack" + (f"; at {', '.join(summary.index[summary['SAM weaker']])} it holds."
                                         if summary["SAM weaker"].any() else "."))
else:
    finding = (f"SAM's step at ρ = {rho_max:g} moves the features less than the weakest attack at every "
               f"one of the {len(layers)} layers, as the paper argues.")
display(Markdown(finding))
summary.round(4)

# %% [markdown]
# The comparison uses the radii this book trains SAM with (0.05 to 0.4). The paper's published
# table does not give its three radii, and its extended version sweeps $\rho$ from 0.1 to 0.5; with a
# larger $\rho$ SAM's perturbation grows in proportion and the two would meet at more layers. In the
# smoke profile the network is tiny and barely trained, so only the mechanics, not the magnitudes,
# carry over.
#
# ## 7. Sanity checks, drawn
#
# Two properties every correct attack has: robust accuracy must never rise with the budget, and it
# must reach zero for an unbounded attack. The `curves_wide` probe runs PGD-20 from tiny budgets to
# budgets no image can resist (printed below). The dashed line is the per-example running minimum:
# an image broken at a small budget counts as broken at every larger one; if it differed from the
# raw curve, the attack would be failing to find examples it found at a smaller budget.

# %%
print(f"largest budgets: L-inf {probes.LINF_WIDE[-1]:g}/255 (every pixel can reach mid-grey), "
      f"L2 {probes.L2_WIDE[-1]:g}/255 = {probes.L2_WIDE[-1] / 255:g} (more than the L2 distance from any "
      f"32x32x3 image to the mid-grey one, at most {0.5 * (32 * 32 * 3) ** 0.5:.1f})")

# %% tags=["nbval-ignore-output"]
curves = pd.DataFrame(probes.probe(st, "curves_wide", data_root=DATA))
fig = plots.accuracy_vs_eps_wide(curves, "ST network")
report.savefig(fig, f"02_accuracy_vs_eps_{PROFILE}")
plt.show()
curves.round(2)

# %%
ok_monotone = all((g.robust_acc.diff().fillna(0) <= 0.5).all() for _, g in curves.groupby("norm"))
ok_unbounded = bool((curves.groupby("norm").robust_acc.last() <= 1.0).all())
print("accuracy never rises with eps (0.5 pt tolerance):", ok_monotone)
print("an unbounded attack leaves at most 1% correct:", ok_unbounded)

# %% [markdown]
# ## 8. Exercises
#
# **1.** Show that SAM's ascent step always has length exactly $\rho$, whatever the gradient.
#
# <details><summary>Solution</summary>
#
# $\lVert e\rVert_2 = \rho\,\lVert g\rVert_2/\lVert g\rVert_2 = \rho$ (the $10^{-12}$ only guards
# against a zero gradient). The cell below computes $e$ on the batch above and measures it.
#
# </details>

# %%
params = list(net.parameters())
g = torch.autograd.grad(F.cross_entropy(net(x), y), params)
e = [RHO * gi / (torch.sqrt(sum((gj ** 2).sum() for gj in g)) + 1e-12) for gi in g]
e_norm = torch.sqrt(sum((ei ** 2).sum() for ei in e)).item()
print(f"||e|| = {e_norm:.4f} for rho = {RHO}")
assert abs(e_norm - RHO) < 1e-5

# %% [markdown]
# **2.** What does `sam_update` do with $\rho = 0$? Check your answer against the plain SGD step
# computed above (`sgd_net`).
#
# <details><summary>Solution</summary>
#
# With $\rho = 0$ the ascent step is zero, the second gradient is taken at $\theta$ itself, and the
# update is exactly SGD's: $\theta - \mathrm{lr}\,g$. The cell below checks it.
#
# </details>

# %%
zero = copy.deepcopy(net)
sam_update(zero, x, y, 0.0, LR)
assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(zero.parameters(), sgd_net.parameters()))
print("SAM with rho = 0 is an SGD step")

# %% [markdown]
# **3.** Under L-inf, how far can PGD-10 with step $\epsilon/4$ travel, and how many steps does it
# need to reach a corner of the cube from the centre? Why does the random start not matter for
# the answer?
#
# <details><summary>Solution</summary>
#
# Each sign step moves every pixel by $\epsilon/4$, so ten steps could travel $2.5\,\epsilon$ per
# pixel; the clip keeps it at $\epsilon$. From $\delta = 0$, four steps in the same direction reach a
# corner. Wherever the random start puts a pixel inside $[-\epsilon, \epsilon]$, at most eight steps
# take it to either end, so ten steps leave room to change direction.
#
# </details>
#
# **4.** The library runs every attack with the network in eval mode. What would go wrong in
# training mode?
#
# <details><summary>Solution</summary>
#
# In training mode BatchNorm normalises with the statistics of the current batch, so each image's
# output depends on the other images, and every forward pass of the attack updates the running
# statistics the deployed network uses. The attack would then measure, and change, a different
# function from the one being evaluated.
#
# </details>
