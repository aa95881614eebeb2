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
# The paper's claim is that SAM *alone*, without a single adversarial example, buys some adversarial
# robustness, and that it does so by the same mechanism as adversarial training, only weaker
# (chapter 2). Here we put SAM next to the methods that were built for robustness:
#
# - **AT** (Madry et al. 2018): cross-entropy on PGD examples;
# - **SAM+AT**: SAM's weight perturbation on top of AT's input perturbation;
# - **ASAM** (Kwon et al. 2021): SAM with a radius relative to each weight. As its authors define
#   and run it: $T_w = |w| + \eta$ with $\eta = 0.01$ on weight tensors only (biases unscaled), and
#   their recommended radius $\rho = 0.5$ on CIFAR-10 (1.0 on CIFAR-100). An earlier version of this
#   book used $\eta = 0$, scaled biases too and took $\rho = 1$; it is changed to match the paper;
# - **AWP** (Wu et al. 2020): AT with an *adversarial* weight perturbation, a SAM-like step on the
#   adversarial loss, per layer and relative to the layer's norm (gamma = 0.01);
# - **TRADES** (Zhang et al. 2019): clean cross-entropy + beta * KL(p(x) || p(x_adv)), beta = 6;
# - **ARoW** (Yang et al. 2023): TRADES with label smoothing and more weight on the examples the
#   model gets wrong under attack (lambda = 3.5 in the paper's notation).
#
# All of them are classes of `lib.methods`, stepped by the one training loop; nothing here trains
# or attacks by itself. Two questions: where does SAM sit on the accuracy / robustness / cost
# frontier, and does the premise behind SAM and AWP, *flatter minima are more robust*, hold across
# these models?

# %% tags=["parameters"]
PROFILE = "smoke"     # smoke | cpu | fast | paper
DATA = None           # data root; None means $SAMBOOK_DATA

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display
from scipy.stats import spearmanr

from lib import probes, report, tables
from lib.config import profile

sns.set_theme(style="whitegrid", context="notebook")
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
# ## Accuracy under the paper's four attacks, and at the training budget
#
# The first five columns are the paper's protocol (PGD-10, random start, the published steps). The
# sixth attacks every model at L-inf 8/255 with PGD-20, the budget the adversarial methods were
# trained for and the one AWP's paper reports (the `linf8` protocol). Each cell is the mean over the
# seeds the model has (`seeds`); the PGD-20 column over those evaluated with it (`PGD-20 seeds`). The
# `cpu` profile now runs PGD-20 on every run as it finishes; earlier it ran on seed 0 only, and the
# runs whose weights were gone before their PGD-20 could be added have none (weights are never
# committed, so an evaluation can only be added where the run's weights exist). Training is
# deterministic on a given kind of CPU: seed 1's AWP, TRADES, ARoW and ASAM, trained again at the same
# code fingerprint on the same kind of processor, came out bit for bit the same (the same weight
# hash, every earlier evaluation identical per example), so their PGD-20 was added from those weights.
# A chapter never adds an evaluation to committed results (a `cpu` book only reads them), even where
# the weights are present: `python -m lib evaluate --protocol linf8` does that on purpose.

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
report.shown(table, 1)

# %% [markdown]
# ## The frontier: clean accuracy, robustness and cost
#
# Each point is a model; up and to the right is better; the size of a point is its passes per
# training step (the load-free measure of cost; measured seconds mix cost with the load of a
# shared machine).

# %% tags=["nbval-ignore-output"]
frame = table.reset_index()
frame["family"] = frame["method"].map(report.family)
fig, ax = plt.subplots(figsize=(6.5, 4.5))
sns.scatterplot(data=frame, x="clean", y="Linf 2/255", size="passes/step", hue="family", sizes=(40, 400),
                palette=report.FAMILY_COLORS, alpha=0.7, ax=ax)
for _, row in frame.iterrows():
    ax.annotate(row["method"], (row["clean"], row["Linf 2/255"]), textcoords="offset points", xytext=(6, 4),
                fontsize=8)
ax.set(xlabel="clean accuracy (%)", ylabel="PGD-10 accuracy at L-inf 2/255 (%)",
       title=f"Accuracy, robustness and cost ({PROFILE} profile)")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
report.savefig(fig, f"05_frontier_{PROFILE}")
plt.show()

# %% [markdown]
# ## Against AT at the same budget, seed by seed
#
# Each method minus AT L-inf 8/255 trained with the same seed, in points, with the 95 % t-interval
# over the seeds both have. A difference is read as higher or lower only where its interval
# excludes 0. The t-quantile is 12.7 with two seeds and 4.3 with three, so with two only a difference
# far larger than its spread between seeds is resolved, and with one seed none is. Seeds whose
# differences are all equal have a spread of zero, which estimates no noise at all: such a cell says
# "no spread" and is not read as resolved.

# %% tags=["nbval-ignore-output"]
versus = tables.versus(df, "AT L-inf 8/255", {k: columns[k] for k in ("natural", "paper_linf_2", "linf8_linf_8")})
resolved = versus[versus["reading"] != "not resolved"]
print("resolved against AT L-inf 8/255:", "; ".join(
    f"{m}, {c}: {r} ({x:+.1f} [{lo:+.1f}, {hi:+.1f}], {n} seeds)" for m, c, x, lo, hi, n, r in
    resolved.itertuples(index=False)) or "none")
versus_table = tables.versus_table(versus)
report.save_table(versus_table, f"05_versus_at8_{PROFILE}", caption=(
    f"Method minus AT L-inf 8/255, paired by seed, points [95% interval], {PROFILE} profile"))
versus_table

# %% [markdown]
# ## Is flatter more robust?
#
# SAM and AWP both assume that a minimum whose loss stays low when the *weights* move is also one
# whose loss stays low when the *inputs* move. We measure flatness directly (the `flatness`
# probe): the increase of the test loss, model in eval mode, when every conv/linear layer's
# weights move by a fraction rho of their norm,
#
# - in a random direction, rho = 0.1, averaged over 5 draws (average-case flatness), and
# - in the worst direction of one layer-normalised gradient step, rho = 0.01: exactly AWP's own
#   weight perturbation with gamma = 0.01 (worst-case flatness).
#
# Smaller is flatter. Every run of the profile counts (all seeds). Caveats: adversarially trained
# models are less confident, which by itself changes every loss increase.

# %% tags=["nbval-ignore-output"]
everything = [r for r in base + extra]
flat = pd.DataFrame([{"method": r.config.label, "seed": r.config.seed,
                      **{row["kind"]: row["increase"] for row in probes.probe(r, "flatness", data_root=DATA)},
                      "Linf 2/255": tables.run_row(r).get("paper_linf_2")} for r in everything])
report.save_table(flat.set_index("method"), f"05_flatness_{PROFILE}", floatfmt=".4f")
for kind in ("random", "worst"):
    rho_s, p = spearmanr(flat[kind], flat["Linf 2/255"])
    print(f"Spearman rank correlation over {len(flat)} runs, {kind}-direction flatness vs L-inf 2/255 accuracy: "
          f"{rho_s:.2f} (p = {p:.2g}; negative = flatter is more robust)")
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, kind in zip(axes, ("random", "worst")):
    sns.scatterplot(data=flat.assign(family=flat["method"].map(report.family)), x=kind, y="Linf 2/255",
                    hue="family", palette=report.FAMILY_COLORS, ax=ax, s=50)
    ax.set(xlabel=f"loss increase, {kind} direction", ylabel="PGD-10 accuracy at L-inf 2/255 (%)")
fig.suptitle(f"Flatness against robustness ({PROFILE} profile)")
report.savefig(fig, f"05_flatness_{PROFILE}")
plt.show()
flat.groupby("method", sort=False)[["random", "worst", "Linf 2/255"]].mean().round(4)

# %% [markdown]
# ## An independent attack: AutoAttack
#
# A robust accuracy is only as good as the attack behind it. AutoAttack (Croce & Hein 2020) is an
# optional extra (`pip install -r requirements-extra.txt`), run by the evaluation stage: the
# standard ensemble where the profile can afford it (`autoattack`), its first attack alone
# (`apgd-ce`) in the smoke profile. Below: the paper's PGD-10 against it at L-inf 2/255, then, for
# the models trained at L-inf 8/255, this chapter's PGD-20 against standard AutoAttack at that budget
# (`autoattack-linf8`, the number RobustBench ranks such models by), each on the same test images
# and only on the runs AutoAttack ran on. A model whose PGD accuracy exceeds AutoAttack's by more
# than 3 points is flagged.

# %% tags=["nbval-ignore-output"]
evals = tables.results_frame(base + extra)
for note, pt in tables.autoattack_checks(evals, tables.AUTOATTACK_CHECKS):
    print(note)
    if pt is not None:
        display(report.shown(pt, 1))

# %% [markdown]
# ## AWP's published numbers beside ours
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
# ## Where SAM stands
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
# What to read here, honestly:
#
# - **Smoke numbers say nothing about the methods.** A width-8 network trained for 3 epochs on 2,000
#   images is far from any minimum; the table only shows that every method trains, is evaluated
#   and is cached. The `cpu` profile's rows are real models at a small scale.
# - **SAM is a cheap, partial substitute, not a competitor.** It costs 2 passes per step against
#   steps + 1 or + 2 (AT, AWP, TRADES, ARoW: 11-12 at the paper's PGD-10) and its robustness shows at
#   small budgets (L-inf 1-2/255, L2 16-32/255, the paper's Table 2). At the 8/255 budget the
#   adversarial methods were built for, published PGD-20 and AutoAttack accuracies of AT, AWP and
#   TRADES are 40-56 %, an undefended network's is 0 %, and SAM's published L-inf accuracy is already
#   only 9-16 % at 2/255 (it can only fall at 8/255). The paper does not claim that SAM closes that
#   gap.
# - **Weight perturbation helps most on top of adversarial examples.** AWP and SAM+AT add a
#   SAM-like step to AT; AWP's published gain is +2-3 points of PGD-20 at the best checkpoint and
#   +10 at the last (it mostly prevents robust overfitting).
# - **Flatness is a weak predictor across training objectives.** The rank correlation above mixes
#   models trained on different losses, and flatness in weight space does not bound the loss
#   increase in input space. Read the correlation with its p-value.
