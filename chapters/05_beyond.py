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
# # 5. Beyond the paper: SAM among AWP, TRADES and ARoW
#
# **The questions of this chapter.** The paper's claim is that SAM *alone*, without a single
# adversarial example, buys some adversarial robustness, by the same mechanism as adversarial training
# only weaker (chapter 2). So where does SAM stand among the methods that were built for robustness,
# in clean accuracy, robustness and cost? And does the premise behind SAM and AWP, *flatter minima are
# more robust*, hold across these models?
#
# ## 1. The methods, one objective each
#
# Notation as in chapter 2: weights $\theta$, a network $f_\theta$ with predicted probabilities
# $p_\theta$, cross-entropy CE, and a PGD example $x_{adv}$ within an L-inf budget $\epsilon$ (here
# 8/255, the budget these methods are usually trained and compared at).
#
# - **AT** (Madry et al. 2018), cross-entropy on PGD examples:
#   $\min_\theta \mathbb E \max_{\lVert\delta\rVert_\infty \le \epsilon} \mathrm{CE}(f_\theta(x+\delta), y)$.
# - **SAM+AT**: SAM's weight step on top of AT's input step,
#   $\min_\theta \max_{\lVert e\rVert_2 \le \rho} \mathbb E\, \mathrm{CE}(f_{\theta+e}(x_{adv}), y)$.
# - **ASAM** (Kwon et al. 2021): SAM with a radius relative to each weight,
#   $e = \rho\, T^2 g/\lVert T g\rVert_2$ with $T = |\theta| + \xi$ on weight tensors (a small offset
#   $\xi$; $T = 1$ on biases), at its authors' recommended radius for CIFAR-10, much larger than SAM's
#   because $T$ shrinks the step.
# - **AWP** (Wu et al. 2020): AT at adversarially perturbed weights,
#   $\min_\theta \max_{\lVert v_l\rVert \le \gamma \lVert\theta_l\rVert} \mathbb E\, \mathrm{CE}(f_{\theta+v}(x_{adv}), y)$,
#   layer by layer ($l$), with $v$ from one SGD step of a copy of the network on $-\mathrm{CE}(x_{adv})$,
#   rescaled to $\gamma\lVert\theta_l\rVert$: a SAM-like step on the adversarial loss.
# - **TRADES** (Zhang et al. 2019):
#   $\min_\theta \mathbb E\,[\mathrm{CE}(f_\theta(x), y) + \beta\, \mathrm{KL}(p_\theta(x) \,\Vert\, p_\theta(x_{adv}))]$,
#   with $x_{adv}$ found by PGD on the KL term.
# - **ARoW** (Yang et al. 2023): TRADES with label smoothing (LS) and more weight on the examples the
#   model gets wrong under attack,
#   $\mathrm{CE}_{LS}(f_\theta(x), y) + 2\lambda\, \mathrm{KL}(p_\theta(x) \,\Vert\, p_\theta(x_{adv}))\,(1 - p_\theta(y \mid x_{adv}))$.
#
# All of them are classes of `lib.methods`, stepped by the one training loop of chapter 3; nothing
# here trains or attacks by itself. Their hyperparameters and costs, read from `lib.methods`
# (training attack: the paper's PGD-10 at L-inf 8/255):

# %% tags=["parameters"]
PROFILE = "cpu-long"  # smoke | cpu | cpu-long | fast | paper
DATA = None           # data root; None means $SAMBOOK_DATA

# %%
import inspect

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from lib import glossary, methods, plots, probes, report, stats, tables
from lib.config import profile

sns.set_theme(style="whitegrid", context="notebook")
glossary.method_facts()

# %% [markdown]
# The TRADES objective as the library computes it (ARoW's `arow_loss` beside it adds the smoothing and
# the weight):

# %%
print(inspect.getsource(methods.trades_loss))

# %% [markdown]
# ## 2. The models
#
# The runs of the paper's grid that this comparison needs (ST, SAM, AT at L-inf 2/255 and 8/255), and
# the runs of the methods above, every seed there is.

# %%
# the paper's grid, not only the one a profile trains for its book (the cpu profile's core grid has no
# AT L-inf 8/255, the budget the methods below are trained for): the runs of it that exist
base, missing_base = report.results_for(PROFILE, "paper", data_root=DATA)
extra, missing_extra = report.results_for(PROFILE, "beyond", data_root=DATA)
keep = {"ST", "SAM rho=0.1", "AT L-inf 8/255", "AT L-inf 2/255"}
results = [r for r in base if r.config.label in keep] + extra      # every seed there is
print("models (seeds):", ", ".join(f"{label} ({', '.join(str(r.config.seed) for r in results if r.config.label == label)})"
                                   for label in dict.fromkeys(r.config.label for r in results)))
print(report.missing_note(missing_extra))

# %% tags=["nbval-ignore-output"]
print(report.ran_on(results))

# %% [markdown]
# ## 3. Accuracy under the paper's four attacks, and at the training budget
#
# The first five columns are the paper's protocol (PGD-10, random start, the published steps). The
# sixth attacks every model at L-inf 8/255 with PGD-20, the budget the adversarial methods were
# trained for and the one AWP's paper reports (the `linf8` protocol). Each cell is the mean over the
# seeds the model has (`seeds`); the PGD-20 column over those evaluated with it (`PGD-20 seeds`). A
# chapter never adds an evaluation to committed results, even where a run's weights are present:
# `python -m lib evaluate --protocol linf8` does that on purpose.

# %% tags=["nbval-ignore-output"]
df = tables.results_frame(results)
df["linf8_linf_8"] = [report.protocol_accuracy(r, "linf8", "linf_8", DATA) for r in results]
columns = {"natural": "clean", **{f"paper_{t}": tables.COLUMN_LABELS[t] for t in tables.ROBUST},
           "linf8_linf_8": "L-inf 8/255 (PGD-20)"}
mean, _, seeds = tables.aggregate(df, list(columns))
table = mean.rename(columns=columns)
by_label = df.groupby("label", sort=False)
table["passes/step"] = by_label["passes_per_step"].first()
table["seeds"] = seeds
table["PGD-20 seeds"] = by_label["linf8_linf_8"].count()
table.index.name = "method"
report.save_table(table, f"05_beyond_{PROFILE}", caption=(
    f"Clean and PGD accuracy (%), mean over seeds, {PROFILE} profile, CIFAR-10" +
    (" - smoke: numbers only show the code runs" if PROFILE == "smoke" else "")))
best = {c: table[c].idxmax() for c in ("clean", "Linf 2/255", "L-inf 8/255 (PGD-20)") if table[c].notna().any()}
display(Markdown("Highest in each column: " + "; ".join(
    f"{c}: {m} ({table.loc[m, c]:.1f} %)" for c, m in best.items())
    + (f". SAM rho=0.1: {table.loc['SAM rho=0.1', 'clean']:.1f} % clean, "
       f"{table.loc['SAM rho=0.1', 'Linf 2/255']:.1f} % at L-inf 2/255." if "SAM rho=0.1" in table.index else ".")))
report.shown(table, 1)

# %% [markdown]
# ## 4. The frontier: clean accuracy, robustness and cost
#
# Each point is a model; up and to the right is better; the size of a point is its passes per
# training step (the load-free measure of cost; measured seconds mix cost with the load of a
# shared machine).

# %% tags=["nbval-ignore-output"]
frame = table.reset_index()
fig = plots.frontier(frame, "clean", "Linf 2/255", "passes/step", f"Accuracy, robustness and cost ({PROFILE} profile)",
                     "clean accuracy (%)", "PGD-10 accuracy at L-inf 2/255 (%)")
report.savefig(fig, f"05_frontier_{PROFILE}")
plt.show()
cheap = frame[frame["passes/step"] <= 2]
costly = frame[frame["passes/step"] > 2]
display(Markdown(
    f"The models trained without adversarial examples ({', '.join(cheap['method'])}; at most 2 passes per step) "
    f"reach {cheap['Linf 2/255'].min():.1f} to {cheap['Linf 2/255'].max():.1f} % at L-inf 2/255; " +
    (f"the adversarially trained ones ({int(costly['passes/step'].min())} to {int(costly['passes/step'].max())} "
     f"passes) {costly['Linf 2/255'].min():.1f} to {costly['Linf 2/255'].max():.1f} %." if len(costly) else
     f"no adversarially trained model is committed at the {PROFILE} scale yet.")))

# %% [markdown]
# ## 5. Against AT at the same budget, seed by seed
#
# Each method minus AT L-inf 8/255 trained with the same seed, in points, with the 95 % interval over
# seeds and test images. A difference is read as higher or lower only where its interval excludes 0;
# with one seed none is.

# %% tags=["nbval-ignore-output"]
versus = tables.versus(df, "AT L-inf 8/255", {k: columns[k] for k in ("natural", "paper_linf_2", "linf8_linf_8")})
resolved = versus[versus["reading"] != "not resolved"]
print("resolved against AT L-inf 8/255:", "; ".join(
    f"{r['method']}, {r['column']}: {r['reading']} ({r['mean']:+.1f} [{r['95% low']:+.1f}, {r['95% high']:+.1f}], "
    f"{r['seeds']} seeds)" for _, r in resolved.iterrows()) or "none")
versus_table = tables.versus_table(versus)
report.save_table(versus_table, f"05_versus_at8_{PROFILE}", caption=(
    f"Method minus AT L-inf 8/255, paired by seed, points [95% interval], {PROFILE} profile"))
versus_table

# %% [markdown]
# ## 6. Is flatter more robust?
#
# SAM and AWP both assume that a minimum whose loss stays low when the *weights* move is also one
# whose loss stays low when the *inputs* move. The `flatness` probe measures flatness directly: the
# increase of the mean cross-entropy on clean test images (model in eval mode) when every
# convolution and linear layer's weights move by a fraction $\gamma$ of their norm,
#
# - in a random direction, averaged over several draws (average-case flatness), and
# - in the worst direction of one layer-normalised gradient step (worst-case flatness). This has the
#   shape of AWP's perturbation (per layer, relative to the layer's norm) but not its target: the
#   probe climbs the clean *test* cross-entropy directly, while AWP climbs the *training* cross-entropy
#   on adversarial examples through one SGD step of a copy of the network.
#
# The sizes $\gamma$ of each direction are printed below. Smaller is flatter. Every run of the
# profile counts (all seeds). A caveat: adversarially trained models are less confident, which by
# itself changes every loss increase.

# %% tags=["nbval-ignore-output"]
everything = [r for r in base + extra]
flat_rows, gammas = [], {}
for r in everything:
    rows = probes.probe(r, "flatness", data_root=DATA)
    gammas.update({row["kind"]: row["rho"] for row in rows})
    flat_rows.append({"method": r.config.label, "seed": r.config.seed, **{row["kind"]: row["increase"] for row in rows},
                      "Linf 2/255": tables.run_row(r).get("paper_linf_2")})
flat = pd.DataFrame(flat_rows)
print("relative size gamma of the weight perturbation per layer: "
      + ", ".join(f"{k} direction {v:g}" for k, v in gammas.items()))
report.save_table(flat.set_index("method"), f"05_flatness_{PROFILE}", floatfmt=".4f")
corr = {}
for kind in ("random", "worst"):
    # over configurations, not runs: a configuration's seeds are averaged first, so that three seeds of one
    # configuration do not count as three independent samples (which would overstate the p-value's evidence)
    corr[kind] = stats.config_spearman(flat[kind], flat["Linf 2/255"], flat["method"])
    print(f"Spearman rank correlation over {corr[kind][2]} configurations (seed means of {len(flat)} runs), "
          f"{kind}-direction flatness vs L-inf 2/255 accuracy: {corr[kind][0]:.2f} (p = {corr[kind][1]:.2g}; "
          f"negative = flatter is more robust)")
fig = plots.flatness_vs_robustness(flat, "Linf 2/255", f"Flatness against robustness ({PROFILE} profile)",
                                   "PGD-10 accuracy at L-inf 2/255 (%)")
report.savefig(fig, f"05_flatness_{PROFILE}")
plt.show()
flat.groupby("method", sort=False)[["random", "worst", "Linf 2/255"]].mean().round(4)

# %% [markdown]
# ## 7. An independent attack: AutoAttack
#
# A robust accuracy is only as good as the attack behind it. AutoAttack (Croce & Hein 2020) is an
# optional extra (`pip install -r requirements-extra.txt`), run by the evaluation stage: the
# standard ensemble where the profile can afford it (`autoattack`), its first attack alone
# (`apgd-ce`) in the smoke profile. Below: the paper's PGD-10 against it at L-inf 2/255, then, for
# the models trained at L-inf 8/255, this chapter's PGD-20 against standard AutoAttack at that budget
# (`autoattack-linf8`, the number RobustBench ranks such models by), each on the same test images
# and only on the runs AutoAttack ran on. A model whose PGD accuracy exceeds AutoAttack's by more
# than the threshold each line names is flagged: there PGD overestimates its robustness.

# %% tags=["nbval-ignore-output"]
evals = tables.results_frame(base + extra)
for note, pt in tables.autoattack_checks(evals, tables.AUTOATTACK_CHECKS):
    print(note)
    if pt is not None:
        display(report.shown(pt, 1))

# %% [markdown]
# ## 8. AWP's published numbers beside ours
#
# The AWP paper trains PreActResNet-18 for 200 epochs (lr 0.1, /10 at epochs 100 and 150) with
# PGD-10 at L-inf 8/255 (step 2/255) and reports PGD-20 at 8/255 for the best checkpoint (chosen on
# test robustness) and the last one; it reports AutoAttack for WideResNet-34-10. Ours are
# last-epoch, the mean over the seeds of the table above, at the profile's scale.

# %% tags=["nbval-ignore-output"]
p = profile(PROFILE)
published = tables.awp_published_frame()
ours = {r.config.label: r for r in results}
for label in ("AT L-inf 8/255", "AWP L-inf 8/255 gamma=0.01"):
    if label in ours:
        published.loc[f"{label} (ours)"] = [table.loc[label, "clean"], table.loc[label, "L-inf 8/255 (PGD-20)"], None,
                                           f"{PROFILE} profile: width {p.width}, {p.epochs} epochs, last epoch, "
                                           f"mean of {table.loc[label, 'PGD-20 seeds']} seed(s)"]
report.save_table(published, f"05_awp_published_{PROFILE}", caption="AWP (Wu et al. 2020), published and ours (%)")
report.shown(published, 1)

# %% [markdown]
# ## 9. Where SAM stands
#
# The ranks below are computed from this run's table (higher accuracy = rank 1).

# %% tags=["nbval-ignore-output"]
ranks = table.drop(columns=["passes/step", "seeds", "PGD-20 seeds"]).rank(ascending=False, method="min")
sam = "SAM rho=0.1"
if sam in table.index:
    print(f"{sam}: clean rank {int(ranks.loc[sam, 'clean'])} of {len(table)}, L-inf 2/255 rank "
          f"{int(ranks.loc[sam, 'Linf 2/255'])} of {len(table)}, passes per step {table.loc[sam, 'passes/step']:.0f}")
ranks

# %% [markdown]
# What to read here, with the numbers from the published tables (`lib.tables`), the methods' costs
# (`lib.methods`) and this chapter's results:

# %% tags=["nbval-ignore-output"]
smoke = profile("smoke")
costs = glossary.method_facts()["passes per step"]
awp = tables.awp_published_frame()
pgd20 = awp["PGD-20 L-inf 8/255"].dropna().tolist() + awp["AutoAttack L-inf 8/255"].dropna().tolist()
undefended = next(aa for name, _, aa in tables.ROBUSTBENCH if name == "undefended")
sam_paper = tables.paper_frame()["linf_2"].filter(like="SAM")
gain = {k: awp.loc[f"AT-AWP, PRN-18, {k}", "PGD-20 L-inf 8/255"] - awp.loc[f"AT, PRN-18, {k}", "PGD-20 L-inf 8/255"]
        for k in ("best", "last")}
display(Markdown("\n".join([
    f"- **Smoke numbers say nothing about the methods.** The smoke profile trains a width-{smoke.width} network for "
    f"{smoke.epochs} epochs on {smoke.train_per_class * 10:,} images, far from any minimum; its table only shows that "
    f"every method trains, is evaluated and is cached. The `cpu` profile's rows are real models at a small scale.",
    f"- **SAM is a cheap, partial substitute, not a competitor.** It costs {costs['SAM']} passes per step against "
    f"{costs.drop(['ST', 'SAM', 'ASAM']).min()} to {costs.drop(['ST', 'SAM', 'ASAM']).max()} for the adversarial "
    f"methods at the paper's PGD-10, and its robustness shows at small budgets. At the 8/255 budget the adversarial "
    f"methods were built for, AWP's paper reports {min(pgd20):.1f} to {max(pgd20):.1f} % (PGD-20 and AutoAttack) for "
    f"AT, AWP and TRADES, an undefended network has {undefended:.0f} % under AutoAttack, and the paper's SAM models "
    f"have only {sam_paper.min():.1f} to {sam_paper.max():.1f} % already at L-inf 2/255 (it can only fall at 8/255). "
    f"The paper does not claim that SAM closes that gap.",
    f"- **Weight perturbation helps most on top of adversarial examples.** AWP and SAM+AT add a SAM-like step to AT; "
    f"AWP's published gain over AT is {gain['best']:+.1f} points of PGD-20 at the best checkpoint and "
    f"{gain['last']:+.1f} at the last (it mostly prevents robust overfitting).",
    f"- **Flatness and robustness, across training objectives.** Over {corr['random'][2]} configurations (the seed "
    f"means of {len(flat)} runs) the rank correlation with "
    f"L-inf 2/255 accuracy is {corr['random'][0]:.2f} (p = {corr['random'][1]:.2g}) for random-direction flatness and "
    f"{corr['worst'][0]:.2f} (p = {corr['worst'][1]:.2g}) for worst-direction flatness (negative: flatter is more "
    f"robust). Read it with care: it mixes models trained on different losses (exercise 4), and flatness in weight "
    f"space does not bound the loss increase in input space.",
])))

# %% [markdown]
# ## 10. Exercises
#
# **1.** ARoW without its weight and without label smoothing is TRADES. With which $\beta$? Check it on
# random logits with `methods.arow_loss` and `methods.trades_loss`.
#
# <details><summary>Solution</summary>
#
# With `weighted=False` and `smoothing=0`, ARoW's loss is
# $\mathrm{CE} + 2\lambda\,\mathrm{KL}$, TRADES's with $\beta = 2\lambda$. The cell below checks it.
#
# </details>

# %%
gen = torch.Generator().manual_seed(0)
logits, logits_adv = torch.randn(16, 10, generator=gen), torch.randn(16, 10, generator=gen)
y = torch.randint(0, 10, (16,), generator=gen)
lam = 3.5
a = methods.arow_loss(logits, logits_adv, y, lam=lam, smoothing=0.0, weighted=False)
t = methods.trades_loss(logits, logits_adv, y, beta=2 * lam)
print(f"ARoW (unweighted, no smoothing, lambda {lam}) = {a.item():.4f}; TRADES (beta {2 * lam}) = {t.item():.4f}")
assert torch.allclose(a, t)

# %% [markdown]
# **2.** What is AWP with $\gamma = 0$?
#
# <details><summary>Solution</summary>
#
# Every layer's perturbation has size $\gamma\lVert\theta_l\rVert = 0$, so the loss is taken at
# $\theta$ itself on the PGD examples: plain AT (the proxy step still runs, so it costs more).
#
# </details>
#
# **3.** TRADES trained with PGD-10 costs one pass per step more than AT with PGD-10. Where does the
# extra pass come from? And why does SAM+AT cost one more than AT as well?
#
# <details><summary>Solution</summary>
#
# TRADES's loss needs the network's output on the clean image *and* on the adversarial one: two
# training passes plus the ten attack steps. SAM+AT takes SAM's two passes (at $\theta$ and at
# $\theta + e$) on the adversarial examples instead of AT's one. The cost table of section 1 counts them.
#
# </details>
#
# **4.** Why is a rank correlation over all these runs a weak test of "flatter is more robust"?
#
# <details><summary>Solution</summary>
#
# The runs differ in their training objective, and the objective changes both quantities at once:
# adversarial training makes a model less confident, which lowers every loss increase (it looks
# flatter) and raises robust accuracy, without one causing the other. A fair test compares models
# that differ only in flatness, for example SAM at several radii against ST, seed by seed.
#
# </details>
