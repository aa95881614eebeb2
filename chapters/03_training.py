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
# # 3. Training the grid
#
# **The question of this chapter.** What does it take to train the models the paper compares, and
# what does each training method cost?
#
# The paper's robustness table compares, on one architecture (PreActResNet-18) and one evaluation,
# three kinds of model: *standard training* (ST, plain cross-entropy on clean images), *SAM* at
# several radii $\rho$ (chapter 2 writes its update out), and *adversarial training* (AT: the
# cross-entropy on PGD examples) at several budgets $\epsilon$ in the L-inf and L2 norms. Such a set
# of trained models is a *grid*; each trained network is a *run*, and each run is repeated with
# several *seeds* (initialisation and data order). A *profile* fixes the scale of every run: network
# width, epochs, data, seeds. This chapter lists the grid of the chosen profile, trains what is
# missing (or, for a profile whose results are committed, reads them: the book never trains there),
# shows the one training loop every method shares, draws the learning curves, and measures what each
# method costs.

# %% tags=["parameters"]
PROFILE = "cpu-long"  # smoke | cpu | cpu-long | fast | paper
DATA = None           # data root; None means $SAMBOOK_DATA
DATASET = "cifar10"
SEEDS = None          # None: the profile's seeds

# %%
import inspect
import math

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from lib import glossary, methods, plots, report, train
from lib.config import grid, make_config, profile
from lib.tables import results_frame

GRID = report.book_grid(PROFILE)
configs = grid(GRID, PROFILE, DATASET, SEEDS)

# %% [markdown]
# ## 1. The settings: the paper's and this profile's
#
# Every setting below is read from the configuration the runs are trained with (`lib.config`). The
# paper trains for 100 epochs at full width; the smaller profiles keep its optimiser and change what
# the table shows. Training images are augmented with random crops and horizontal flips
# (`lib.data.augment`), and every training attack runs with BatchNorm in eval mode (the paper's
# released code left it in training mode).

# %%
facts = glossary.profile_facts(["paper", PROFILE] if PROFILE != "paper" else ["paper"], DATASET)
if PROFILE != "paper":
    differ = [k for k, row in facts.iterrows() if str(row["paper"]) != str(row[PROFILE])]
    print(f"The {PROFILE} profile differs from the paper's in: {', '.join(differ)}.")
facts

# %% [markdown]
# The grid of this profile, one row per configuration: its training attack (AT trains on PGD with
# the paper's step and iterations for each budget) and its forward/backward passes per training step
# (a PGD iteration counts as one pass).

# %%
seeds = sorted({c.seed for c in configs})
print(f"{PROFILE} profile, {GRID} grid: {len(configs)} runs = {len({c.label for c in configs})} configurations "
      f"x seeds {seeds}")
pd.DataFrame([{"configuration": c.label, "training attack": (f"PGD-{c.steps}, step {c.alpha * 255:g}/255"
                                                             if c.spec.adversarial else "none"),
               "passes per step": c.spec.passes_per_step(c)}
              for c in configs if c.seed == seeds[0]]).set_index("configuration")

# %% [markdown]
# ## 2. One training loop for every method
#
# All methods share one loop (`lib.train.train_epoch`): shuffle, augment, and call the method's
# `step` on each batch. The loop:

# %%
print(inspect.getsource(train.train_epoch))

# %% [markdown]
# A method's step (`lib.methods`) asks the method for an *adversary* (none for ST and SAM, PGD
# examples for AT), takes the loss on what the adversary returns, and lets the method *update* the
# weights:

# %%
print(inspect.getsource(methods.Method.step))

# %% [markdown]
# ST's update is one backward pass and an optimiser step. AT changes only the adversary; SAM changes
# only the update, into the two passes of chapter 2 (the second one with BatchNorm's running
# statistics frozen, so the climb to $\theta + e$ does not change them):

# %%
print(inspect.getsource(methods.AT.adversary))
print(inspect.getsource(methods.SAM.update))

# %% [markdown]
# ## 3. The runs
#
# Each run is a pure function of its configuration and is cached under `outputs/runs/`; a finished
# run is loaded, not trained again. The executor (local by default, Ray with `EXECUTOR=ray`) decides
# where the missing ones train; each is then evaluated under the profile's protocols (chapter 4) and
# probed (chapters 2 and 5).

# %%
results, missing = report.results_for(PROFILE, GRID, DATASET, SEEDS, data_root=DATA)
print(report.missing_note(missing))

# %% tags=["nbval-ignore-output"]
print(report.ran_on(results))
print(report.banner(PROFILE, results[0].metrics["data"]))
df = results_frame(results)
shown = ["natural", "paper_linf_1", "paper_linf_2", "paper_l2_16", "paper_l2_32"]
means = df.groupby("label", sort=False)[shown].mean()
fam = means.index.map(report.family)


def span(rows, col, fmt=".1f", unit=" %"):
    if rows[col].dropna().empty:
        return "(no run yet)"
    lo, hi = rows[col].min(), rows[col].max()
    same = format(lo, fmt) == format(hi, fmt)
    return f"{lo:{fmt}}{unit}" if same else f"{lo:{fmt}} to {hi:{fmt}}{unit}"


display(Markdown(
    f"The table lists each run's clean accuracy and its PGD-10 accuracy under the paper's protocol. Averaged "
    f"over the {df['seed'].nunique()} seed(s): ST reaches {means.loc['ST', 'natural']:.1f} % clean and "
    f"{means.loc['ST', 'paper_linf_2']:.1f} % at L-inf 2/255; the SAM models {span(means[fam == 'SAM'], 'natural')} "
    f"clean and {span(means[fam == 'SAM'], 'paper_linf_2')} at L-inf 2/255; the AT models "
    f"{span(means[fam == 'AT'], 'natural')} clean and {span(means[fam == 'AT'], 'paper_linf_2')} at L-inf 2/255. "
    f"Chapter 4 compares them with the paper's numbers and judges the differences."))
df[["label", "seed", *shown]].round(1)

# %% [markdown]
# ## 4. Learning curves
#
# Clean test accuracy and PGD accuracy at L-inf 1/255 (step $\epsilon/4$, fp32) after every epoch, on the
# first test images of the profile (the band: one standard deviation over seeds; the number of images
# and attack steps are printed below).

# %% tags=["nbval-ignore-output"]
fig = report.learning_curves(results, f"Learning curves, {DATASET}, {PROFILE} profile")
prof = profile(PROFILE)
print(f"{report.curve_images_note(results)} The attack: PGD-{prof.curve_steps}.")
report.savefig(fig, f"03_learning_curves_{PROFILE}")
plt.show()
hist = pd.concat([r.history_frame().assign(label=r.config.label) for r in results])
curve = hist.groupby(["label", "epoch"], sort=False)[["test_acc", "test_linf_1"]].mean()
st_curve = curve.loc["ST"]
display(Markdown(
    f"ST's clean test accuracy goes from {st_curve['test_acc'].iloc[0]:.1f} % after epoch 1 to "
    f"{st_curve['test_acc'].iloc[-1]:.1f} % after epoch {st_curve.index[-1]} (mean over seeds); at the last "
    f"epoch the models span {curve.xs(st_curve.index[-1], level='epoch')['test_acc'].min():.1f} to "
    f"{curve.xs(st_curve.index[-1], level='epoch')['test_acc'].max():.1f} % clean."))

# %% [markdown]
# ## 5. What each method costs
#
# Measured training time (wall clock of the training steps, without the per-epoch evaluation) and
# forward/backward passes per step. A PGD step with input-only gradients counts as one pass here;
# it costs about two thirds of a training pass (no weight gradients). Runs may have trained at once
# in parallel processes on a shared machine: read the ratios, not the seconds.

# %% tags=["nbval-ignore-output"]
cost = (df.groupby("label", sort=False)
          .agg(passes_per_step=("passes_per_step", "first"), train_seconds=("train_seconds", "mean"),
               images_per_second=("images_per_second", "mean"), precision=("precision", "first")))
cost["relative to ST"] = cost["train_seconds"] / cost.loc["ST", "train_seconds"]
cfam = cost.index.map(report.family)
display(Markdown(
    f"Devices: {'; '.join(sorted({r.metrics['device'] for r in results}))}. Relative to ST, the SAM models took "
    f"{span(cost[cfam == 'SAM'], 'relative to ST', '.2f', '')} times as long "
    f"({span(cost[cfam == 'SAM'], 'passes_per_step', 'd', '')} passes per step) and the AT models "
    f"{span(cost[cfam == 'AT'], 'relative to ST', '.2f', '')} times "
    f"({span(cost[cfam == 'AT'], 'passes_per_step', 'd', '')} passes)."))
cost.round(2)

# %%
passes = pd.DataFrame([{"label": c.label, "passes per step": c.spec.passes_per_step(c)}
                       for c in configs]).drop_duplicates("label")
fig = plots.passes_per_step(passes)
report.savefig(fig, f"03_passes_per_step_{PROFILE}")
plt.show()

# %% [markdown]
# ## 6. Exercises
#
# **1.** How many optimiser steps does one run of this profile take? Work it out from the number of
# training images, the batch size and the epochs.
#
# <details><summary>Solution</summary>
#
# One epoch is $\lceil n_{train}/\text{batch}\rceil$ steps (the last batch is smaller), times the
# epochs. The cell below computes it for the first run.
#
# </details>

# %%
c0 = results[0].config
n_train = results[0].metrics["train_images"]
steps_per_epoch = math.ceil(n_train / c0.batch_size)
print(f"{n_train:,} training images / batch {c0.batch_size} = {steps_per_epoch} steps per epoch; "
      f"x {c0.epochs} epochs = {steps_per_epoch * c0.epochs:,} steps")

# %% [markdown]
# **2.** Sketch this profile's learning rate over a run: where does it start, where does it peak and
# where does it end? Check with `lib.train.lr_at`.
#
# <details><summary>Solution</summary>
#
# The schedule is printed in the settings table of section 1. With the paper's step schedule the rate
# starts at its peak and drops tenfold at 75 % and again at 90 % of the epochs (at epoch boundaries,
# so a run of very few epochs may never reach them); with one-cycle it rises linearly from almost 0 to
# the peak over the warm-up, then falls linearly to 0 at the last step. The cell below evaluates it.
#
# </details>

# %%
lrs = [train.lr_at(c0, s, steps_per_epoch) for s in range(steps_per_epoch * c0.epochs)]
peak = max(range(len(lrs)), key=lrs.__getitem__)
print(f"{glossary.schedule_text(c0)}: first step {lrs[0]:.4g}, peak {lrs[peak]:.4g} at step {peak + 1}, "
      f"last step {lrs[-1]:.4g}")
assert abs(lrs[peak] - c0.lr) < 1e-12

# %% [markdown]
# **3.** How many forward/backward passes per step does AT at L-inf 8/255 take with the paper's
# training attack? How many times ST's cost is that, roughly?
#
# <details><summary>Solution</summary>
#
# The paper trains at L-inf 8/255 with PGD-10, so $10 + 1 = 11$ passes. Since an attack step computes no
# weight gradients, it costs about two thirds of a training pass (`Method.forward_equivalents`
# counts 3 for a training pass and 2 for an attack step): about $(3 + 2 \cdot 10)/3 \approx 7.7$ times
# ST, not 11.
#
# </details>

# %%
at8 = make_config("at", "paper", DATASET, eps=8 / 255)
print(f"AT L-inf 8/255: PGD-{at8.steps}, {at8.spec.passes_per_step(at8)} passes per step, "
      f"{at8.spec.forward_equivalents(at8) / methods.Method.forward_equivalents(at8):.1f} x ST in forward passes")
assert at8.spec.passes_per_step(at8) == at8.steps + 1

# %% [markdown]
# **4.** Why does SAM's second pass freeze BatchNorm's running statistics?
#
# <details><summary>Solution</summary>
#
# The running statistics are what the deployed network normalises with. The second pass runs at the
# perturbed weights $\theta + e$, which the network never keeps; letting that pass update the
# statistics would mix in activations of weights that are thrown away after the step, and would
# update them twice per batch instead of once.
#
# </details>
